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
import logging
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
from support import Child, clean_env

from gateway.delivery.engine import Engine, EngineSettings
from gateway.delivery.request import OutboundRequest, Response, build_request
from gateway.delivery.sender import USER_AGENT, Sender
from gateway.events import INVITATION_CREATED, make_event
from gateway.records import DeliveryStatus
from gateway.store.queue import DeliveryQueue


class _StubSender(Sender):
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
        "--stub-send",
        action="store_true",
        help="no HTTP: every send answers 200 at once (the engine's own cost)",
    )
    parser.add_argument("--baseline-concurrency", type=int, default=32, help="requests in flight (32)")
    parser.add_argument("--profile-baseline", action="store_true", help="cProfile the aiohttp loop")
    parser.add_argument("--gc-tune", action="store_true", help="freeze + threshold 20000 first")
    args = parser.parse_args(argv)
    if not (1 <= args.callbacks <= 200_000 and 1 <= args.targets <= 1000):
        parser.error("--callbacks 1..200000, --targets 1..1000")
    logging.basicConfig(level=logging.INFO, stream=io.StringIO())  # INFO, as shipped, not printed
    with tempfile.TemporaryDirectory(prefix="dlv-profile-") as tmp:
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
                base0, bt0 = time.process_time(), os.times()
                bprof = cProfile.Profile(time.process_time) if args.profile_baseline else None
                if bprof is not None:
                    bprof.enable()
                runner.run(_post_all(spec, expected, args.baseline_concurrency, statuses))
                if bprof is not None:
                    bprof.disable()
                    out = io.StringIO()
                    pstats.Stats(bprof, stream=out).sort_stats("tottime").print_stats(args.top)
                    print("baseline:", out.getvalue())
                base_us = (time.process_time() - base0) / expected * 1e6
                bt1 = os.times()
                base_sys = (bt1.system - bt0.system) / expected * 1e6
                assert statuses == {"200": expected}, statuses
                aio = aioredis.Redis.from_url(bench.redis_url)
                sender = _StubSender() if args.stub_send else Sender()
                engine = Engine(
                    DeliveryQueue(aio, SETTINGS.prefix, SETTINGS.retention_days * 86400),
                    sender,
                    live.refresh,
                    os.environ,
                    EngineSettings(concurrency=args.concurrency, allow_private=True),
                )
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
                prof = cProfile.Profile(time.process_time) if args.profile else None
                cpu0, t0, et0 = time.process_time(), time.perf_counter(), os.times()
                if prof is not None:
                    prof.enable()
                stats = runner.run(engine.run(120.0))
                if prof is not None:
                    prof.disable()
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
                eng_sys = (os.times().system - et0.system) / expected * 1e6
                if spy is not None and spy.proc is not None:
                    spy.proc.send_signal(signal.SIGINT)
                    spy.wait(15)
                    spy.stop()
                    print(py_spy_summary(Path(args.py_spy), args.top))
                runner.run(sender.close())
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
                f"{base_us:.0f} µs/request: x{cpu / expected * 1e6 / base_us:.2f}; of which system time "
                f"{eng_sys:.0f} and {base_sys:.0f} µs" + (" (under cProfile)" if prof is not None else "")
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


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
