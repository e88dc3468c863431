# harvest worker/flow-run image: the project installed from the runtime lock, Debian's Chromium for Playwright,
# migrations beside it, a non-root user. No secrets: every setting comes from the environment at run time
# (the docker work pool's job variables), e.g. HARVEST_DATABASE_URL, HARVEST_STORAGE_URL, OPENAI_API_KEY.
#
#   docker build -t harvest:latest .     (add --network host where the build must reach PyPI through the host)
#   docker run --rm -e HARVEST_DATABASE_URL=... harvest:latest harvest db upgrade
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DO_NOT_TRACK=1 \
    HARVEST_BROWSER_PATH=/usr/bin/chromium-headless-shell \
    HARVEST_MIGRATIONS_DIR=/app/migrations \
    HARVEST_HOME=/home/harvest/.harvest \
    MALLOC_ARENA_MAX=2

# Playwright drives the distribution's Chromium headless shell (`playwright install` needs a CDN and brings its own).
# libatomic1: Playwright's bundled driver (Node.js) needs libatomic.so.1, which python:3.11-slim lacks; without it
# no page renders and only the container's stderr says why. Fonts: Liberation (metric-compatible with Arial, Times,
# Courier) and DejaVu, so pages lay out as on a desktop.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium-headless-shell libatomic1 fonts-liberation \
        fonts-dejavu-core ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 harvest \
    && useradd --system --uid 10001 --gid harvest --create-home --home-dir /home/harvest harvest

WORKDIR /app

# Dependencies come from the runtime lock (every package pinned with its hashes; `make lock` writes it), in
# a layer of their own that a source change does not rebuild. Two images built a week apart get the same packages.
COPY requirements/runtime.lock requirements/runtime.lock
RUN pip install --no-cache-dir --require-hashes -r requirements/runtime.lock

# The project itself without dependencies (all locked above). The source tree is copied as well because
# deployments load their entrypoint (flows/scrape.py) from the working directory /app.
COPY pyproject.toml README.md alembic.ini prefect.yaml ./
COPY harvest/ harvest/
COPY flows/ flows/
COPY blocks/ blocks/
COPY harvest_cli/ harvest_cli/
COPY migrations/ migrations/
RUN pip install --no-cache-dir --no-deps . \
    && chown -R harvest:harvest /app

USER 10001:10001

# Smoke check, as the user runs do: Playwright's driver starts Debian's Chromium and it renders a page built by a
# script (served on 127.0.0.1 inside the build). A browser that cannot start fails the build here, with the cause.
RUN python -m harvest.crawl.selfcheck

CMD ["prefect", "version"]
