#!/usr/bin/env bash
# Build a stand-in for the Dockerfile's base image (python:3.11-slim) from Debian packages, for machines that
# reach Debian and PyPI but no image registry (the docker deployment's end-to-end test runs on one).
#
#   scripts/standin-python-image.sh     # no-op when the tag exists (cached by tag) or a registry gives the real one
#
# What it makes: Debian bookworm (debootstrap --variant=minbase) with python3, a venv at /usr/local (so
# /usr/local/bin/python and pip come first on PATH, as in the official image) holding pip 24.0 (what the
# official 3.11 image ships; Debian's pip 23.0 refuses the lock's `httpx[http2]` under --require-hashes), the
# official image's apt sources (bookworm, -updates, -security), and this machine's CA certificates and pip
# certificate setting so package downloads work where egress goes through a TLS-inspecting proxy.
# It differs from the official image in its Python (Debian's 3.11.2, not python.org's latest 3.11).
# Takes ~3-4 min on 2 cores (debootstrap is most of it); the result is ~330 MB.
set -euo pipefail
TAG="${HARVEST_BASE_IMAGE:-python:3.11-slim}"
SUITE=bookworm
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

if docker image inspect "$TAG" >/dev/null 2>&1; then
  exit 0
fi
# Where a registry answers, the real image is the one to use.
if timeout 300 docker pull -q "$TAG" >/dev/null 2>&1; then
  echo ">> pulled $TAG: no stand-in needed" >&2
  exit 0
fi
command -v debootstrap >/dev/null 2>&1 || { echo "debootstrap missing: apt-get install -y debootstrap" >&2; exit 1; }

# The Debian mirror this machine's apt uses (deb822 `URIs:` or a one-line `deb` entry), else deb.debian.org.
mirror="${HARVEST_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -oE '(URIs:[[:space:]]*|^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
    | grep -oE 'https?://[^[:space:]]+' | head -n 1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"
mirror="${mirror%/}"
security="${mirror%/debian}/debian-security"

work="$(mktemp -d /var/tmp/harvest-standin.XXXXXX)"
trap '$SUDO rm -rf "$work"' EXIT
echo ">> debootstrap $SUITE from $mirror (minbase + python3)" >&2
$SUDO debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  "$SUITE" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
$SUDO rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
$SUDO tar -C "$work/rootfs" -c . | docker import - "harvest/bookworm-minbase:standin" >/dev/null

mkdir -p "$work/context/local-ca"
cp /etc/ssl/certs/ca-certificates.crt "$work/context/ca-certificates.crt"
cp /usr/local/share/ca-certificates/*.crt "$work/context/local-ca/" 2>/dev/null || true
cat >"$work/context/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cat >"$work/context/Dockerfile" <<'EOF'
FROM harvest/bookworm-minbase:standin
LABEL org.harvest.standin="python:3.11-slim stand-in built by scripts/standin-python-image.sh"
# The machine's CA certificates: kept in /usr/local/share so a later update-ca-certificates keeps them too.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY local-ca/ /usr/local/share/ca-certificates/
COPY debian.sources /etc/apt/sources.list.d/debian.sources
ENV LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN rm -f /etc/apt/sources.list \
    && python3 -m venv /usr/local \
    && /usr/local/bin/pip install --no-cache-dir --disable-pip-version-check pip==24.0 \
    && /usr/local/bin/python --version && /usr/local/bin/pip --version
CMD ["python3"]
EOF
echo ">> building $TAG (stand-in)" >&2
docker build --network host -q -t "$TAG" "$work/context" >/dev/null
docker image rm "harvest/bookworm-minbase:standin" >/dev/null 2>&1 || true
echo ">> $TAG: $(docker image inspect "$TAG" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}') (stand-in)" >&2
