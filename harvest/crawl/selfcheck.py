"""Does the browser work here? Render one page built by a script, with the crawler's own renderer.

The image build ends with it (a broken browser fails the build, not every later run), and an operator can run it
on a worker or in a container to see why pages are not rendered:

    python -m harvest.crawl.selfcheck            # the browser HARVEST_BROWSER_PATH names (or the default)
    python -m harvest.crawl.selfcheck /usr/bin/chromium

The page is served on 127.0.0.1 by this process and rendered through `BrowserRenderer`: Playwright's driver,
Chromium at its executable path, the SSRF guard's proxy and route handler, the readiness wait. Exit status 0
when the script-built text came back, 1 otherwise, with the cause (see `BrowserRenderer._ensure_started`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harvest.crawl.browser import BrowserRenderer, RenderFailed

MARK = "harvest-selfcheck: this text was built by a script"
PAGE = (
    b"<!doctype html><html><head><title>harvest self-check</title></head><body><div id='root'></div><script>"
    b"document.getElementById('root').textContent = ['harvest-selfcheck:', 'this text was built by a script']"
    b".join(' ');</script></body></html>"
)


@dataclass(frozen=True)
class BrowserCheck:
    """The outcome: `ok` when the rendered DOM held the script's text; `detail` says what happened."""

    ok: bool
    executable_path: str | None
    seconds: float
    detail: str


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@contextmanager
def _served() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, name="harvest-selfcheck", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


async def _render(executable_path: str, url: str, timeout_s: float) -> str:
    renderer = BrowserRenderer(
        executable_path, user_agent="harvest-selfcheck", allow_private_networks=True, max_pages=1,
        timeout_s=timeout_s, settle_s=min(5.0, timeout_s), max_chars=1_000_000,
    )
    try:
        return (await renderer.render(url)).html
    finally:
        await renderer.close()


def check_browser(executable_path: str | None, *, timeout_s: float = 60.0) -> BrowserCheck:
    """Render the self-check page with Chromium at `executable_path`; never raises for a browser problem."""
    started = time.monotonic()
    if not executable_path:
        return BrowserCheck(False, None, 0.0, "no browser configured: set HARVEST_BROWSER_PATH")
    try:
        with _served() as url:
            html = asyncio.run(_render(executable_path, url, timeout_s))
    except RenderFailed as exc:
        return BrowserCheck(False, executable_path, time.monotonic() - started, exc.reason)
    seconds = time.monotonic() - started
    if MARK not in html:
        detail = f"the page rendered without its script's text: {html[:200]!r}"
        return BrowserCheck(False, executable_path, seconds, detail)
    return BrowserCheck(True, executable_path, seconds, "rendered a page built by a script")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.ERROR)  # the renderer's own warning would repeat the cause printed below
    if args:
        path: str | None = args[0]
    else:
        from harvest.settings import HarvestSettings

        path = HarvestSettings().browser_path
    result = check_browser(path)
    if result.ok:
        print(f"browser OK: Chromium at {result.executable_path} {result.detail} in {result.seconds:.1f}s")
        return 0
    print(f"browser check FAILED ({result.executable_path}): {result.detail}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
