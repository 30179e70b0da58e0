"""A worker that has run a job and is idle stops promptly on SIGTERM, every time.

Under redis-py 8.2, RQ's teardown could hang: it sends UNSUBSCRIBE and then stops its pubsub
thread, whose stop() waits for the thread, and the thread, woken by the UNSUBSCRIBE reply before
the stop flag was set, went back to wait up to 60 s for a message (gateway/worker.py,
GatewayWorker.unsubscribe). A race, so the test repeats it: twenty real `gateway worker`
processes on one real Redis, four at a time, each with a queue of its own so that each one runs
a job; each must be gone 2 s after its SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from redis import Redis
from rq.command import send_shutdown_command
from rq.worker import Worker

from gateway.queue import enqueue_drain, make_queue
from tests.conftest import Process
from tests.e2e.e2e_support import wait_until

ROUNDS = 5
AT_ONCE = 4
STOP_WITHIN = 2.0  # seconds from SIGTERM to the process being gone


def _environ(redis_url: str, queue: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "REDIS_"))}
    env.update(
        REDIS_URL=redis_url,
        GATEWAY_QUEUE=queue,
        GATEWAY_PREFIX=prefix,
        GATEWAY_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return env


def _idle_after_a_job(redis: Redis, name: str) -> bool:
    worker = Worker.find_by_key(f"rq:worker:{name}", connection=redis)
    return worker is not None and worker.successful_job_count >= 1 and worker.get_state() == "idle"


def test_a_worker_that_ran_a_job_stops_within_2_s_of_sigterm_twenty_times(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    for round_ in range(ROUNDS):
        batch: list[tuple[str, Process]] = []
        try:
            for i in range(AT_ONCE):
                n = round_ * AT_ONCE + i
                name = f"stop-{tag}-{n}"
                proc = Process(
                    [sys.executable, "-m", "gateway", "worker", "--name", name],
                    _environ(redis_url, f"q-{tag}-{n}", f"p{n}"),
                    tmp_path / f"worker-{n}.log",
                )
                batch.append((name, proc))
            for i in range(len(batch)):
                enqueue_drain(make_queue(redis, f"q-{tag}-{round_ * AT_ONCE + i}"))
            for name, proc in batch:
                wait_until(
                    lambda name=name: _idle_after_a_job(redis, name),
                    f"worker {name} to run its job and be idle",
                    30,
                    explain=proc.output,
                )
            for _, proc in batch:
                os.kill(proc.pid, signal.SIGTERM)
            signalled = time.monotonic()
            for name, proc in batch:
                try:
                    code = proc.proc.wait(max(STOP_WITHIN - (time.monotonic() - signalled), 0.01))
                except subprocess.TimeoutExpired:
                    late = f"round {round_ + 1}: {name} still runs {STOP_WITHIN:g} s after SIGTERM"
                    raise AssertionError(f"{late}\n{proc.output()}") from None
                assert code == 0, proc.output()
        finally:
            for _, proc in batch:
                proc.stop()


def test_rqs_shutdown_command_still_reaches_the_worker(redis_url: str, redis: Redis, tmp_path: Path) -> None:
    """The pubsub thread (its own wake-ups, its own stop) still carries RQ's remote commands."""
    name = f"stop-cmd-{os.getpid()}-{time.monotonic_ns()}"
    proc = Process(
        [sys.executable, "-m", "gateway", "worker", "--name", name],
        _environ(redis_url, f"q-{name}", "pcmd"),
        tmp_path / "worker.log",
    )
    try:

        def listening() -> bool:  # subscribed, and RQ's loop (with its signal handlers) running
            worker = Worker.find_by_key(f"rq:worker:{name}", connection=redis)
            subscribed = redis.pubsub_numsub(f"rq:pubsub:{name}")[0][1] == 1
            return subscribed and worker is not None and worker.get_state() == "idle"

        wait_until(listening, f"{name} listening", 30, explain=proc.output)
        send_shutdown_command(redis, name)
        try:
            code = proc.proc.wait(10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not stop on RQ's shutdown command\n{proc.output()}") from None
        assert code == 0, proc.output()
        assert "Received shutdown command" in proc.output() and "warm shut down" in proc.output()
    finally:
        proc.stop()
