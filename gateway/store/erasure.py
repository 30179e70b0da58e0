"""Erasure on request: everything Redis keeps that holds a phone number, found and removed.

Invitee numbers are personal data. `erase(job)` runs every holder of `HOLDERS` in order, each
removing what it keeps for the number within the job's networks and counting it:

- `Events`: the events whose invitee or invitor is the number (any spelling it arrived in: the
  digits are compared), with their deliveries (a waiting one is cancelled: it leaves every
  queue, and one in flight is not recorded when it ends), attempts, dead letters, index entries
  and dedupe keys. Found by scanning the retention index (`{p}:events`, or each of the job's
  networks' `{p}:events:net:{network}`) in pages, inside Redis (scripts/forget_find.lua): the
  erasure pays for it, no callback does (an index by number written at ingest would cost every
  callback two commands). Then removed by scripts/forget.lua, a page at a time.
- `LimitKeys`: the per-invitee and per-invitor abuse-limit counters and cooldowns of the number
  (`number_limit_keys`, beside `limit_fields` which names them).
- `LookupCache`: lookup answers cached for an event of the number (gateway/delivery/lookups.py
  records each one it caches in `{p}:lookups:{number digest}`, `index_lookup`).
- `TestSends`: test sends (`gateway targets test`) whose sample or result holds the number.
- `CallbackLists`: callbacks kept as received (the inspector, gateway/store/callbacks.py) whose
  path, body or fields hold the number: the job's networks' lists of taken and of rejected
  callbacks, and for an operator the unroutable list too.

A holder is anything with a `name` and `erase(job) -> counts` (`Holder`); to make another part
of the gateway erasable (say, callbacks kept as received), write one and add it to `HOLDERS`.
The counts a holder returns are summed into the answer (`events`, `deliveries_cancelled`,
`dead_letters`, `keys` by convention; a holder may add its own) and kept per holder.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

from redis import Redis
from redis.exceptions import NoScriptError

from gateway.config.targets import Config
from gateway.events import INVITATION_ACCEPTED, INVITATION_CREATED, InvitationEvent
from gateway.fastredis import Script
from gateway.numbers import e164, identity
from gateway.store import lua
from gateway.store.codec import text
from gateway.store.ingest import dedupe_key, number_limit_keys
from gateway.store.keys import Keys, number_digest

FIND = lua.load("forget_find")
FORGET = lua.load("forget")
PAGE = 250  # index entries one call of forget_find.lua looks at (a few ms of Redis, which runs nothing else)
FORGET_PAGE = 200  # events one call of forget.lua removes
_SEPARATORS = re.compile(r"[\s.\-()]")  # as the ingest's (gateway/events.py)
_NUMBER = re.compile(r"\+?[0-9]{3,20}")
_PHONE_LIKE = re.compile(r"\+?[0-9\s.\-()]{3,40}")


@dataclass(frozen=True, slots=True)
class Number:
    """A number to forget: every digit string that spells it (no `+`, no separators), that is the
    digits it was given as and its E.164 form (gateway/numbers.py), read in each region given
    (the networks' `default_region`s: a national number is completed by them)."""

    digits: frozenset[str]
    canonical: str  # its E.164 digits (or, without one, the digits given): what the audit digests

    @classmethod
    def parse(cls, value: str, regions: Iterable[str | None] = ()) -> Number:
        """As the ingest reads an invitee: separators dropped, 3 to 20 digits after an optional +."""
        compact = _SEPARATORS.sub("", value.strip())
        if not _NUMBER.fullmatch(compact):
            raise ValueError(
                "must be a phone number: 3 to 20 digits with an optional leading +; spaces, dots, "
                "dashes and parentheses are allowed"
            )
        forms = {compact.lstrip("+")}
        canonical = e164(compact, None)
        for region in {*regions, None}:
            found = e164(compact, region)
            if found is not None:
                forms.add(found.lstrip("+"))
                canonical = canonical or found
        return cls(frozenset(forms), (canonical or compact).lstrip("+"))

    @property
    def stored_spellings(self) -> frozenset[str]:
        """The values it may be stored as where a value is kept as it came (an invitor)."""
        return frozenset(v for d in self.digits for v in (d, "+" + d))

    def digest(self) -> str:
        """What the audit line says instead of the number (sha256 of its E.164 digits, shortened):
        the same for every spelling of it."""
        return hashlib.sha256(("erasure\x00" + self.canonical).encode()).hexdigest()[:16]

    def held_by(self, value: str) -> bool:
        """Does this text (a JSON value, a URL, percent-encoded or not) hold the number, in any
        spelling? (Its digits hold the number's: a false alarm only erases a little more.)"""
        compact = re.sub(r"\D", "", unquote(value))
        return any(d in compact for d in self.digits)


def phone_digits(value: str) -> str | None:
    """The digits of a value that is a phone number in some spelling (an invitor may be one)."""
    if not _PHONE_LIKE.fullmatch(value.strip()):
        return None
    digits = re.sub(r"\D", "", value)
    return digits if len(digits) >= 3 else None


def indexed_numbers(event: InvitationEvent) -> list[str]:
    """The numbers a record made for this event is filed under for an erasure: the invitee's
    identity (E.164 digits) and digits as it came, and the invitor's when it is a phone number."""
    out = [identity(event.invitee, event.invitee_e164)]
    for digits in (event.invitee.lstrip("+"), phone_digits(event.invitor)):
        if digits is not None and digits not in out:
            out.append(digits)
    return out


def index_lookup(pipe: Any, keys: Keys, event: InvitationEvent, cache_key: str, ttl: int) -> None:
    """Queue (on a caller's pipeline) the filing of a cached lookup answer under its event's
    numbers: `{p}:lookups:{digest}` HASH cache key -> network."""
    for digits in indexed_numbers(event):
        index = keys.lookups_of(number_digest(digits))
        pipe.hset(index, cache_key, event.network_id)
        pipe.expire(index, ttl)


@dataclass(slots=True)
class Erasure:
    """One erasure: what every holder is given, and what the holders before it found."""

    redis: Redis
    keys: Keys
    number: Number
    networks: frozenset[str] | None  # those it may erase in; None: every network (an operator)
    config: Config  # the configuration in use (network policies, targets)
    now_ms: int
    can_see_target: Callable[[Iterable[str]], bool] = lambda networks: True
    # Found by the holders before: the networks, the invitees' identities and the invitors of the
    # events erased (LimitKeys looks for those too).
    seen_networks: set[str] = field(default_factory=set)
    seen_numbers: set[str] = field(default_factory=set)
    seen_invitors: set[str] = field(default_factory=set)

    def in_scope(self, network: str) -> bool:
        return self.networks is None or network in self.networks


class Holder(Protocol):
    name: str

    def erase(self, job: Erasure) -> Counter[str]: ...


def erase(job: Erasure, holders: Sequence[Holder] | None = None) -> dict[str, Counter[str]]:
    """Run every holder (HOLDERS by default) in order; the counts of each, by name."""
    return {h.name: h.erase(job) for h in (HOLDERS if holders is None else holders)}


class Events:
    name = "events"

    def erase(self, job: Erasure) -> Counter[str]:
        ids = find_events(job)
        counts: Counter[str] = Counter()
        for start in range(0, len(ids), FORGET_PAGE):
            counts += forget_events(job, ids[start : start + FORGET_PAGE])
        return counts


def find_events(job: Erasure) -> list[str]:
    """The ids of the events in the job's networks that hold the number (each once, oldest page
    first; an event stored meanwhile may be missed: it is a new record)."""
    networks = [""] if job.networks is None else sorted(job.networks)
    found: dict[str, None] = {}
    for network in networks:
        cursor = "0"
        while True:
            args = [job.keys.prefix, network, cursor, PAGE, *sorted(job.number.digits)]
            raw = _run(job.redis, FIND, args)
            cursor = text(raw[0])
            found.update(dict.fromkeys(text(r) for r in raw[1:]))
            if cursor == "0":
                break
    return list(found)


def forget_events(job: Erasure, ids: Sequence[str]) -> Counter[str]:
    """Remove these events (those outside the job's networks are left alone) and all theirs."""
    with job.redis.pipeline(transaction=False) as pipe:
        for eid in ids:
            pipe.get(job.keys.event(eid))
        blobs = pipe.execute()
    args: list[Any] = [job.keys.prefix]
    for blob in blobs:
        if not blob:
            continue
        event = InvitationEvent.from_dict(json.loads(blob))
        if not job.in_scope(event.network_id):
            continue
        job.seen_networks.add(event.network_id)
        job.seen_numbers.add(identity(event.invitee, event.invitee_e164))
        job.seen_invitors.add(event.invitor)
        args += (
            event.id,
            event.network_id,
            dedupe_key(event, INVITATION_CREATED),
            dedupe_key(event, INVITATION_ACCEPTED),
        )
    if len(args) == 1:
        return Counter()
    events, cancelled, dead, keys = (int(v) for v in _run(job.redis, FORGET, args))
    return Counter(events=events, deliveries_cancelled=cancelled, dead_letters=dead, keys=keys)


class LimitKeys:
    name = "limits"

    def erase(self, job: Erasure) -> Counter[str]:
        networks = set(job.seen_networks)
        if job.networks is None:
            networks |= {n for n in job.config.networks if n != "*"}
        else:
            networks |= job.networks
        numbers = set(job.number.digits) | job.seen_numbers
        invitors = set(job.number.stored_spellings) | {
            v for v in job.seen_invitors if phone_digits(v) in job.number.digits
        }
        keys = [
            job.keys.limit(k)
            for net in sorted(networks)
            for k in number_limit_keys(numbers, invitors, net, job.config.network_policy(net))
        ]
        deleted = sum(int(job.redis.delete(*keys[i : i + 500])) for i in range(0, len(keys), 500))
        return Counter(keys=deleted)


class LookupCache:
    name = "lookups"

    def erase(self, job: Erasure) -> Counter[str]:
        deleted = 0
        for digits in sorted(job.number.digits):
            index = job.keys.lookups_of(number_digest(digits))
            entries = {text(k): text(v) for k, v in job.redis.hgetall(index).items()}
            mine = [k for k, network in entries.items() if job.in_scope(network)]
            if not mine:
                continue
            with job.redis.pipeline(transaction=True) as pipe:
                pipe.delete(*mine)
                pipe.hdel(index, *mine)
                pipe.exists(index)
                removed, _, left = pipe.execute()
            deleted += int(removed) + (0 if left else 1)  # (a hash goes with its last field)
        return Counter(keys=deleted)


class TestSends:
    name = "test_sends"

    def erase(self, job: Erasure) -> Counter[str]:
        ids = [text(i) for i in job.redis.zrangebyscore(job.keys.tests, job.now_ms, "+inf")]
        deleted = 0
        for test_id in ids:
            names = (job.keys.send_test(test_id), job.keys.send_test_result(test_id))
            blobs: list[Any] = [job.redis.get(n) for n in names]
            holding = [n for n, b in zip(names, blobs, strict=True) if b and _holds(job, json.loads(b))]
            if holding and self._visible(job, blobs):
                deleted += int(job.redis.delete(*holding))
        return Counter(keys=deleted)

    @staticmethod
    def _visible(job: Erasure, blobs: list[Any]) -> bool:
        """A provider key erases only the test sends of targets it may see."""
        if job.networks is None:
            return True
        names = {json.loads(b).get("target") for b in blobs if b}
        targets = [t for t in job.config.targets if t.name in names]
        return bool(targets) and all(job.can_see_target(t.networks) for t in targets)


class CallbackLists:
    name = "callbacks"

    def erase(self, job: Erasure) -> Counter[str]:
        from gateway.store.callbacks import Entry, networks_with_lists

        keys = job.keys
        networks = networks_with_lists(job.redis, keys) if job.networks is None else sorted(job.networks)
        lists = [k for n in networks for k in (keys.callbacks(n), keys.callbacks_rejected(n))]
        if job.networks is None:
            lists.append(keys.callbacks_unroutable)  # an operator's only
        removed = 0
        for key in lists:
            # Lists are capped (GATEWAY_CALLBACKS_KEPT): read whole, remove each entry by value.
            doomed: list[Any] = []
            for raw in job.redis.lrange(key, 0, -1):
                try:
                    entry = Entry.parse(raw)
                except (ValueError, TypeError, IndexError):
                    doomed.append(raw)  # unreadable: it cannot be shown, nor vouched for
                    continue
                if _holds(job, [entry.path, entry.body, entry.client or "", dict(entry.extra)]):
                    doomed.append(raw)
            if doomed:
                with job.redis.pipeline(transaction=False) as pipe:
                    for raw in doomed:
                        pipe.lrem(key, 0, raw)
                    removed += sum(int(n) for n in pipe.execute())
        return Counter(callbacks=removed)


def _holds(job: Erasure, value: Any) -> bool:
    if isinstance(value, str):
        return job.number.held_by(value)
    if isinstance(value, dict):
        return any(_holds(job, v) for v in value.values())
    if isinstance(value, list):
        return any(_holds(job, v) for v in value)
    return False


def _run(redis: Redis, script: Script, args: Sequence[Any]) -> Any:
    try:
        return redis.evalsha(script.sha, 0, *args)
    except NoScriptError:
        return redis.eval(script.text, 0, *args)


HOLDERS: tuple[Holder, ...] = (Events(), LimitKeys(), LookupCache(), TestSends(), CallbackLists())
