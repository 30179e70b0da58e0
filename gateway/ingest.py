"""The ingest endpoint: read the body (capped), decode, normalize, accept, answer 204.

The Contacts server counts only a 204 as success and never retries, so the answer is 204 only
once the event and its deliveries are in Redis, and an error status otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.exceptions import RedisError
from rq import Queue
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from gateway.events import InvitationEvent, make_event, merge_fields
from gateway.exceptions import CallbackError, PayloadTooLarge, StoreUnavailable
from gateway.formats import decode_body, decode_query
from gateway.queue import accept
from gateway.settings import LiveConfig
from gateway.store import Store

log = logging.getLogger("gateway.ingest")

LOGGED_BODY = 1024  # bytes of a rejected body written to the log, for the provider to debug


@dataclass(frozen=True, slots=True)
class Ingest:
    store: Store
    queue: Queue
    live: LiveConfig
    max_body: int

    async def __call__(self, request: Request, event_type: str) -> Response:
        body = await read_capped(request, self.max_body)
        try:
            event, targets = await run_in_threadpool(self.process, request, event_type, body)
        except CallbackError as exc:
            if not isinstance(exc, StoreUnavailable):
                log.warning(
                    "rejected %s from %s: %s; content-type=%r body=%r",
                    event_type,
                    request.client.host if request.client else "?",
                    exc.detail,
                    request.headers.get("content-type"),
                    body[:LOGGED_BODY],
                )
            raise
        if targets:
            log.info(
                "accepted %s %s (network %s, %s) for %s",
                event.type,
                event.id,
                event.network_id,
                event.source_format,
                ", ".join(targets),
            )
        else:
            log.warning("accepted %s %s: no target serves network %r", event.type, event.id, event.network_id)
        return Response(status_code=204)

    def process(self, request: Request, event_type: str, body: bytes) -> tuple[InvitationEvent, list[str]]:
        """Decode, normalize and accept; runs in the thread pool (Redis and RQ are sync)."""
        try:
            aliases = self.live.get().alias_table()
        except RedisError as exc:
            raise StoreUnavailable(f"cannot reach Redis: {type(exc).__name__}") from exc
        query = decode_query(request.scope.get("query_string", b""))
        if request.method == "POST":
            decoded = decode_body(request.headers.get("content-type"), body)
            pairs, source = decoded.pairs, decoded.source_format
        else:
            pairs, source = [], "query"
        fields = merge_fields(query, pairs, aliases)
        event = make_event(fields, event_type, source, client=request.client.host if request.client else None)
        try:
            targets = accept(self.store, self.queue, self.live, event)
        except RedisError as exc:
            log.error("could not store %s %s: %s", event.type, event.id, exc)
            raise StoreUnavailable(f"cannot store the invitation: {type(exc).__name__}") from exc
        return event, targets


async def read_capped(request: Request, limit: int) -> bytes:
    """Read the body, refusing more than `limit` bytes by Content-Length or while streaming."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
