"""Target names resolved now and vetted with the address policy (gateway/config/addresses.py).

DNS can change, so what this finds is a warning (`gateway check`, `targets apply`), never a
refusal: the sender resolves each name again where it connects, and its check is the one that
counts.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable

from gateway.config.addresses import AddressNotAllowed, AllowPrivate, check_address


def resolved_refusals(
    hosts: Iterable[str], allow_private: AllowPrivate, timeout: float = 3.0
) -> dict[str, str]:
    """Resolve `hosts` now, at once: why each one's addresses would be refused (if they would).

    A name that does not resolve is left out (the connect-time check has the last word). Bounded
    by `timeout` in all (getaddrinfo has no timeout of its own): a resolver thread still waiting
    then is a daemon, and ends with its lookup.
    """
    found: dict[str, list[str]] = {}

    def resolve(host: str) -> None:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return
        found[host] = sorted({str(info[4][0]) for info in infos})

    threads = [
        threading.Thread(target=resolve, args=(h,), name="gateway-resolve", daemon=True)
        for h in sorted(set(hosts))
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    refusals = {}
    for host, addresses in list(found.items()):
        refused = []
        for address in addresses:
            try:
                check_address(address, allow_private)
            except AddressNotAllowed:
                refused.append(address)
        if refused:
            refusals[host] = f"{host} resolves now to {', '.join(refused)} (private, loopback or reserved)"
    return refusals
