"""The delivery worker: an RQ worker on the gateway's one queue, with the scheduler running.

`SimpleWorker` runs jobs in the worker process itself, so the HTTP connection pool survives
from one job to the next (a forking Worker pays connect and TLS setup on every job, and RQ's
own benchmark puts it 6.5 times slower on trivial jobs). The price is that a job that crashes
the interpreter takes the worker with it: RQ's abandoned-job cleanup then retries the job
(every job carries a Retry), and the process manager restarts the worker.
"""

from __future__ import annotations

import logging

from redis import Redis
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from gateway.queue import GatewayJob, make_queue
from gateway.settings import Settings

log = logging.getLogger("gateway.worker")


def run_worker(
    settings: Settings,
    burst: bool = False,
    max_jobs: int | None = None,
    maintenance_interval: int = 60,
    name: str | None = None,
) -> bool:
    """Work the queue until stopped (SIGTERM finishes the current job first)."""
    redis = Redis.from_url(settings.require_redis_url())
    queue = make_queue(redis, settings.queue_name)
    worker = SimpleWorker(
        [queue],
        connection=redis,
        serializer=JSONSerializer,
        job_class=GatewayJob,
        name=name,
        maintenance_interval=maintenance_interval,
    )
    log.info("worker %s on queue %s", worker.name, settings.queue_name)
    return bool(worker.work(with_scheduler=True, burst=burst, max_jobs=max_jobs, logging_level="INFO"))
