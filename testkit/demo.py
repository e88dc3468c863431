"""`make demo`: serve the bundled demo site on loopback and scrape it with the embedded defaults.

The database is SQLite and the files go to a local folder (both under ~/.harvest, or HARVEST_HOME).
There is no network here, so OpenAI and the geocoder are the local wire-protocol stand-ins from
`testkit/` unless you point OPENAI_BASE_URL / HARVEST_GEOCODER_URL at real ones yourself.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def main() -> int:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The first run on a fresh PREFECT_HOME migrates its database; give the ephemeral API time to start.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ["HARVEST_ALLOW_PRIVATE_NETWORKS"] = "true"  # the demo site is on 127.0.0.1

    from testkit.demo_site import build_demo_site, serve_site
    from testkit.geocoder_server import GeocoderTestServer
    from testkit.openai_server import OpenAITestServer

    site_root = Path(tempfile.mkdtemp(prefix="harvest-demo-site-"))
    info = build_demo_site(site_root)
    with serve_site(site_root) as site, OpenAITestServer() as openai_server, GeocoderTestServer() as geocoder:
        if not os.environ.get("OPENAI_API_KEY"):
            os.environ["OPENAI_API_KEY"] = "demo-local-key"
            os.environ["OPENAI_BASE_URL"] = openai_server.base_url
            os.environ.setdefault("HARVEST_BATCH_POLL_SECONDS", "1")
            print(f"OpenAI: local stand-in at {openai_server.base_url} (set OPENAI_API_KEY to use the real API)")
        if not os.environ.get("HARVEST_GEOCODER_URL"):
            os.environ["HARVEST_GEOCODER_URL"] = geocoder.base_url
            os.environ.setdefault("HARVEST_GEOCODER_RATE_PER_SECOND", "100")
            print(f"Geocoder: local Nominatim stand-in at {geocoder.base_url}")
        print(f"Demo site: {site.base_url}/ ({len(info.activity_pages)} activity pages built from the fixtures)")

        from harvest_cli import app

        args = ["scrape", f"{site.base_url}/", "--max-pages", "1000", "--max-depth", "4", "--max-extractions", "1000"]
        try:
            app(args, standalone_mode=False)
        except SystemExit as exc:  # typer exits non-zero on a failed run
            return int(exc.code or 0)
    from harvest.settings import get_settings

    settings = get_settings()
    print(f"\nDatabase: {settings.database_url}\nFiles:    {settings.storage_url}")
    print("Inspect with: .venv/bin/harvest runs list ; .venv/bin/harvest runs show <run id>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
