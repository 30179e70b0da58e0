"""The ingest endpoint: read the body (capped), decode, normalize, accept, answer 204.

The Contacts server counts only a 204 as success and never retries, so the answer is 204 only
once the event and its deliveries are in Redis (or fsync'd in the spool), and an error status
otherwise. Everything here runs on the event loop: decoding is pure and quick, and the accept
step is asynchronous (no thread hop per callback).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from time import perf_counter

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.events import InvitationEvent, make_event, merge_fields
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
from gateway.ingest.accept import ACCEPTED, DUPLICATE, SPOOLED, SUPPRESSED, Accepter
from gateway.ingest.formats import decode_body, decode_query
from gateway.ingest.tokens import IngestAuth
from gateway.live import LiveConfig
from gateway.metrics import IngestMetrics

log = logging.getLogger("gateway.ingest")

LOGGED_BODY = 1024  # bytes of a rejected body written to the log, for the provider to debug
NO_CONTENT = Response(status_code=204)


@dataclass(frozen=True, slots=True)
class Ingest:
    live: LiveConfig
    accepter: Accepter
    max_body: int
    # Reloads the configuration if it changed in Redis; True if it did.
    refresh_config: Callable[[], Awaitable[bool]]
    auth: IngestAuth
    metrics: IngestMetrics | None = None

    async def __call__(self, request: Request, event_type: str) -> Response:
        started = perf_counter()
        body = b""
        try:
            client = self.auth.client_address(request)
            try:
                opens = self.auth.networks_of(request, self.live.version, self.live.current)
            except Unauthorized:
                # A token added a moment ago: check the configuration once, on the error path.
                if not await self.refresh_config():
                    raise
                opens = self.auth.networks_of(request, self.live.version, self.live.current)
            if request.method == "POST":
                body = await read_capped(request, self.max_body)
            try:
                event = self.parse(request, event_type, body, self.live.aliases, client)
            except InvalidCallback:
                # Perhaps parsed with aliases that changed a moment ago: likewise.
                if not await self.refresh_config():
                    raise
                event = self.parse(request, event_type, body, self.live.aliases, client)
            try:
                self.auth.check(opens, event.network_id, client, self.live.current)
            except Forbidden:
                # A network or an address given to this caller a moment ago: likewise.
                if not await self.refresh_config():
                    raise
                opens = self.auth.networks_of(request, self.live.version, self.live.current)
                self.auth.check(opens, event.network_id, client, self.live.current)
            config = self.live.current
            targets = [t.name for t in config.routes(event.type, event.network_id)]
            status = await self.accepter.accept(event, targets)
        except CallbackError as exc:
            if self.metrics is not None:
                self.metrics.rejected(event_type, "unknown", exc.status_code, perf_counter() - started)
            if not isinstance(exc, StoreUnavailable):
                log.warning(
                    "rejected %s from %s: %s; content-type=%r body=%r",
                    event_type,
                    self.auth.client_address(request) or "?",
                    exc.detail,
                    request.headers.get("content-type"),
                    body[:LOGGED_BODY],
                )
            raise
        if self.metrics is not None:
            outcome = status if status in (ACCEPTED, SPOOLED) else status.partition(":")[0]
            self.metrics.callback(event_type, event.source_format, outcome, perf_counter() - started)
        if status.startswith(SUPPRESSED):
            reason = status[len(SUPPRESSED) :]
            log.warning("suppressed %s %s (network %s): %s", event.type, event.id, event.network_id, reason)
            if self.live.current.limited_status == 429:
                raise Limited(f"held back and kept, not delivered: {reason}")
        elif status.startswith(DUPLICATE):
            log.info(
                "duplicate %s (network %s) of %s: not delivered again",
                event.type,
                event.network_id,
                status[len(DUPLICATE) + 1 :] or "an earlier one",
            )
        elif status != SPOOLED and not targets:
            log.warning("accepted %s %s: no target serves network %r", event.type, event.id, event.network_id)
        # Accepted ones with targets are logged a batch per line by the Accepter.
        return NO_CONTENT

    def parse(
        self, request: Request, event_type: str, body: bytes, aliases: Mapping[str, str], client: str | None
    ) -> InvitationEvent:
        """Decode and normalize (pure)."""
        query = decode_query(request.scope.get("query_string", b""))
        if request.method == "POST":
            try:
                decoded = decode_body(request.headers.get("content-type"), body)
            except CallbackError:
                _refuse_encoding(request)
                raise
            pairs, source = decoded.pairs, decoded.source_format
        else:
            pairs, source = [], "query"
        fields = merge_fields(query, pairs, aliases)
        try:
            return make_event(fields, event_type, source, client=client)
        except InvalidCallback:
            if body:
                _refuse_encoding(request)
            raise


def _refuse_encoding(request: Request) -> None:
    """A compressed body reads as garbage: say so (415) rather than what the garbage lacks.

    Looked at only once a body failed (no header lookup per callback). Compressed bodies are
    refused rather than inflated: Acrobits never compresses, and inflating invites zip bombs.
    """
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding and encoding != "identity":
        raise UnsupportedBody(
            f"Content-Encoding {encoding} is not supported: send the body uncompressed",
            field="Content-Encoding",
        )


async def read_capped(request: Request, limit: int) -> bytes:
    """Read the body, refusing more than `limit` bytes by Content-Length or while streaming.

    Straight from the ASGI messages (what `Request.stream` does, without its generator): one
    await for the usual one-message body.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes", "body")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes", "body")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
