"""RQ wiring: the queue, the job class, and the accept step (store + enqueue in one round trip).

RQ objects stop here: the web layer calls `accept`, the worker module builds its Worker from
`make_queue`. JSON serializer only (pickle on a shared Redis is code execution), and a job
class that runs nothing but the delivery function, since even JSON jobs name a function that
RQ imports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from gateway.events import InvitationEvent
from gateway.settings import LiveConfig
from gateway.store import Store
from gateway.targets import MAX_TIMEOUT, Target

log = logging.getLogger("gateway.queue")

DELIVER = "gateway.delivery.deliver"
ALLOWED_FUNCTIONS = frozenset({DELIVER})
# A job may run for the longest HTTP timeout a target can have, plus time to render and record:
# fixed, so a reload that raises a target's timeout cannot make RQ kill an attempt mid-send.
JOB_TIMEOUT = int(MAX_TIMEOUT) + 30
# RQ's own retries cover what the delivery function cannot: a worker killed mid-job (RQ's
# abandoned-job cleanup retries it) or an unexpected exception. Delivery outcomes (HTTP errors)
# are retried by the function returning a Retry, on the target's own schedule.
CRASH_RETRY = Retry(max=5, interval=[10, 30, 60, 300, 900])


class GatewayJob(Job):
    """A Job that refuses to import anything but the gateway's delivery function."""

    @property
    def func(self) -> Any:
        if self.func_name not in ALLOWED_FUNCTIONS:
            raise ValueError(f"refusing to run {self.func_name!r}: not a gateway job")
        return super().func


def make_queue(redis: Redis, name: str) -> Queue:
    return Queue(name, connection=redis, serializer=JSONSerializer, job_class=GatewayJob)


def delivery_id(event_id: str, target_name: str) -> str:
    """Stable per (event, target): the RQ job id and the id sent to the target for dedupe.

    Target names are [A-Za-z0-9_-] and event ids are ULIDs, so this fits RQ's job id rule.
    """
    return f"{event_id}-{target_name}"


def _job_data(event: InvitationEvent, target: Target, retention: int) -> Any:
    return Queue.prepare_data(
        DELIVER,
        args=(event.id, target.name),
        job_id=delivery_id(event.id, target.name),
        timeout=JOB_TIMEOUT,
        result_ttl=0,  # our own delivery record is the result
        failure_ttl=retention,
        retry=CRASH_RETRY,
        description=f"deliver {event.type} {event.id} to {target.name}",
    )


def accept(store: Store, queue: Queue, live: LiveConfig, event: InvitationEvent) -> list[str]:
    """Store the event and enqueue one delivery per matching target; returns the target names.

    One Redis round trip (a MULTI/EXEC pipeline) in the common case. The pipeline also reads the
    configuration version: if targets changed since this process last looked, the deliveries
    for targets that now match as well are enqueued in a second round trip before returning, so
    a reload is never missed. (A target removed meanwhile is recorded as skipped by the worker.)
    """
    version, config = live.snapshot()
    targets = config.routes(event.type, event.network_id)
    with store.redis.pipeline(transaction=True) as pipe:
        store.write_event(pipe, event, [t.name for t in targets])
        if targets:
            queue.enqueue_many([_job_data(event, t, store.retention) for t in targets], pipeline=pipe)
        store.queue_config_version(pipe)
        results = pipe.execute()
    seen = int(results[-1] or 0)
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
        queue.enqueue_many([_job_data(event, t, store.retention) for t in targets], pipeline=pipe)
        pipe.execute()
