"""Wall time of one crawl of a hostile 60-page site on the default settings (issue 16): before/after figures.

`python -m bench.hostile_wall [timeout_s]` prints one JSON object. The site (testkit's HostileSite on
loopback) has 52 good event pages, 4 pages that drip a 2,000-byte body one byte every 50 ms (100 s each),
2 that stay silent for 4 x the timeout (at least 30 s), and 2 chains of four redirect hops that each answer
after 0.8 x the timeout. The crawl is `harvest.crawl.crawl` with `CrawlOptions` as a run builds them
(timeout 20 s by default, 3 retries, 0.5 s backoff); only the timeout can be given, to scale the whole test
down. Every bound is proportional to the timeout: the per-URL budget is 2 x timeout.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace


def main() -> int:
    from harvest.crawl import CrawlOptions, crawl
    from harvest.models import RunConfig
    from harvest.settings import HarvestSettings
    from testkit.hostile_site import HostileSite, LoopbackHandler, drip, stall

    timeout_s = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    page = "<html><head><title>{0}</title></head><body><h1>{0}</h1>" + "<p>Family fun. </p>" * 20 + "</body></html>"

    def slow_redirect(to: str, after_s: float):  # noqa: ANN202 - a route
        def route(req: LoopbackHandler) -> None:
            time.sleep(after_s)
            req.send_bytes(302, b"", "text/plain", {"Location": to})

        return route

    with HostileSite() as site:
        links = [f"/good{n}" for n in range(52)] + [f"/drip{n}" for n in range(4)] + ["/stall0", "/stall1"]
        links += ["/chain0-0", "/chain1-0"]
        for n in range(52):
            site.page(f"/good{n}", page.format(f"Good {n}"))
        for n in range(4):
            body = page.format(f"Drip {n}").encode()
            site.route(f"/drip{n}", drip((body * 10)[:2000], every_s=0.05))
        for n in range(2):
            site.route(f"/stall{n}", stall(max(30.0, 4 * timeout_s)))
            for hop in range(4):
                site.route(f"/chain{n}-{hop}", slow_redirect(f"/chain{n}-{hop + 1}", 0.8 * timeout_s))
            site.page(f"/chain{n}-4", page.format(f"Chain end {n}"))
        site.page("/", "<html><body>" + "".join(f'<a href="{link}">{link}</a>' for link in links) + "</body></html>")

        settings = HarvestSettings(allow_private_networks=True, request_timeout_seconds=timeout_s, browser_path=None)
        options = replace(CrawlOptions.from_settings(settings), allow_private_networks=True)
        started = time.perf_counter()
        with crawl(site.url("/"), RunConfig(render="http", max_pages=500, max_depth=3), options) as session:
            pages = sum(1 for _ in session)
            stats = session.stats
        wall = time.perf_counter() - started
    print(json.dumps({
        "timeout_s": timeout_s, "wall_s": round(wall, 1), "pages": pages,
        "failed": sorted(f"{f.url.rsplit('/', 1)[-1]}: {f.reason}" for f in stats.failed_urls),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
