"""One verifying TLS context per process, shared by every HTTP client harvest builds.

Building a context loads and parses the whole CA bundle: ~20 ms of CPU, and each of our transports used to
build two (httpx's own, then the one for our connection pool). The image downloader builds a client per
image, so a site with 1,000 images spent ~40 s of CPU on certificate parsing alone. An `ssl.SSLContext` is
safe to share between threads and connections; httpcore sets its ALPN list on it per connection, which is
the same ("http/1.1") for all of ours: none of harvest's clients enables HTTP/2.
"""

from __future__ import annotations

import os
import ssl
from functools import cache

import httpx


def shared_ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context (certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR when set), built once
    per value of those two variables: changing them takes effect for the next client, as before."""
    return _context_for(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@cache
def _context_for(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()  # reads SSL_CERT_FILE / SSL_CERT_DIR itself (trust_env)
