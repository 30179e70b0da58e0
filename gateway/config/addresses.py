"""The address policy of targets (SSRF), pure: which addresses a target may be on.

`allow_private_targets` (the configuration's setting, or GATEWAY_ALLOW_PRIVATE_TARGETS) says
whether private, loopback and reserved addresses are allowed. The configuration refuses a URL
whose host as written (an IP literal, localhost) the policy refuses; the sender
(gateway/delivery/sender.py) resolves a target's name itself and hands the HTTP client only an
address that passes `check_address`, so a DNS answer that changes between a check and the
connect (rebinding) cannot slip through. Names resolved ahead of time, for a warning:
gateway/delivery/netguard.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from functools import lru_cache

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


# `allow_private_targets`: true (every address), false (global ones only), or the private
# networks that are allowed, as CIDR strings ("10.1.2.0/24", "fd00::/8").
AllowPrivate = bool | tuple[str, ...]


class AddressNotAllowed(OSError):
    """A target resolved to an address the policy forbids (an OSError, as resolver errors are)."""


@lru_cache(maxsize=64)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def parse_networks(value: object) -> tuple[str, ...]:
    """The CIDR list of `allow_private_targets`, normalized; ValueError naming a bad entry."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError('must be true, false or a list of networks like ["10.1.2.0/24", "fd00::/8"]')
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network like 10.1.2.0/24 or fd00::/8") from None
    return tuple(out)


def check_address(address: str, allow_private: AllowPrivate) -> None:
    """Raise AddressNotAllowed unless `address` (an IP literal) may be connected to.

    `allow_private` is True (any address but unspecified and multicast), False (global
    addresses only) or a tuple of CIDR strings: global addresses and those networks.
    """
    if "%" in address and allow_private is not True:
        # A zone id (fe80::1%eth0) names a local interface: never a target on the Internet.
        raise AddressNotAllowed(
            f"target address {address!r} has a zone id; set allow_private_targets = true to allow it"
        )
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        raise AddressNotAllowed(f"{address!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        raise AddressNotAllowed(f"target address {ip} is not allowed")
    if allow_private is True:
        return
    if ip.is_global and not any(ip in net for net in _EXTRA_BLOCKED):
        return
    if allow_private and any(ip in net for net in _networks(allow_private)):
        return
    hint = (
        "list its network in allow_private_targets to allow it"
        if allow_private
        else "set allow_private_targets to allow it"
    )
    raise AddressNotAllowed(f"target address {ip} is private, loopback or reserved; {hint}")


# Names that mean this machine whatever DNS says (RFC 6761): refused like 127.0.0.1.
_LOOPBACK_NAMES = ("127.0.0.1", "::1")


def _is_loopback_name(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(".localhost")


def host_refusal(host: str, allow_private: AllowPrivate) -> str | None:
    """Why a URL's host is refused as written (an IP literal or localhost), or None.

    Names are not resolved here (gateway.delivery.netguard.resolved_refusals warns about them):
    DNS can change, so the connect-time check in the sender stays the one that counts.
    """
    host = host.strip("[]")
    addresses: tuple[str, ...]
    if _is_loopback_name(host):
        addresses = _LOOPBACK_NAMES
    else:
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
        addresses = (host,)
    for address in addresses:
        try:
            check_address(address, allow_private)
        except AddressNotAllowed as exc:
            return str(exc)
    return None


def address_policy(allow: AllowPrivate, environ: Mapping[str, str] | None) -> AllowPrivate:
    """The file's setting, or true when GATEWAY_ALLOW_PRIVATE_TARGETS says so (as on workers)."""
    flag = (environ or {}).get("GATEWAY_ALLOW_PRIVATE_TARGETS", "").strip().lower()
    return True if flag in ("1", "true", "yes", "on") else allow


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True
