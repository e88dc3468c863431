"""Activity images: download safely, verify, shrink to a card size, re-encode as WebP, store by content hash.

Why each guard: image URLs come from untrusted pages, so every redirect hop passes the SSRF guard and the
connection goes to the address the guard approved (no second DNS answer), the body is capped while it
streams (a huge or endless body never fills memory), a total deadline on every socket operation stops
slow-drip servers (headers or body) and a body under the minimum rate is cut early, SVG is refused (it
can carry scripts and is not a raster), and pixel counts are checked from the header before decoding (a
tiny file can expand into gigabytes). Output is WebP named by its sha256, so the
same picture found on many pages is stored once.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from multiprocessing import current_process, get_context, parent_process
from multiprocessing.connection import wait
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image

from harvest.errors import DisallowedURLError, ImageError
from harvest.models import ImageInfo
from harvest.net.conditional import Validators
from harvest.net.deadline import call_deadline
from harvest.net.pinned import AddressBook
from harvest.net.transport import sync_transport
from harvest.settings import get_settings
from harvest.storage import ObjectStore
from harvest.storage.keys import image_key

MAX_REDIRECTS = 5
CARD_SIZE = (1200, 630)
WEBP_QUALITY = 82
# libwebp method 0 (fastest) .. 6 (smallest); 2 is ~2x faster than the default 4 for a few % more bytes.
WEBP_METHOD = 2
# Some CDNs (S3 buckets among them) label real images as generic binary; Pillow decides for those.
_REDIRECTS = {301, 302, 303, 307, 308}
GENERIC_TYPES = {"application/octet-stream", "binary/octet-stream"}
REFUSED_IMAGE_TYPES = {"image/svg+xml"}
# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose does).
_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ROTATING_ORIENTATIONS = {5, 6, 7, 8}
# Bytes/s an image body must average once it has taken half its deadline (as pages, harvest.crawl.http_fetch).
MIN_BODY_RATE = 1024.0


@dataclass(frozen=True)
class ProcessedImage:
    """A WebP ready to store: its bytes, pixel size and content hash."""

    webp: bytes
    width: int
    height: int
    sha256: str


def _check_content_type(url: str, header: str | None) -> None:
    media = (header or "").split(";", 1)[0].strip().lower()
    if media in REFUSED_IMAGE_TYPES:
        raise ImageError(f"image {url} refused: SVG ({media}) can carry scripts and is not a raster image")
    if media.startswith("image/") or media in GENERIC_TYPES:
        return
    raise ImageError(f"image {url} refused: content type {media or '(none)'!r} is not an image")


class HostSlots:
    """At most `per_host` downloads in flight per host, however many threads ask: one slow or small site
    is not hammered by a wide thread pool."""

    def __init__(self, per_host: int) -> None:
        self.per_host = max(1, per_host)
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, url: str) -> Iterator[None]:
        host = (urlsplit(url).hostname or "").lower()
        with self._guard:
            slot = self._slots.setdefault(host, threading.BoundedSemaphore(self.per_host))
        with slot:
            yield


def fetch_image_if_changed(url: str, known: Validators, *, max_bytes: int, timeout_s: float, user_agent: str,
                           allow_private_networks: bool) -> tuple[bytes | None, Validators]:
    """Download one image's bytes unless the server says the version `known` is current (then None).

    Raises ImageError saying why an image was refused.

    Redirects are followed by hand (at most 5) so that each hop is checked by the SSRF guard before it is
    contacted, and the connection dials the address the guard approved. `timeout_s` bounds the whole
    download, every hop included: each socket read, write and connect gets at most the time left
    (`harvest.net.deadline`), so a server dripping headers or body one byte at a time ends on time too.
    """
    book = AddressBook(allow_private_networks=allow_private_networks)
    headers = {"User-Agent": user_agent, "Accept": "image/webp,image/avif,image/png,image/jpeg,image/*;q=0.8",
               **known.request_headers()}
    current = url
    with (call_deadline(timeout_s) as deadline,
          httpx.Client(follow_redirects=False, headers=headers, trust_env=False, timeout=timeout_s,
                       transport=sync_transport(book=book)) as client):
        for hop in range(MAX_REDIRECTS + 1):
            try:
                book.check(current)
            except DisallowedURLError as exc:
                where = "" if hop == 0 else f" (redirected from {url})"
                raise ImageError(f"image {current}{where} refused by the address guard: {exc}") from exc
            if deadline - time.monotonic() <= 0:
                raise ImageError(f"image {url} timed out after {timeout_s:g}s (while following redirects)")
            try:
                with client.stream("GET", current) as response:
                    if response.status_code in _REDIRECTS:
                        location = response.headers.get("Location")
                        if not location:
                            raise ImageError(f"image {current} answered HTTP {response.status_code} without a Location")
                        current = urljoin(current, location)
                        continue
                    if response.status_code == 304 and known:
                        return None, known
                    if response.status_code >= 400 or response.status_code == 304:
                        raise ImageError(f"image {current} could not be downloaded: HTTP {response.status_code}")
                    _check_content_type(current, response.headers.get("Content-Type"))
                    data = _read_capped(response, current, max_bytes, deadline, timeout_s)
                    return data, Validators(response.headers.get("ETag"), response.headers.get("Last-Modified"))
            except httpx.TimeoutException as exc:
                raise ImageError(f"image {current} timed out after {timeout_s:g}s") from exc
            except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
                raise ImageError(f"image {current} could not be downloaded: {type(exc).__name__}: {exc}") from exc
            except DisallowedURLError as exc:  # the transport's own check (the book's answer expired meanwhile)
                raise ImageError(f"image {current} refused by the address guard: {exc}") from exc
    raise ImageError(f"image {url} refused: more than {MAX_REDIRECTS} redirects")


def _read_capped(response: httpx.Response, url: str, max_bytes: int, deadline: float, timeout_s: float) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ImageError(f"image {url} refused: {int(declared)} bytes declared, over the {max_bytes}-byte cap")
    body = bytearray()
    started = time.monotonic()
    # iter_bytes yields decoded bytes, so a gzip-encoded body is capped at its real size too.
    for chunk in response.iter_bytes():  # no chunk size: yield as data arrives, so the deadline is checked
        body += chunk
        if len(body) > max_bytes:
            raise ImageError(f"image {url} refused: body exceeds the {max_bytes}-byte cap")
        now = time.monotonic()
        if now > deadline:
            raise ImageError(f"image {url} timed out after {timeout_s:g}s ({len(body)} bytes received)")
        elapsed = now - started
        if elapsed > timeout_s / 2 and len(body) < MIN_BODY_RATE * elapsed:
            raise ImageError(f"image {url} too slow: {len(body)} bytes in {elapsed:.1f}s, under the minimum "
                             f"{MIN_BODY_RATE:g} bytes/s")
    if not body:
        raise ImageError(f"image {url} is empty")
    return bytes(body)


def to_webp(data: bytes, *, max_pixels: int, max_size: tuple[int, int] = CARD_SIZE,
            quality: int = WEBP_QUALITY) -> ProcessedImage:
    """Decode untrusted bytes safely and re-encode them as a WebP that fits `max_size` (never enlarged).

    Re-encoding also drops EXIF and any other metadata (camera GPS, comments) from the source.
    """
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise ImageError(_bomb_message(width, height, max_pixels))
            probe.verify()
        with Image.open(io.BytesIO(data)) as source:
            source.seek(0)  # the first frame of an animation
            orientation = source.getexif().get(0x0112)
            mode = "RGBA" if _has_alpha(source) else "RGB"
            # JPEG stays unconverted so thumbnail() can decode it at a reduced scale (much faster);
            # palette and other modes are converted first so resizing can filter properly.
            img = source if source.format == "JPEG" else source.convert(mode)
            box = max_size[::-1] if orientation in _ROTATING_ORIENTATIONS else max_size
            # thumbnail() keeps the aspect ratio and never enlarges.
            img.thumbnail(box, Image.Resampling.LANCZOS)
            if orientation in _ORIENTATION_FIX:
                img = img.transpose(_ORIENTATION_FIX[orientation])
            img = img.convert(mode)
            out = io.BytesIO()
            img.save(out, "WEBP", quality=quality, method=WEBP_METHOD)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image refused as a decompression bomb: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - decoders raise many types (OSError, SyntaxError, struct.error…)
        raise ImageError(f"image could not be decoded ({type(exc).__name__}: {exc})") from exc
    webp = out.getvalue()
    return ProcessedImage(webp=webp, width=img.width, height=img.height, sha256=hashlib.sha256(webp).hexdigest())


_POOL: ProcessPoolExecutor | None = None
_POOL_GUARD = threading.Lock()


def _pool() -> ProcessPoolExecutor | None:
    """One process pool per process, sized to the cores: decoding and re-encoding are CPU work that threads
    would serialize on the GIL. Forkserver, not fork: the caller has threads (Prefect, httpx) that a fork
    would copy mid-lock. None when processes cannot be started here: settings say no, or this is a daemonic
    process (a Dask worker process), which may not have children; there the cluster's processes are the
    parallelism."""
    global _POOL
    with _POOL_GUARD:
        if _POOL is None and get_settings().image_processes and not current_process().daemon:
            try:
                _POOL = ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=get_context("forkserver"),
                                            initializer=_start_worker)
            except (OSError, ValueError):
                return None
        return _POOL


def shutdown_pool() -> None:
    """Stop this process's pool, if it started one, and wait for its workers to leave. A process that ends through
    multiprocessing (a fleet worker's forked run: flows/fleet_child.py) joins every child process it started before
    it exits, and the pool's workers wait for work until told to stop: without this, such a run's process outlived
    its completed run for ever and held one of its worker's slots."""
    global _POOL
    with _POOL_GUARD:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def _start_worker() -> None:
    """A worker is stopped by its parent, never by Ctrl-C: a terminal sends SIGINT to the whole process group, and
    each worker printed a KeyboardInterrupt traceback over the command's own line (issue 28).

    And it leaves when its parent is gone, however that went: a parent that leaves with os._exit (a forced Ctrl-C)
    or is killed never tells its pool to stop, and each worker, blocked on a queue it holds both ends of, stayed
    forever, keeping the forkserver alive with it. The parent's sentinel (a pipe the parent alone writes) says so."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = parent_process()
    if parent is not None:
        threading.Thread(target=_leave_with, args=(parent.sentinel,), name="harvest-parent-watch", daemon=True).start()


def _leave_with(sentinel: int) -> None:
    wait([sentinel])
    os._exit(0)


def convert_in_pool(data: bytes, *, max_pixels: int) -> ProcessedImage:
    """`to_webp` in the process pool (in this thread when there is none or it broke)."""
    global _POOL
    pool = _pool()
    if pool is not None:
        try:
            return pool.submit(to_webp, data, max_pixels=max_pixels).result()
        except BrokenProcessPool:
            with _POOL_GUARD:
                _POOL = None  # a worker died (out of memory?): the next call starts a fresh pool
    return to_webp(data, max_pixels=max_pixels)


class Converter:
    """Converts one stage's images: its first `pool_from` in the calling thread, the rest in the process pool.

    Starting the pool (a forkserver, then a fresh Python per core importing PIL and harvest) cost ~0.7 CPU-s and
    1.5-2 s before its first result here, more than converting a few dozen card-size images in threads; a run
    with few images never pays it. A pool this process already runs is used from the first image."""

    def __init__(self, pool_from: int) -> None:
        self._pool_from = pool_from
        self._converted = 0
        self._lock = threading.Lock()

    def convert(self, data: bytes, *, max_pixels: int) -> ProcessedImage:
        with self._lock:
            self._converted += 1
            pooled = self._converted > self._pool_from or _POOL is not None
        return convert_in_pool(data, max_pixels=max_pixels) if pooled else to_webp(data, max_pixels=max_pixels)


def _bomb_message(width: int, height: int, max_pixels: int) -> str:
    return (f"image refused as a decompression bomb: {width}x{height} = {width * height} pixels, "
            f"over the {max_pixels}-pixel limit")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)


def store_webp(store: ObjectStore, image: ProcessedImage) -> str:
    """Store the WebP under its content hash and return its URI; an identical image is uploaded only once."""
    key = image_key(image.sha256)
    if store.head(key) is None:
        with tempfile.TemporaryDirectory(prefix="harvest-img-") as tmp:
            path = Path(tmp) / f"{image.sha256}.webp"
            path.write_bytes(image.webp)
            store.put_file(key, path, "image/webp")
    return store.uri_for(key)


def process_activity_image(activity_id: str, url: str | None, store: ObjectStore, *, max_bytes: int,
                           max_pixels: int, timeout_s: float, user_agent: str,
                           allow_private_networks: bool, previous: ImageInfo | None = None,
                           host_slots: HostSlots | None = None, converter: Converter | None = None) -> ImageInfo:
    """Fetch, convert and store one activity's image; a bad image comes back as ImageInfo(error=…), never raised.

    No URL is not a failure: the result is empty with no error. A broken store (StorageError) is not one
    bad image but every image failing, so it propagates for the caller's retry. With `previous` (what an
    earlier run stored for this URL, with the source's validators), a conditional GET answered 304 reuses
    the stored WebP: nothing is downloaded or converted again. Without `converter`, the process pool converts.
    """
    if not url:
        return ImageInfo(id=activity_id)
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return ImageInfo(id=activity_id, source_url=url,
                         error=f"image URL {url!r} is not an absolute http(s) URL")
    known = Validators()
    if previous is not None and previous.uri and previous.sha256 and store.head(image_key(previous.sha256)):
        known = Validators(previous.etag, previous.last_modified)
    try:
        with host_slots.hold(url) if host_slots else nullcontext():
            data, validators = fetch_image_if_changed(
                url, known, max_bytes=max_bytes, timeout_s=timeout_s, user_agent=user_agent,
                allow_private_networks=allow_private_networks,
            )
        if data is None and previous is not None:
            return previous.model_copy(update={"id": activity_id, "source_url": url, "reused": True, "error": None})
        assert data is not None
        processed = (converter.convert(data, max_pixels=max_pixels) if converter
                     else convert_in_pool(data, max_pixels=max_pixels))
    except ImageError as exc:
        message = str(exc) if url in str(exc) else f"image {url}: {exc}"
        return ImageInfo(id=activity_id, source_url=url, error=message)
    uri = store_webp(store, processed)
    return ImageInfo(id=activity_id, source_url=url, uri=uri, width=processed.width, height=processed.height,
                     bytes=len(processed.webp), sha256=processed.sha256, etag=validators.etag,
                     last_modified=validators.last_modified)
