"""Instructions per delivery: the delivery engine against the aiohttp loop, counted by callgrind.

On a shared VM, CPU time per request moves by 30% or more from one run to the next, for both the
worker and the baseline (bench/README.md shows runs minutes apart). Instructions do not: valgrind's
callgrind counts every instruction a process executes (user space; the kernel's part of a
syscall is not counted), the same on a busy machine as on a quiet one. This benchmark counts
them for the two sides of bench/delivery.py's ratio, in the same run:

* loop: bench/delivery_load.py's aiohttp loop (32 requests in flight, the same session settings
  as the worker's Sender) posting the gateway's own rendered request N times;
* engine: `Engine.run` as `gateway worker` runs it (uvloop, a Sender, claims and completions
  through FastRedis, a metrics Tally, INFO logging) until N stored deliveries are delivered.

Each side runs in a child process under `valgrind --tool=callgrind`, twice (N = --small and
--big), and the figure is the difference divided by the difference in N: start-up, imports and
set-up cancel out. The private Redis and the target (uvicorn, uvloop, httptools) run normally,
as in bench/delivery.py. Under valgrind the counted process runs about 50 times slower than
usual, so its targets and Redis answer at once, from its point of view: claims and completions
group as they would against fast peers.

Instructions are not time: cache misses and branch mispredictions cost cycles without
instructions, and the kernel's share is left out. Read the ratio as the work each side asks of
the CPU, next to bench/delivery.py's rates.

Every process started is stopped by PID; only 127.0.0.1 is contacted. Needs valgrind (Debian
package `valgrind`).

Run: ``.venv/bin/python bench/delivery_instructions.py [--small 100] [--big 800]``
(about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import datetime as dt
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from delivery import FIELDS, SETTINGS, Bench
from support import BENCH_DIR, HOST, environment, machine, worker_logging

CHILD_TIMEOUT_S = 900


def child(mode: str, n: int, redis_url: str, spec_path: str, concurrency: int) -> None:
    """The counted process: the loop or the engine, n deliveries."""
    import redis.asyncio as aioredis
    import uvloop
    from delivery_load import _post_all

    from gateway.delivery.engine import Engine, EngineSettings
    from gateway.delivery.sender import Sender
    from gateway.fastredis import FastRedis
    from gateway.live import LiveConfig
    from gateway.metrics import Tally
    from gateway.store.events import Store
    from gateway.store.queue import DeliveryQueue

    # INFO, as shipped, through the gateway's own handler, to a file (the worker's goes to stderr).
    worker_logging(Path(spec_path).with_name(f"{mode}-{n}.log"))
    spec = json.loads(Path(spec_path).read_text())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if mode == "loop":
            statuses: collections.Counter[str] = collections.Counter()
            runner.run(_post_all(spec, n, 32, statuses))
            if statuses != {"200": n}:
                raise SystemExit(f"loop: {dict(statuses)}")
            return
        from redis import Redis

        retention = SETTINGS.retention_days * 86400
        store = Store(Redis.from_url(redis_url), prefix=SETTINGS.prefix, retention=retention)
        live = LiveConfig(store)
        aio = aioredis.Redis.from_url(redis_url)
        scripts = FastRedis(redis_url, decode=True)  # as gateway/worker.py
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)  # as gateway/worker.py
        sender = Sender()
        if mode == "stub":
            from delivery_profile import StubSender

            sender = StubSender()
        engine = Engine(
            DeliveryQueue(aio, SETTINGS.prefix, retention, scripts=scripts),
            sender,
            live.refresh,
            os.environ,
            EngineSettings(concurrency=concurrency, allow_private=True),
        )
        engine.tally = Tally()
        stats = runner.run(engine.run(600.0))
        runner.run(engine.sender.close())
        runner.run(scripts.aclose())
        runner.run(aio.aclose())
        if stats.outcomes != {"delivered": n}:  # the stub answers 200 too
            raise SystemExit(f"engine: {stats.to_dict()}")


def count(
    tmp: Path, mode: str, n: int, redis_url: str, spec: Path, concurrency: int, keep: Path | None = None
) -> tuple[int, int]:
    """(instructions of the whole process, of its main thread) for one run under callgrind; its
    callgrind files copied to `keep` (for callgrind_annotate)."""
    out = tmp / f"callgrind.{mode}.{n}"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",  # one file per thread: the main thread's share apart
        f"--callgrind-out-file={out}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        str(n),
        redis_url,
        str(spec),
        str(concurrency),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)  # killed at timeout
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {n} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    per_thread: dict[int, int] = {}
    for path in tmp.glob(f"{out.name}-*"):
        for line in path.read_text().splitlines():
            if line.startswith("summary:"):
                per_thread[int(path.name.rsplit("-", 1)[1])] = int(line.split()[1])
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, keep / path.name)
        path.unlink()
    if not per_thread:
        raise RuntimeError(f"no summary in {out}-*")
    return sum(per_thread.values()), per_thread[min(per_thread)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--small", type=int, default=100, help="deliveries of the smaller run (100)")
    parser.add_argument("--big", type=int, default=800, help="deliveries of the bigger run (800)")
    parser.add_argument("--concurrency", type=int, default=SETTINGS.worker_concurrency)
    parser.add_argument("--out", type=Path, help="markdown (bench/results/delivery-instructions-DATE.md)")
    parser.add_argument(
        "--stub",
        action="store_true",
        help="also count the engine with its sends stubbed (its own work: no HTTP, no second thread)",
    )
    parser.add_argument("--keep", type=Path, help="copy the callgrind files here (callgrind_annotate)")
    parser.add_argument(
        "--engine-only",
        action="store_true",
        help="count the engine's side only (the loop does not change with the gateway's code)",
    )
    args = parser.parse_args(argv)
    if not 10 <= args.small < args.big <= 20_000:
        parser.error("need 10 <= --small < --big <= 20000")
    if shutil.which("valgrind") is None:
        parser.error("valgrind not found: apt-get install valgrind")
    from gateway.delivery.request import build_request
    from gateway.delivery.sender import USER_AGENT
    from gateway.events import INVITATION_CREATED, make_event

    mach = machine()
    counts: dict[tuple[str, int], tuple[int, int]] = {}
    sides: tuple[str, ...] = ("engine",) if args.engine_only else ("loop", "engine")
    if args.stub:
        sides += ("stub",)
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp_name:
        tmp = Path(tmp_name)
        bench = Bench(argparse.Namespace(target_workers=1, timeout=300), tmp)
        try:
            bench.start()
            _client, _store, _queue, live = bench.fresh(1)
            target = live.get().target("t1")
            assert target is not None
            request = build_request(target, make_event(FIELDS, INVITATION_CREATED, "json", client=HOST), {})
            spec = tmp / "request.json"
            body = None if request.body is None else base64.b64encode(request.body).decode()
            spec.write_text(
                json.dumps(
                    {
                        "method": request.method,
                        "url": request.url,
                        "headers": [list(h) for h in request.headers],
                        "session_headers": {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                        "body": body,
                    }
                )
            )
            for mode in sides:
                for n in (args.small, args.big):
                    if mode != "loop":
                        _client, store, queue, live = bench.fresh(1)
                        bench.accept_many(store, queue, live, n)
                    print(f"{mode}, {n} deliveries, under callgrind...", file=sys.stderr, flush=True)
                    counts[(mode, n)] = count(
                        tmp, mode, n, bench.redis_url, spec, args.concurrency, args.keep
                    )
        finally:
            bench.stop()
    span = args.big - args.small
    per = {m: (counts[(m, args.big)][0] - counts[(m, args.small)][0]) / span for m in sides}
    main_thread = {m: (counts[(m, args.big)][1] - counts[(m, args.small)][1]) / span for m in sides}
    ratio = per["engine"] / per["loop"] if "loop" in per else None
    env = environment({"command": " ".join(["bench/delivery_instructions.py", *(argv or sys.argv[1:])])})
    text = "\n".join(
        [
            f"# Delivery instructions, {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
            "",
            f"- Machine: {mach['nproc']} cores, {mach['cpu_model']}, Python {mach['python']}",
            f"- Gateway {env['gateway_commit']}; runs of {args.small} and {args.big} deliveries; "
            f"engine concurrency {args.concurrency}",
            "",
            "| side | instructions, small run | instructions, big run | instructions per delivery "
            "| of which the main thread |",
            "|---|---:|---:|---:|---:|",
            *(
                f"| {m} | {counts[(m, args.small)][0]:,} | {counts[(m, args.big)][0]:,} | {per[m]:,.0f} "
                f"| {main_thread[m]:,.0f} |"
                for m in sides
            ),
            "",
            (
                f"Engine over loop: **{ratio:.2f}** instructions per delivery (the engine's other "
                "thread is pyreqwest's runtime)."
                if ratio is not None
                else "Engine only (--engine-only)."
            ),
            "",
        ]
    )
    print(text)
    out = args.out or BENCH_DIR / "results" / f"delivery-instructions-{dt.date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, n, url, spec_path, conc = sys.argv[2:7]
        child(mode, int(n), url, spec_path, int(conc))
        sys.exit(0)
    sys.exit(main())
