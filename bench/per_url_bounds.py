"""Per-URL worst cases of hostile servers (issue 16): `python -m bench.per_url_bounds` prints seconds per case.

Timeout T = 2 s; pages with the crawler's default 3 retries and 0.5 s backoff; one call for the geocoder and
one request for OpenAI (no retries), so each figure is one URL's or one call's wall time. Every server
drips or stalls far longer than any bound, on loopback (testkit's HostileSite, geocoder and OpenAI servers).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

T = 2.0
ELTHAM = "829 Main Rd, Eltham VIC 3095, Australia"


def _timed(out: dict[str, Any], name: str, call: Callable[[], object]) -> None:
    started = time.perf_counter()
    try:
        call()
        result = "ok"
    except Exception as exc:  # noqa: BLE001 - the failure is the figure's explanation
        result = f"{type(exc).__name__}: {str(exc)[:120]}"
    out[name] = {"seconds": round(time.perf_counter() - started, 2), "result": result}
    print(name, out[name], file=sys.stderr, flush=True)


def _header_drip(req: Any) -> None:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Pad: " + b"a" * 2000
            + b"\r\nContent-Length: 10\r\n\r\n0123456789")
    try:
        for index in range(len(head)):
            req.wfile.write(head[index : index + 1])
            req.wfile.flush()
            time.sleep(0.02)
    except OSError:
        pass


def main() -> int:
    from harvest.crawl.http_fetch import HttpFetcher
    from harvest.enrich.embeddings.sync import embed_texts
    from harvest.enrich.geocode.client import NominatimGeocoder
    from harvest.enrich.images.client import Validators, fetch_image_if_changed
    from harvest.net.openai_client import make_openai_client
    from testkit.geocoder_server import GeocoderTestServer
    from testkit.hostile_site import HostileSite, drip, stall
    from testkit.openai_server import OpenAITestServer

    out: dict[str, Any] = {}
    with HostileSite() as site:
        site.route("/drip", drip(b"<html><body>" + b"x" * 2000 + b"</body></html>", every_s=0.05))
        site.route("/stall", stall(60.0))
        site.route("/drip.jpg", drip(b"\xff" * 5000, every_s=0.05, content_type="image/jpeg", chunk=10))
        site.route("/hdrip.jpg", _header_drip)

        async def fetch(path: str) -> object:
            async with HttpFetcher(user_agent="bench", allow_private_networks=True, timeout_s=T) as fetcher:
                return await fetcher.fetch(site.url(path))

        def image(path: str) -> object:
            return fetch_image_if_changed(site.url(path), Validators(), max_bytes=10**6, timeout_s=T,
                                          user_agent="bench", allow_private_networks=True)

        _timed(out, "page body drip (20 B/s)", lambda: asyncio.run(fetch("/drip")))
        _timed(out, "page never answers", lambda: asyncio.run(fetch("/stall")))
        _timed(out, "image body drip (200 B/s)", lambda: image("/drip.jpg"))
        _timed(out, "image header drip (50 B/s)", lambda: image("/hdrip.jpg"))

    with GeocoderTestServer() as geo:
        geo.fail_next(1, mode="drip", sleep_s=0.01)

        def geocode() -> None:
            with NominatimGeocoder(geo.base_url, user_agent="bench", rate_per_second=100, timeout_s=T,
                                   retries=0) as geocoder:
                answer = geocoder.geocode(ELTHAM)
            if answer.error:
                raise RuntimeError(answer.error)

        _timed(out, "geocoder answer drip (100 B/s), 1 call", geocode)

    with OpenAITestServer(dimensions=8) as oai:
        oai.configure(drip_s=0.05, delay_path="/v1/embeddings")
        client = make_openai_client("sk-bench", oai.base_url, max_retries=0, timeout_s=T)
        _timed(out, "OpenAI embeddings answer drip (20 B/s), 1 request",
               lambda: embed_texts(client, ["hello"], model="text-embedding-3-small", dimensions=8))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
