"""Hostile images through the real image stage (harvest/enrich/images/stage.py → harvest/enrich/images/client.py): each bad image
becomes that activity's recorded error and a stage warning; the good images of the same run are stored.

The single-function versions of most cases are in tests/unit/enrich/images/test_images.py; here they run together in one
stage, as a run meets them, plus the cases that one could not show: a 30,000 × 30,000 PNG header with no
pixel data at all (caught by harvest's limit, and by Pillow's own guard when harvest's is set too high), SVG
under a generic or lying content type, and a redirect to a URL the guard cannot parse.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from harvest.enrich.images.client import to_webp
from harvest.enrich.images.stage import process_images
from harvest.errors import ImageError
from harvest.models import Activity, Location
from harvest.settings import HarvestSettings
from harvest.storage import LocalStore, iter_jsonl, write_jsonl
from testkit.hostile_site import drip


def jpeg(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    img = Image.new("RGB", size, (200, 60, 30))
    img.paste((20, 20, 200), (0, 0, size[0] // 2, size[1] // 3))
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A 57-byte PNG: signature, an IHDR that claims width × height, an empty IDAT, IEND. No pixels exist."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>'
GOOD = jpeg((1600, 900))


def test_png_header_bombs_are_tiny_and_refused_before_any_decoding() -> None:
    bomb = png_header_claiming(30_000, 30_000)
    assert len(bomb) < 100
    # 900 MP: Pillow's own guard fires as the header is read (over twice its 89 MP warning limit).
    with pytest.raises(ImageError, match=r"decompression bomb: Image size \(900000000 pixels\)"):
        to_webp(bomb, max_pixels=50_000_000)
    with pytest.raises(ImageError, match="decompression bomb"):  # whatever harvest's own limit says
        to_webp(bomb, max_pixels=10**12)
    # 100 MP, under Pillow's error threshold: harvest's limit (50 MP by default) refuses it.
    with pytest.raises(ImageError, match=r"decompression bomb: 10000x10000 = 100000000 pixels"):
        to_webp(png_header_claiming(10_000, 10_000), max_pixels=50_000_000)


def test_one_run_of_hostile_images_loses_only_the_bad_ones(site, tmp_path: Path) -> None:
    site.page("/good.jpg", GOOD, content_type="image/jpeg")
    site.page("/good2.png", _png((300, 200)), content_type="image/png")
    cases = {
        # path: (body or route, content type, what the recorded error must say)
        "/html-as-jpeg.jpg": (b"<!doctype html><html><body>not an image</body></html>", "image/jpeg",
                              "could not be decoded"),
        "/truncated.jpg": (GOOD[: len(GOOD) // 3], "image/jpeg", "could not be decoded"),
        "/bomb.png": (png_header_claiming(30_000, 30_000), "image/png", "decompression bomb: Image size (900000000 pixels)"),
        "/bomb-100mp.png": (png_header_claiming(10_000, 10_000), "image/png", "decompression bomb: 10000x10000"),
        "/vector.svg": (SVG, "image/svg+xml", "SVG (image/svg+xml) can carry scripts"),
        "/svg-as-octets.bin": (SVG, "application/octet-stream", "could not be decoded"),
        "/svg-as-png.png": (SVG, "image/png", "could not be decoded"),
        "/too-big.jpg": (GOOD + b"\0" * 300_000, "image/jpeg", "over the 200000-byte cap"),
        "/page.jpg": (b"<html></html>", "text/html", "content type 'text/html' is not an image"),
        "/empty.jpg": (b"", "image/jpeg", "is empty"),
    }
    for path, (body, content_type, _) in cases.items():
        site.page(path, body, content_type=content_type)
    site.route("/drip.jpg", drip(GOOD[:3000], every_s=0.1, content_type="image/jpeg", chunk=10))
    site.redirect("/to-bad-port.jpg", "http://127.0.0.1:99999/x.jpg")
    site.redirect("/to-bad-literal.jpg", "http://[::1")
    site.page("/missing-status.jpg", b"gone", status=404, content_type="image/jpeg")
    extra = {
        # 100 bytes/s: cut at half the 1 s deadline (on a loaded machine the deadline itself may come first).
        "/drip.jpg": ("under the minimum 1024 bytes/s", "timed out after 1s"),
        "/to-bad-port.jpg": "refused by the address guard",
        "/to-bad-literal.jpg": "could not be downloaded",
        "/missing-status.jpg": "HTTP 404",
    }
    expected = {path: reason for path, (_, _, reason) in cases.items()} | extra

    paths = ["/good.jpg", *expected, "/good2.png"]
    activities = [_activity(i, site.url(path)) for i, path in enumerate(paths)]
    activities.append(_activity(len(paths), "javascript:alert(1)"))
    store = LocalStore(tmp_path / "store")
    standardized = write_jsonl(store, "runs/r1/standardized.jsonl", "standardized", activities)
    settings = HarvestSettings(allow_private_networks=True, image_max_bytes=200_000, request_timeout_seconds=1.0,
                               per_host_concurrency=4)

    result = process_images(store, "r1", standardized, settings)

    infos = {row["id"]: row for row in iter_jsonl(store, result.file("images_map").uri)}
    assert list(infos) == [a.id for a in activities]  # one line per activity, in order: nothing dropped
    by_path = dict(zip(paths, (infos[a.id] for a in activities)))
    for path in ("/good.jpg", "/good2.png"):
        assert by_path[path]["uri"] and not by_path[path].get("error"), by_path[path]
    assert (by_path["/good.jpg"]["width"], by_path["/good.jpg"]["height"]) == (1120, 630)
    for path, reason in expected.items():
        error = by_path[path].get("error") or ""
        assert any(r in error for r in ((reason,) if isinstance(reason, str) else reason)), (path, error)
        assert by_path[path].get("uri") is None
    assert "not an absolute http(s) URL" in infos[activities[-1].id]["error"]
    assert result.stats.items_out == 2
    assert result.stats.skipped == len(expected) + 1
    assert len(result.warnings) == len(expected) + 1
    assert all(w.startswith("image for ") and " skipped: " in w for w in result.warnings)
    assert sorted(p.name for p in (tmp_path / "store" / "images").iterdir()) == sorted(
        f"{by_path[p]['sha256']}.webp" for p in ("/good.jpg", "/good2.png")
    )


def _png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 150, 90)).save(out, "PNG")
    return out.getvalue()


def _activity(number: int, image_url: str) -> Activity:
    return Activity(id=f"act{number:03d}", name=f"Activity {number}", location=Location(), image_url=image_url,
                    content_hash=f"h{number}")
