"""The no-op RQ job of the benchmarks, and a worker that runs it the way the gateway's runs its own.

`main` mirrors gateway/worker.py `run_worker`: a `SimpleWorker` with the JSON serializer, the
scheduler, a 60 s maintenance interval and INFO logging, but the plain `Job` class (the
gateway's `GatewayJob` refuses to run anything but its delivery function). So the gateway's
worker and this one differ only in the job body.

Run: ``.venv/bin/python bench/jobs.py REDIS_URL QUEUE [--burst] [--log-level INFO]``
"""

from __future__ import annotations

import argparse
import logging

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

NOOP = "jobs.noop"  # the name a worker imports, with bench/ on sys.path


def noop() -> None:
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("redis_url")
    parser.add_argument("queue")
    parser.add_argument("--burst", action="store_true")
    # As GATEWAY_LOG_LEVEL for the gateway's worker: the root logger's level. RQ's own worker
    # logger stays at INFO in both, as gateway/worker.py sets it.
    parser.add_argument("--log-level", default="INFO", help="root log level (INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redis = Redis.from_url(args.redis_url)
    queue = Queue(args.queue, connection=redis, serializer=JSONSerializer)
    worker = SimpleWorker([queue], connection=redis, serializer=JSONSerializer, maintenance_interval=60)
    worker.work(with_scheduler=True, burst=args.burst, logging_level="INFO")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
