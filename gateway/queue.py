"""RQ wiring: the queue, the job class, the drain and test-send jobs.

RQ objects stop here: the web's accept step queues a drain job through `enqueue_drain` (when the
ingest script says none is queued), the worker module builds its Worker from `make_queue`. JSON
serializer only (pickle on a shared Redis is code execution), and a job class that runs nothing
but the gateway's job functions, since even JSON jobs name a function that RQ imports.
Deliveries wait in Redis (`store.queue.DeliveryQueue`); an RQ job is a "drain": it delivers a
batch of whatever is due (DESIGN.md decision 10).
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from gateway.config.targets import MAX_TIMEOUT

__all__ = ["enqueue_drain", "enqueue_test_send", "make_queue"]

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
