"""RQ wiring: the queue, the job class, the drain job, and the accept step.

RQ objects stop here: the web layer calls `accept`, the worker module builds its Worker from
`make_queue`. JSON serializer only (pickle on a shared Redis is code execution), and a job
class that runs nothing but the gateway's job functions, since even JSON jobs name a function
that RQ imports. Deliveries wait in Redis (`store.DeliveryQueue`); an RQ job is a "drain": it
delivers a batch of whatever is due (DESIGN.md decision 10).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from gateway.config.targets import MAX_TIMEOUT, Target
from gateway.events import InvitationEvent
from gateway.live import LiveConfig
from gateway.records import delivery_id
from gateway.store import Store

__all__ = ["accept", "delivery_id", "enqueue_drain", "make_queue"]

log = logging.getLogger("gateway.queue")

DRAIN = "gateway.jobs.drain"
TEST_SEND = "gateway.jobs.test_send"  # `gateway targets test`: one sample request, now
ALLOWED_FUNCTIONS = frozenset({DRAIN, TEST_SEND})
# A drain job claims for DRAIN_BUDGET seconds, then waits for what it has in flight (at most the
# longest target timeout); RQ's own timeout sits above both.
DRAIN_BUDGET = 15.0
JOB_TIMEOUT = int(DRAIN_BUDGET + MAX_TIMEOUT) + 60
# A drain job carries no deliveries (they wait in Redis, leased while claimed), so running one
# twice is harmless, and a crashed one is simply run again.
CRASH_RETRY = Retry(max=2, interval=0)


class GatewayJob(Job):
    """A Job that refuses to import anything but the gateway's job functions."""

    @property
    def func(self) -> Any:
        if self.func_name not in ALLOWED_FUNCTIONS:
            raise ValueError(f"refusing to run {self.func_name!r}: not a gateway job")
        return super().func


def make_queue(redis: Redis, name: str) -> Queue:
    return Queue(name, connection=redis, serializer=JSONSerializer, job_class=GatewayJob)


def enqueue_drain(queue: Queue) -> Job:
    """Queue one drain job: a worker delivers whatever is due when it runs."""
    return queue.enqueue(
        DRAIN,
        job_timeout=JOB_TIMEOUT,
        result_ttl=0,  # the deliveries' own records are the result
        failure_ttl=86400,
        retry=CRASH_RETRY,
        description="deliver what is due",
    )


def enqueue_test_send(queue: Queue, test_id: str, wait: int) -> Job:
    """Queue a test send; a worker that has not started it within `wait` seconds drops it."""
    return queue.enqueue(
        TEST_SEND,
        test_id,
        job_timeout=int(2 * MAX_TIMEOUT) + 30,  # its lookups, then its request
        ttl=max(wait, 1),
        result_ttl=0,  # the result is written under its own key
        failure_ttl=3600,
        description="test send",
    )


def accept(store: Store, queue: Queue, live: LiveConfig, event: InvitationEvent) -> list[str]:
    """Store the event and one waiting delivery per matching target; returns the target names.

    One Redis round trip (a MULTI/EXEC pipeline) in the common case: the event, its deliveries
    in the waiting set, a `SET wake NX` that tells whether a drain job is already queued, and a
    read of the configuration version. A drain job is queued only when none is (a second round
    trip, rare under load). If targets changed since this process last looked, the deliveries
    for targets that now match as well are stored before returning, so a reload is never
    missed. (A target removed meanwhile is recorded as skipped by the worker.)
    """
    version, config = live.snapshot()
    targets = config.routes(event.type, event.network_id)
    with store.redis.pipeline(transaction=True) as pipe:
        store.write_event(pipe, event, [t.name for t in targets])
        store.queue_config_version(pipe)
        if targets:
            store.queue_wake(pipe)
        results = pipe.execute()
    if targets and results[-1]:
        _wake(queue, event)
    seen = int(results[-2 if targets else -1] or 0)
    if seen != version:
        # The event is stored: whatever happens now, the answer is 204. A failure here leaves
        # the newest targets without this one event, and says so in the log.
        try:
            newer = live.refresh(seen)
            known = {t.name for t in targets}
            extra = [t for t in newer.routes(event.type, event.network_id) if t.name not in known]
            if extra:
                _enqueue_more(store, queue, event, extra)
                targets = [*targets, *extra]
        except Exception:
            log.error("event %s stored, but not enqueued for targets added since", event.id, exc_info=True)
    return [t.name for t in targets]


def _enqueue_more(store: Store, queue: Queue, event: InvitationEvent, targets: Sequence[Target]) -> None:
    with store.redis.pipeline(transaction=True) as pipe:
        store.write_event(pipe, event, [t.name for t in targets])
        store.queue_wake(pipe)
        woke = pipe.execute()[-1]
    if woke:
        _wake(queue, event)


def _wake(queue: Queue, event: InvitationEvent) -> None:
    # The deliveries are stored: if this fails, every worker's ticker finds them within seconds.
    try:
        enqueue_drain(queue)
    except Exception:
        log.warning("event %s stored; no drain job queued, the workers' ticker will find it", event.id)
