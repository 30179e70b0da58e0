"""Benchmark: how many deliveries a second does one gateway worker make, and how much is RQ's?

Starts a private Redis (gateway.embedded.EmbeddedRedis) and a target server on 127.0.0.1 (the
raw ASGI app of bench/http_clients.py under uvicorn, answering 200 "ok"), then measures:

* no-op jobs: N jobs of `jobs.noop` (returns None) with the options the gateway gives its own
  jobs (JSON serializer; Retry, result_ttl=0 and timeouts from `gateway.queue._job_data`),
  drained by bench/jobs.py: a burst `rq.worker.SimpleWorker` set up like the gateway's worker.
  This is RQ's cost per job.
* gateway worker: N invitations accepted in this process (`make_event` + `gateway.queue.accept`,
  1 target, after `store.save_config`), drained by `python -m gateway worker --burst`, each job
  a real delivery (a JSON POST) to the target server. Every delivery state in Redis must then be
  "delivered" with HTTP 200 (`Store.get_deliveries`).
* HTTP send alone: the same request rendered and sent N times in this process through the
  worker's own `gateway.sender.Sender`, without RQ or Redis: the HTTP part of a delivery.

A worker's drain is timed by polling the queue every 10 ms: from the first job taken to the
queue, its intermediate list and its started-job registry all being empty. Worker start-up
(spawn to first job) is reported apart. Every process started is stopped by PID (SIGTERM, then
SIGKILL) in a `finally` block; only 127.0.0.1 is contacted; every loop and wait is bounded.

Run: ``.venv/bin/python bench/delivery.py [--jobs 1000] [--json out.json]``
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from jobs import NOOP
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer
from support import (
    BENCH_DIR,
    HOST,
    Child,
    clean_env,
    cpu_delta,
    cpu_seconds,
    environment,
    exit_on_sigterm,
    fmt,
    host_cpu,
    host_delta,
    latency,
    load_warnings,
    per_op_us,
    redis_commands,
    report,
    start_target_server,
    table,
    write_targets_config,
)

from gateway.delivery.request import build_request
from gateway.delivery.sender import Sender
from gateway.embedded import EmbeddedRedis
from gateway.events import INVITATION_CREATED, make_event
from gateway.queue import _job_data, accept, make_queue
from gateway.settings import LiveConfig, Settings
from gateway.store import DELIVERED, Store
from gateway.targets import load_config

FIELDS = {"invitee": "15551231234", "invitor": "johnsnow", "network_id": "mynetwork"}
NOOP_QUEUE = "bench-noop"
POLL_S = 0.010
POLL_COMMANDS = 3  # LLEN queue, LLEN intermediate, ZCARD started registry (no MULTI/EXEC)
ENQUEUE_CHUNK = 500
WORKER_EXIT_TIMEOUT_S = 30.0
# DESIGN.md, decision 4: "RQ spends about 57 Redis commands and 5.6 ms of CPU per job (about
# 170 no-op jobs/s per worker process)".
DESIGN_RQ_COMMANDS = 57
DESIGN_RQ_CPU_MS = 5.6
DESIGN_NOOP_JOBS_PER_S = 170


@dataclass
class Result:
    name: str
    kind: str  # "worker": a burst worker process draining the queue; "in-process": no RQ
    jobs: int  # jobs (or sends) inside the timed window
    startup_s: float | None  # worker spawn to first job taken
    seconds: float  # the timed window
    total_s: float | None  # worker spawn to worker exit
    rate: float
    rate_from_spawn: float | None  # jobs / (worker spawn to queue empty), start-up included
    ms_per_job: float
    send_ms: float | None  # mean HTTP send latency: the attempt records, or timed in-process
    send_p50_ms: float | None
    send_p99_ms: float | None
    worker_cpu_us: float | None  # the worker process (or this process, in-process)
    redis_cpu_us: float | None
    target_cpu_us: float | None
    redis_commands: float | None
    cores_busy: float | None  # worker (or this process) + Redis + target CPU / wall time
    host_cores: float | None  # the whole machine's busy CPU / wall time (others included)
    steal_cores: float | None
    check: str
    x_noop: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    t: float
    waiting: int
    polls: int
    commands: int
    worker_cpu: float | None
    redis_cpu: float | None
    target_cpu: float | None
    host: tuple[float, float] | None


@dataclass(frozen=True, slots=True)
class Drain:
    spawn: float
    first: Snapshot
    done: Snapshot
    exit: float | None
    exit_code: int | None

    @property
    def jobs(self) -> int:
        # Jobs still waiting at the first snapshot: all of them ran inside the window.
        return self.first.waiting

    @property
    def seconds(self) -> float:
        return self.done.t - self.first.t

    @property
    def commands(self) -> int:
        # Minus our own polls in the window and the first snapshot's INFO.
        return (
            self.done.commands
            - self.first.commands
            - 1
            - POLL_COMMANDS * (self.done.polls - self.first.polls)
        )


class Bench:
    def __init__(self, args: argparse.Namespace, logs: Path) -> None:
        self.args = args
        self.logs = logs
        self.redis = EmbeddedRedis()
        self.target: Child | None = None
        self.target_url = ""

    @property
    def redis_pid(self) -> int | None:
        return self.redis.process.pid if self.redis.process else None

    @property
    def target_pid(self) -> int | None:
        return self.target.pid if self.target else None

    def url(self, db: int) -> str:
        return f"redis://{HOST}:{self.redis.port}/{db}"

    def client(self, db: int) -> Redis:
        client = Redis.from_url(self.url(db))
        client.flushdb()
        return client

    def start(self) -> None:
        self.redis.start()
        # The target of bench/http_clients.py, started with the same uvicorn arguments.
        self.target, port = start_target_server(self.logs)
        self.target_url = f"http://{HOST}:{port}/hook"

    def stop(self) -> None:
        try:
            if self.target is not None:
                self.target.stop()
        finally:
            self.redis.stop()

    # -- timing a burst worker ----------------------------------------------------------------

    def snapshot(self, client: Redis, t: float, waiting: int, polls: int, worker: Child) -> Snapshot:
        return Snapshot(
            t=t,
            waiting=waiting,
            polls=polls,
            commands=redis_commands(client),
            worker_cpu=worker.cpu_seconds(),
            redis_cpu=cpu_seconds(self.redis_pid),
            target_cpu=cpu_seconds(self.target_pid),
            host=host_cpu(),
        )

    def drain(self, worker: Child, cmd: list[str], env: dict[str, str], client: Redis, queue: Queue) -> Drain:
        """Spawn a burst worker on a full queue; time it from first job taken to all done."""
        keys = (queue.key, queue.intermediate_queue_key, queue.started_job_registry.key)
        total = queue.count
        polls = 0
        first: Snapshot | None = None
        exited = False
        spawn = time.perf_counter()
        worker.spawn(cmd, env)
        deadline = spawn + self.args.timeout
        while True:
            with client.pipeline(transaction=False) as pipe:
                pipe.llen(keys[0])
                pipe.llen(keys[1])
                pipe.zcard(keys[2])
                waiting, taken, started = (int(v) for v in pipe.execute())
            polls += 1
            now = time.perf_counter()
            if first is None and waiting < total:
                first = self.snapshot(client, now, waiting, polls, worker)
            if first is not None and waiting == 0 and taken == 0 and started == 0:
                done = self.snapshot(client, now, waiting, polls, worker)
                break
            if exited:  # it had exited before this poll, and the queue is still not empty
                raise RuntimeError(f"{worker.name} exited before the queue was empty:\n{worker.log_tail()}")
            if worker.exited():
                exited = True  # poll once more: it may have finished right after the last poll
                continue
            if now > deadline:
                raise TimeoutError(f"{worker.name}: queue not drained in {self.args.timeout} s")
            time.sleep(POLL_S)
        assert first is not None
        code = worker.wait(WORKER_EXIT_TIMEOUT_S)
        exit_t = time.perf_counter() if code is not None else None
        return Drain(spawn, first, done, exit_t, code)

    def result(self, name: str, drain: Drain, check: str, sends: list[float] | None = None) -> Result:
        d, n = drain, drain.jobs
        worker_cpu = cpu_delta(d.first.worker_cpu, d.done.worker_cpu)
        redis_cpu = cpu_delta(d.first.redis_cpu, d.done.redis_cpu)
        target_cpu = cpu_delta(d.first.target_cpu, d.done.target_cpu)
        busy = [c for c in (worker_cpu, redis_cpu, target_cpu) if c is not None]
        host = host_delta(d.first.host, d.done.host)
        return Result(
            name=name,
            kind="worker",
            jobs=n,
            startup_s=d.first.t - d.spawn,
            seconds=d.seconds,
            total_s=None if d.exit is None else d.exit - d.spawn,
            rate=n / d.seconds,
            rate_from_spawn=self.args.jobs / (d.done.t - d.spawn),
            ms_per_job=d.seconds / n * 1e3,
            send_ms=None if sends is None else latency(sends).mean_ms,
            send_p50_ms=None if sends is None else latency(sends).p50_ms,
            send_p99_ms=None if sends is None else latency(sends).p99_ms,
            worker_cpu_us=per_op_us(worker_cpu, n),
            redis_cpu_us=per_op_us(redis_cpu, n),
            target_cpu_us=per_op_us(target_cpu, n),
            redis_commands=d.commands / n,
            cores_busy=sum(busy) / d.seconds,
            host_cores=None if host is None else host[0] / d.seconds,
            steal_cores=None if host is None else host[1] / d.seconds,
            check=check if d.exit_code == 0 else f"{check}; worker exit code {d.exit_code}",
        )

    # -- scenarios ------------------------------------------------------------------------------

    def noop_jobs(self) -> Result:
        client = self.client(1)
        worker = Child("noop-worker", self.logs / "noop-worker.log")
        try:
            queue = Queue(NOOP_QUEUE, connection=client, serializer=JSONSerializer)
            retention = Settings().retention_days * 86400
            config = load_config(write_targets_config(self.logs / "noop.toml", 1, self.target_url), {})
            event = make_event(FIELDS, INVITATION_CREATED, "json", client=HOST)
            # The gateway's own job options (timeout, Retry, result_ttl=0, failure_ttl), taken from
            # the function that makes its jobs, with the no-op function, no arguments, a random id.
            options = _job_data(event, config.targets[0], retention)
            for start in range(0, self.args.jobs, ENQUEUE_CHUNK):
                count = min(ENQUEUE_CHUNK, self.args.jobs - start)
                data = [
                    options._replace(func=NOOP, args=(), job_id=None, description="no-op")
                    for _ in range(count)
                ]
                with client.pipeline() as pipe:
                    queue.enqueue_many(data, pipeline=pipe)
                    pipe.execute()
            cmd = [sys.executable, str(BENCH_DIR / "jobs.py"), self.url(1), NOOP_QUEUE, "--burst"]
            cmd += ["--log-level", self.args.log_level]
            drain = self.drain(worker, cmd, clean_env({}), client, queue)
            failed = queue.failed_job_registry.get_job_count(cleanup=False)
            left = queue.count
            ok = failed == 0 and left == 0
            check = f"{'ok' if ok else 'MISMATCH'}: {self.args.jobs} run, {failed} failed, {left} left"
            return self.result("RQ SimpleWorker, no-op jobs", drain, check)
        finally:
            worker.stop()
            client.flushdb()
            client.close()

    def _gateway_state(self, client: Redis) -> tuple[Store, Queue, LiveConfig]:
        settings = Settings()
        store = Store(client, prefix=settings.prefix, retention=settings.retention_days * 86400)
        config = load_config(write_targets_config(self.logs / "targets.toml", 1, self.target_url), {})
        store.save_config(config.to_dict())
        return store, make_queue(client, settings.queue_name), LiveConfig(store)

    def gateway_worker(self) -> Result:
        client = self.client(2)
        worker = Child("gateway-worker", self.logs / "gateway-worker.log")
        try:
            store, queue, live = self._gateway_state(client)
            ids = []
            for _ in range(self.args.jobs):
                event = make_event(FIELDS, INVITATION_CREATED, "json", client=HOST)
                accept(store, queue, live, event)
                ids.append(event.id)
            env = clean_env({"REDIS_URL": self.url(2), "GATEWAY_LOG_LEVEL": self.args.log_level})
            cmd = [sys.executable, "-m", "gateway", "worker", "--burst"]
            drain = self.drain(worker, cmd, env, client, queue)
            outcome: collections.Counter[str] = collections.Counter()
            sends: list[float] = []  # the worker's own measure of each HTTP request, in seconds
            for event_id in ids:
                for state in store.get_deliveries(event_id).values():
                    outcome[f"{state['status']}/{state.get('last_status_code')}/{state['attempts']}"] += 1
                sends += [a["latency_ms"] / 1e3 for a in store.get_attempts(event_id) if a["latency_ms"]]
            ok = outcome == {f"{DELIVERED}/200/1": self.args.jobs}
            check = (
                f"ok: all {self.args.jobs} deliveries delivered, HTTP 200, 1 attempt"
                if ok
                else f"MISMATCH: {dict(outcome)}"
            )
            return self.result("gateway worker, 1 delivery per job", drain, check, sends)
        finally:
            worker.stop()
            client.flushdb()
            client.close()

    def http_send_only(self) -> Result:
        """The worker's Sender, sending the same rendered request N times; no RQ, no Redis."""
        client = self.client(3)
        sender = Sender(allow_private=True)
        try:
            _, _, live = self._gateway_state(client)
            target = live.get().target("t1")
            assert target is not None
            event = make_event(FIELDS, INVITATION_CREATED, "json", client=HOST)
            statuses: collections.Counter[int] = collections.Counter()

            def send() -> None:
                statuses[sender.send(build_request(target, event, {})).status] += 1

            for _ in range(self.args.warmup):
                send()
            statuses.clear()
            latencies: list[float] = []
            host0 = host_cpu()
            tgt0, cpu0, t0 = cpu_seconds(self.target_pid), time.process_time(), time.perf_counter()
            for _ in range(self.args.jobs):
                s0 = time.perf_counter()
                send()
                latencies.append(time.perf_counter() - s0)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            target_cpu = cpu_delta(tgt0, cpu_seconds(self.target_pid))
            host = host_delta(host0, host_cpu())
            n = self.args.jobs
            lat = latency(latencies)
            ok = statuses == {200: n}
            return Result(
                name="HTTP send alone (Sender, in-process)",
                kind="in-process",
                jobs=n,
                startup_s=None,
                seconds=wall,
                total_s=None,
                rate=n / wall,
                rate_from_spawn=None,
                ms_per_job=lat.mean_ms,
                send_ms=lat.mean_ms,
                send_p50_ms=lat.p50_ms,
                send_p99_ms=lat.p99_ms,
                worker_cpu_us=cpu / n * 1e6,
                redis_cpu_us=None,
                target_cpu_us=per_op_us(target_cpu, n),
                redis_commands=None,
                cores_busy=(cpu + (target_cpu or 0.0)) / wall,
                host_cores=None if host is None else host[0] / wall,
                steal_cores=None if host is None else host[1] / wall,
                check=f"ok: {n} x HTTP 200" if ok else f"MISMATCH: {dict(statuses)}",
            )
        finally:
            sender.close()
            client.flushdb()
            client.close()


def run_all(args: argparse.Namespace) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.start()
            results = [bench.noop_jobs(), bench.gateway_worker(), bench.http_send_only()]
        finally:
            bench.stop()
    for r in results:
        r.x_noop = r.rate / results[0].rate
    return results


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------


def ratios(results: list[Result]) -> dict[str, float]:
    noop, gw, send = results
    out = {
        "gateway_over_noop": gw.rate / noop.rate,
        "gateway_over_noop_from_spawn": (gw.rate_from_spawn or 0.0) / (noop.rate_from_spawn or float("nan")),
        "rq_ms_per_job": noop.ms_per_job,
        "gateway_ms_per_job": gw.ms_per_job,
        "delivery_ms": gw.ms_per_job - noop.ms_per_job,
        # The HTTP request as the worker itself timed it (the attempt records' latency_ms).
        "http_send_in_worker_ms": gw.send_ms or 0.0,
        "http_send_alone_ms": send.ms_per_job,
        "delivery_rest_ms": gw.ms_per_job - noop.ms_per_job - (gw.send_ms or 0.0),
        "rq_share_of_gateway_job": noop.ms_per_job / gw.ms_per_job,
        "http_send_share_of_gateway_job": (gw.send_ms or 0.0) / gw.ms_per_job,
        "rq_over_http_send_in_worker": noop.ms_per_job / (gw.send_ms or float("nan")),
        "rq_over_http_send_alone": noop.ms_per_job / send.ms_per_job,
    }
    if noop.worker_cpu_us is not None:
        out["rq_cpu_ms_per_job"] = noop.worker_cpu_us / 1e3
        out["rq_cpu_over_design_5_6_ms"] = noop.worker_cpu_us / 1e3 / DESIGN_RQ_CPU_MS
    if noop.redis_commands is not None:
        out["rq_commands_per_job"] = noop.redis_commands
    if gw.redis_commands is not None and noop.redis_commands is not None:
        out["delivery_commands_per_job"] = gw.redis_commands - noop.redis_commands
    out["noop_over_design_170_per_s"] = noop.rate / DESIGN_NOOP_JOBS_PER_S
    return out


def format_table(results: list[Result]) -> str:
    header = (
        f"{'scenario':<38} {'kind':<10} {'jobs':>5} {'start s':>7} {'drain s':>7} {'total s':>7} "
        f"{'jobs/s':>7} {'ms/job':>6} {'send ms':>7} {'snd p99':>7} {'wrk us':>6} {'rds us':>6} "
        f"{'tgt us':>6} {'cmds':>5} {'cores':>5} {'host':>5} {'x noop':>6}"
    )
    rows = (
        f"{r.name:<38} {r.kind:<10} {r.jobs:>5} {fmt(r.startup_s, '.2f'):>7} {r.seconds:>7.2f} "
        f"{fmt(r.total_s, '.2f'):>7} {r.rate:>7.0f} {r.ms_per_job:>6.2f} {fmt(r.send_ms, '.2f'):>7} "
        f"{fmt(r.send_p99_ms, '.2f'):>7} "
        f"{fmt(r.worker_cpu_us):>6} {fmt(r.redis_cpu_us):>6} {fmt(r.target_cpu_us):>6} "
        f"{fmt(r.redis_commands, '.1f'):>5} {fmt(r.cores_busy, '.2f'):>5} {fmt(r.host_cores, '.2f'):>5} "
        f"{r.x_noop:>6.3f}"
        for r in results
    )
    return table(header, rows)


LEGEND = (
    "start s = worker spawn to first job taken (interpreter, imports, registration); drain s = first "
    "job taken to queue,\n"
    "intermediate list and started registry empty (jobs/s and ms/job use this window); total s = spawn "
    "to worker exit.\n"
    "send ms / snd p99 = mean / p99 of the HTTP request of each delivery: as the worker recorded it "
    "(attempt latency_ms), or timed here.\n"
    "wrk/rds/tgt us = CPU microseconds per job of the worker process (this process for the in-process "
    "row) / Redis / target;\n"
    "cmds = Redis commands per job (our 10 ms polls subtracted); cores = CPU cores kept busy by those "
    "processes;\nhost = cores busy machine-wide (above cores: something else ran too); x noop = jobs/s "
    "over no-op jobs/s.\n"
    "Worker, Redis and target share the same cores. One worker process runs one job at a time."
)


def format_ratios(results: list[Result], rat: dict[str, float]) -> str:
    noop, gw, _ = results
    lines = [
        f"gateway worker / no-op jobs: {rat['gateway_over_noop']:.3f} of the no-op jobs/s; counted from "
        f"worker spawn to queue empty (start-up included): {noop.rate_from_spawn:.0f} and "
        f"{gw.rate_from_spawn:.0f} jobs/s, ratio {rat['gateway_over_noop_from_spawn']:.3f}",
        f"RQ per job (no-op job):      {rat['rq_ms_per_job']:.2f} ms wall, "
        f"{fmt(rat.get('rq_cpu_ms_per_job'), '.2f')} ms worker CPU, "
        f"{fmt(rat.get('rq_commands_per_job'), '.1f')} Redis commands "
        f"(DESIGN.md: {DESIGN_RQ_CPU_MS} ms CPU, {DESIGN_RQ_COMMANDS} commands, "
        f"{DESIGN_NOOP_JOBS_PER_S} jobs/s; measured {rat['noop_over_design_170_per_s']:.2f} x that rate)",
        f"gateway job:                 {rat['gateway_ms_per_job']:.2f} ms = RQ {rat['rq_ms_per_job']:.2f} "
        f"+ the delivery {rat['delivery_ms']:.2f} ms, of which the HTTP request "
        f"{rat['http_send_in_worker_ms']:.2f} ms (as the worker timed it; {rat['http_send_alone_ms']:.2f} ms "
        f"when sent alone in a loop) and the rest (4 Redis round trips, render, log, a bigger job) "
        f"{rat['delivery_rest_ms']:.2f} ms; the delivery adds "
        f"{fmt(rat.get('delivery_commands_per_job'), '.1f')} Redis commands",
        f"shares of a gateway job:     RQ {rat['rq_share_of_gateway_job']:.0%}, HTTP request "
        f"{rat['http_send_share_of_gateway_job']:.0%}; RQ per job / HTTP request = "
        f"{rat['rq_over_http_send_in_worker']:.1f} (in the worker), "
        f"{rat['rq_over_http_send_alone']:.1f} (sent alone)",
        "checks: " + "; ".join(f"{r.name}: {r.check}" for r in results),
    ]
    lines += load_warnings(results)
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per scenario (1000)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed sends before HTTP send alone")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per drain (120)")
    parser.add_argument(
        "--log-level", default="INFO", help="log level of both workers (INFO, the gateway's default)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if not 10 <= args.jobs <= 100_000 or args.warmup < 0 or not 0 < args.timeout <= 3600:
        parser.error("--jobs must be 10..100000, --warmup >= 0, --timeout in (0, 3600]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    env = environment({"target": "uvicorn, http_clients:target_app, asyncio loop, h11, 1 process"})
    results = run_all(args)
    rat = ratios(results)
    header = (
        f"{env['date']}  python {env['python']}  rq {env.get('rq')}  redis-py {env.get('redis')}  "
        f"aiohttp {env.get('aiohttp')}  cpus {env['cpu_count']}  jobs {args.jobs}  "
        f"worker log level {args.log_level}  gateway {env['gateway_commit']}"
    )
    report(args, env, [header], results, format_table(results), LEGEND, rat, format_ratios(results, rat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
