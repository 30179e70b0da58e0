"""Profile the delivery engine in this process: CPU per delivery and where it goes.

Starts a private Redis and the fast target of bench/delivery.py (uvicorn, uvloop, httptools),
stores N callbacks through the ingest script for T targets per network, then runs
`Engine.run` on a uvloop loop in this process (as a `gateway worker` does, without RQ) until
the backlog is drained, and reports the engine's CPU time per delivery (`time.process_time`,
this process only: the accepts are done before). With `--profile`, it runs under cProfile with
a CPU clock and prints the top functions. Every delivery must end delivered.

    .venv/bin/python bench/delivery_profile.py --callbacks 5000 --targets 1 [--profile]

Only 127.0.0.1 is contacted; every process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import cProfile
import gc
import io
import os
import pstats
import signal
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis
import uvloop
from delivery import FIELDS, HOST, SETTINGS, Bench, py_spy_binary, py_spy_summary
from delivery_load import _post_all
from redis import Redis
from support import Child, clean_env, command_stats, cpu_seconds, worker_logging

from gateway.delivery.engine import Engine, EngineSettings
from gateway.delivery.request import OutboundRequest, Response, build_request
from gateway.delivery.sender import USER_AGENT, Sender
from gateway.events import INVITATION_CREATED, make_event
from gateway.fastredis import FastRedis
from gateway.metrics import Tally
from gateway.records import DeliveryStatus
from gateway.store.queue import DeliveryQueue


def _threads() -> dict[int, tuple[str, float, int, int, float]]:
    """Per thread of this process: (name, CPU seconds, voluntary, involuntary context switches,
    system CPU seconds)."""
    out: dict[int, tuple[str, float, int, int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / tick
        switches = dict(line.split(":\t") for line in status.splitlines() if "ctxt_switches" in line)
        out[int(task.name)] = (
            name,
            cpu,
            int(switches.get("voluntary_ctxt_switches", 0)),
            int(switches.get("nonvoluntary_ctxt_switches", 0)),
            int(fields[12]) / tick,
        )
    return out


def _thread_report(before: dict[int, tuple[str, float, int, int, float]], n: int) -> str:
    """CPU µs (of which system) and context switches per delivery of each thread busy during the run."""
    parts = []
    for tid, (name, cpu, vol, invol, sys_cpu) in sorted(_threads().items()):
        b = before.get(tid, (name, 0.0, 0, 0, 0.0))
        dcpu, dvol, dinv, dsys = cpu - b[1], vol - b[2], invol - b[3], sys_cpu - b[4]
        if dcpu > 0 or dvol > n // 100:
            parts.append(
                f"{name}[{tid}] {dcpu / n * 1e6:.0f} µs (system {dsys / n * 1e6:.0f}), "
                f"{dvol / n:.2f}+{dinv / n:.2f} switches"
            )
    return "; ".join(parts)


_SYSCALLS = (
    "futex",
    "getpid",
    "gettid",
    "write",
    "writev",
    "read",
    "recvfrom",
    "sendto",
    "epoll_pwait",
    "epoll_wait",
)


def _strace(out: Path) -> Child:
    """`perf stat` of this process' system calls (every thread; tracepoints, so cheap) until
    _strace_summary."""
    events = ["raw_syscalls:sys_enter", "context-switches"] + [f"syscalls:sys_enter_{n}" for n in _SYSCALLS]
    tracer = Child("perf", out.with_suffix(".log"))
    cmd = ["perf", "stat", "-x", ",", "-o", str(out), "-e", ",".join(events), "-p", str(os.getpid())]
    tracer.spawn(cmd, clean_env({}))
    time.sleep(1.0)  # perf attaches
    return tracer


def _strace_summary(tracer: Child, out: Path, n: int) -> str:
    """System calls and context switches per delivery, from perf's counts."""
    if tracer.proc is not None:
        tracer.proc.send_signal(signal.SIGINT)
        tracer.wait(15)
    tracer.stop()
    calls: dict[str, int] = {}
    for line in out.read_text().splitlines():
        parts = line.split(",")
        if len(parts) >= 3 and parts[0].strip().isdigit():
            calls[parts[2].removeprefix("syscalls:sys_enter_")] = int(parts[0])
    total = calls.pop("raw_syscalls:sys_enter", 0)
    switches = calls.pop("context-switches", 0)
    top = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v)
    return f"{total / n:.2f} system calls per delivery ({top}); {switches / n:.2f} context switches"


def _command_usec(client: Redis) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): int(stats["usec"])
        for name, stats in client.info("commandstats").items()
        if isinstance(stats, dict)
    }


def _redis_cpu(client: Redis) -> float:
    """Redis' own CPU seconds so far (INFO cpu: finer than /proc's ticks)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class StubSender(Sender):
    """Every send answers 200 at once: the engine's own cost, without HTTP."""

    async def send(self, request: OutboundRequest) -> Response:
        await asyncio.sleep(0)
        return Response(200, {}, b"ok", 0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--callbacks", type=int, default=5000)
    parser.add_argument("--targets", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--py-spy", metavar="PATH", help="sample the engine run with py-spy (raw stacks)")
    parser.add_argument(
        "--pause", type=float, default=0.0, help="seconds to wait, pid printed, before the engine runs"
    )
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="count the system calls of the loop and of the engine run (perf stat, tracepoints)",
    )
    parser.add_argument(
        "--stub-send",
        action="store_true",
        help="no HTTP: every send answers 200 at once (the engine's own cost)",
    )
    parser.add_argument("--baseline-concurrency", type=int, default=32, help="requests in flight (32)")
    parser.add_argument("--profile-baseline", action="store_true", help="cProfile the aiohttp loop")
    parser.add_argument("--gc-tune", action="store_true", help="freeze + threshold 20000 first")
    parser.add_argument(
        "--redis-py",
        action="store_true",
        help="claims and completions through redis.asyncio (before 2026-12 the default; the worker "
        "uses FastRedis)",
    )
    args = parser.parse_args(argv)
    if not (1 <= args.callbacks <= 200_000 and 1 <= args.targets <= 1000):
        parser.error("--callbacks 1..200000, --targets 1..1000")
    with tempfile.TemporaryDirectory(prefix="dlv-profile-") as tmp:
        log_file = worker_logging(Path(tmp) / "engine.log")  # INFO, as shipped, to a file
        bench = Bench(argparse.Namespace(target_workers=1, timeout=300), Path(tmp))
        try:
            bench.start()
            client, store, _queue, live = bench.fresh(args.targets)
            n_events = max(1, args.callbacks // args.targets)
            ids = bench.accept_many(store, _queue, live, n_events)
            expected = n_events * args.targets
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                target = live.get().target("t1")
                assert target is not None
                request = build_request(
                    target, make_event(FIELDS, INVITATION_CREATED, "json", client=HOST), {}
                )
                spec = {
                    "method": request.method,
                    "url": request.url,
                    "headers": [list(h) for h in request.headers],
                    "session_headers": {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                    "body": None if request.body is None else base64.b64encode(request.body).decode(),
                }
                statuses: collections.Counter[str] = collections.Counter()
                runner.run(_post_all(spec, 500, 32, statuses))  # warm-up
                statuses.clear()
                tracer = _strace(Path(tmp) / "strace-loop.txt") if args.syscalls else None
                base0, bt0, bw0 = time.process_time(), os.times(), time.perf_counter()
                bprof = cProfile.Profile(time.thread_time) if args.profile_baseline else None
                if bprof is not None:
                    bprof.enable()
                runner.run(_post_all(spec, expected, args.baseline_concurrency, statuses))
                if bprof is not None:
                    bprof.disable()
                    out = io.StringIO()
                    pstats.Stats(bprof, stream=out).sort_stats("tottime").print_stats(args.top)
                    print("baseline:", out.getvalue())
                base_us = (time.process_time() - base0) / expected * 1e6
                base_rate = expected / (time.perf_counter() - bw0)
                if tracer is not None:
                    print("loop:", _strace_summary(tracer, Path(tmp) / "strace-loop.txt", expected))
                bt1 = os.times()
                base_sys = (bt1.system - bt0.system) / expected * 1e6
                assert statuses == {"200": expected}, statuses
                aio = aioredis.Redis.from_url(bench.redis_url)
                scripts = None if args.redis_py else FastRedis(bench.redis_url, decode=True)  # as the worker
                sender = StubSender() if args.stub_send else Sender()
                engine = Engine(
                    DeliveryQueue(aio, SETTINGS.prefix, SETTINGS.retention_days * 86400, scripts=scripts),
                    sender,
                    live.refresh,
                    os.environ,
                    EngineSettings(concurrency=args.concurrency, allow_private=True),
                )
                engine.tally = Tally()  # as gateway worker: its ticker flushes it
                if args.gc_tune:
                    gc.collect()
                    gc.freeze()
                    gc.set_threshold(20_000, 20, 20)
                spy = None
                if args.py_spy:
                    spy = Child("py-spy", Path(tmp) / "py-spy.log")
                    cmd = [py_spy_binary(), "record", "--pid", str(os.getpid()), "--rate", "250"]
                    cmd += ["--nonblocking", "--format", "raw", "--output", args.py_spy]
                    spy.spawn(cmd, clean_env({}))
                    time.sleep(1.0)  # py-spy attaches
                prof = cProfile.Profile(time.thread_time) if args.profile else None
                if args.pause:
                    # For a profiler attached from outside (perf record -p PID) to the engine alone:
                    # pyreqwest's runtime thread started first, so that it is there to be attached to.
                    runner.run(sender.open())
                    print(f"engine starts in {args.pause:g} s: pid {os.getpid()}", flush=True)
                    time.sleep(args.pause)
                tracer = _strace(Path(tmp) / "strace-engine.txt") if args.syscalls else None
                threads0 = _threads()
                redis0, cmds0 = _redis_cpu(client), command_stats(client)
                usec0 = _command_usec(client)
                target0 = cpu_seconds(bench.target_pid)
                cpu0, t0, et0 = time.process_time(), time.perf_counter(), os.times()
                if prof is not None:
                    prof.enable()
                stats = runner.run(engine.run(120.0))
                if prof is not None:
                    prof.disable()
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
                if args.pause:
                    print("engine done", flush=True)
                    time.sleep(args.pause)
                eng_sys = (os.times().system - et0.system) / expected * 1e6
                threads = _thread_report(threads0, expected)
                if tracer is not None:
                    print("engine:", _strace_summary(tracer, Path(tmp) / "strace-engine.txt", expected))
                redis_us = (_redis_cpu(client) - redis0) / expected * 1e6
                cmds1 = command_stats(client)
                usec1 = _command_usec(client)
                usec = {k: v - usec0.get(k, 0) for k, v in usec1.items()}
                cmds = {k: v - cmds0.get(k, 0) for k, v in cmds1.items() if k != "info"}
                target_us = ((cpu_seconds(bench.target_pid) or 0) - (target0 or 0)) / expected * 1e6
                if spy is not None and spy.proc is not None:
                    spy.proc.send_signal(signal.SIGINT)
                    spy.wait(15)
                    spy.stop()
                    print(py_spy_summary(Path(args.py_spy), args.top))
                runner.run(sender.close())
                if scripts is not None:
                    runner.run(scripts.aclose())
                runner.run(aio.aclose())
            delivered = sum(
                1
                for eid in ids
                for state in client.hvals(f"{SETTINGS.prefix}:event:{eid}:deliveries")
                if f'"status":"{DeliveryStatus.DELIVERED.value}"' in state.decode()
            )
            print(
                f"{expected} deliveries, {args.targets} target(s): {stats.to_dict()}; "
                f"{delivered} delivered; {wall:.2f} s, {expected / wall:.0f}/s; "
                f"CPU {cpu / expected * 1e6:.0f} µs/delivery; aiohttp loop (same process, just before) "
                f"{base_rate:.0f}/s, {base_us:.0f} µs/request: x{cpu / expected * 1e6 / base_us:.2f}; "
                "of which system time "
                f"{eng_sys:.0f} and {base_sys:.0f} µs" + (" (under cProfile)" if prof is not None else "")
            )
            print(f"engine threads: {threads}")
            ranked = sorted(cmds.items(), key=lambda kv: -kv[1])
            top = ", ".join(f"{k} {v / expected:.2f}" for k, v in ranked if v >= expected / 100)
            print(
                f"Redis {redis_us:.0f} µs CPU/delivery, {sum(cmds.values()) / expected:.2f} commands/"
                f"delivery ({top}); target {target_us:.0f} µs CPU/delivery"
            )
            ranked_us = sorted(usec.items(), key=lambda kv: -kv[1])
            print(
                "Redis µs per delivery by command (INFO commandstats; a script's includes its commands): "
                + ", ".join(f"{k} {v / expected:.1f}" for k, v in ranked_us if v >= expected / 10)
            )
            if prof is not None:
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
                print(out.getvalue())
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.top)
                print(out.getvalue())
            client.close()
            return 0 if delivered == expected else 1
        finally:
            bench.stop()
            log_file.close()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
