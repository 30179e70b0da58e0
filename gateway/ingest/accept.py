"""The accept step: callbacks of the same moment committed together, or spooled.

Every callback waits on one `Accepter`. The first to arrive schedules a flush on the event loop;
those that arrive before it runs (the same loop iteration, or while earlier flushes are on their
way to Redis) go in the same Lua call, up to MAX_BATCH of them: per event a dedupe `SET NX`, the
event, its waiting deliveries and its index entries, and for the whole batch one `SET wake NX`
and one read of the configuration version (DESIGN.md decision 10). Only then does each callback
get its 204. The call goes through gateway/fastredis.py (one connection, no pool or retry
layers): its cost is paid once per batch, so it is most of the CPU per callback when batches are
small.

Batches are capped, and up to IN_FLIGHT are on their way at once, so that the web process and
Redis work at the same time: with one batch taking every callback waiting, the process sat idle
while Redis ran it and Redis sat idle while the process answered it (a convoy: under wrk -c64 the
process' core was 0.84 busy with batches of 23; capped at 16, 0.97; bench/README.md). The cap
gives way to the bound: when Redis is away or slow, one batch takes all that waits. A timeout
closes the one connection, so every batch on it goes to the spool (a drain finds any that Redis
did store as already there).

When Redis does not answer within `bound` seconds, the batch is appended to the process' spool
(fsync'd) instead and answered 204; a background task drains the spool through the same Lua
once Redis is back. An event id already in Redis is not stored again, so a drain repeated after
a crash, or a flush that timed out but did reach Redis, stores nothing twice; what a run stopped
halfway left out of such an event (its pending deliveries, its index entries) is completed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.events import INVITATION_CREATED, InvitationEvent
from gateway.exceptions import NotDurable, StoreUnavailable
from gateway.fastredis import ScriptClient
from gateway.ingest.spool import Spool, SpoolFull, claim_orphan, read_lines
from gateway.logs import EventBatch
from gateway.ordering import NO_ORDER, IngestOrder
from gateway.store.callbacks import Kept
from gateway.store.ingest import (
    ACCEPTED,
    SPOOLED,
    AcceptResult,
    AcceptStatus,
    IngestHead,
    IngestItem,
    dedupe_key,
    ingest,
    new_item_args,
)

log = logging.getLogger("gateway.ingest")

DRAIN_BATCH = 500
MAX_BATCH = 16  # callbacks per Lua call at most (a drain's batches are DRAIN_BATCH)
# With a durability wait behind each call (GATEWAY_DURABILITY, gateway/ingest/durable.py), Redis
# spends most of a batch's time in its fsync or on its replicas, not running it: what is in
# flight per fsync is what one fsync covers, so batches may be larger.
MAX_BATCH_WAITED = 64
IN_FLIGHT = 6  # batches on their way to Redis at once: 96 callbacks
DRAIN_TIMEOUT = 30.0  # seconds for one batch of a drain: Redis answering, but slowly, or not at all
NO_CALLBACKS = Kept(0, 0)  # the callbacks inspector off
# Duplicates are logged summed: the first after a quiet second at once, then at most one summary
# per DUPLICATES_EVERY seconds, a line per repeated event up to DUPLICATE_LINES and one for the
# rest. A replay flood is the cheapest an attacker has: a formatted line per duplicate cost it
# as much CPU as the rest of the duplicate's handling (issue 16).
DUPLICATES_EVERY = 1.0
DUPLICATE_LINES = 20


def _no_order(event: InvitationEvent) -> IngestOrder:
    return NO_ORDER


def _why(exc: BaseException) -> str:
    """Why a batch is spooled, for each callback's log line."""
    return f"not confirmed: {exc}" if isinstance(exc, NotDurable) else "Redis unreachable"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass(slots=True)
class _Waiting:
    event: InvitationEvent
    targets: Sequence[str]
    version: int | None  # of the configuration `targets` were chosen by; None: unknown
    since: float  # loop.time() when it came
    done: asyncio.Future[AcceptResult] = field(repr=False)
    entry: str = ""  # the callbacks inspector's entry, unclosed (gateway/ingest/inspector.py)


class Accepter:
    """Group commit of accepted callbacks into Redis, with the spool as the fallback."""

    def __init__(
        self,
        client: ScriptClient,
        prefix: str,
        retention: int,
        spool: Spool,
        routes: Callable[[InvitationEvent], list[str]],
        limits: Callable[[InvitationEvent, int], dict[str, Any]],
        on_version: Callable[[int], Awaitable[bool]],
        wake: Callable[[], Awaitable[None]],
        dedupe_seconds: int = 600,
        bound: float = 1.0,
        expiries: Callable[[], str] | None = None,
        max_batch: int = MAX_BATCH,
        callbacks: Kept = NO_CALLBACKS,
        ordering: Callable[[InvitationEvent], IngestOrder] | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.retention = retention
        self.spool = spool
        self.routes = routes
        self.limits = limits
        self.on_version = on_version
        self.wake = wake
        self.dedupe_ms = dedupe_seconds * 1000
        self.bound = bound
        # The configuration's targets with an expire_after (store/ingest.py, `expiries`)
        self.expiries = expiries or str
        self.max_batch = max_batch
        self.callbacks = callbacks  # the bounds of the inspector's lists the ingest script pushes to
        self.ordering = ordering or _no_order  # "created" before "accepted" (gateway/ordering.py)
        self._pending: list[_Waiting] = []
        self._collecting = False  # a flush task is about to take what is pending
        self._flushers: set[asyncio.Task[None]] = set()
        self._running = 0  # flush tasks started and not yet returned
        self.redis_down_since: float | None = None
        # Duplicates not logged yet, (event type, network, first event's id or "") -> how many
        self._duplicates: dict[tuple[str, str, str], int] = {}
        self._duplicates_timer: asyncio.TimerHandle | None = None  # set: a summary is due

    async def accept(
        self, event: InvitationEvent, targets: Sequence[str], version: int | None = None, entry: str = ""
    ) -> AcceptResult:
        """Accepted, duplicate, suppressed or spooled, once it is durable; StoreUnavailable if
        neither Redis nor the spool took it.

        `version`: of the configuration that chose `targets`, so that a configuration applied
        since then adds the deliveries it now calls for (commit()). `entry`: the callbacks
        inspector's, pushed with the accept (a spooled one is the caller's to hand on).
        """
        loop = asyncio.get_running_loop()
        waiting = _Waiting(event, targets, version, loop.time(), loop.create_future(), entry)
        self._pending.append(waiting)
        if not self._collecting and self._running < IN_FLIGHT:
            self._start_flusher(loop)
        return await waiting.done

    def _start_flusher(self, loop: asyncio.AbstractEventLoop) -> None:
        self._collecting = True
        self._running += 1  # counted here and in _flush_all, not by done callbacks (run later)
        # Its first step runs on the loop's next turn: after every callback of this one.
        task = loop.create_task(self._flush_all())
        self._flushers.add(task)  # held: the loop keeps only weak references
        task.add_done_callback(self._flushers.discard)

    async def _flush_all(self) -> None:
        """Take up to MAX_BATCH of what is pending, store it, and go on while more waits and
        nobody else takes it.

        Up to IN_FLIGHT of these run at once: while one batch is in Redis the next is on its way,
        so neither the web process nor Redis waits for the other's turn. Redis runs the batches
        one after the other, each atomically (FastRedis: on one connection, in the order sent).
        """
        try:
            while True:
                self._collecting = False
                pending = self._pending
                if not pending:
                    return
                # The cap serves speed, never the bound: one batch takes all that waits while
                # Redis is away (a hung one makes each batch wait out the bound before it is
                # spooled), or slow (the oldest has waited a quarter of the bound already), as
                # IN_FLIGHT x MAX_BATCH callbacks per round trip would make the last wait on.
                cap = self.max_batch
                if self.redis_down_since is not None or (
                    asyncio.get_running_loop().time() - pending[0].since > self.bound / 4
                ):
                    cap = len(pending)
                batch, self._pending = pending[:cap], pending[cap:]
                if self._pending and self._running < IN_FLIGHT:
                    self._start_flusher(asyncio.get_running_loop())  # the rest, at once
                await self._flush(batch)
                if not self._pending or self._collecting:
                    return
                self._collecting = True
        finally:
            self._running -= 1

    async def _flush(self, batch: list[_Waiting]) -> None:
        try:
            async with asyncio.timeout(self.bound):  # no task per batch, unlike wait_for
                results = await self.commit(
                    [(w.event, w.targets) for w in batch],
                    [w.version for w in batch],
                    [w.entry for w in batch],
                )
        except Exception as exc:  # NotDurable too: Redis ran it, but did not confirm it in time
            self._redis_failed(exc)
            await self._spool(batch, _why(exc))
            return
        self._redis_back()
        accepted = []
        duplicates = self._duplicates
        for w, result in zip(batch, results, strict=True):
            status = result.status
            if status is AcceptStatus.ACCEPTED and w.targets:
                accepted.append((w.event.id, w.event.network_id, w.targets))
            elif status is AcceptStatus.DUPLICATE:
                key = (w.event.type, w.event.network_id, result.duplicate_of or "")
                duplicates[key] = duplicates.get(key, 0) + 1
            if not w.done.done():
                # Stored by an earlier try that timed out (its batch was spooled): accepted.
                w.done.set_result(ACCEPTED if status is AcceptStatus.EXISTS else result)
        if accepted and log.isEnabledFor(logging.INFO):
            # One record for the batch (the formatter writes a line per event from it): a record
            # per callback would cost as much CPU as the callback. Made without the stack walk
            # that `log.info` does to find its caller (tens of µs, once per batch).
            args = (len(accepted), EventBatch("accepted", accepted))
            log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "accepted %d: %s", args, None))
        if duplicates and self._duplicates_timer is None:
            self.log_duplicates()

    def log_duplicates(self, again: bool = True) -> None:
        """Log the duplicates not logged yet, summed per event they repeat; then again in
        DUPLICATES_EVERY seconds while more come (`again`; False: the last, at shutdown)."""
        counts, timer = self._duplicates, self._duplicates_timer
        if timer is not None and not again:
            timer.cancel()
        self._duplicates_timer = None  # as long as nothing is logged: the next one at once
        if not counts:
            return
        self._duplicates = {}
        if log.isEnabledFor(logging.INFO):
            named = list(counts.items())
            for (event_type, network, first), n in named[:DUPLICATE_LINES]:
                log.info(
                    "duplicate %s (network %s) of %s: not delivered again%s",
                    event_type,
                    network,
                    first or "an earlier one",
                    f" ({n} times)" if n > 1 else "",
                )
            rest = named[DUPLICATE_LINES:]
            if rest:
                log.info(
                    "duplicate: %d more of %d other events, not delivered again",
                    sum(n for _, n in rest),
                    len(rest),
                )
        if again:
            loop = asyncio.get_running_loop()
            self._duplicates_timer = loop.call_later(DUPLICATES_EVERY, self.log_duplicates)

    async def commit(
        self,
        items: Sequence[tuple[InvitationEvent, Sequence[str]]],
        versions: Sequence[int | None] | None = None,
        entries: Sequence[str] | None = None,
    ) -> list[AcceptResult]:
        """Store events with their deliveries in one Lua call; the result of each, in order.

        `versions`: of the configuration each item's targets were chosen by (None: unknown).
        `entries`: each item's callbacks inspector entry ("" or None: none).
        """
        now = int(time.time() * 1000)
        kept = self.callbacks
        head = IngestHead(
            self.prefix,
            now,
            self.retention,
            self.dedupe_ms,
            expiries=self.expiries(),
            callbacks_kept=kept.count,
            callbacks_ms=kept.window_ms,
        )
        limits, ordering = self.limits, self.ordering
        notes = entries if entries is not None else [""] * len(items)
        batch = []
        # Per (event type, network), once per batch: the same configuration answers for every item
        orders: dict[tuple[str, str], IngestOrder] = {}
        for (ev, t), note in zip(items, notes, strict=True):
            key = (ev.type, ev.network_id)
            order = orders.get(key)
            if order is None:
                order = orders[key] = ordering(ev)
            batch.append(
                new_item_args(
                    ev,
                    t,
                    dedupe_key(ev),
                    limits(ev, now),
                    entry=note,
                    dedupe_ttl_ms=order.dedupe_ttl_ms,
                    created_key=dedupe_key(ev, INVITATION_CREATED) if order.link else "",
                )
            )
        answer = await ingest(self.client, head, batch)
        results = answer.results
        for hold in answer.holds:
            log.warning("network %s: %s", hold.network, hold.reason)
        if answer.woke:
            await self.wake()
        version = answer.version
        changed = await self.on_version(version)
        # Targets chosen by an older configuration than the one Redis holds: deliveries for the
        # ones that now match as well, before the 204. Per item, as another batch in flight may
        # have installed the new configuration first. (A target removed meanwhile is skipped by
        # the worker.)
        if versions is None:
            stale = [changed] * len(items)
        else:
            stale = [changed if v is None else v != version for v in versions]
        if any(stale):
            extra: list[IngestItem] = []
            for (ev, targets), result, old in zip(items, results, stale, strict=True):
                if not old:
                    continue
                # (A suppressed event gets no deliveries now; a release adds them.)
                accepted = result.status is AcceptStatus.ACCEPTED
                more = [t for t in self.routes(ev) if t not in targets] if accepted else []
                if more:
                    extra.append(IngestItem.add(ev, more))
            if extra:
                head = IngestHead(
                    self.prefix, int(time.time() * 1000), self.retention, expiries=self.expiries()
                )
                if (await ingest(self.client, head, extra)).woke:
                    await self.wake()
        return results

    async def _spool(self, batch: list[_Waiting], why: str = "Redis unreachable") -> None:
        records = [{"event": w.event.to_dict(), "dk": dedupe_key(w.event)} for w in batch]
        try:
            await asyncio.to_thread(self.spool.append, records)
        except (SpoolFull, OSError) as exc:
            for w in batch:
                # The last resort: the invitation in full, so that an operator can still recover it.
                # Unmasked (GATEWAY_LOG_MASK): this line is the invitation's only copy.
                log.error(
                    "NOT STORED (%s): %s %s",
                    exc,
                    w.event.type,
                    _dumps({"event": w.event.to_dict()}),
                    extra={"unmasked": True},
                )
                if not w.done.done():
                    w.done.set_exception(
                        StoreUnavailable("cannot store the invitation: Redis is unreachable")
                    )
            return
        for w in batch:
            log.warning("spooled %s %s (network %s): %s", w.event.type, w.event.id, w.event.network_id, why)
            if not w.done.done():
                w.done.set_result(SPOOLED)

    def _redis_failed(self, exc: BaseException) -> None:
        if self.redis_down_since is None:
            self.redis_down_since = time.monotonic()
            what = str(exc) if isinstance(exc, NotDurable) else type(exc).__name__
            log.error("Redis did not take a batch (%s); spooling to %s", what, self.spool.path)

    def _redis_back(self) -> None:
        if self.redis_down_since is not None:
            log.warning("Redis reachable again after %.0f s", time.monotonic() - self.redis_down_since)
            self.redis_down_since = None

    # -- draining ---------------------------------------------------------------------------------
    async def drain_file(self, path: Path) -> tuple[int, int]:
        """Store every line of a locked spool file, in order; (stored, already there). Deletes it."""
        records = await asyncio.to_thread(read_lines, path)
        stored = existing = 0
        for i in range(0, len(records), DRAIN_BATCH):
            chunk = []
            for r in records[i : i + DRAIN_BATCH]:
                event = InvitationEvent.from_dict(r["event"])
                chunk.append((event, self.routes(event)))
            async with asyncio.timeout(DRAIN_TIMEOUT):
                results = await self.commit(chunk)
            existing += sum(1 for r in results if r.status is AcceptStatus.EXISTS)
            stored += sum(1 for r in results if r.status is not AcceptStatus.EXISTS)
        path.unlink(missing_ok=True)
        if records:
            log.warning("spool %s drained: %d stored, %d were already stored", path.name, stored, existing)
        return stored, existing

    async def drain(self) -> tuple[int, int]:
        """Drain this process' spool and every orphaned one in the folder."""
        stored = existing = 0
        with self.spool.taken() as own:
            if own is not None:
                s, e = await self.drain_file(own)
                stored, existing = stored + s, existing + e
        for path in sorted(self.spool.directory.glob("*.jsonl")):
            if path == self.spool.path:
                continue
            with claim_orphan(path) as mine:
                if mine:
                    s, e = await self.drain_file(path)
                    stored, existing = stored + s, existing + e
        return stored, existing

    async def drain_forever(self, every: float = 1.0) -> None:
        """The background drain: whenever there is something spooled and Redis answers."""
        while True:
            await asyncio.sleep(every)
            if self.spool.size() == 0 and not self._orphans():
                continue
            try:
                async with asyncio.timeout(max(self.bound, 1.0)):
                    await self.client.ping()
            except Exception:  # noqa: S112 - still down: _flush logged the outage once
                continue
            try:
                await self.drain()
            except Exception as exc:
                log.warning("spool drain interrupted (%s); trying again", type(exc).__name__)

    def _orphans(self) -> bool:
        folder = self.spool.directory
        return folder.is_dir() and any(p != self.spool.path for p in folder.glob("*.jsonl"))
