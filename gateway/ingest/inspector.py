"""The callbacks inspector, the ingest's side: each callback as it arrived, and what became of it.

Every callback a web process answers becomes an entry (gateway/store/callbacks.py, `Entry`: a
JSON array, kept in capped lists per network; gateway/admin/callbacks.py reads them): when it
came, its id, method, path, content type, body, size, where its token was, its caller, then a few
rarer things and the outcome. The path is the request's path and query with the token segment as
`****` and secrets masked; the body its first 1 KiB, secrets masked; the token's place (`path`,
`query`, `header`), never its value.

* **Taken** (`taken`, the hot path): built from what the ingest already has (the event, the body
  it read), the body masked only when a cheap look finds something secret-looking
  (gateway/masking.py), encoded once as text without its end: the ingest script adds the outcome
  (accepted with its event id, duplicate of which event, suppressed and why) and pushes it onto
  the network's list in the same call as the accept. A spooled one is closed here and written by
  the writer once Redis answers.
* **Rejected** (`rejected`): built on the error path and handed to a `CallbackWriter`, which
  writes them in batches in the background; under a flood of bad requests it keeps what its
  bounded queue holds and drops and counts the rest (`gateway_inspector_dropped_total`).

Which network a rejected one is kept under, and whether its numbers are shown: a token that
opened the network (the readable `network_id` it opened, or the one network the token opens)
proves it, and the entry keeps the numbers as received, as the event would have. Otherwise the
`network_id` it claims, if the configuration knows that network, with the numbers masked as the
logs mask them (anybody may claim a network); else the unroutable list (an operator's), numbers
masked. No entry ever holds a token: the path's token segment, `?token=`, and token-like fields
are masked, and the presented token is masked wherever it appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections import deque
from collections.abc import Mapping
from json.encoder import encode_basestring as _enc
from typing import Any

from gateway.config.targets import Config
from gateway.events import FIELDS, NOT_TEXT, InvitationEvent, new_ulid
from gateway.exceptions import CallbackError, Unauthorized
from gateway.fastredis import FastRedis, ScriptsViaRedisPy
from gateway.ingest.callback import Callback
from gateway.ingest.formats import decode_body, decode_query
from gateway.ingest.tokens import TEST_TOKEN_PREFIX, presented_token
from gateway.logs import mask_numbers
from gateway.masking import BODY_LIMIT, MASK, mask_body, mask_text
from gateway.metrics import Tally
from gateway.store.callbacks import CallbackList, Kept, take_test_token, write
from gateway.store.codec import now_ms

log = logging.getLogger("gateway.ingest")

FORM = "application/x-www-form-urlencoded"
MAX_NAMES = 20  # field names kept of a rejected callback
DROPPED = ("gateway_inspector_dropped",)
_PATHS = {"invitation_created": "/invitation_created", "invitation_accepted": "/invitation_accepted"}


def token_digest_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_place(callback: Callback) -> str | None:
    """Where the request carried a token (never what it is)."""
    if callback.token:
        return "path"
    if b"token=" in callback.query and presented_token(callback) is not None:
        return "query"
    auth = callback.header(b"authorization")
    return "header" if auth and auth[:7].lower() == "bearer " else None


def known_networks(config: Config) -> frozenset[str]:
    """The networks a configuration names: declared, or served by name by a target."""
    named = set(config.networks)
    for target in config.targets:
        named.update(target.networks)
    named.discard("*")
    return frozenset(named)


def network_of(opens: set[str] | None, claimed: str | None, known: frozenset[str]) -> tuple[str | None, bool]:
    """(the network a rejected callback is kept under, whether a token proved it); None: unroutable."""
    if opens:
        if claimed is not None and (claimed in opens or "*" in opens):
            return claimed, True
        if len(opens) == 1 and "*" not in opens:
            return next(iter(opens)), True  # the token's one network, whatever the callback says
    if claimed is not None and claimed in known:
        return claimed, False
    return None, False


def _claimed(value: str | None) -> str | None:
    """A network_id as a callback gave it, if it can be one (else the callback has none)."""
    if value is None:
        return None
    value = value.strip()
    return value if 0 < len(value) <= 128 and value.isprintable() else None


def read_fields(
    query: bytes, content_type: str | None, body: bytes, aliases: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """What a callback carried, read leniently: the three fields by alias (the body's winning)
    and every field name, whatever failed to decode (a rejected callback as it came; a kept one
    when shown)."""
    pairs: list[tuple[str, str]] = []
    with contextlib.suppress(CallbackError):
        pairs += decode_query(query)
    if body:
        with contextlib.suppress(CallbackError):
            pairs += decode_body(content_type, body).pairs
    fields: dict[str, str] = {}
    names: list[str] = []
    for name, value in pairs:
        if len(names) < MAX_NAMES and name[:64] not in names:
            names.append(name[:64])
        field = aliases.get(name.lower())
        if field is not None and value != NOT_TEXT:
            fields[field] = value[:128]
    return fields, names


async def read_head(callback: Callback, limit: int, seconds: float = 1.0) -> bytes:
    """Up to about `limit` bytes of a body not read yet (a callback refused before its body was
    read: 401), waiting at most `seconds` for them (a caller sending nothing holds nothing)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            while size <= limit:
                message = await callback.receive()
                if message["type"] != "http.request":
                    break
                chunk = message.get("body", b"")
                chunks.append(chunk)
                size += len(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        pass
    return b"".join(chunks)


class CallbackWriter:
    """Entries the ingest script does not write (rejected and spooled callbacks) into Redis: in
    batches of up to BATCH, from a background task (`run`), on a connection of their own (a
    timeout here never touches the accept's). Bounded: at most MAX_QUEUED wait; past that, and
    while Redis does not take them, entries are dropped and counted."""

    MAX_QUEUED = 1000
    BATCH = 200
    GATHER = 0.05  # seconds between batches: a flood is written in batches, not one by one
    RETRY = 1.0  # seconds before trying again after Redis failed

    def __init__(self, client: FastRedis | ScriptsViaRedisPy, prefix: str, kept: Kept, tally: Tally) -> None:
        self.client = client
        self.prefix = prefix
        self.kept = kept
        self.tally = tally
        self._queue: deque[tuple[CallbackList, str, str]] = deque()
        self._waiting = asyncio.Event()
        self._failed_since: float | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def has_room(self) -> bool:
        if len(self._queue) < self.MAX_QUEUED:
            return True
        self.tally.add(DROPPED)
        return False

    def submit(self, kind: CallbackList, network: str, entry: str) -> None:
        if self.has_room():
            self._queue.append((kind, network, entry))
            self._waiting.set()

    async def run(self) -> None:
        while True:
            await self._waiting.wait()
            self._waiting.clear()
            while self._queue:
                await self.flush()
                await asyncio.sleep(self.GATHER if self._failed_since is None else self.RETRY)

    async def flush(self, timeout: float = 2.0) -> None:
        """Write one batch; one Redis could not take goes back to the front, as far as room allows."""
        batch = [self._queue.popleft() for _ in range(min(self.BATCH, len(self._queue)))]
        groups: dict[tuple[CallbackList, str], list[str]] = {}
        for kind, network, entry in batch:
            groups.setdefault((kind, network), []).append(entry)
        try:
            async with asyncio.timeout(timeout):
                await write(self.client, self.prefix, now_ms(), self.kept, groups)
        except Exception as exc:
            if self._failed_since is None:
                self._failed_since = asyncio.get_running_loop().time()
                log.warning(
                    "callbacks inspector: Redis did not take %d entries (%s)", len(batch), type(exc).__name__
                )
            room = max(0, self.MAX_QUEUED - len(self._queue))
            kept = batch[len(batch) - room :] if room < len(batch) else batch
            if len(kept) < len(batch):
                self.tally.add(DROPPED, len(batch) - len(kept))
            self._queue.extendleft(reversed(kept))
            return
        self._failed_since = None

    async def close(self, timeout: float = 1.0) -> None:
        """A last write of what waits, within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while self._queue and self._failed_since is None:
                    await self.flush(timeout)
        except TimeoutError:
            pass
        if self._queue:
            self.tally.add(DROPPED, len(self._queue))
            self._queue.clear()


class Inspector:
    """Builds the entries (module docstring) and hands them on."""

    def __init__(
        self, writer: CallbackWriter, test_tokens: FastRedis | ScriptsViaRedisPy, prefix: str
    ) -> None:
        self.writer = writer
        self.test_tokens = test_tokens
        self.prefix = prefix
        self._known: tuple[Config | None, frozenset[str]] = (None, frozenset())

    # -- the hot path ---------------------------------------------------------------------------
    @staticmethod
    def taken(
        callback: Callback,
        event: InvitationEvent,
        body: bytes,
        limited_status: int,
        test_id: str | None,
    ) -> str:
        """The entry of a callback the ingest takes, without its end (the ingest script adds the
        outcome): `IngestItem.entry`. Positional and without the fields (its path and body hold
        them): every taken callback's entry travels in the ingest script's arguments. "" (none
        kept) should it fail: the inspector never costs a callback its answer. (One function, not
        a guard around another: a call costs as much as a few of the lookups below.)"""
        try:
            token = callback.presented  # presented_token(callback)
            secrets = (token,) if token else ()
            path = _PATHS.get(event.type) or "/" + event.type
            if callback.token:
                path += "/" + MASK
            if callback.query:
                path += "?" + mask_text(callback.query.decode("latin-1"), FORM, secrets, numbers=False)
            content_type = callback.content_type
            text = mask_body(content_type, body, secrets=secrets, numbers=False) if body else ""
            place = "path" if callback.token else token_place(callback) if token else None
            client = event.client
            extra = "null"
            if test_id is not None or limited_status != 204:
                extra = json.dumps({"test_id": test_id, "ls": limited_status})
            entry = (
                f"[{event.received_at_ms},{_enc(event.id)},{_enc(callback.method)},{_enc(path)},"
                f"{'null' if content_type is None else _enc(content_type)},{_enc(text)},{len(body)},"
                f"{'null' if place is None else _enc(place)},"
                f"{'null' if client is None else _enc(client)},{extra}"
            )
            if token and token in entry:  # the last net: the token in the body's values, say
                entry = entry.replace(token, MASK)
            return entry
        except Exception:
            log.warning("callbacks inspector: no entry for %s", event.id, exc_info=True)
            return ""

    def spooled(self, event: InvitationEvent, entry: str) -> None:
        """A taken callback Redis did not answer for (the spool has it): the writer's."""
        if entry:
            self.writer.submit(CallbackList.TAKEN, event.network_id, entry + ',"spooled"]')

    # -- the error path -----------------------------------------------------------------------------
    async def rejected(
        self,
        callback: Callback,
        event_type: str,
        body: bytes,
        exc: CallbackError,
        opens: set[str] | None,
        event: InvitationEvent | None,
        config: Config,
        aliases: Mapping[str, str],
        client: str | None,
        test_id: str | None,
    ) -> None:
        """Hand a rejected callback's entry to the writer (nothing when its queue is full). Never
        raises: the callback's answer is the error it was refused with."""
        if not self.writer.has_room():
            return
        try:
            if isinstance(exc, Unauthorized) and callback.method == "POST" and not body:
                body = await read_head(callback, BODY_LIMIT + 64)  # refused before its body was read
            fields, names = read_fields(callback.query, callback.content_type, body, aliases)
            if event is not None:  # refused after it was read (403): the fields as the ingest read them
                fields = {
                    "invitee": event.invitee_raw,
                    "invitor": event.invitor,
                    "network_id": event.network_id,
                }
            claimed = _claimed(fields.get("network_id"))
            network, proven = network_of(opens, claimed, self._known_networks(config))
            entry = _rejected_entry(callback, event_type, body, exc, fields, names, client, test_id, proven)
            kind = CallbackList.UNROUTABLE if network is None else CallbackList.REJECTED
            self.writer.submit(kind, network or "", entry)
        except Exception:
            log.warning("callbacks inspector: no entry for a rejected %s", event_type, exc_info=True)

    def _known_networks(self, config: Config) -> frozenset[str]:
        if self._known[0] is not config:
            self._known = (config, known_networks(config))
        return self._known[1]

    # -- "send test callback" -----------------------------------------------------------------------
    async def one_time(self, callback: Callback) -> tuple[set[str], str] | None:
        """The network a one-time test token opens, and the test's id (None: not such a token).

        Looked at only for a token the configuration does not know that has the test tokens'
        prefix: an unknown token costs no Redis call.
        """
        token = presented_token(callback)
        if not token or not token.startswith(TEST_TOKEN_PREFIX):
            return None
        try:
            async with asyncio.timeout(1.0):
                value = await take_test_token(self.test_tokens, self.prefix, token_digest_hex(token))
        except Exception:
            return None
        if value is None:
            return None
        data = json.loads(value)
        return {str(data["network"])}, str(data["test_id"])


def _rejected_entry(
    callback: Callback,
    event_type: str,
    body: bytes,
    exc: CallbackError,
    fields: dict[str, str],
    names: list[str],
    client: str | None,
    test_id: str | None,
    proven: bool,
) -> str:
    """A rejected callback's whole entry (`Entry`), its fields and reason in `extra`."""
    token = presented_token(callback)
    secrets = (token,) if token else ()
    numbers = not proven  # as the logs mask them: nobody proved whose numbers these are
    path = _PATHS.get(event_type, "/" + event_type) + ("/" + MASK if callback.token else "")
    if callback.query:
        path += "?" + mask_text(callback.query.decode("latin-1"), FORM, secrets, numbers=numbers)
    content_type = callback.content_type
    declared = callback.content_length
    extra: dict[str, Any] = {
        "status": exc.status_code,
        "field": exc.field,
        "reason": _masked_value(exc.detail, secrets, numbers),
        "fields": {f: _masked_value(fields[f], secrets, numbers) for f in FIELDS if f in fields},
        "names": [_masked_value(n, secrets, numbers) for n in names],
        "test_id": test_id,
    }
    now = now_ms()
    entry = json.dumps(
        [
            now,
            new_ulid(now),
            callback.method,
            path,
            content_type,
            mask_body(content_type, body, secrets=secrets, numbers=numbers) if body else "",
            int(declared) if declared and declared.isdigit() else len(body),
            token_place(callback),
            client,
            extra,
            "rejected",
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return entry.replace(token, MASK) if token else entry


def _masked_value(value: str, secrets: tuple[str, ...], numbers: bool) -> str:
    for secret in secrets:
        if secret in value:
            value = value.replace(secret, MASK)
    return mask_numbers(value) if numbers else value
