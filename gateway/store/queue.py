"""The delivery queue: Lua, so that a batch is claimed or recorded in one round trip.

Deliveries wait in `{p}:due` by the time they may be attempted; a worker's engine claims a batch
(claim.lua leases each one and applies the targets' pauses, caps, rates and throttles), records
each finished group (complete.lua: attempt, state, what comes next, the target's health) and
hands back what it could not send (release.lua). The worker's ticker and the operators' commands
probe, unpark, pause, resume, replay and read health and dead letters. Key names:
gateway/store/keys.py; the scripts: gateway/store/scripts/.

One class for a sync client (the CLI, the worker's ticker) and an asyncio one (the engine), as
httpx's Client and AsyncClient share their model: every method returns what redis-py returns,
a value or a coroutine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from redis import Redis

from gateway.events import InvitationEvent
from gateway.fastredis import FastRedis, Script, ScriptsViaRedisPy
from gateway.records import Delivery, iso_ms, split_delivery_id
from gateway.store import lua
from gateway.store.codec import dumps, now_ms, text
from gateway.store.ingest import SCRIPT as INGEST_SCRIPT
from gateway.store.ingest import WAKE_TTL, IngestHead, IngestItem, encode
from gateway.store.keys import Keys

if TYPE_CHECKING:
    import redis.asyncio as aioredis

CLAIM = lua.load("claim", "ulid")
COMPLETE = lua.load("complete", "resume")
RELEASE = lua.load("release")
RESUME_TARGET = lua.load("resume_target", "resume")
PROBE = lua.load("probe")
UNPARK = lua.load("unpark")
REPLAY = lua.load("replay")
ATTEMPT_NOW = lua.load("attempt_now")
EXPIRE = lua.load("expire")
EXPIRE_BATCH = 1000  # deadlines one tick looks at, at most


class HealthSignal(StrEnum):
    """What an attempt tells of its target's health."""

    OK = "ok"  # answered: a paused target whose probe this was is resumed
    FAIL = "fail"  # one more consecutive failure (the target's pause rule may pause it)
    GONE = "gone"  # 410 Gone: the target is disabled


@dataclass(slots=True)
class Completion:
    """One finished attempt for complete.lua, in the order the Lua reads a record's arguments.

    Not frozen: the engine fills it in as the attempt's outcome becomes known.
    """

    delivery_id: str
    target: str
    event_id: str
    concurrency: int = 0  # the target's cap (0: none): a finished one frees a slot
    pause_failures: int = 0  # the target's pause rule: after this many consecutive failures ...
    pause_ms: int = 0  # ... over at least this long (0 failures: never)
    attempt: str | None = None  # the attempt record's JSON, appended to the event's attempts
    state: str | None = None  # the delivery's new state (JSON)
    due: int | None = None  # ms of the next attempt (None: not due again)
    park: bool = False  # held back until the target is resumed
    dead: bool = False  # a dead letter (failed or expired)
    throttle_until: int | None = None  # ms the target asked to wait until (429)
    health: HealthSignal | None = None


class TargetState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"  # by hand, or after consecutive failures (then probed, and resumed by a success)
    DISABLED = "disabled"  # the target answered 410 Gone


@dataclass(frozen=True, slots=True)
class TargetHealth:
    """A target's health (`{p}:target:{name}`) and its held and in-flight deliveries."""

    state: TargetState
    manual: bool  # paused by hand: no probes
    reason: str | None
    since: int | None  # ms of the last change of state
    failures: int  # consecutive
    held_deliveries: int
    in_flight: int

    def to_dict(self) -> dict[str, Any]:
        """As the API and `--json` show it (they write `since` as an ISO time)."""
        return {
            "state": self.state.value,
            "manual": self.manual,
            "reason": self.reason,
            "since": self.since,
            "failures": self.failures,
            "held_deliveries": self.held_deliveries,
            "in_flight": self.in_flight,
        }


# The ARGV layout, which scripts/complete.lua reads in this order: prefix, now ms, retention s,
# then each record, led by its kind:
# * "f" (full), then each Completion's fields ("" for None and False, "1" for True);
# * "d" (delivered), the usual record, a new delivery delivered at its first attempt: delivery id,
#   concurrency, attempt, state. The rest is as "f" would send it: target and event id from the
#   delivery id, the health ok, neither due nor parked, dead nor throttled. Every argument costs
#   Redis about as much as one of the script's commands (parsed, then made a Lua string), and the
#   worker a formatted length: 5 instead of 14 for nearly every record.
COMPLETION_HEAD_ARGS = 3
COMPLETION_ARGS = 13  # Completion's fields, after the kind "f"
DELIVERED_ARGS = 4  # after the kind "d"


def encode_completions(prefix: str, now: int, retention: int, records: Sequence[Completion]) -> list[Any]:
    args: list[Any] = [prefix, now, retention]
    for r in records:
        # One tuple per record, its fields named (the engine's hot path: no reflection).
        due, thr, attempt, state = r.due, r.throttle_until, r.attempt, r.state
        if (
            r.health is HealthSignal.OK
            and attempt
            and state
            and due is None
            and thr is None
            and not r.park
            and not r.dead
            and r.delivery_id == f"{r.event_id}-{r.target}"
        ):
            args += ("d", r.delivery_id, r.concurrency, attempt, state)
            continue
        args += (
            "f",
            r.delivery_id,
            r.target,
            r.event_id,
            r.concurrency,
            r.pause_failures,
            r.pause_ms,
            attempt or "",
            state or "",
            "" if due is None else due,
            "1" if r.park else "",
            "1" if r.dead else "",
            "" if thr is None else thr,
            r.health or "",
        )
    return args


class DeliveryQueue:
    """The delivery queue's operations, for a sync (CLI, worker ticker) or asyncio (engine) client.

    Every method returns what redis-py returns: a value, or a coroutine for an asyncio client.
    """

    def __init__(
        self,
        client: Redis | aioredis.Redis,
        prefix: str,
        retention: int,
        scripts: FastRedis | ScriptsViaRedisPy | None = None,
        script_timeout: float = 10.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.retention = retention
        # The engine's three hot scripts (claim, complete, release) through the lean client when
        # one is given: redis.asyncio spends about 150 µs of CPU per call, FastRedis about 40.
        # Each call is bounded by `script_timeout` (FastRedis has no socket timeout of its own).
        self.scripts = scripts
        self.script_timeout = script_timeout
        self._claim = client.register_script(CLAIM.text)
        self._complete = client.register_script(COMPLETE.text)
        self._release = client.register_script(RELEASE.text)
        self._resume = client.register_script(RESUME_TARGET.text)
        self._probe = client.register_script(PROBE.text)
        self._unpark = client.register_script(UNPARK.text)
        self._replay = client.register_script(REPLAY.text)
        self._attempt_now = client.register_script(ATTEMPT_NOW.text)
        self._expire = client.register_script(EXPIRE.text)
        self._ingest = client.register_script(INGEST_SCRIPT.text)

    def claim(
        self,
        now: int,
        lease_ms: int,
        limit: int,
        policies: dict[str, Any] | str,
        version: int | None = None,
    ) -> Any:
        """Claim up to `limit` due deliveries: [next_due_ms, config_version, (id, event, state, flag)*].

        `policies` (Config.policies, or that already encoded as JSON: the engine encodes them
        once per configuration, not per claim) come from configuration `version`: if that is not
        the stored version, nothing is claimed and the answer is ['stale', config_version]
        (reload, then claim again).
        """
        checked = "" if version is None else str(version)
        encoded = policies if isinstance(policies, str) else dumps(policies)
        args: list[Any] = [self.prefix, now, lease_ms, limit, encoded, checked]
        if self.scripts is not None:
            return self._fast(CLAIM, args)
        return self._claim(args=args)

    def complete(self, now: int, records: Sequence[Completion]) -> Any:
        """Record a group of finished attempts; returns the targets' changes of state (flat)."""
        args = encode_completions(self.prefix, now, self.retention, records)
        if self.scripts is not None:
            return self._fast(COMPLETE, args)
        return self._complete(args=args)

    def release(self, now: int, ids: Sequence[str]) -> Any:
        """Hand claimed deliveries back, due now (a worker stopping before it could send them)."""
        args: list[Any] = [self.prefix, now, *ids]
        if self.scripts is not None:
            return self._fast(RELEASE, args)
        return self._release(args=args)

    async def _fast(self, script: Script, args: list[Any]) -> Any:
        assert self.scripts is not None
        async with asyncio.timeout(self.script_timeout):
            return await self.scripts.evalsha(script, (), args)

    def clear_wake(self) -> Any:
        return self.client.delete(self.keys.wake)

    def set_wake(self) -> Any:
        return self.client.set(self.keys.wake, "1", nx=True, ex=WAKE_TTL)

    def alert_gate(self, what: str, seconds: int) -> Any:
        """True for the first caller in `seconds` (across processes): alerts are not a flood."""
        return self.client.set(self.keys.alerted(what), "1", nx=True, ex=seconds)

    def write_alert(self, event: InvitationEvent, target: str) -> Any:
        """Store an alert as an event with one delivery, to the alert target.

        Through the ingest script, as every event (no dedupe, no limits). The wake flag is left
        alone: the engine that raises an alert is running, and the CLI and the API queue a drain
        job themselves.
        """
        state = dumps(Delivery(updated_at=event.received_at_ms).to_dict())
        head = IngestHead(self.prefix, now_ms(), self.retention, state=state, wake_ttl=0)
        return self._ingest(args=encode(head, [IngestItem.new(event, [target])]))

    # -- sync: the worker's ticker and the CLI ---------------------------------------------------
    def _sync(self) -> Redis:
        assert isinstance(self.client, Redis), "a sync client is needed here"
        return self.client

    def _sync_script(self, script: Any, args: list[Any]) -> Any:
        self._sync()
        return script(args=args)

    def next_due(self) -> float | None:
        """The score of the earliest waiting delivery (ms), or None when nothing waits."""
        first = self._sync().zrange(self.keys.due, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def probe(self, target: str, now: int, interval_ms: int) -> str | None:
        got = self._sync_script(self._probe, [self.prefix, target, now, interval_ms])
        return text(got) if got else None

    def unpark(self, target: str, now: int, cap: int) -> int:
        return int(self._sync_script(self._unpark, [self.prefix, target, now, cap]))

    def held_targets(self) -> list[str]:
        return sorted(text(m) for m in self._sync().smembers(self.keys.held))

    def parked_targets(self) -> list[str]:
        p = self.keys.parked("")
        return [text(k)[len(p) :] for k in self._sync().scan_iter(match=p + "*", count=1000)]

    def expire_due(self, now: int, expire_after: Sequence[tuple[str, int]]) -> list[tuple[str, str]]:
        """Record as expired each waiting delivery whose deadline has passed (expire.lua);
        (delivery id, reason) of each. `expire_after`: (target, seconds) of the targets that
        have one now."""
        args: list[Any] = [self.prefix, now, self.retention, iso_ms(now), EXPIRE_BATCH]
        for name, seconds in expire_after:
            args += (name, seconds)
        flat = [text(v) for v in self._sync_script(self._expire, args)]
        return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    def trim_dead(self, now: int) -> None:
        self._sync().zremrangebyscore(self.keys.dead, "-inf", now - self.retention * 1000)

    def pause(self, target: str, now: int, reason: str = "paused by hand") -> str:
        hk = self.keys.target(target)
        r = self._sync()
        before = text(r.hget(hk, "state") or b"active")
        with r.pipeline(transaction=True) as pipe:
            pipe.sadd(self.keys.held, target)
            pipe.hset(hk, mapping={"state": "paused", "manual": "1", "since": now, "reason": reason})
            pipe.execute()
        return before

    def resume(self, target: str, now: int) -> str:
        """Resume a paused or disabled target; returns its state before."""
        return text(self._sync_script(self._resume, [self.prefix, target, now]))

    def health(self, target: str) -> TargetHealth:
        r = self._sync()
        with r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.target(target))
            pipe.zcard(self.keys.parked(target))
            pipe.zcard(self.keys.inflight(target))
            raw, parked, inflight = pipe.execute()
        data = {text(k): text(v) for k, v in raw.items()}
        return TargetHealth(
            state=TargetState(data.get("state", TargetState.ACTIVE)),
            manual=data.get("manual") == "1",
            reason=data.get("reason") or None,
            since=int(float(data["since"])) if data.get("since") else None,
            failures=int(data.get("failures", 0)),
            held_deliveries=int(parked),
            in_flight=int(inflight),
        )

    def replay(self, did: str, now: int, force: bool = False) -> str:
        split_delivery_id(did)
        return text(
            self._sync_script(self._replay, [self.prefix, now, self.retention, did, "1" if force else "0"])
        )

    def attempt_now(self, did: str, now: int) -> str:
        split_delivery_id(did)
        return text(self._sync_script(self._attempt_now, [self.prefix, now, did]))

    def dead_letters(self, since_ms: int | None = None, until_ms: int | None = None) -> list[tuple[str, int]]:
        """(delivery id, ms it failed) of every dead letter in the range, newest first."""
        rows = self._sync().zrevrangebyscore(
            self.keys.dead,
            until_ms if until_ms is not None else "+inf",
            since_ms if since_ms else "-inf",
            withscores=True,
        )
        return [(text(row[0]), int(row[1])) for row in rows]

    def waiting_count(self) -> int:
        return int(self._sync().zcard(self.keys.due))
