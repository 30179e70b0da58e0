"""The delivery worker process: an RQ worker whose jobs drain the delivery queue, and a ticker.

`SimpleWorker` runs jobs in the worker process itself, so the event loop, the HTTP connection
pool and the Redis connections survive from one job to the next (a forking Worker pays connect
and TLS setup on every job). A job that crashes the interpreter takes the worker with it: the
leases of the deliveries it held run out and they are due again, and the process manager
restarts the worker.

RQ's scheduler is not used. Retries are due-times in Redis, and each worker runs a ticker
thread that, once a second, queues a drain job when something is due and none is queued,
probes paused targets and releases deliveries held back by a concurrency cap. So a retry due at
T is attempted about a second after T (or as soon as a worker is up again), whatever happened
meanwhile: a Redis restart (with its data), a dead worker, hours without traffic.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
import time
from typing import Any

import redis.asyncio as aioredis
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from gateway.delivery.engine import Engine, EngineSettings, now_ms
from gateway.delivery.sender import Sender
from gateway.queue import DRAIN_BUDGET, GatewayJob, enqueue_drain, make_queue
from gateway.settings import LiveConfig, Settings
from gateway.store import DeliveryQueue, Store
from gateway.targets import Config

log = logging.getLogger("gateway.worker")

TICK = 1.0  # seconds between two looks at the waiting set


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; kept for odd platforms
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Runtime:
    """What a worker process keeps across jobs: event loop, HTTP pool, Redis clients, config."""

    def __init__(self, settings: Settings, queue: Queue) -> None:
        url = settings.require_redis_url()
        self.settings = settings
        self.queue = queue
        retention = settings.retention_days * 86400
        self.live = LiveConfig(Store(queue.connection, prefix=settings.prefix, retention=retention))
        self.waiting = DeliveryQueue(queue.connection, settings.prefix, retention)
        self.loop = _new_loop()
        self.sender = Sender()
        self._aio = aioredis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=3)
        self.engine = Engine(
            DeliveryQueue(self._aio, settings.prefix, retention),
            self.sender,
            self.config_for,
            os.environ,
            EngineSettings(
                concurrency=settings.worker_concurrency,
                lease_ms=settings.lease_seconds * 1000,
                allow_private=settings.allow_private_targets,
            ),
            on_backlog=self._backlog,
        )

    def config_for(self, version: int) -> Config:
        return self.live.refresh(version)

    async def _backlog(self) -> None:
        if await self.engine.queue.set_wake():
            enqueue_drain(self.queue)

    def drain(self) -> dict[str, Any]:
        # Cleared first: a callback stored from now on queues another drain job, so none is missed.
        self.waiting.clear_wake()
        if self.engine.stopping:
            return {"stopped": True}
        try:
            stats = self.loop.run_until_complete(self.engine.run(DRAIN_BUDGET))
        except BaseException:
            # Interrupted (RQ's job timeout, a cold shutdown): what was in flight stays leased
            # and becomes due again; leave the loop clean for the next job.
            self._cancel_all()
            raise
        return stats.to_dict()

    def _cancel_all(self) -> None:
        if self.loop.is_closed() or self.loop.is_running():
            return
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def close(self) -> None:
        """Close the HTTP session and the Redis connections (no "Unclosed client session")."""
        if self.loop.is_closed() or self.loop.is_running():
            return
        try:
            self._cancel_all()
            self.loop.run_until_complete(self.sender.close())
            self.loop.run_until_complete(self._aio.aclose())
        except Exception:
            log.warning("closing the worker's connections failed", exc_info=True)
        finally:
            self.loop.close()


_runtime: Runtime | None = None


def current_runtime() -> Runtime:
    assert _runtime is not None, "drain jobs run in a `gateway worker` process"
    return _runtime


class Ticker(threading.Thread):
    """Once a second: queue a drain job when something is due, probe paused targets, unpark."""

    def __init__(self, settings: Settings, queue: Queue, interval: float = TICK) -> None:
        super().__init__(name="gateway-ticker", daemon=True)
        url = settings.require_redis_url()
        self.redis = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
        retention = settings.retention_days * 86400
        self.waiting = DeliveryQueue(self.redis, settings.prefix, retention)
        self.live = LiveConfig(Store(self.redis, prefix=settings.prefix, retention=retention))
        self.queue = make_queue(self.redis, queue.name)
        self.interval = interval
        self._halt = threading.Event()
        self._count = 0
        self._down_since: float | None = None

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.safe_tick()
        self.redis.close()

    def safe_tick(self) -> None:
        try:
            self.tick()
        except RedisError as exc:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("Redis unreachable (%s); retrying every %g s", type(exc).__name__, self.interval)
            return
        except Exception:
            log.exception("ticker failed; trying again in %g s", self.interval)
            return
        if self._down_since is not None:
            log.warning("Redis reachable again after %.0f s", time.monotonic() - self._down_since)
            self._down_since = None

    def tick(self) -> None:
        self._count += 1
        now = now_ms()
        config = self.live.refresh()
        # Probes and unparked deliveries first, then the look at what is due: they are due now,
        # and go out on this tick rather than the next.
        for name in self.waiting.held_targets():
            target = config.target(name)
            if target is not None:
                self.waiting.probe(name, now, target.probe_interval * 1000)
        for target in config.targets:
            if target.concurrency:
                self.waiting.unpark(target.name, now, target.concurrency)
        if self._count % 10 == 1:
            capped = {t.name for t in config.targets if t.concurrency}
            for name in self.waiting.parked_targets():
                if name not in capped and config.target(name) is not None:
                    self.waiting.unpark(name, now, 0)
        first = self.waiting.next_due()
        if first is not None and first <= now:
            overdue = first <= now - 1000
            if self.waiting.set_wake() or (overdue and self.queue.count == 0):
                enqueue_drain(self.queue)
        if self._count % 60 == 1:
            self.waiting.trim_dead(now)


class GatewayWorker(SimpleWorker):
    """RQ's SimpleWorker; a stop request also tells the engine to wind down its batch."""

    # RQ backs off up to 60 s between reconnects; retries must not wait that long after Redis.
    max_connection_wait_time = 5.0

    stop_asked = False  # a SIGTERM or SIGINT came (RQ keeps the date in Redis, which may be gone)

    def request_stop(self, signum: Any, frame: Any) -> None:
        self.stop_asked = True
        if _runtime is not None:
            _runtime.engine.request_stop()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]


def run_worker(
    settings: Settings,
    burst: bool = False,
    max_jobs: int | None = None,
    maintenance_interval: int = 60,
    name: str | None = None,
) -> bool:
    """Work the queue until stopped. SIGTERM: in-flight sends finish or are handed back in 20 s."""
    global _runtime
    redis = Redis.from_url(settings.require_redis_url())
    queue = make_queue(redis, settings.queue_name)
    _runtime = Runtime(settings, queue)
    # What is built so far lives as long as the process: keep the cycle collector off it, and let
    # it run less often (every delivery allocates, few make cycles). As `gateway web` does.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    ticker = Ticker(settings, queue)
    ticker.safe_tick()  # a backlog left while no worker ran gets its drain job now
    ticker.start()
    stopping = False

    def stop_while_waiting(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    try:
        while True:
            worker = GatewayWorker(
                [queue],
                connection=redis,
                serializer=JSONSerializer,
                job_class=GatewayJob,
                name=name,
                maintenance_interval=maintenance_interval,
            )
            log.info("worker %s on queue %s", worker.name, settings.queue_name)
            worked = False
            try:
                worked = bool(worker.work(burst=burst, max_jobs=max_jobs, logging_level="INFO"))
            except RedisError as exc:
                if worker.stop_asked:
                    # RQ's bookkeeping on the way out (register_death) needs Redis; the deliveries
                    # do not: what this worker held stays leased and is due again later.
                    log.error("worker %s stopped without Redis (%s); exit status 1", worker.name, _why(exc))
                    raise SystemExit(1) from None
            if worker.stop_asked or burst or max_jobs is not None:
                return worked
            # RQ's loop ended on an error (Redis gone mid-job, say). A process manager would
            # restart the worker, some (Heroku) with a growing delay: wait for Redis here instead.
            signal.signal(signal.SIGTERM, stop_while_waiting)
            signal.signal(signal.SIGINT, stop_while_waiting)
            log.warning(
                "worker %s: its loop ended (Redis unreachable?); working again once Redis answers",
                worker.name,
            )
            while not stopping:
                try:
                    redis.ping()
                    break
                except RedisError:
                    time.sleep(1.0)
            if stopping:
                return worked
            # Its registration outlived it (Redis kept its data): mark it dead, so that the same
            # name can register again.
            try:
                worker.register_death()  # type: ignore[no-untyped-call]
            except RedisError:
                continue
    finally:
        ticker.stop()
        ticker.join(5)
        _runtime.close()
        _runtime = None


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
