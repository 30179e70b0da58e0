"""The one place where target addresses are vetted (SSRF policy).

Addresses are checked where the connection is made: the sender's resolver hands the HTTP client
only addresses that pass `check_address`, so a DNS answer that changes between a check and the
connect (rebinding) cannot slip through. IP literals in a URL never reach a resolver, so the
sender checks them with the same function.
"""

from __future__ import annotations

import ipaddress

# Not "global" in any useful sense even where `is_global` says so, or reachable only inside a
# provider's network: carrier-grade NAT, NAT64, and the cloud metadata address.
_EXTRA_BLOCKED = (
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("64:ff9b::/96"),
    ipaddress.ip_network("64:ff9b:1::/48"),
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fc00::/7"),
    ipaddress.ip_network("::/96"),  # IPv4-compatible (deprecated): ::127.0.0.1
    ipaddress.ip_network("2002::/16"),  # 6to4 wraps any IPv4 address, private ones included
    ipaddress.ip_network("2001::/32"),  # Teredo, likewise
)


class AddressNotAllowed(OSError):
    """A target resolved to an address the policy forbids (raised inside the resolver)."""


def check_address(address: str, allow_private: bool) -> None:
    """Raise AddressNotAllowed unless `address` (an IP literal) may be connected to."""
    if "%" in address and not allow_private:
        # A zone id (fe80::1%eth0) names a local interface: never a target on the Internet.
        raise AddressNotAllowed(
            f"target address {address!r} has a zone id; set allow_private_targets to allow it"
        )
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        raise AddressNotAllowed(f"{address!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        raise AddressNotAllowed(f"target address {ip} is not allowed")
    if allow_private:
        return
    if not ip.is_global or any(ip in net for net in _EXTRA_BLOCKED):
        raise AddressNotAllowed(
            f"target address {ip} is private, loopback or reserved; set allow_private_targets to allow it"
        )
