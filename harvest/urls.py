"""URL rules: what a run may start from and what the crawler and image downloader may fetch (SSRF guard)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from harvest.errors import ConfigError, DisallowedURLError

ALLOWED_SCHEMES = ("http", "https")
# Cloud metadata endpoints are refused by address even when private networks are allowed.
METADATA_ADDRESSES = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


def validate_start_url(url: str) -> str:
    """Return the URL stripped, or raise ConfigError/DisallowedURLError saying what is wrong with it."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("url is empty: give the http(s) address of the site to crawl")
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"url {url!r} is malformed: {exc}") from exc
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise DisallowedURLError(
            f"url {url!r} has scheme {parts.scheme or '(none)'!r}: only http and https sites can be crawled"
        )
    if not parts.hostname:
        raise ConfigError(f"url {url!r} has no host name")
    if any(ch.isspace() for ch in url):
        raise ConfigError(f"url {url!r} contains white space")
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"url {url!r} has port {port}, outside 1-65535")
    return url


def is_public_address(address: str) -> bool:
    """True for a globally routable address; False for loopback, private, link-local, reserved, metadata."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and ip not in METADATA_ADDRESSES


def check_fetch_allowed(url: str, *, allow_private_networks: bool) -> None:
    """Raise DisallowedURLError unless `url` is http(s) and every address its host resolves to may be fetched.

    Called for the start URL, every link, every redirect hop and every image, so a hostname that
    resolves to an internal address is refused wherever it appears.
    """
    host, port = fetch_target(url)
    approved_addresses(host, port, allow_private_networks=allow_private_networks, url=url)


def fetch_target(url: str) -> tuple[str, int]:
    """The host and port an http(s) `url` connects to; DisallowedURLError for any other scheme or a malformed URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # an out-of-range or non-numeric port, a broken IPv6 literal
        raise DisallowedURLError(f"refused {url!r}: malformed URL ({exc})") from exc
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise DisallowedURLError(f"refused {url!r}: scheme {parts.scheme!r} is not http(s)")
    host = parts.hostname
    if not host:
        raise DisallowedURLError(f"refused {url!r}: no host")
    return host, port or (443 if parts.scheme.lower() == "https" else 80)


def approved_addresses(host: str, port: int, *, allow_private_networks: bool, url: str | None = None) -> list[str]:
    """Resolve `host` once and return its addresses if every one may be contacted, else raise DisallowedURLError.

    A connection must go to one of the addresses returned here (see `harvest.net.pinned`): resolving the
    name again to connect would let a DNS answer that changed in between (DNS rebinding) slip past the check.
    """
    what = url if url is not None else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DisallowedURLError(f"refused {what!r}: host {host!r} does not resolve ({exc})") from exc
    except UnicodeError as exc:  # the IDNA codec refuses the name: a label over 63 characters, an empty label
        raise DisallowedURLError(f"refused {what!r}: host {host!r} is not a valid host name ({exc})") from exc
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        ip = ipaddress.ip_address(address)
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        if ip in METADATA_ADDRESSES or mapped in METADATA_ADDRESSES:
            raise DisallowedURLError(f"refused {what!r}: {host} resolves to the cloud metadata address {address}")
        if not allow_private_networks and not is_public_address(address):
            raise DisallowedURLError(
                f"refused {what!r}: {host} resolves to non-public address {address} "
                "(set HARVEST_ALLOW_PRIVATE_NETWORKS=true to allow)"
            )
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise DisallowedURLError(f"refused {what!r}: host {host!r} resolves to no address")
    return addresses
