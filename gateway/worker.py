"""The delivery worker process: an RQ worker whose jobs drain the delivery queue, and a ticker.

`SimpleWorker` runs jobs in the worker process itself, so the event loop, the HTTP connection
pool and the Redis connections survive from one job to the next (a forking Worker pays connect
and TLS setup on every job). A job that crashes the interpreter takes the worker with it: the
leases of the deliveries it held run out and they are due again, and the process manager
restarts the worker.

RQ's scheduler is not used. Retries are due-times in Redis, and each worker runs a ticker
thread that, once a second, queues a drain job when something is due and none is queued,
probes paused targets, releases deliveries held back by a concurrency cap and tells the alert
target of the prefix guard's holds, when one starts and when it ends. So a retry due at
T is attempted about a second after T (or as soon as a worker is up again), whatever happened
meanwhile: a Redis restart (with its data), a dead worker, hours without traffic.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.client import PubSub, PubSubWorkerThread
from redis.exceptions import RedisError
from rq import Queue
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from gateway import wiring
from gateway.config.targets import Config
from gateway.delivery.engine import DEAD_ALERT_EVERY, Engine, EngineSettings, dead_letter_message
from gateway.delivery.outcomes import now_ms
from gateway.delivery.sender import Sender
from gateway.events import make_alert
from gateway.fastredis import script_client
from gateway.live import LiveConfig
from gateway.metrics import Tally, count_deliveries, flush_commands, worker_name
from gateway.queue import DRAIN_BUDGET, GatewayJob, enqueue_drain, make_queue
from gateway.records import iso_ms
from gateway.settings import Settings
from gateway.store.holds import HoldChange, Holds, PrefixHold
from gateway.store.ops import OpsKeys

log = logging.getLogger("gateway.worker")

TICK = 1.0  # seconds between two looks at the waiting set
ENV_REPORT_TICKS = 2  # a worker reports its environment names every 2 ticks...
ENV_REPORT_TTL = 15  # ...and counts as gone 15 s after its last report
STARTUP_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # waits between tries while Redis is away at start


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; kept for odd platforms
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Runtime:
    """What a worker process keeps across jobs: event loop, HTTP pool, Redis clients, config."""

    def __init__(self, settings: Settings, queue: Queue) -> None:
        self.settings = settings
        self.queue = queue
        self.live = LiveConfig(wiring.store(settings, queue.connection))
        self.waiting = wiring.delivery_queue(settings, queue.connection)
        self.loop = _new_loop()
        self.sender = Sender()
        self._aio = wiring.aio_redis_client(settings, socket_timeout=10)
        # Claims and completions through the lean client (Sentinel: through _aio).
        self._scripts = script_client(wiring.redis_url(settings), self._aio, connect_timeout=10, decode=True)
        self.engine = Engine(
            wiring.delivery_queue(settings, self._aio, self._scripts, script_timeout=10),
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
        self.engine.tally = Tally()  # the ticker adds it to Redis once a second

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
        """Close the HTTP clients and the Redis connections (nothing left open at exit)."""
        if self.loop.is_closed() or self.loop.is_running():
            return
        try:
            self._cancel_all()
            self.loop.run_until_complete(self.sender.close())
            self.loop.run_until_complete(self._scripts.aclose())
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

    def __init__(
        self,
        settings: Settings,
        queue: Queue,
        interval: float = TICK,
        name: str = "",
        tally: Tally | None = None,
    ) -> None:
        super().__init__(name="gateway-ticker", daemon=True)
        self.ops = OpsKeys(settings.prefix)
        self.tally = tally
        self.name_ = worker_name()
        self.redis = wiring.redis_client(settings)
        self.waiting = wiring.delivery_queue(settings, self.redis)
        self.store = wiring.store(settings, self.redis)
        self.holds = Holds(self.redis, settings.prefix)
        self.live = LiveConfig(self.store)
        self.worker_name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.queue = make_queue(self.redis, queue.name)
        self.interval = interval
        self._halt = threading.Event()
        self._count = 0
        self._down_since: float | None = None
        self._flushing: dict[tuple[str, ...], float] = {}

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.safe_tick()
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                self.beat(pipe, final=True)
                pipe.execute()
        except RedisError:
            pass  # its heartbeat simply grows old
        self.redis.close()

    def beat(self, pipe: Any, final: bool = False) -> None:
        """Queue the heartbeat (/readyz) and this worker's counts since the last one (/metrics)."""
        if final:
            self.ops.gone(pipe, self.name_)
        else:
            self.ops.beat(pipe, self.name_, now_ms())
        if self.tally is not None:
            data = self.tally.take()
            self._flushing = data
            flush_commands(pipe, self.ops.metrics, data)

    def safe_tick(self) -> None:
        try:
            self._flushing = {}
            with self.redis.pipeline(transaction=False) as pipe:
                self.beat(pipe)
                pipe.execute()
            self._flushing = {}
            self.tick()
        except RedisError as exc:
            if self._flushing and self.tally is not None:
                self.tally.put_back(self._flushing)  # counted at the next tick that reaches Redis
                self._flushing = {}
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("Redis unreachable (%s); retrying every %g s", _why(exc), self.interval)
            return
        except Exception as exc:
            log.error("ticker failed (%s); trying again in %g s", _why(exc), self.interval)
            log.debug("ticker failure", exc_info=True)
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
        self.tell_holds(config, now)
        self.expire_due(config, now)
        first = self.waiting.next_due()
        if first is not None and first <= now:
            overdue = first <= now - 1000
            if self.waiting.set_wake() or (overdue and self.queue.count == 0):
                enqueue_drain(self.queue)
        if self._count % 60 == 1:
            self.waiting.trim_dead(now)
        if self._count % ENV_REPORT_TICKS == 1:
            self.report_env(config)
        if self._count % 5 == 1:
            self.store.redis_lost_data()  # logs at ERROR once when Redis came back empty

    def tell_holds(self, config: Config, now: int) -> None:
        """Tell the alert target of each hold of the prefix guard that started or ended (each
        once, whichever worker's ticker takes it)."""
        news = self.holds.news(now)
        told = False
        for change, hold in news:
            message = hold_message(change, hold)
            log.warning("%s", message)
            name = config.alert_target
            if name is not None and config.target(name) is not None:
                self.waiting.write_alert(make_alert(message), name)
                told = True
        if told and self.waiting.set_wake():
            enqueue_drain(self.queue)

    def expire_due(self, config: Config, now: int) -> None:
        """Record as expired the waiting deliveries whose expire_after passed (a dead letter,
        counted and alerted now, not at their next try; one Lua call, store/scripts/expire.lua)."""
        expired = self.waiting.expire_due(
            now, [(t.name, t.expire_after) for t in config.targets if t.expire_after is not None]
        )
        if not expired:
            return
        if self.tally is not None:
            count_deliveries(self.tally, [(did.partition("-")[2], "expired", None) for did, _ in expired])
        told = False
        for did, reason in expired:
            log.warning("delivery %s expired: %s", did, reason)
        for target in sorted({did.partition("-")[2] for did, _ in expired}):
            name = config.alert_target
            if name is None or name == target or config.target(name) is None:
                continue
            if self.waiting.alert_gate(f"dead:{target}", DEAD_ALERT_EVERY):
                did, reason = next((d, r) for d, r in expired if d.partition("-")[2] == target)
                self.waiting.write_alert(make_alert(dead_letter_message(target, did, reason)), name)
                told = True
        if told and self.waiting.set_wake():
            enqueue_drain(self.queue)

    def report_env(self, config: Config) -> None:
        """Publish the names (never the values) of the targets' variables this worker has."""
        referenced: set[str] = set()
        for target in config.targets:
            referenced |= target.env_names()
        self.store.publish_env_names(self.worker_name, referenced, os.environ, ENV_REPORT_TTL)


# How long RQ's pubsub thread (RQ's remote commands: shutdown, kill-horse, stop-job) waits for a
# message before it looks at its stop flag again; RQ's own 60 s could hold a stop that long.
PUBSUB_WAKE = 0.25


def hold_message(change: HoldChange, hold: PrefixHold) -> str:
    """What the alert target is told of a hold of the prefix guard."""
    where = f"network {hold.network}: prefix +{hold.prefix}"
    if change is HoldChange.HELD:
        return (
            f"{where} held until {iso_ms(hold.ends_ms)}: {hold.reason}. Its invitations are kept, "
            f"suppressed; `gateway holds lift {hold.id}` lifts the hold"
        )
    how = f"lifted {hold.lifted_by}" if hold.lifted_by else "its time ran out"
    return (
        f"{where} no longer held ({how}). What it held back stays suppressed: "
        f"`gateway suppressed release --network {shlex.quote(hold.network)} --reason guard` sends it"
    )


class GatewayWorker(SimpleWorker):
    """RQ's SimpleWorker; a stop request also tells the engine to wind down its batch."""

    # RQ backs off up to 60 s between reconnects; retries must not wait that long after Redis.
    max_connection_wait_time = 5.0

    def subscribe(self) -> None:
        """RQ's, but the thread looks at its stop flag every PUBSUB_WAKE s (see unsubscribe)."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        pubsub = self.connection.pubsub()
        pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub = pubsub
        self.pubsub_thread = pubsub.run_in_thread(  # type: ignore[assignment]  # (RQ types it None)
            sleep_time=PUBSUB_WAKE, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def unsubscribe(self) -> None:
        """Stop the pubsub thread, which closes its connection (and so the subscription), bounded.

        RQ's own sends UNSUBSCRIBE, then stops the thread, whose stop() in redis-py 8.2 waits for
        it to end. The thread, woken by the UNSUBSCRIBE reply before the stop flag was set, went
        back to wait for a message (60 s, RQ's sleep_time): an idle worker then hung on SIGTERM
        until the process manager killed it (intermittently, as the race went). Here no command
        is sent: the flag is set, the thread sees it within PUBSUB_WAKE and closes the pubsub.
        """
        thread: PubSubWorkerThread | None = self.pubsub_thread
        pubsub: PubSub | None = self.pubsub
        self.pubsub_thread = None
        if thread is None:
            return
        self.log.info("Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name)
        # Bounded: while Redis is away the thread sleeps in RQ's exception handler (2 s); it is a
        # daemon thread, and ends on its own once it sees the flag.
        thread.stop(timeout=1.0)
        if pubsub is not None and not thread.is_alive():
            pubsub.close()

    stop_asked = False  # a SIGTERM or SIGINT came (RQ keeps the date in Redis, which may be gone)
    # Whether a SIGTERM or SIGINT came before RQ installed its handlers: run_worker's own took it.
    stopped_before: Callable[[], bool] | None = None

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()  # type: ignore[no-untyped-call]
        if self.stopped_before is not None and self.stopped_before():
            # Starting (RQ's bootstrap) when the stop came, one a process manager sends right after
            # the start: stop now, through RQ's loop, which deregisters the worker on its way out.
            log.info("worker %s: stop requested while starting; stopping", self.name)
            self.stop_asked = True
            self._stop_requested = True

    def request_stop(self, signum: Any, frame: Any) -> None:
        self.stop_asked = True
        if _runtime is not None:
            _runtime.engine.request_stop()
        try:
            super().request_stop(signum, frame)  # type: ignore[no-untyped-call]
        except RedisError as exc:
            # Busy, and RQ could not note the stop in Redis: it stops after the batch all the same.
            log.warning("stop requested while Redis is away (%s); stopping after this batch", _why(exc))


def run_worker(
    settings: Settings,
    burst: bool = False,
    max_jobs: int | None = None,
    maintenance_interval: int = 60,
    name: str | None = None,
) -> bool:
    """Work the queue until stopped. SIGTERM: in-flight sends finish or are handed back in 20 s."""
    global _runtime
    stopping = False

    def stop_while_waiting(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    # RQ's blocking dequeue sets its own, longer socket timeout on this client.
    redis = wiring.redis_client(settings, socket_timeout=None)
    signal.signal(signal.SIGTERM, stop_while_waiting)
    signal.signal(signal.SIGINT, stop_while_waiting)
    if not _wait_for_redis(redis, wiring.shown_url(settings), lambda: stopping):
        return False
    queue = make_queue(redis, settings.queue_name)
    _runtime = Runtime(settings, queue)
    # What is built so far lives as long as the process: keep the cycle collector off it, and let
    # it run less often (every delivery allocates, few make cycles). As `gateway web` does.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    ticker = Ticker(settings, queue, name=name or "", tally=_runtime.engine.tally)
    ticker.safe_tick()  # a backlog left while no worker ran gets its drain job now
    ticker.start()

    shown = wiring.shown_url(settings)
    worked = False
    try:
        while True:
            try:
                worker = GatewayWorker(
                    [queue],
                    connection=redis,
                    serializer=JSONSerializer,
                    job_class=GatewayJob,
                    name=name,
                    maintenance_interval=maintenance_interval,
                )
            except RedisError:
                # (RQ names its connection when it builds a worker.)
                if not _wait_for_redis(redis, shown, lambda: stopping):
                    return worked
                continue
            worker.stopped_before = lambda: stopping
            log.info("worker %s on queue %s", worker.name, settings.queue_name)
            try:
                worked = bool(worker.work(burst=burst, max_jobs=max_jobs, logging_level="INFO")) or worked
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
            if not _wait_for_redis(redis, shown, lambda: stopping):
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


def _wait_for_redis(redis: Redis, shown: str, stopping: Callable[[], bool]) -> bool:
    """Until Redis answers (True) or a stop signal (False): one line per try, waits doubling to 30 s.

    A worker started before Redis (or during an outage) waits rather than exits: a process
    manager would only restart it, some (Heroku) with a growing delay of their own.
    """
    for attempt in itertools.count():
        try:
            redis.ping()
        except RedisError as exc:
            wait = STARTUP_BACKOFF[min(attempt, len(STARTUP_BACKOFF) - 1)]
            log.warning("Redis at %s does not answer (%s); trying again in %g s", shown, _why(exc), wait)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if stopping():
                    log.info("stopped while waiting for Redis")
                    return False
                time.sleep(0.1)
            continue
        if attempt:
            log.warning("Redis at %s answers; starting", shown)
        return True
    return False  # pragma: no cover - itertools.count() does not end


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# -- `gateway worker --processes N` ------------------------------------------------------------------

STOP_DEADLINE = 25.0  # seconds the supervisor gives its workers after SIGTERM (a host's limit: 30)


def supervise_workers(count: int, name: str | None, maintenance_interval: int) -> int:
    """Run `count` worker processes; restart one that dies; SIGTERM stops all within 25 s.

    A worker that dies soon after its start is restarted after a wait that doubles (up to 30 s),
    so a worker that cannot run does not spin. Returns the exit status for the supervisor.
    """
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    base = [sys.executable, "-m", "gateway", "worker", "--maintenance-interval", str(maintenance_interval)]
    prefix = name or f"{socket.gethostname()}-{os.getpid()}"
    slots: list[subprocess.Popen[bytes] | None] = [None] * count
    started = [0.0] * count
    delay = [0.0] * count
    not_before = [0.0] * count
    try:
        while not stopping:
            now = time.monotonic()
            for i in range(count):
                proc = slots[i]
                if proc is not None and proc.poll() is not None:
                    lived = now - started[i]
                    delay[i] = 0.0 if lived > 60 else min(max(delay[i] * 2, 1.0), 30.0)
                    log.error(
                        "worker process %d (%s.%d) exited with status %s; restarting it in %g s",
                        proc.pid,
                        prefix,
                        i,
                        proc.returncode,
                        delay[i],
                    )
                    slots[i] = None
                    not_before[i] = now + delay[i]
                if slots[i] is None and now >= not_before[i]:
                    slots[i] = subprocess.Popen([*base, "--name", f"{prefix}.{i}"])
                    started[i] = now
            time.sleep(0.2)
    finally:
        live = [p for p in slots if p is not None and p.poll() is None]
        for p in live:
            os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_DEADLINE
        for p in live:
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("worker process %d did not stop within %g s; killing it", p.pid, STOP_DEADLINE)
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
    log.info("all %d worker processes stopped", count)
    return 0
