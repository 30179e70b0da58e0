"""The ingest script's caller: the one way events are written.

scripts/ingest.lua stores a batch of events in one call: per event a dedupe `SET NX`, the
abuse limits, the event, its waiting deliveries and its index entries; for the whole batch one
`SET wake NX` and one read of the configuration version (DESIGN.md decision 10). Its callers:
the web's accept step (gateway/ingest/accept.py: every callback, and a spool's drain), the
gateway's own alerts (DeliveryQueue.write_alert), and the tests and benchmarks that seed events.

Its arguments are encoded here only: an `IngestHead` for the call, an `IngestItem` per event,
flattened by `encode` (the layout below is the one the Lua reads).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError

from gateway.events import INVITATION_ACCEPTED, InvitationEvent
from gateway.fastredis import Script, ScriptClient
from gateway.networks import NetworkPolicy, prefix_allowed, prefix_of
from gateway.numbers import country_code, identity
from gateway.records import Delivery
from gateway.store import lua
from gateway.store.codec import dumps, text
from gateway.store.keys import limit_key

SCRIPT: Script = lua.load("ingest", "callbacks", "ulid")  # the inspector's lists, ULID time
WAKE_TTL = 30  # seconds a queued drain job keeps others from being queued
PENDING_STATE = dumps(Delivery().to_dict())  # a new delivery's state, as stored


class ItemKind(StrEnum):
    NEW = "n"  # a new event, with its deliveries
    ADD = "a"  # deliveries to add to a stored event (targets added by a configuration change)


@dataclass(frozen=True, slots=True)
class IngestHead:
    """The arguments of one call, before its items."""

    prefix: str
    now_ms: int
    retention: int  # seconds every key of the event lives
    dedupe_ms: int = 0  # the dedupe window (0: off)
    state: str = PENDING_STATE  # the JSON each new delivery's state starts as
    wake_ttl: int = WAKE_TTL  # 0: leave the wake flag alone (the caller wakes the workers)
    # The targets with an expire_after and its ms, "name=ms,name=ms" (`expiries`): each new
    # waiting delivery to one gets its deadline in `{p}:deadlines`, where a worker's ticker
    # records it expired when it passes ("": none)
    expiries: str = ""
    callbacks_kept: int = 0  # the callbacks inspector's list of a network: at most this many (0: off)
    callbacks_ms: int = 0  # ... received within this many ms (gateway/store/callbacks.py)


@dataclass(slots=True)
class IngestItem:
    """One event of a call, in the order the Lua reads an item's arguments (not frozen: one is
    made per callback, and a frozen dataclass's __init__ costs twice as much)."""

    kind: ItemKind
    id: str
    event_json: str  # stored as it is ("" for ItemKind.ADD)
    network: str
    received_ms: int
    targets: Sequence[str]
    dedupe_key: str = ""  # the same key within the dedupe window is a duplicate
    limits: Mapping[str, Any] | None = None  # limit_fields(); None or {}: none apply
    # The callbacks inspector's entry of the callback, unclosed: the script adds its outcome and
    # pushes it onto the network's list (gateway/ingest/inspector.py). "": none.
    entry: str = ""
    # "Created" before "accepted" (gateway/ordering.py): a created event's dedupe key lives this
    # long when longer than the window (0: the window), so that its accepted sibling finds it ...
    dedupe_ttl_ms: int = 0
    # ... by this key (an accepted event's: its created sibling's dedupe key; "": not looked for).
    created_key: str = ""

    @classmethod
    def new(
        cls,
        event: InvitationEvent,
        targets: Sequence[str],
        dedupe_key: str = "",
        limits: Mapping[str, Any] | None = None,
        *,
        entry: str = "",
        dedupe_ttl_ms: int = 0,
        created_key: str = "",
    ) -> IngestItem:
        return cls(
            ItemKind.NEW,
            event.id,
            event.to_json(),
            event.network_id,
            event.received_at_ms,
            targets,
            dedupe_key,
            limits,
            entry,
            dedupe_ttl_ms,
            created_key,
        )

    @classmethod
    def add(cls, event: InvitationEvent, targets: Sequence[str]) -> IngestItem:
        return cls(ItemKind.ADD, event.id, "", event.network_id, event.received_at_ms, targets)


# The ARGV layout, which scripts/ingest.lua reads in this order: the head's fields, then each
# item's fields (targets comma-separated, limits as JSON or "").
HEAD_ARGS = 9
ITEM_ARGS = 11


# An item already in its ITEM_ARGS arguments (`new_item_args`), as `encode` writes an IngestItem.
EncodedItem = tuple[Any, ...]


def new_item_args(
    event: InvitationEvent,
    targets: Sequence[str],
    dedupe_key: str,
    limits: Mapping[str, Any] | None,
    *,
    entry: str,
    dedupe_ttl_ms: int,
    created_key: str,
) -> EncodedItem:
    """`IngestItem.new(...)` as `encode` writes it, without the IngestItem: the accept step's one
    item per callback (tests/store/test_script_args.py holds the two to the same arguments).
    Its options are keyword-only, as IngestItem.new's: three of them in a row are strings or
    numbers that a positional call could swap unnoticed."""
    return (
        ItemKind.NEW,
        event.id,
        event.to_json(),
        event.network_id,
        event.received_at_ms,
        ",".join(targets),
        dedupe_key,
        dumps(limits) if limits else "",
        entry,
        dedupe_ttl_ms,
        created_key,
    )


def encode(head: IngestHead, items: Sequence[IngestItem | EncodedItem]) -> list[Any]:
    args: list[Any] = [
        head.prefix,
        head.now_ms,
        head.retention,
        head.dedupe_ms,
        head.state,
        head.wake_ttl,
        head.expiries,
        head.callbacks_kept,
        head.callbacks_ms,
    ]
    for it in items:
        if isinstance(it, tuple):
            args += it
            continue
        limits = it.limits
        # Flat: JSON around the event's own JSON would escape it all again.
        args += (
            it.kind,
            it.id,
            it.event_json,
            it.network,
            it.received_ms,
            ",".join(it.targets),
            it.dedupe_key,
            dumps(limits) if limits else "",
            it.entry,
            it.dedupe_ttl_ms,
            it.created_key,
        )
    return args


class AcceptStatus(StrEnum):
    """What became of a callback: the ingest script's answer per item, or the spool's."""

    ACCEPTED = "accepted"  # stored, its deliveries waiting
    DUPLICATE = "duplicate"  # the same invitation within the dedupe window: not stored again
    SUPPRESSED = "suppressed"  # held back by an abuse limit: stored, visible, not delivered
    EXISTS = "exists"  # stored before (a spool drain, a batch sent again): completed, not repeated
    SPOOLED = "spooled"  # not the script's: Redis did not answer in time, the spool has it


class SuppressionKind(StrEnum):
    """Which rule held an invitation back (the `kind` label of /metrics' suppressions)."""

    LIMIT = "limit"  # a `limits` entry per invitee, invitor or network
    PREFIX = "prefix"  # a `limits` entry per destination prefix
    COOLDOWN = "cooldown"
    GUARD = "guard"  # its prefix is held by the guard
    ALLOWLIST = "allowlist"  # its prefix is not in `allowed_prefixes`


@dataclass(frozen=True, slots=True)
class AcceptResult:
    status: AcceptStatus
    duplicate_of: str | None = None  # DUPLICATE: the first event's id (None: unknown)
    reason: str | None = None  # SUPPRESSED: why
    kind: SuppressionKind | None = None  # SUPPRESSED: the rule that held it back


# The answers without a detail, shared (one per callback would be garbage for nothing).
ACCEPTED = AcceptResult(AcceptStatus.ACCEPTED)
EXISTS = AcceptResult(AcceptStatus.EXISTS)
SPOOLED = AcceptResult(AcceptStatus.SPOOLED)
_PLAIN = {"accepted": ACCEPTED, "exists": EXISTS}
# A duplicate's answer by its text: a replay flood repeats a few invitations, and parsing and
# building its answer cost more than the rest of its decoding (bounded: emptied when full).
_DUPLICATES: dict[str, AcceptResult] = {}
_DUPLICATES_KEPT = 1024


def parse_status(answer: str) -> AcceptResult:
    """The script's status text: accepted | exists | duplicate:ID | suppressed:KIND:REASON."""
    plain = _PLAIN.get(answer) or _DUPLICATES.get(answer)
    if plain is not None:
        return plain
    kind, _, detail = answer.partition(":")
    if kind == AcceptStatus.DUPLICATE:
        if len(_DUPLICATES) >= _DUPLICATES_KEPT:
            _DUPLICATES.clear()
        result = _DUPLICATES[answer] = AcceptResult(AcceptStatus.DUPLICATE, duplicate_of=detail or None)
        return result
    if kind == AcceptStatus.SUPPRESSED:
        rule, _, reason = detail.partition(":")
        return AcceptResult(AcceptStatus.SUPPRESSED, reason=reason, kind=SuppressionKind(rule))
    raise ValueError(f"not an ingest status: {answer!r}")


@dataclass(frozen=True, slots=True)
class Hold:
    """A destination prefix the guard just held (the script's "held:NETWORK:REASON")."""

    network: str
    reason: str

    @classmethod
    def parse(cls, answer: str) -> Hold:
        _, network, reason = answer.split(":", 2)
        return cls(network, reason)


@dataclass(frozen=True, slots=True)
class IngestAnswer:
    version: int  # of the configuration Redis holds
    woke: bool  # the caller must queue a drain job (the wake flag was not set)
    results: list[AcceptResult]  # per item, in order
    holds: list[Hold]


# The usual answers as the script's reply holds them (bytes, or text from a decoding client):
# looked up before `text` and `parse_status`, two calls per item.
_PLAIN_REPLIES: dict[Any, AcceptResult] = {**_PLAIN, **{k.encode(): v for k, v in _PLAIN.items()}}


def decode(raw: Sequence[Any], items: int) -> IngestAnswer:
    """The script's answer: [version, woke, status per item, then "held:NETWORK:REASON"s]."""
    plain = _PLAIN_REPLIES
    return IngestAnswer(
        int(raw[0]),
        bool(int(raw[1])),
        [plain.get(v) or parse_status(text(v)) for v in raw[2 : 2 + items]],
        [Hold.parse(text(v)) for v in raw[2 + items :]],
    )


async def ingest(
    client: ScriptClient, head: IngestHead, items: Sequence[IngestItem | EncodedItem]
) -> IngestAnswer:
    """Store a batch of events (the web's accept step: through the lean client)."""
    return decode(await client.evalsha(SCRIPT, (), encode(head, items)), len(items))


def ingest_sync(client: Redis, head: IngestHead, items: Sequence[IngestItem]) -> IngestAnswer:
    """The same with a sync client (what tests and benchmarks seed their events with)."""
    args = encode(head, items)
    try:
        raw = client.evalsha(SCRIPT.sha, 0, *args)
    except NoScriptError:
        raw = client.eval(SCRIPT.text, 0, *args)
    return decode(raw, len(items))


def dedupe_key(event: InvitationEvent, event_type: str | None = None) -> str:
    """The same (event type, network, invitor, invitee's number) is the same invitation, however
    the number was spelt (gateway/numbers.py); `{p}:dedupe:KEY` holds its first event's id.

    `event_type`: the key of the same invitation's event of that type (an accepted event's created
    sibling, gateway/ordering.py; both, for an erasure).
    """
    number = (event.invitee_e164 or event.invitee).lstrip("+")  # identity(), inline: per callback
    raw = "\x00".join((event_type or event.type, event.network_id, event.invitor, number))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def expiries(targets: Iterable[tuple[str, int | None]]) -> str:
    """IngestHead.expiries of (target name, expire_after seconds or None) pairs."""
    return ",".join(f"{name}={seconds * 1000}" for name, seconds in targets if seconds)


def limit_fields(event: InvitationEvent, policy: NetworkPolicy, now_ms: int) -> dict[str, Any]:
    """The abuse-limit part of an event's item for the ingest script.

    Limits and the prefix guard apply to created invitations (what sends an SMS); an accepted
    one only counts towards its prefix's accepted share. The fields:
    sup, a reason to suppress it, with k its kind; lim, [[key, max, window ms, reason, kind]];
    g, the prefix guard {h (hold key), n (network), p (prefix), c and a (this window's created and
    accepted counters), cp and ap (the previous window's), w (the previous window's weight), min,
    ratio, hold s, ttl ms, why}; ga, [key, ttl ms] to count an accepted invitation.

    Limits slide: a limit of N is a log of the last N invitations it let through (a sorted set
    by time, one of N entries at most), and one is let through when fewer than N of them are
    younger than the window, so no stretch of that length ever lets more than N through (fixed
    windows let 2N through across a boundary). A limit of one (the cooldown) is a key that
    expires a window after the invitation it let through. The guard, a ratio rather than a cap,
    weighs its previous fixed window by the share of it still inside the sliding one.
    """
    if not (policy.guard or policy.limits or policy.allowed_prefixes):
        return {}  # most networks: nothing to count
    net = event.network_id
    # One number, one identity: its E.164 digits, however it was spelt (gateway/numbers.py).
    number = identity(event.invitee, event.invitee_e164)
    fields: dict[str, Any] = {}
    if event.type == INVITATION_ACCEPTED:
        if policy.guard is not None:
            g = policy.guard
            prefix = prefix_of(number, g.digits)
            bucket = now_ms // (g.window * 1000)
            fields["ga"] = [limit_key("guard", net, prefix, "a", bucket), g.window * 2000]
        return fields
    allowed = policy.allowed_prefixes
    if allowed and not prefix_allowed(number, allowed):
        # Named by its country code, or as finely as the allowlist is written if finer:
        # +44 against ["+1"], +4478 against ["+1", "+4477"].
        digits = number.lstrip("+")
        size = max(len(country_code(digits) or ""), *(len(p) - 1 for p in allowed))
        shown = "+" + digits[:size]
        fields["sup"] = f"invitee prefix {shown} not allowed for network {net}"
        fields["k"] = SuppressionKind.ALLOWLIST.value
        return fields
    lims: dict[str, list[Any]] = {}
    for lim in policy.limits:
        value = {
            "invitee": number,
            "invitor": event.invitor,
            "prefix": prefix_of(number, lim.digits),
            "network": "",
        }[lim.per]
        window_ms = lim.window * 1000
        if lim.cooldown:
            key = limit_key("cool", net, value)
            kind = SuppressionKind.COOLDOWN
        else:
            # A limit of one is a key, of more a sorted set: never the same name for both.
            key = limit_key("lim" if lim.max > 1 else "lim1", net, lim.per, str(lim.window), value)
            kind = SuppressionKind.PREFIX if lim.per == "prefix" else SuppressionKind.LIMIT
        # Two limits on the same thing over the same window count on one log: the lower max.
        if key not in lims or lims[key][1] > lim.max:
            lims[key] = [key, lim.max, window_ms, lim.reason, kind.value]
    if lims:
        fields["lim"] = list(lims.values())
    if policy.guard is not None:
        g = policy.guard
        prefix = prefix_of(number, g.digits)
        window_ms = g.window * 1000
        bucket = now_ms // window_ms
        fields["g"] = {
            "h": limit_key("hold", net, prefix),
            "n": net,
            "p": prefix,
            "c": limit_key("guard", net, prefix, "c", bucket),
            "a": limit_key("guard", net, prefix, "a", bucket),
            "cp": limit_key("guard", net, prefix, "c", bucket - 1),
            "ap": limit_key("guard", net, prefix, "a", bucket - 1),
            "w": 1 - (now_ms % window_ms) / window_ms,
            "min": g.min_created,
            "ratio": g.max_accepted_ratio,
            "hold": g.hold,
            "ttl": g.window * 2000,
            "why": f"prefix +{prefix} held: almost none of its invitations are accepted",
        }
    return fields


def number_limit_keys(
    numbers: Iterable[str], invitors: Iterable[str], network: str, policy: NetworkPolicy
) -> list[str]:
    """The abuse-limit keys (as `limit_fields` names them) that hold a number on the network: what
    an erasure deletes (gateway/store/erasure.py). `numbers`: identities (`identity`: E.164
    digits, or the digits it came as); `invitors`: SIP usernames as stored.

    Per-invitee and per-invitor logs and cooldowns only: a prefix's or a network's log counts
    many numbers, and its entries are event ids.
    """
    numbers, invitors = list(numbers), list(invitors)
    keys: list[str] = []
    for lim in policy.limits:
        values = {"invitee": numbers, "invitor": invitors}.get(lim.per, [])
        for value in values:
            if lim.cooldown:
                keys.append(limit_key("cool", network, value))
            else:
                kind = "lim" if lim.max > 1 else "lim1"
                keys.append(limit_key(kind, network, lim.per, str(lim.window), value))
    return keys
