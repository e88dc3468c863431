"""harvest's HTTP clients share one verifying TLS context: cheap to build, and still checking certificates."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from harvest.enrich.images.client import Validators, fetch_image_if_changed
from harvest.net.sdk_transport import deadline_http_client
from harvest.net.transport import sync_transport
from tests.helpers import self_signed_certificate


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        body = b"GIF89a"
        self.send_response(200)
        self.send_header("Content-Type", "image/gif")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate: (its base URL, the certificate)."""
    cert_path, key_path = self_signed_certificate(tmp_path, "127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert_path
    finally:
        server.shutdown()
        server.server_close()


def test_clients_build_no_tls_context_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every client used to parse the CA bundle twice (~40 ms of CPU); the image downloader builds one per image."""
    built: list[object] = []
    real = ssl.create_default_context

    def counting(*args: object, **kwargs: object) -> ssl.SSLContext:
        built.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl, "create_default_context", counting)
    sync_transport()  # the first may build the shared context (when no earlier test did)
    built.clear()
    for _ in range(5):
        httpx.Client(trust_env=False, transport=sync_transport()).close()
        deadline_http_client(request_s=5, download_s=5).close()
    assert built == []


def test_the_shared_context_still_verifies_certificates(https_site: tuple[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    base_url, cert_path = https_site
    with httpx.Client(trust_env=False, transport=sync_transport()) as client, \
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get(base_url + "/a.gif")
    with deadline_http_client(request_s=5, download_s=5) as sdk_client, pytest.raises(Exception) as raised:
        sdk_client.get(base_url + "/a.gif")
    assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value)

    # Trusting the certificate (as an operator would with SSL_CERT_FILE) takes effect for the next client.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))
    with httpx.Client(trust_env=False, transport=sync_transport()) as client:
        assert client.get(base_url + "/a.gif").status_code == 200
    body, _ = fetch_image_if_changed(base_url + "/a.gif", Validators(), max_bytes=1000, timeout_s=5,
                                     user_agent="test", allow_private_networks=True)
    assert body == b"GIF89a"
