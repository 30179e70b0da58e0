"""The delivery engine: claim due deliveries in batches, send them concurrently, record each one.

This is what a drain job does (DESIGN.md decision 10), free of RQ: the job only calls `run`.
Deliveries wait in Redis (`store.queue.DeliveryQueue`), not in RQ jobs, so how many go in one batch
depends on how many are due when a worker looks, not on how the callbacks happened to arrive:
a backlog of ten thousand single callbacks drains at batch speed.

The loop keeps up to `concurrency` requests in flight. Whenever a quarter of the slots are free
it claims more (one Lua call: the claim also parks deliveries of paused targets, spaces out
rate-limited ones and hands back each claimed delivery's event and state), and it records every
group of finished attempts in one more Lua call. A slow target holds only its own slots, for at
most its own timeout. Each claimed delivery is leased: a worker killed mid-batch leaves leases
that expire, and the deliveries are due again. A delivery already recorded as delivered is
never sent again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.config.targets import MAX_TIMEOUT, Config, Target
from gateway.delivery.lookups import LookupFailure, Lookups
from gateway.delivery.oauth2 import TokenError, TokenSource
from gateway.delivery.outcomes import (
    DELIVERED,
    NEW,
    Result,
    Tried,
    answered,
    attempts_text,
    decode_event,
    delivered_records,
    due_after,
    finish,
    first_delivered,
    is_new,
    loads,
    now_ms,
    request_seconds,
    unsent,
    with_outcome,
)
from gateway.delivery.request import (
    RequestPlan,
    build_request,
    retry_delay,
)
from gateway.delivery.sender import Sender, SendError
from gateway.events import InvitationEvent, make_alert
from gateway.exceptions import ConfigError
from gateway.logs import DeliveryBatch
from gateway.metrics import Tally, count_deliveries
from gateway.ordering import note_for, order_flag
from gateway.records import (
    Attempt,
    Delivery,
    DeliveryStatus,
    Outcome,
    split_delivery_id,
)
from gateway.store.codec import dumps
from gateway.store.queue import Completion, DeliveryQueue, HealthSignal
from gateway.store.token_cache import TokenCache

log = logging.getLogger("gateway.delivery")

MAX_THROTTLES = 50  # 429s a delivery waits out before they start to use up its retries
THROTTLE_BACKOFF_CAP = 300  # seconds, for a 429 without Retry-After
IDLE_WAIT_MS = 2000  # with nothing in hand, wait for a delivery due this soon rather than stop
GROUP = 16  # completions recorded together, when that many are in flight
GROUP_WAIT = 0.003  # seconds to let them gather (a delivery's record waits at most this long)
BACKLOG_EVERY = 0.5  # seconds between two calls of on_backlog while a backlog lasts
_clock = time.time  # read inline where it runs for every delivery
DEAD_ALERT_EVERY = 600  # seconds between two "deliveries failed for good" alerts per target


def dead_letter_message(target: str, did: str, reason: str) -> str:
    """What the alert target is told of a target's dead letters (at most every DEAD_ALERT_EVERY)."""
    return (
        f"deliveries to {target} fail for good (latest {did}: {reason}); "
        f"see `gateway deliveries failed --target {target}`"
    )


@dataclass(frozen=True, slots=True)
class EngineSettings:
    concurrency: int = 64  # requests in flight per worker process
    lease_ms: int = int((MAX_TIMEOUT + 30) * 1000)  # a claimed delivery is due again after this
    grace: float = 20.0  # seconds a stopping worker waits for requests in flight
    allow_private: bool = False


@dataclass
class Stats:
    claimed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    released: int = 0

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"claimed": self.claimed, "released": self.released, **self.outcomes}


class Engine:
    """Delivers what is due, batch after batch, until nothing is due, the budget ends or a stop."""

    def __init__(
        self,
        queue: DeliveryQueue,
        sender: Sender,
        config_for: Callable[[int], Config],
        environ: Mapping[str, str],
        settings: EngineSettings | None = None,
        on_backlog: Callable[[], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.queue = queue
        self.sender = sender
        self.config_for = config_for
        self.environ = environ
        self.settings = settings or EngineSettings()
        self.on_backlog = on_backlog
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._stop = False
        self._config = Config()
        self._version = -1  # the configuration version `_config` is; -1: none loaded yet
        self.tokens = TokenSource(TokenCache(queue.client, queue.prefix), sender.send)  # OAuth2
        self.lookups = Lookups(sender.send, environ, queue.client, queue.prefix)  # %NAME.field%
        self.tally: Tally | None = None  # delivery metrics, counted a group at a time
        # Per target name, its request with the static parts worked out, for `_config`
        # (None: making it failed; such a target's request is built, and fails, each time).
        self._plans: dict[str, RequestPlan | None] = {}
        # Per target name: the Target (None: not configured) and its _usual_plan, for `_config`.
        self._targets: dict[str, tuple[Target | None, RequestPlan | None]] = {}
        # The claim's policies (JSON) and lease, for the configuration `_claim_for`.
        self._claim_for: Config | None = None
        self._policies = ""
        self._lease = 0

    def request_stop(self) -> None:
        """Stop claiming; requests in flight get `grace` seconds, the rest is handed back."""
        self._stop = True

    @property
    def stopping(self) -> bool:
        return self._stop

    async def run(self, budget: float) -> Stats:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        stats = Stats()
        tasks: dict[asyncio.Task[Result], str] = {}  # requests in flight, with their delivery ids
        # Finished tasks arrive here through a done callback, and wake the loop through `waiter`:
        # cheaper than asyncio.wait over every task in flight after each completion.
        finished: list[asyncio.Task[Result]] = []
        waiter: asyncio.Future[None] | None = None
        # Finished attempts not recorded yet, since when (loop time), and the group being
        # recorded. A request's slot is free as soon as its answer is in, not once it is
        # recorded: the records go to Redis beside the sending, one group at a time, while the
        # loop claims more. A claim made while a group is on its way may not see that group
        # (a target's pause or throttle it brings applies from the next claim, as it does to
        # other workers' claims), except when nothing is in flight (below).
        unrecorded: list[Result] = []
        unrecorded_since = 0.0
        recording: asyncio.Task[None] | None = None
        recording_ids: frozenset[str] = frozenset()

        def wake(_: object = None) -> None:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        def on_done(task: asyncio.Task[Result]) -> None:
            nonlocal unrecorded_since
            if not finished and not unrecorded:
                # The first of a group: it is recorded within GROUP_WAIT.
                unrecorded_since = loop.time()
                loop.call_later(GROUP_WAIT, wake)
            finished.append(task)
            if waiter is None or waiter.done():
                return
            # Woken only when there is something to do: a group to record, room to claim, or
            # nothing left in flight (a turn of the loop per answer costs a tenth of a request).
            running = len(tasks) - len(finished)
            if (
                running == 0
                or (len(finished) + len(unrecorded) >= GROUP and (recording is None or recording.done()))
                or (size - running >= room and loop.time() >= claim_at)
            ):
                waiter.set_result(None)

        def record(group: list[Result]) -> asyncio.Task[None]:
            nonlocal recording_ids
            recording_ids = frozenset(r.record.delivery_id for r in group)
            task = loop.create_task(self._complete(group, stats))
            task.add_done_callback(_recorded)
            task.add_done_callback(wake)
            return task

        size = self.settings.concurrency
        room = max(1, size // 4)  # free slots worth a claim
        grace_end: float | None = None
        claim_failed = False
        backlog_told = 0.0  # loop time from which on_backlog may be called again
        claim_at = 0.0  # loop time from which a claim may come without a group
        while True:
            if finished:
                done, finished[:] = finished[:], []
                for task in done:
                    did = tasks.pop(task, None)
                    if did is None:
                        continue  # handed back meanwhile
                    try:
                        unrecorded.append(task.result())
                    except Exception:
                        log.exception("delivery %s: unexpected error; it will be tried again", did)
            winding_down = self._stop or loop.time() >= deadline or claim_failed
            if winding_down and grace_end is None:
                grace_end = loop.time() + (self.settings.grace if self._stop else MAX_TIMEOUT + 5)
            grouped = False
            # A group once GROUP have finished, or the first has waited GROUP_WAIT, or nothing
            # else is in flight: every Redis call costs the worker about as much CPU as a
            # request, so one per completion would halve the rate.
            if (
                unrecorded
                and (recording is None or recording.done())
                and (
                    len(unrecorded) >= GROUP
                    or not tasks
                    or grace_end is not None
                    or loop.time() - unrecorded_since >= GROUP_WAIT
                )
            ):
                group, unrecorded = unrecorded, []
                recording = record(group)
                grouped = True
                # Its first step writes the group to Redis before the claim below does.
                await asyncio.sleep(0)
            free = size - len(tasks)
            next_due: float | None = None
            # Claims come with the groups, when nothing is in flight, or at the time the last claim
            # named (5 ms while a backlog lasts, the next due time otherwise): not at every answer,
            # which would make small claims, each a Redis call costing about what a request does.
            may_claim = grouped or not tasks or loop.time() >= claim_at
            if not winding_down and may_claim and (free >= room or not tasks):
                # Nothing in flight: this claim decides whether the run waits or ends, so every
                # attempt made is recorded first, as their retries may be due now (a group on its
                # way usually reaches Redis before the claim on the one connection, but not when
                # its script had to be sent in full).
                while not tasks and (unrecorded or (recording is not None and not recording.done())):
                    if recording is not None and not recording.done():
                        await asyncio.wait([recording])
                    elif unrecorded:
                        group, unrecorded = unrecorded, []
                        recording = record(group)
                try:
                    claimed, next_due = await self._claim(free)
                except Exception as exc:
                    log.warning("cannot claim deliveries: %s", _why(exc))
                    claim_failed = True
                    continue
                stats.claimed += len(claimed)
                backlog = len(claimed) == free  # more is waiting
                claim_at = loop.time() + (0.25 if next_due is None else max(next_due - now_ms(), 5) / 1000)
                if backlog and self.on_backlog is not None and loop.time() >= backlog_told:
                    # More is waiting: let other workers help (a Redis call, so not every claim).
                    backlog_told = loop.time() + BACKLOG_EVERY
                    await self.on_backlog()
                in_hand = set(tasks.values())
                in_hand.update(r.record.delivery_id for r in unrecorded)
                if recording is not None and not recording.done():
                    in_hand.update(recording_ids)
                events: dict[str, InvitationEvent] = {}  # each event decoded once per claim
                for did, event_json, state_json, flag in claimed:
                    if did in in_hand:
                        continue  # still being sent or recorded by this engine (its lease was renewed)
                    task = loop.create_task(self._deliver(did, event_json, state_json, flag, events))
                    task.add_done_callback(on_done)
                    tasks[task] = did
                if not claimed and not tasks and not finished:
                    wait = (next_due - now_ms()) if next_due is not None else None
                    if wait is not None and wait <= IDLE_WAIT_MS and loop.time() + wait / 1000 < deadline:
                        await asyncio.sleep(max(wait, 5) / 1000)
                        continue
                    break
            if not tasks and not finished:
                if winding_down:
                    break
                if not unrecorded:
                    continue
            if grace_end is not None and loop.time() >= grace_end and tasks:
                await self._hand_back(tasks, stats)
                tasks.clear()
                finished.clear()
                continue
            if finished:
                continue
            timeout = 0.25
            if grace_end is not None:
                timeout = max(grace_end - loop.time(), 0.0)
            else:
                # Claim what falls due meanwhile on time (a rate slot, a retry), not at the next look.
                timeout = min(timeout, max(claim_at - loop.time(), 0.0))
            if unrecorded and (recording is None or recording.done()):
                timeout = min(timeout, max(unrecorded_since + GROUP_WAIT - loop.time(), 0.0))
            waiter = loop.create_future()
            timer = loop.call_later(timeout, _wake, waiter)
            await waiter
            timer.cancel()
            waiter = None
        # Every attempt made is recorded before the run ends.
        while recording is not None or unrecorded:
            if recording is not None:
                await recording
                recording = None
            if unrecorded:
                group, unrecorded = unrecorded, []
                recording = record(group)
        return stats

    # -- Redis ------------------------------------------------------------------------------------
    async def _claim(self, limit: int) -> tuple[list[tuple[str, str, str, str]], float | None]:
        # The claim applies the targets' policies (pauses, caps, rates, throttles): they must be
        # those of the stored configuration, so a claim made with another version's (the very
        # first one, or one right after a change) claims nothing and is made again.
        for _ in range(5):
            if self._claim_for is not self._config:
                # What a claim sends that only the configuration decides: once per configuration
                # (for 100 targets, 100 policies to build and encode per claim otherwise).
                self._claim_for = self._config
                self._policies = dumps(self._config.policies())
                self._lease = self._lease_ms()
            raw = await self.queue.claim(now_ms(), self._lease, limit, self._policies, self._version)
            version = int(raw[1])
            config = self.config_for(version)
            if config is not self._config:
                self._plans = {}
                self._targets = {}
            self._config = config
            self._version = version
            self.sender.allow_private = self.settings.allow_private or self._config.allow_private_targets
            if _text(raw[0]) != "stale":
                break
        else:
            return [], float(now_ms())  # the configuration keeps changing: look again shortly
        next_due = float(raw[0])
        items = raw[2:]
        if items and type(items[0]) is bytes:
            # A client that does not decode (redis-py; the worker's FastRedis decodes, in C).
            items = [v.decode() for v in items]
        fours = iter(items)
        claimed = list(zip(fours, fours, fours, fours, strict=True))
        return claimed, (next_due if next_due >= 0 else None)

    def _lease_ms(self) -> int:
        # Never shorter than the longest request may take: a lease running out under a request
        # in flight would have another worker send it again.
        longest = max((t.timeout for t in self._config.targets), default=0.0)
        return max(self.settings.lease_ms, int((longest + 5) * 1000))

    async def _complete(self, results: list[Result], stats: Stats) -> None:
        records = [r.record for r in results]
        changes: list[Any] = []
        for attempt in range(6):
            try:
                changes = await self.queue.complete(now_ms(), records)
                break
            except Exception as exc:
                if attempt == 5:
                    # The leases run out and these deliveries are tried again: at least once.
                    log.error(
                        "could not record %d attempts: %s; they will be retried", len(records), _why(exc)
                    )
                    return
                await asyncio.sleep(0.5 * 2**attempt)
        delivered = []
        done = []  # (target, outcome, seconds) for the metrics
        dead = []
        counts = stats.outcomes  # Stats.count inlined: this runs for every delivery
        for r in results:  # one pass over the group for the counts, the log and the alerts
            outcome = r.outcome
            if outcome is not None:
                counts[outcome] = counts.get(outcome, 0) + 1
                if r.target:
                    done.append((r.target, outcome, r.seconds))
            if outcome == DELIVERED:
                delivered.append(r.record.delivery_id)
                continue
            if r.line is not None:
                log.info("%s", r.line)
            if r.dead_reason is not None and r.target is not None:
                dead.append((r.target, r.record.delivery_id, r.dead_reason))
        if delivered and log.isEnabledFor(logging.INFO):
            # One line for a group: a line per request would cost as much CPU as the request.
            # Made without the stack walk that `log.info` does to find its caller.
            args = (len(delivered), DeliveryBatch("delivered", delivered))
            log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "delivered %d: %s", args, None))
        if self.tally is not None:
            count_deliveries(self.tally, done)
        flat = [_text(c) for c in changes]
        for i in range(0, len(flat), 3):
            await self._target_changed(flat[i], flat[i + 1], flat[i + 2])
        for target, did, reason in dead:
            await self._dead_letter_alert(target, did, reason)

    async def _hand_back(self, tasks: dict[asyncio.Task[Result], str], stats: Stats) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # One that finished before it could be cancelled (while the last group was recorded)
        # made its request: record it, never hand it back to be sent again.
        finished = [t.result() for t in tasks if not t.cancelled() and t.exception() is None]
        if finished:
            await self._complete(finished, stats)
        ids = [did for t, did in tasks.items() if t.cancelled() or t.exception() is not None]
        if not ids:
            return
        try:
            await self.queue.release(now_ms(), ids)
        except Exception as exc:
            log.warning(
                "could not hand back %d deliveries (their leases will expire): %s", len(ids), _why(exc)
            )
            return
        stats.released += len(ids)
        log.info("handed back %d deliveries still in flight", len(ids))

    # -- alerts -------------------------------------------------------------------------------------
    async def _target_changed(self, target: str, state: str, reason: str) -> None:
        log.warning("target %s %s: %s", target, state, reason)
        await self.alert(target, f"target {target} {state}: {reason}")

    async def _dead_letter_alert(self, target: str, did: str, reason: str) -> None:
        log.warning("delivery %s failed for good: %s", did, reason)
        try:
            first = await self.queue.alert_gate(f"dead:{target}", DEAD_ALERT_EVERY)
        except Exception:
            return
        if first:
            await self.alert(target, dead_letter_message(target, did, reason))

    async def alert(self, about: str, message: str) -> None:
        """Send `message` to the configured alert target (never about the alert target itself)."""
        name = self._config.alert_target
        if name is None or name == about or self._config.target(name) is None:
            return
        try:
            await self.queue.write_alert(make_alert(message), name)
        except Exception as exc:
            log.error("could not queue the alert %r: %s", message, _why(exc))

    # -- one delivery -------------------------------------------------------------------------------
    async def _deliver(
        self, did: str, event_json: str, state_json: str, flag: str, events: dict[str, InvitationEvent]
    ) -> Result:
        event_id, _, name = did.partition("-")  # split_delivery_id, inline
        if not event_id or not name:
            split_delivery_id(did)  # its ValueError
        # The target and its usual plan in one look (plan None: the general path, _attempt, for
        # lookups, OAuth2 or a request that cannot be planned).
        found = self._targets.get(name)
        if found is None:
            target = self._config.target(name)
            found = self._targets[name] = (target, None if target is None else self._usual_plan(target))
        target, plan = found
        if target is not None:
            record = Completion(
                did,
                name,
                event_id,
                target.concurrency or 0,
                target.pause_failures,
                target.pause_seconds * 1000,
            )
        else:
            record = Completion(did, name, event_id)
        if not event_json:
            log.warning("delivery %s: its event is gone (past retention?); dropped", did)
            return Result(record)
        # A new delivery's state is as stored at ingest: no need to decode it.
        state = NEW if is_new(state_json) else Delivery.from_dict(loads(state_json))
        if state.is_final:
            return Result(record)  # a second claim of a finished delivery: never send twice
        # Keyed by the event id (a short string to hash, where its JSON is a long one): for 10 or
        # 100 targets per network, the same event comes with each of its deliveries.
        event = events.get(event_id)
        if event is None:
            event = events[event_id] = decode_event(event_json)
        now = int(_clock() * 1000)  # now_ms(), inline: this runs for every delivery
        number = state.attempts + 1
        if target is None:
            note = Attempt(name, number, now, Outcome.SKIPPED, error="target no longer configured")
            return finish(record, state, number, Outcome.SKIPPED, DeliveryStatus.SKIPPED, note)
        if target.expire_after is not None and now > event.received_at_ms + target.expire_after * 1000:
            note = Attempt(
                name,
                number,
                now,
                Outcome.EXPIRED,
                error=f"not delivered within expire_after={target.expire_after} s",
            )
            return finish(record, state, number, Outcome.EXPIRED, DeliveryStatus.EXPIRED, note)

        request = None
        if plan is not None:
            try:
                request = plan.render(event, now / 1000)
            except Exception:
                request = None  # _attempt tells why
        if request is None:  # lookups, OAuth2, a request that cannot be planned: the general path
            attempt, outcome, retry_after, status_code = await self._attempt(target, event, number, now)
        else:
            # The usual request, sent from here: a coroutine less per delivery.
            try:
                response = await self.sender.send(request)
            except SendError as exc:
                attempt, outcome, retry_after, status_code = unsent(target, number, now, exc)
            else:
                status = response.status
                if state is NEW and not flag and target.is_success(status):
                    # The usual case, a new delivery delivered at its first attempt: its two
                    # records straight from the answer (no Attempt built, then taken apart).
                    latency = response.latency_ms
                    body = response.body.decode("utf-8", "replace")
                    fast = delivered_records(name, now, status, latency, body, int(_clock() * 1000))
                    if fast is not None:
                        record.health = HealthSignal.OK
                        record.attempt, record.state = fast
                        return Result(record, DELIVERED, name, seconds=latency / 1000)
                attempt, outcome, retry_after, status_code = answered(target, number, now, response)
        probe, order = (False, None) if not flag else order_flag(flag)
        if order is not None:
            # It waited for its created sibling, or goes past the bound: the record says so.
            attempt = replace(attempt, note=note_for(order, target.order_bound()))
        if outcome is Outcome.DELIVERED:
            record.health = HealthSignal.OK
            if state is NEW:
                # The usual case, a new delivery delivered at its first attempt: its two records
                # from format strings (logged a group per line, in _complete).
                fast = first_delivered(attempt, now_ms())
                if fast is not None:
                    record.attempt, record.state = fast
                    return Result(record, DELIVERED, name, seconds=request_seconds(attempt))
            return finish(
                record, state, number, Outcome.DELIVERED, DeliveryStatus.DELIVERED, attempt, waiting=None
            )
        return self._failed(
            target, event, record, state, number, attempt, outcome, retry_after, status_code, probe
        )

    def _failed(
        self,
        target: Target,
        event: InvitationEvent,
        record: Completion,
        state: Delivery,
        number: int,
        attempt: Attempt,
        outcome: Outcome,
        retry_after: float | None,
        status_code: int | None,
        probe: bool,
    ) -> Result:
        """What comes after an attempt that did not deliver: a retry, a wait, a pause or the end."""
        if outcome is Outcome.SKIPPED:  # a lookup found nothing and says skip (lookups.py)
            return finish(
                record, state, number, Outcome.SKIPPED, DeliveryStatus.SKIPPED, attempt, waiting=None
            )

        def expired_meanwhile() -> Result | None:
            """The deadline passed during this attempt: expired now, not after another wait (the
            ticker leaves a delivery in flight alone: store/scripts/expire.lua)."""
            if target.expire_after is None or now_ms() <= event.received_at_ms + target.expire_after * 1000:
                return None
            why = f"not delivered within expire_after={target.expire_after} s"
            note = with_outcome(attempt, Outcome.EXPIRED, f"{attempt.error}; {why}" if attempt.error else why)
            record.park = False
            return finish(record, state, number, Outcome.EXPIRED, DeliveryStatus.EXPIRED, note, waiting=None)

        if status_code == 410:
            record.health = HealthSignal.GONE
            if (late := expired_meanwhile()) is not None:
                return late
            record.park = True
            attempt = with_outcome(attempt, Outcome.DISABLED)
            return finish(
                record,
                state,
                number,
                Outcome.DISABLED,
                DeliveryStatus.RETRYING,
                attempt,
                waiting="target disabled (410 Gone)",
            )
        if status_code == 429 and state.throttles < MAX_THROTTLES:
            wait = retry_after if retry_after is not None else min(2**state.throttles, THROTTLE_BACKOFF_CAP)
            due = due_after(max(wait, 0.001))
            record.throttle_until = due  # (the target's other deliveries wait, this one or not)
            if (late := expired_meanwhile()) is not None:
                return late
            attempt = with_outcome(attempt, Outcome.THROTTLED)
            return finish(
                record,
                state,
                number,
                Outcome.THROTTLED,
                DeliveryStatus.RETRYING,
                attempt,
                due,
                throttles=state.throttles + 1,
                waiting=None,
            )
        record.health = HealthSignal.FAIL
        if outcome is not Outcome.FAILED and (late := expired_meanwhile()) is not None:
            return late
        if probe:
            record.park = True
            attempt = with_outcome(attempt, Outcome.PAUSED)
            return finish(
                record,
                state,
                number,
                Outcome.PAUSED,
                DeliveryStatus.RETRYING,
                attempt,
                waiting="target paused",
            )
        if outcome is Outcome.FAILED:
            return finish(record, state, number, Outcome.FAILED, DeliveryStatus.FAILED, attempt, waiting=None)
        delay = retry_delay(target, state.retries + 1, retry_after, self.rng)
        if delay is None:
            assert attempt.error is not None
            attempt = with_outcome(
                attempt, Outcome.FAILED, f"{attempt.error} (no retries left after {attempts_text(number)})"
            )
            # The schedule is used up: this attempt used no step of it, `retries` stays.
            return finish(record, state, number, Outcome.FAILED, DeliveryStatus.FAILED, attempt, waiting=None)
        due = due_after(delay)
        return finish(
            record,
            state,
            number,
            Outcome.RETRYING,
            DeliveryStatus.RETRYING,
            attempt,
            due,
            retries=state.retries + 1,
            waiting=None,
        )

    def _plan(self, target: Target) -> RequestPlan | None:
        """The target's planned request (None: it cannot be planned; build_request says why)."""
        plan = self._plans.get(target.name, _NO_PLAN)
        if plan is _NO_PLAN:
            try:
                plan = RequestPlan(target, self.environ)
            except Exception:
                plan = None  # build_request raises the reason, for each delivery
            self._plans[target.name] = plan
        return plan  # type: ignore[no-any-return]

    def _usual_plan(self, target: Target) -> RequestPlan | None:
        """The plan of a target without lookups or OAuth2, whose request _deliver sends itself;
        None for everything else."""
        if target.lookups or target.oauth2 is not None:
            return None
        return self._plan(target)

    async def _attempt(self, target: Target, event: InvitationEvent, number: int, now: int) -> Tried:
        """Make one request: (attempt record, DELIVERED | RETRYING | FAILED, Retry-After, status)."""
        found: dict[str, str] | None = None  # the lookups' %NAME.field% values (lookups.py)
        if target.lookups:
            try:
                found = await self.lookups.values(target, event)
            except LookupFailure as exc:
                attempt = Attempt(target.name, number, now, exc.outcome, error=exc.reason)
                return attempt, exc.outcome, None, None
        bearer: str | None = None
        try:
            if target.oauth2 is not None:
                bearer = await self.tokens.token(target, self.environ)
            plan = self._plan(target)
            if plan is not None:
                request = plan.render(event, now / 1000, found, bearer)
            else:
                request = build_request(
                    target, event, self.environ, now=now / 1000, extra=found, bearer=bearer
                )
        except TokenError as exc:
            attempt = Attempt(target.name, number, now, Outcome.RETRYING, error=exc.reason)
            return attempt, Outcome.RETRYING, None, None
        except ConfigError as exc:
            # A ${VAR} missing on this worker: the operator can fix it, so keep trying.
            return (
                Attempt(target.name, number, now, Outcome.RETRYING, error=f"{exc.reason} on the worker"),
                (Outcome.RETRYING),
                None,
                None,
            )
        except Exception as exc:
            # A ${VAR} whose value cannot be used (not base64, a line break in a header). The type
            # only: the message could quote the secret.
            error = f"cannot build the request ({type(exc).__name__}); check the ${{VARS}} on the worker"
            return (
                Attempt(target.name, number, now, Outcome.RETRYING, error=error),
                Outcome.RETRYING,
                None,
                None,
            )
        try:
            response = await self.sender.send(request)
            if response.status == 401 and bearer is not None:
                # The token was refused (revoked, or expired early): one fresh token, one more try.
                bearer = await self.tokens.refresh(target, self.environ, bearer)
                request = build_request(
                    target, event, self.environ, now=now / 1000, extra=found, bearer=bearer
                )
                response = await self.sender.send(request)
        except TokenError as exc:
            attempt = Attempt(target.name, number, now, Outcome.RETRYING, error=exc.reason)
            return attempt, Outcome.RETRYING, None, None
        except SendError as exc:
            return unsent(target, number, now, exc)
        return answered(target, number, now, response)


_NO_PLAN: Any = object()


def _recorded(task: asyncio.Task[None]) -> None:
    """A group's recording that failed unexpectedly (_complete handles Redis' failures): its
    leases run out and its deliveries are tried again, at least once."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("could not record a group of attempts: %s; they will be retried", _why(exc), exc_info=exc)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
