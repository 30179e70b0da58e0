"""The ingest endpoint: read the body (capped), decode, normalize, accept, answer 204.

The Contacts server counts only a 204 as success and never retries, so the answer is 204 only
once the event and its deliveries are in Redis (or fsync'd in the spool), and an error status
otherwise. Everything here runs on the event loop: decoding is pure and quick, and the accept
step is asynchronous (no thread hop per callback).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from time import perf_counter

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.config.targets import Config
from gateway.events import InvitationEvent, make_event, merge_fields, pick_fields
from gateway.exceptions import (
    CallbackError,
    Forbidden,
    InvalidCallback,
    Limited,
    PayloadTooLarge,
    StoreUnavailable,
    Unauthorized,
    UnsupportedBody,
)
from gateway.ingest.accept import Accepter
from gateway.ingest.callback import Callback
from gateway.ingest.formats import decode_body, decode_query
from gateway.ingest.inspector import Inspector
from gateway.ingest.tokens import IngestAuth, presented_token
from gateway.live import LiveConfig
from gateway.masking import mask_body
from gateway.metrics import IngestMetrics
from gateway.networks import NetworkPolicy
from gateway.ordering import IngestOrder, ingest_order
from gateway.store.ingest import AcceptStatus, expiries

log = logging.getLogger("gateway.ingest")

NO_CONTENT = Response(status_code=204)


class ConfigCache:
    """What each callback looks up in the configuration in use, per (event type, network):
    the names of its targets, the network's policy and the ordering of its two events. Emptied
    when the configuration changes."""

    LIMIT = 1024  # networks are the callers' choice: a bounded cache

    def __init__(self) -> None:
        self._config: Config | None = None
        self._names: dict[tuple[str, str], tuple[str, ...]] = {}
        self._policies: dict[str, NetworkPolicy] = {}
        self._expiries: str | None = None
        self._orders: dict[tuple[str, str], IngestOrder] = {}

    def _check(self, config: Config) -> None:
        """Start afresh for another configuration (each lookup compares first, inline: a call
        per lookup would cost as much as the lookup, and a callback makes several)."""
        self._config, self._names, self._policies = config, {}, {}
        self._expiries, self._orders = None, {}

    def expiries(self, config: Config) -> str:
        """The targets with an expire_after, for the ingest script's deadlines (one per config)."""
        if config is not self._config:
            self._check(config)
        if self._expiries is None:
            self._expiries = expiries((t.name, t.expire_after) for t in config.targets)
        return self._expiries

    def names(self, config: Config, event_type: str, network_id: str) -> tuple[str, ...]:
        if config is not self._config:
            self._check(config)
        key = (event_type, network_id)
        names = self._names.get(key)
        if names is None:
            if len(self._names) >= self.LIMIT:
                self._names.clear()
            names = self._names[key] = tuple(t.name for t in config.routes(event_type, network_id))
        return names

    def policy(self, config: Config, network_id: str) -> NetworkPolicy:
        if config is not self._config:
            self._check(config)
        policy = self._policies.get(network_id)
        if policy is None:
            if len(self._policies) >= self.LIMIT:
                self._policies.clear()
            policy = self._policies[network_id] = config.network_policy(network_id)
        return policy

    def ordering(self, config: Config, event_type: str, network_id: str) -> IngestOrder:
        """What the ingest does for "created" before "accepted" (gateway/ordering.py)."""
        if config is not self._config:
            self._check(config)
        key = (event_type, network_id)
        order = self._orders.get(key)
        if order is None:
            if len(self._orders) >= self.LIMIT:
                self._orders.clear()
            order = self._orders[key] = ingest_order(config, event_type, network_id)
        return order


@dataclass(frozen=True, slots=True)
class Ingest:
    live: LiveConfig
    accepter: Accepter
    max_body: int
    # Reloads the configuration if it changed in Redis; True if it did.
    refresh_config: Callable[[], Awaitable[bool]]
    auth: IngestAuth
    cache: ConfigCache = field(default_factory=ConfigCache)
    metrics: IngestMetrics | None = None
    inspector: Inspector | None = None  # the callbacks inspector (None: GATEWAY_CALLBACKS_KEPT=0)

    async def __call__(self, request: Request, event_type: str) -> Response:
        """The Starlette endpoint (routes the fast path does not take, such as HEAD)."""
        token = request.path_params.get("token")
        await self.take(Callback(request.scope, request.receive, str(token) if token else None), event_type)
        return NO_CONTENT

    async def take(self, callback: Callback, event_type: str) -> None:
        """Accept one callback (return: answer 204) or raise the CallbackError to answer with."""
        started = perf_counter()
        body = b""
        live = self.live
        inspector = self.inspector
        # [inspector] what a rejected callback's entry can tell, as far as the ingest got
        opens: set[str] | None = None
        event: InvitationEvent | None = None
        client: str | None = None
        test_id: str | None = None
        auth = self.auth
        try:
            # (The usual callback inline: no trusted proxy to look behind, an open ingest and no
            # token presented: what client_address and networks_of would answer, without them.)
            client = callback.peer if not auth.trusted else auth.client_address(callback)
            try:
                if auth.open and callback.presented is None:
                    opens = None
                else:
                    opens = auth.networks_of(callback, live.version, live.current)
            except Unauthorized:
                # [inspector] The one-time token of a "send test callback" (Redis only for a
                # token with its prefix).
                test = await inspector.one_time(callback) if inspector is not None else None
                if test is not None:
                    opens, test_id = test
                # A token added a moment ago: check the configuration once, on the error path.
                elif not await self.refresh_config():
                    raise
                else:
                    opens = self.auth.networks_of(callback, live.version, live.current)
            if callback.method == "POST":
                body = await read_capped(callback, self.max_body)
            try:
                event = self.parse(callback, event_type, body, live.aliases, client)
            except InvalidCallback:
                # Perhaps parsed with aliases that changed a moment ago: likewise.
                if not await self.refresh_config():
                    raise
                event = self.parse(callback, event_type, body, live.aliases, client)
            cache = self.cache
            try:
                policy = cache.policy(live.current, event.network_id)
                if opens is not None or policy.allow_from:  # (else check has nothing to refuse)
                    auth.check(opens, event.network_id, client, policy)
            except Forbidden:
                # A network or an address given to this caller a moment ago: likewise.
                if test_id is not None or not await self.refresh_config():
                    raise
                opens = self.auth.networks_of(callback, live.version, live.current)
                self.auth.check(opens, event.network_id, client, cache.policy(live.current, event.network_id))
            version, current = live.in_hand  # the version the targets are chosen by
            targets = cache.names(current, event.type, event.network_id)
            entry = (
                ""
                if inspector is None
                else inspector.taken(callback, event, body, current.limited_status, test_id)
            )
            result = await self.accepter.accept(event, targets, version, entry)
        except CallbackError as exc:
            if self.metrics is not None:
                self.metrics.rejected(event_type, "unknown", exc.status_code, perf_counter() - started)
            if not isinstance(exc, StoreUnavailable):
                content_type = callback.content_type
                token = presented_token(callback)
                log.warning(
                    "rejected %s from %s: %s; content-type=%r body=%r",
                    event_type,
                    self.auth.client_address(callback) or "?",
                    exc.detail,
                    content_type,
                    # Numbers are the log formatter's to mask (GATEWAY_LOG_MASK); secrets always.
                    mask_body(content_type, body, secrets=[token] if token else (), numbers=False),
                )
            if inspector is not None:
                await inspector.rejected(
                    callback, event_type, body, exc, opens, event, live.current, live.aliases, client, test_id
                )
            raise
        status = result.status
        if self.metrics is not None:
            self.metrics.callback(event_type, event.source_format, status.value, perf_counter() - started)
        if status is AcceptStatus.ACCEPTED:
            if not targets:
                log.warning(
                    "accepted %s %s: no target serves network %r", event.type, event.id, event.network_id
                )
            # Accepted ones with targets are logged a batch per line by the Accepter.
        elif status is AcceptStatus.SUPPRESSED:
            reason = result.reason
            if self.metrics is not None and result.kind is not None:
                self.metrics.suppressed(event_type, result.kind.value)
            log.warning("suppressed %s %s (network %s): %s", event.type, event.id, event.network_id, reason)
            if live.current.limited_status == 429:
                raise Limited(f"held back and kept, not delivered: {reason}")
        elif status is AcceptStatus.SPOOLED and inspector is not None:
            inspector.spooled(event, entry)
        # Duplicates are logged summed by the Accepter (at most a summary a second).

    def region_of(self, network_id: str) -> str | None:
        """The network's default region, completing national numbers (gateway/numbers.py)."""
        cache, config = self.cache, self.live.current
        # cache.policy's lookup inline (once per callback): its call would cost as much
        policy = cache._policies.get(network_id) if config is cache._config else None
        if policy is None:
            policy = cache.policy(config, network_id)
        return policy.default_region

    def parse(
        self, callback: Callback, event_type: str, body: bytes, aliases: Mapping[str, str], client: str | None
    ) -> InvitationEvent:
        """Decode and normalize (pure)."""
        query = decode_query(callback.query)
        if callback.method == "POST":
            try:
                decoded = decode_body(callback.content_type, body)
            except CallbackError:
                _refuse_encoding(callback)
                raise
            pairs, source = decoded.pairs, decoded.source_format
        else:
            pairs, source = [], "query"
        if pairs and query:
            fields = merge_fields(query, pairs, aliases)
        else:  # the usual callback: fields in the query (GET) or in the body (POST), not both
            fields = pick_fields(pairs or query, aliases)
        try:
            return make_event(fields, event_type, source, client=client, region_of=self.region_of)
        except InvalidCallback:
            if body:
                _refuse_encoding(callback)
            raise


def _refuse_encoding(callback: Callback) -> None:
    """A compressed body reads as garbage: say so (415) rather than what the garbage lacks.

    Looked at only once a body failed (no header lookup per callback). Compressed bodies are
    refused rather than inflated: Acrobits never compresses, and inflating invites zip bombs.
    """
    encoding = (callback.header(b"content-encoding") or "").strip().lower()
    if encoding and encoding != "identity":
        raise UnsupportedBody(
            f"Content-Encoding {encoding} is not supported: send the body uncompressed",
            field="Content-Encoding",
        )


async def read_capped(callback: Callback, limit: int) -> bytes:
    """Read the body, refusing more than `limit` bytes by Content-Length or while streaming.

    Straight from the ASGI messages (what `Request.stream` does, without its generator): one
    await for the usual one-message body.
    """
    declared = callback.content_length
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes", "body")
    chunks: list[bytes] = []
    size = 0
    receive = callback.receive
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes", "body")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
