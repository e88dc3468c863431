"""Network plumbing under every outbound HTTP call: connect only to checked addresses, bound each call's time.

    transport = sync_transport(book=AddressBook(allow_private_networks=False))
    with httpx.Client(transport=transport) as client, call_deadline(10.0):
        client.get(url)   # connects to an address the SSRF guard approved; over in 10 s, however it drips
"""

from __future__ import annotations

from harvest.net.deadline import DeadlineBackend, call_deadline, remaining_seconds
from harvest.net.pinned import AddressBook, AsyncPinnedBackend, PinnedBackend
from harvest.net.transport import async_transport, env_proxy_mounts, sync_transport

__all__ = [
    "AddressBook",
    "AsyncPinnedBackend",
    "DeadlineBackend",
    "PinnedBackend",
    "async_transport",
    "call_deadline",
    "env_proxy_mounts",
    "remaining_seconds",
    "sync_transport",
]
