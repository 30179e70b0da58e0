"""Benchmark: what does the gateway's ingest cost next to bare Starlette and a plain RQ enqueue?

Starts a private Redis (gateway.embedded.EmbeddedRedis) and, one after the other, these servers
on 127.0.0.1, each a single uvicorn process with the arguments of `gateway web`:

* bare Starlette: bench/bare_app.py, one POST route that reads the body and answers 204;
* `python -m gateway web` with 1 target for network "mynetwork", then with 3 targets. The
  target URLs point at a port where nothing listens: no worker runs, so nothing is sent.

An aiohttp load generator in this process POSTs the JSON invitation callback to each, C requests
in flight, after a warm-up, and counts every answer that is not a 204. In this process, without
HTTP, it then times sequential calls of:

* `Queue.enqueue` of a no-op function (JSON serializer) on the same Redis: the plain enqueue that
  DESIGN.md puts at about 1.3 ms;
* `gateway.queue.accept` (store the event + enqueue its deliveries, one MULTI/EXEC) with 1 and
  3 targets, with `make_event` before it: the gateway's request work without HTTP.

Every process it starts is stopped by PID (SIGTERM, then SIGKILL) in a `finally` block. Only
127.0.0.1 is contacted; every loop is bounded by a count, every wait by a timeout.

Run: ``.venv/bin/python bench/ingest.py [--requests 3000] [--concurrency 32] [--json out.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from jobs import noop
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
    free_port,
    host_cpu,
    host_delta,
    latency,
    load_warnings,
    per_op_us,
    redis_commands,
    report,
    start_http_server,
    table,
    write_targets_config,
)

from gateway.embedded import EmbeddedRedis
from gateway.events import INVITATION_CREATED, make_event
from gateway.queue import accept, make_queue
from gateway.settings import LiveConfig, Settings
from gateway.store import Store
from gateway.targets import load_config

CALLBACK = b'{"invitee":"15551231234","invitor":"johnsnow","network_id":"mynetwork"}'
FIELDS = {"invitee": "15551231234", "invitor": "johnsnow", "network_id": "mynetwork"}
PATH = "/invitation_created"
JSON_HEADERS = {"content-type": "application/json"}
REQUEST_TIMEOUT_S = 30.0
DESIGN_ENQUEUE_MS = 1.3  # DESIGN.md, decision 4: "a plain Queue.enqueue costs about 1.3 ms"
DESIGN_ENQUEUE_SHARE = 0.05  # ... "5% of what bare Starlette serves on the same machine"
ENQUEUE_QUEUE = "bench-enqueue"


@dataclass
class Result:
    name: str
    kind: str  # "http": C concurrent requests; "in-process": sequential calls, no HTTP
    ops: int
    concurrency: int
    seconds: float
    rate: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    not_204: int
    statuses: dict[str, int]
    client_cpu_us: float  # this process (the load generator, or the in-process caller)
    server_cpu_us: float | None  # the uvicorn process
    redis_cpu_us: float | None
    redis_commands: float | None  # per op
    cores_busy: float | None  # (client + server + Redis CPU) / wall time
    host_cores: float | None  # the whole machine's busy CPU / wall time (others included)
    steal_cores: float | None  # CPU the hypervisor gave to other guests / wall time
    check: str = ""
    x_bare: float = 0.0


@dataclass
class Meter:
    """CPU time of this process, the server and Redis, and Redis' command count, around a run."""

    redis: Redis
    redis_pid: int | None
    server: Child | None = None
    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    wall: float = 0.0
    cpu: float = 0.0
    server_cpu: float | None = None
    redis_cpu: float | None = None
    commands: int | None = None
    host: tuple[float, float] | None = None

    @contextmanager
    def run(self) -> Iterator[None]:
        self.latencies.clear()
        self.statuses.clear()
        host0 = host_cpu()
        cmd0 = redis_commands(self.redis)
        srv0 = self.server.cpu_seconds() if self.server else None
        red0 = cpu_seconds(self.redis_pid)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        yield
        self.wall = time.perf_counter() - t0
        self.cpu = time.process_time() - cpu0
        self.redis_cpu = cpu_delta(red0, cpu_seconds(self.redis_pid))
        self.server_cpu = cpu_delta(srv0, self.server.cpu_seconds() if self.server else None)
        self.commands = redis_commands(self.redis) - cmd0 - 1  # minus the second INFO
        self.host = host_delta(host0, host_cpu())

    def result(self, name: str, kind: str, concurrency: int, check: str = "") -> Result:
        n = len(self.latencies)
        lat = latency(self.latencies)
        busy = [c for c in (self.cpu, self.server_cpu, self.redis_cpu) if c is not None]
        good = self.statuses.get("204", 0) if kind == "http" else n
        return Result(
            name=name,
            kind=kind,
            ops=n,
            concurrency=concurrency,
            seconds=self.wall,
            rate=n / self.wall,
            mean_ms=lat.mean_ms,
            p50_ms=lat.p50_ms,
            p99_ms=lat.p99_ms,
            not_204=n - good,
            statuses=dict(self.statuses),
            client_cpu_us=self.cpu / n * 1e6,
            server_cpu_us=per_op_us(self.server_cpu, n),
            redis_cpu_us=per_op_us(self.redis_cpu, n),
            redis_commands=None if self.commands is None else self.commands / n,
            cores_busy=sum(busy) / self.wall,
            host_cores=None if self.host is None else self.host[0] / self.wall,
            steal_cores=None if self.host is None else self.host[1] / self.wall,
            check=check,
        )


# ---------------------------------------------------------------------------------------------
# HTTP load generator.
# ---------------------------------------------------------------------------------------------


async def _post_many(
    session: aiohttp.ClientSession,
    url: str,
    n: int,
    concurrency: int,
    statuses: collections.Counter[str],
    latencies: list[float] | None,
) -> None:
    """`n` POSTs with `concurrency` in flight: that many tasks, each taking the next request."""
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=CALLBACK, headers=JSON_HEADERS) as resp:
                    await resp.read()
                    status = str(resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            if latencies is not None:
                latencies.append(time.perf_counter() - t0)
            statuses[status] += 1

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))


def run_http(url: str, n: int, warmup: int, concurrency: int, meter: Meter) -> int:
    """Warm up, then time `n` POSTs; returns how many warm-up POSTs were answered 204."""
    warm: collections.Counter[str] = collections.Counter()

    async def main() -> None:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            trust_env=False,  # no proxy from the environment: 127.0.0.1 only
        ) as session:
            await _post_many(session, url, warmup, concurrency, warm, None)
            with meter.run():
                await _post_many(session, url, n, concurrency, meter.statuses, meter.latencies)

    asyncio.run(main())
    return warm["204"]


# ---------------------------------------------------------------------------------------------
# Scenarios.
# ---------------------------------------------------------------------------------------------


def _store(redis: Redis) -> tuple[Store, Queue]:
    settings = Settings()
    store = Store(redis, prefix=settings.prefix, retention=settings.retention_days * 86400)
    return store, make_queue(redis, settings.queue_name)


def check_stored(redis: Redis, events: int, targets: int) -> str:
    """What the gateway left in Redis: one event per 204, `targets` queued jobs per event."""
    store, queue = _store(redis)
    stored = len(store.recent_events(limit=events + 1000))
    queued = queue.count
    ok = stored == events and queued == events * targets
    return f"{'ok' if ok else 'MISMATCH'}: {stored}/{events} events, {queued}/{events * targets} jobs"


def bench_bare(args: argparse.Namespace, redis: EmbeddedRedis, logs: Path) -> Result:
    client = Redis.from_url(redis.url)  # for the Redis command count only: bare uses no Redis
    server: Child | None = None
    try:
        server, port = start_http_server(
            "bare-starlette",
            lambda port: [
                sys.executable,
                str(BENCH_DIR / "bare_app.py"),
                "--host",
                HOST,
                "--port",
                str(port),
            ],
            clean_env({}),
            logs,
            PATH,
        )
        meter = Meter(client, redis.process.pid if redis.process else None, server)
        run_http(f"http://{HOST}:{port}{PATH}", args.requests, args.warmup, args.concurrency, meter)
        return meter.result("bare Starlette, POST -> 204", "http", args.concurrency)
    finally:
        if server is not None:
            server.stop()
        client.close()


def bench_gateway(
    args: argparse.Namespace, redis: EmbeddedRedis, logs: Path, targets: int, db: int, dead_port: int
) -> Result:
    url = f"redis://{HOST}:{redis.port}/{db}"
    client = Redis.from_url(url)
    client.flushdb()
    config = write_targets_config(
        logs / f"targets-{targets}.toml", targets, f"http://{HOST}:{dead_port}/hook"
    )
    env = clean_env({"REDIS_URL": url, "GATEWAY_CONFIG": str(config), "GATEWAY_LOG_LEVEL": args.log_level})
    server: Child | None = None
    try:
        server, port = start_http_server(
            f"gateway-web-{targets}",
            lambda port: [sys.executable, "-m", "gateway", "web", "--host", HOST, "--port", str(port)],
            env,
            logs,
            "/healthz",
        )
        meter = Meter(client, redis.process.pid if redis.process else None, server)
        warm_204 = run_http(
            f"http://{HOST}:{port}{PATH}", args.requests, args.warmup, args.concurrency, meter
        )
        accepted = meter.statuses["204"] + warm_204
        check = check_stored(client, accepted, targets)
        name = f"gateway web, {targets} target{'s' if targets > 1 else ''}"
        return meter.result(name, "http", args.concurrency, check)
    finally:
        if server is not None:
            server.stop()
        client.flushdb()
        client.close()


def _timed_calls(meter: Meter, n: int, warmup: int, call: Callable[[], object]) -> None:
    for _ in range(warmup):
        call()
    with meter.run():
        for _ in range(n):
            t0 = time.perf_counter()
            call()
            meter.latencies.append(time.perf_counter() - t0)


def bench_enqueue(args: argparse.Namespace, redis: EmbeddedRedis, db: int) -> Result:
    client = Redis.from_url(f"redis://{HOST}:{redis.port}/{db}")
    client.flushdb()
    try:
        queue = Queue(ENQUEUE_QUEUE, connection=client, serializer=JSONSerializer)
        meter = Meter(client, redis.process.pid if redis.process else None)
        _timed_calls(meter, args.enqueues, args.warmup, lambda: queue.enqueue(noop))
        expected = args.enqueues + args.warmup
        check = f"{'ok' if queue.count == expected else 'MISMATCH'}: {queue.count}/{expected} jobs"
        return meter.result("Queue.enqueue(noop), JSON serializer", "in-process", 1, check)
    finally:
        client.flushdb()
        client.close()


def bench_accept(
    args: argparse.Namespace, redis: EmbeddedRedis, logs: Path, targets: int, db: int, dead_port: int
) -> Result:
    client = Redis.from_url(f"redis://{HOST}:{redis.port}/{db}")
    client.flushdb()
    try:
        store, queue = _store(client)
        config = load_config(
            write_targets_config(logs / f"accept-{targets}.toml", targets, f"http://{HOST}:{dead_port}/hook"),
            {},
        )
        store.save_config(config.to_dict())
        live = LiveConfig(store)

        def call() -> None:
            event = make_event(FIELDS, INVITATION_CREATED, "json", client=HOST)
            accept(store, queue, live, event)

        meter = Meter(client, redis.process.pid if redis.process else None)
        _timed_calls(meter, args.enqueues, args.warmup, call)
        check = check_stored(client, args.enqueues + args.warmup, targets)
        name = f"make_event + accept(), {targets} target{'s' if targets > 1 else ''}"
        return meter.result(name, "in-process", 1, check)
    finally:
        client.flushdb()
        client.close()


def run_all(args: argparse.Namespace) -> list[Result]:
    redis = EmbeddedRedis()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        logs = Path(tmp)
        try:
            redis.start()
            dead_port = free_port()  # nothing listens there; no worker runs anyway
            results = [
                bench_bare(args, redis, logs),
                bench_gateway(args, redis, logs, 1, 1, dead_port),
                bench_gateway(args, redis, logs, 3, 2, dead_port),
                bench_enqueue(args, redis, 3),
                bench_accept(args, redis, logs, 1, 4, dead_port),
                bench_accept(args, redis, logs, 3, 5, dead_port),
            ]
        finally:
            redis.stop()
    bare = results[0].rate
    for r in results:
        r.x_bare = r.rate / bare
    return results


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------


def ratios(results: list[Result]) -> dict[str, float]:
    by = {r.name: r for r in results}
    bare, gw1, gw3 = results[0], results[1], results[2]
    enq = by["Queue.enqueue(noop), JSON serializer"]
    acc1, acc3 = results[4], results[5]
    out = {
        "gateway_1_target_over_bare": gw1.rate / bare.rate,
        "gateway_3_targets_over_bare": gw3.rate / bare.rate,
        "gateway_3_over_gateway_1": gw3.rate / gw1.rate,
        # Under C concurrent requests, wall time per request is 1/rate (the pipeline is full).
        "wall_us_per_extra_delivery_http": (1 / gw3.rate - 1 / gw1.rate) / 2 * 1e6,
        "enqueue_mean_ms": enq.mean_ms,
        "enqueue_over_design_1_3_ms": enq.mean_ms / DESIGN_ENQUEUE_MS,
        "enqueues_per_s_over_bare_req_per_s": enq.rate / bare.rate,
        "accept_1_target_mean_ms": acc1.mean_ms,
        "accept_3_targets_mean_ms": acc3.mean_ms,
        "accept_ms_per_extra_delivery": (acc3.mean_ms - acc1.mean_ms) / 2,
    }
    if gw1.server_cpu_us is not None and gw3.server_cpu_us is not None:
        out["server_cpu_us_per_extra_delivery"] = (gw3.server_cpu_us - gw1.server_cpu_us) / 2
    if gw1.redis_commands is not None and gw3.redis_commands is not None:
        out["redis_commands_per_extra_delivery"] = (gw3.redis_commands - gw1.redis_commands) / 2
    if gw1.server_cpu_us is not None and bare.server_cpu_us is not None:
        out["server_cpu_gateway_1_over_bare"] = gw1.server_cpu_us / bare.server_cpu_us
    return out


def format_table(results: list[Result]) -> str:
    header = (
        f"{'scenario':<40} {'kind':<10} {'ops':>5} {'C':>3} {'ops/s':>7} {'mean ms':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'!204':>5} {'cli us':>7} {'srv us':>7} {'rds us':>7} {'cmds':>5} "
        f"{'cores':>5} {'host':>5} {'x bare':>6}"
    )
    rows = (
        f"{r.name:<40} {r.kind:<10} {r.ops:>5} {r.concurrency:>3} {r.rate:>7.0f} {r.mean_ms:>8.2f} "
        f"{r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.not_204:>5} {r.client_cpu_us:>7.0f} "
        f"{fmt(r.server_cpu_us):>7} {fmt(r.redis_cpu_us):>7} {fmt(r.redis_commands, '.1f'):>5} "
        f"{fmt(r.cores_busy, '.2f'):>5} {fmt(r.host_cores, '.2f'):>5} {r.x_bare:>6.3f}"
        for r in results
    )
    return table(header, rows)


def format_ratios(results: list[Result], rat: dict[str, float]) -> str:
    gw1, gw3 = results[1], results[2]
    lines = [
        f"gateway (1 target) / bare:   {rat['gateway_1_target_over_bare']:.3f} of bare's req/s",
        f"gateway (3 targets) / bare:  {rat['gateway_3_targets_over_bare']:.3f} of bare's req/s",
        f"gateway 3 targets / 1:       {rat['gateway_3_over_gateway_1']:.3f}; each extra enqueued "
        f"delivery adds {rat['wall_us_per_extra_delivery_http']:.0f} us of wall time per request at "
        f"C={gw1.concurrency}, {fmt(rat.get('server_cpu_us_per_extra_delivery'))} us of server CPU, "
        f"{fmt(rat.get('redis_commands_per_extra_delivery'), '.1f')} Redis commands",
        f"Queue.enqueue:               {rat['enqueue_mean_ms']:.3f} ms per enqueue "
        f"= {rat['enqueue_over_design_1_3_ms']:.2f} x DESIGN.md's {DESIGN_ENQUEUE_MS} ms; enqueues/s "
        f"= {rat['enqueues_per_s_over_bare_req_per_s']:.3f} of bare's req/s "
        f"(DESIGN.md: {DESIGN_ENQUEUE_SHARE:.2f})",
        f"accept() in-process:         {rat['accept_1_target_mean_ms']:.3f} ms (1 target), "
        f"{rat['accept_3_targets_mean_ms']:.3f} ms (3 targets): "
        f"{rat['accept_ms_per_extra_delivery']:.3f} ms per extra delivery",
        "checks: " + "; ".join(f"{r.name}: {r.check}" for r in results if r.check),
    ]
    lines += load_warnings(results)
    bad = [r for r in results if r.not_204]
    if bad:
        lines.append(
            "WARNING, answers other than 204: "
            + "; ".join(f"{r.name}: {r.not_204} ({r.statuses})" for r in bad)
        )
    if gw3.not_204 == 0 and gw1.not_204 == 0 and all(r.check.startswith("ok") for r in results if r.check):
        lines.append("every timed request was answered 204 and every accepted event and job is in Redis")
    return "\n".join(lines)


LEGEND = (
    "kind http = C concurrent POSTs from an aiohttp client in this process (one uvicorn process, "
    "asyncio loop, h11);\n"
    "kind in-process = sequential calls from this process, no HTTP.\n"
    f"The load generator (this process), the server and Redis all share this machine's {os.cpu_count()} "
    "cores: the client's CPU is taken from the server's.\n"
    "cli/srv/rds us = CPU microseconds per op of this process / the uvicorn process / Redis; "
    "cmds = Redis commands per op;\n"
    "cores = CPU cores kept busy by the three together (client + server + Redis CPU / wall); "
    "host = cores busy machine-wide\n"
    "(above cores: something else ran too); x bare = ops/s over bare Starlette's req/s."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000, help="timed POSTs per server (3000)")
    parser.add_argument("--concurrency", type=int, default=32, help="POSTs in flight (32)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed POSTs or calls first (200)")
    parser.add_argument("--enqueues", type=int, default=3000, help="timed in-process calls (3000)")
    parser.add_argument(
        "--log-level", default="INFO", help="GATEWAY_LOG_LEVEL of the gateway (INFO, its default)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if min(args.requests, args.concurrency, args.enqueues) < 1 or args.warmup < 0:
        parser.error("--requests, --concurrency and --enqueues must be >= 1, --warmup >= 0")
    if max(args.requests, args.enqueues) > 100_000:
        parser.error("--requests and --enqueues are capped at 100000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    env = environment(
        {
            "server": "uvicorn, 1 process, asyncio loop, h11 (gateway web's uvicorn.run arguments)",
            "gateway_log_level": args.log_level,
        }
    )
    results = run_all(args)
    rat = ratios(results)
    header = [
        f"{env['date']}  python {env['python']}  starlette {env.get('starlette')}  uvicorn "
        f"{env.get('uvicorn')}  rq {env.get('rq')}  aiohttp {env.get('aiohttp')}  cpus {env['cpu_count']}  "
        f"gateway {env['gateway_commit']}",
        f"POST {PATH} {CALLBACK.decode()}  requests {args.requests}  concurrency {args.concurrency}  "
        f"warm-up {args.warmup}  in-process calls {args.enqueues}  gateway log level {args.log_level}",
    ]
    report(args, env, header, results, format_table(results), LEGEND, rat, format_ratios(results, rat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
