"""One crawl of the demo site in one render mode (child process of bench.run): pages per second.

`python -m bench.crawl <start url> <auto|browser|http> <out.json>`. The crawl is `harvest.crawl.crawl` itself,
on the settings' browser path and user agent, with limits high enough to take the whole site; pages are
only counted (extraction is not part of what this measures). The site is served by the parent process, so
the server does not share this process's interpreter.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> int:
    start_url, mode, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    from dataclasses import replace

    from bench.rss import peak_rss_mb
    from harvest.crawl import CrawlOptions, crawl
    from harvest.models import RunConfig
    from harvest.settings import get_settings

    settings = get_settings()
    config = RunConfig(render=mode, max_pages=5000, max_depth=20)
    started = time.perf_counter()
    session = crawl(start_url, config, replace(CrawlOptions.from_settings(settings), allow_private_networks=True))
    pages = 0
    with session:
        for _page in session:
            pages += 1
    seconds = time.perf_counter() - started
    stats = session.stats
    out.write_text(json.dumps({
        "mode": mode, "pages": pages, "pages_fetched": stats.pages_fetched, "pages_rendered": stats.pages_rendered,
        "pages_http": stats.pages_http, "failed_urls": len(stats.failed_urls), "seconds": round(seconds, 2),
        "pages_per_s": round(pages / seconds, 2) if seconds else 0.0,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
