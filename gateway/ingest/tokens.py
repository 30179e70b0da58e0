"""Who may call the ingest: per-network tokens, CIDR allowlists, the client's real address.

The Acrobits portal lets a provider type only a URL, so a token travels as a path segment
(`/invitation_created/<token>`) or a query parameter (`?token=<token>`); other senders may use
`Authorization: Bearer <token>`. Tokens are compared by SHA-256 digest in constant time. No
token, or one that opens nothing: 401. A token for other networks, or a caller outside the
network's allowlist: 403. Neither answer says whether a network exists.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence

from gateway.config.targets import Config
from gateway.exceptions import Forbidden, Unauthorized
from gateway.ingest.callback import Callback
from gateway.networks import NetworkPolicy, TokenTable

log = logging.getLogger("gateway.ingest")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
TEST_TOKEN_PREFIX = "gwtest_"  # noqa: S105 - a prefix, not a secret: a test callback's one-time token


class IngestAuth:
    def __init__(self, open_ingest: bool, trusted_proxies: Sequence[str], environ: Mapping[str, str]) -> None:
        self.open = open_ingest
        self.trusted: tuple[Network, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in trusted_proxies
        )
        self._environ = environ
        self._tables: tuple[int, TokenTable] | None = None

    def table(self, version: int, config: Config) -> TokenTable:
        if self._tables is None or self._tables[0] != version:
            table = TokenTable(config.networks, self._environ)
            for name in sorted(set(table.missing)):
                log.error(
                    "ingest token ${%s} is not set in this web process' environment; it opens nothing", name
                )
            self._tables = (version, table)
        return self._tables[1]

    def networks_of(self, callback: Callback, version: int, config: Config) -> set[str] | None:
        """The networks the request's token opens (None: the ingest is open). Raises Unauthorized."""
        token = callback.presented  # presented_token(callback)
        if self.open and token is None:
            return None
        if token is None:
            raise Unauthorized(
                "a token is required: /invitation_created/<token>, ?token=<token> or Authorization: Bearer",
                field="token",
            )
        networks = self.table(version, config).networks_of(token)
        if not networks:
            # An open ingest ignores a token it does not know, but for the one-time token of a
            # test callback, which the ingest must see as such (gateway/ingest/inspector.py).
            if self.open and not token.startswith(TEST_TOKEN_PREFIX):
                return None
            raise Unauthorized("the token is not valid", field="token")
        return networks

    def check(
        self, opens: set[str] | None, network_id: str, client: str | None, policy: NetworkPolicy
    ) -> None:
        """Raise Forbidden unless the token opens this network and the caller may call for it.

        `policy`: the network's (`Config.network_policy`).
        """
        if opens is not None and "*" not in opens and network_id not in opens:
            raise Forbidden("the token is not valid for this network", field="token")
        # (No allowlist, the usual network: not even the call that would say so.)
        if policy.allow_from and not _within(client, policy.networks()):
            raise Forbidden("calls for this network are not allowed from this address", field="client")

    def client_address(self, callback: Callback) -> str | None:
        """The peer, or behind a trusted proxy the last X-Forwarded-For hop it did not add."""
        peer = callback.peer
        if peer is None or not self.trusted or not _within(peer, self.trusted):
            return peer
        # Every X-Forwarded-For line, in order: a proxy may add its own line after one the
        # client sent, and the client's (first) line is the one it can forge.
        forwarded = ",".join(callback.header_list(b"x-forwarded-for"))
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            if not _within(hop, self.trusted):
                return hop
        return hops[0] if hops else peer


def presented_token(callback: Callback) -> str | None:
    """The token the request presents: its path segment, else `?token=`, else the first
    Authorization header's Bearer value (found when the Callback is made)."""
    return callback.presented


def _within(address: str | None, networks: Sequence[Network]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)
