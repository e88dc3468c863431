"""One crawl of the demo site in one render mode (child process of bench.run): pages per second.

`python -m bench.crawl <start url> <auto|browser|http> [--memory DB_URL] <out.json>`. The crawl is
`harvest.crawl.crawl` itself, on the settings' browser path and user agent, with limits high enough to take the
whole site; pages are only counted (extraction is not part of what this measures). The site is served by the
parent process, so the server does not share this process's interpreter.

With `--memory`, the crawl keeps and uses a page memory (`page_cache` in that database, as the flow does):
run it twice for an unchanged re-crawl (conditional requests, sitemap `<lastmod>`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TypeGuard, get_args

from harvest.crawl.crawler import Mode


def is_render_mode(value: str) -> TypeGuard[Mode]:
    """Whether a command-line word is one of RunConfig's render modes (lets the type checker trust it)."""
    return value in get_args(Mode)


def main() -> int:
    start_url, mode, out = sys.argv[1], sys.argv[2], Path(sys.argv[-1])
    memory_url = sys.argv[sys.argv.index("--memory") + 1] if "--memory" in sys.argv else None
    from dataclasses import replace

    from bench.rss import peak_rss_mb
    from harvest.crawl import CrawlOptions, crawl
    from harvest.crawl.page import entry_for
    from harvest.crawl.page_cache import PageCache
    from harvest.db.engine import get_engine, upgrade
    from harvest.models import RunConfig
    from harvest.settings import get_settings

    if not is_render_mode(mode):
        raise SystemExit(f"bench.crawl: the render mode is one of {', '.join(get_args(Mode))}, not {mode!r}")
    settings = get_settings()
    config = RunConfig(render=mode, max_pages=5000, max_depth=20)
    memory = None
    if memory_url:
        upgrade(memory_url)
        memory = PageCache(get_engine(memory_url), "bench", render=mode)
    started = time.perf_counter()
    session = crawl(start_url, config, replace(CrawlOptions.from_settings(settings), allow_private_networks=True),
                    memory=memory)
    pages = 0
    with session:
        for page in session:
            pages += 1
            entry = entry_for(page, []) if memory is not None and page.reuse_reason != "lastmod" else None
            if memory is not None and entry is not None:
                memory.remember(entry)  # what the flow's crawl stage does (with the page's activities)
    if memory is not None:
        memory.flush()
    seconds = time.perf_counter() - started
    stats = session.stats
    out.write_text(json.dumps({
        "mode": mode, "pages": pages, "pages_fetched": stats.pages_fetched, "pages_rendered": stats.pages_rendered,
        "pages_http": stats.pages_http, "failed_urls": len(stats.failed_urls), "seconds": round(seconds, 2),
        "pages_not_modified": stats.pages_not_modified, "pages_lastmod_unchanged": stats.pages_lastmod_unchanged,
        "pages_scripts_changed": stats.pages_scripts_changed,
        "pages_per_s": round(pages / seconds, 2) if seconds else 0.0,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
