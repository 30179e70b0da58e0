"""The capacity of one deployment (issue 16, point 5): how far one web process, one worker and
one Redis core go on this machine, as a Markdown table for the README's Scale-out section.

It runs the other benchmarks' own measurements, not new ones:

* **ingest**, through bench/ingest.py's functions: `gateway web` (1 process, INFO, pinned to one
  core; Redis and wrk on the other) at saturation, wrk -c64 and -c256 with a new invitation per
  request (its saturation rate is the better of the two), GET and JSON POST, then at half that
  rate (wrk -c16 on a fixed schedule). Per callback: the web's CPU, Redis' CPU and commands
  (from /proc and INFO commandstats over a run of known count: every 2xx answer is one stored
  event, checked as bench/ingest.py checks it);
* **delivery**, through bench/delivery.py's `Bench.drain_row`: one `gateway worker` draining a
  backlog of `--callbacks` to one fast target (uvicorn, uvloop, httptools), against an aiohttp
  loop measured right before. Per delivery: the worker's CPU, Redis' CPU and commands; every
  delivery checked delivered, HTTP 200, 1 attempt.

From these: what one Redis core takes (10^6 µs over Redis' µs per callback plus its µs per
delivery, at the batch sizes of saturation and of half load), how far one web process goes (its
saturation rate, and half of it as the comfortable rate), and how far one worker goes (its
drain rate). The report is printed and written to bench/results/capacity-<date>.md
(-quick.md with --quick), the table ready to paste, with the command that produced it.

Every process started is stopped by PID (bench/ingest.py's and bench/delivery.py's own
handling), only 127.0.0.1 is used. Needs wrk (`apt-get install wrk`).

Run: ``.venv/bin/python bench/capacity.py [--quick] [--callbacks N] [--methods GET,POST]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shlex
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import delivery
import ingest
from support import HOST, exit_on_sigterm, fmt, free_port, load_warning, machine
from wrk_support import choose_cores, find_wrk, pin_threads

from gateway.embedded import EmbeddedRedis

RESULTS_DIR = ingest.RESULTS_DIR
CALLBACKS = 20_000  # the delivery drain: long enough that /proc's 10 ms ticks do not matter
QUICK_CALLBACKS = 2_000


@dataclass(frozen=True, slots=True)
class IngestFigures:
    method: str
    saturation: ingest.Row  # the best connection count
    paced: ingest.Row

    @staticmethod
    def per_callback(row: ingest.Row) -> tuple[float | None, float | None, float | None]:
        """(web µs CPU, Redis µs CPU, Redis commands) per callback stored."""
        n = row.callbacks_2xx
        return (
            row.per_request_us(row.server_cpu_total),
            row.per_request_us(row.redis_cpu_s),
            row.total_commands / n if n else None,
        )


# -- the two measurements --------------------------------------------------------------------------


def measure_ingest(args: argparse.Namespace, tmp: Path) -> tuple[list[IngestFigures], list[ingest.Row]]:
    """bench/ingest.py's saturation and half-saturation rows of `gateway web, INFO`, 1 process."""
    wrk = find_wrk()
    run_args = argparse.Namespace(
        rounds=1, connections=ingest.SWEEP, rows=("sat", "paced"), profile=False, quick=args.quick
    )
    timing = ingest.QUICK if args.quick else ingest.FULL
    spec = ingest.GW_1
    redis = EmbeddedRedis()
    figures = []
    try:
        redis.start()
        assert redis.process is not None
        cores = choose_cores()
        pin_threads(redis.process.pid, cores.client)
        dead = f"http://{HOST}:{free_port()}/hook"  # nothing listens there; no worker runs
        run = ingest.Run(run_args, timing, wrk, cores, tmp, redis, dead)
        print("ingest (bench/ingest.py's rows, gateway web, INFO, 1 process):", file=sys.stderr, flush=True)
        with ingest.servers(run, [spec], pin=True) as started:
            server = started[spec.key]
            for method in args.methods:
                ingest.warm_up(run, spec, server, method)
                for connections in run.sweep:  # as ingest.saturate, for --methods only
                    row = ingest.measure(
                        run, f"saturation -c{connections}", spec, server, method, connections, timing.send_s
                    )
                    ingest.progress(row)
                    run.rows.append(row)
                sat = [r for r in run.rows if r.phase.startswith("saturation") and r.method == method]
                best = max(sat, key=lambda r: r.rate)
                rate = ingest.PACED_SHARE * ingest.saturation_rate(run, "saturation", spec, method)
                paced = ingest.measure(
                    run, "paced", spec, server, method, ingest.PACED_CONNECTIONS, timing.send_s, offered=rate
                )
                ingest.progress(paced)
                run.rows.append(paced)
                figures.append(IngestFigures(method, best, paced))
        return figures, run.rows
    finally:
        redis.stop()


def measure_delivery(args: argparse.Namespace, tmp: Path) -> delivery.Row:
    """bench/delivery.py's drain row: 1 worker, 1 target, `--callbacks` deliveries."""
    dargs = delivery.parse_args(["--callbacks", str(args.callbacks), "--workers", "1", "--targets", "1"])
    bench = delivery.Bench(dargs, tmp)
    print("delivery (bench/delivery.py's drain row, 1 worker, 1 target):", file=sys.stderr, flush=True)
    try:
        bench.start()
        row = bench.drain_row(1, 1, args.callbacks)
        print(delivery.one_line(row), file=sys.stderr, flush=True)
        return row
    finally:
        bench.stop()


# -- the table -------------------------------------------------------------------------------------


def per_second(us: float | None) -> float | None:
    return None if not us else 1e6 / us


def rounded(value: float | None) -> str:
    """A rate to two significant figures (these figures move by a third from run to run here)."""
    if value is None:
        return "-"
    digits = len(str(int(value))) - 2
    return f"{round(value, -digits) if digits > 0 else round(value):,.0f}"


def capacity_table(figures: Sequence[IngestFigures], dlv: delivery.Row) -> list[str]:
    lines = [
        "| part | measured | CPU per item | what one core takes |",
        "|---|---|---|---|",
    ]
    # Per method: (web µs, Redis µs, Redis commands) per callback at saturation, then at half.
    costs = {f.method: (f.per_callback(f.saturation), f.per_callback(f.paced)) for f in figures}
    for f in figures:
        (web_sat, _, _), (web_half, _, _) = costs[f.method]
        lines.append(
            f"| `gateway web`, 1 process, {f.method} | {rounded(f.saturation.rate)} callbacks/s at "
            f"saturation (wrk -c{f.saturation.connections}); at half that, p99 "
            f"{f.paced.wrk.latency_us['p99'] / 1000:.1f} ms | {fmt(web_sat)} µs per callback at "
            f"saturation, {fmt(web_half)} at half | {rounded(f.saturation.rate)} callbacks/s "
            f"(its saturation; {rounded(f.saturation.rate / 2)} at comfortable latency) |"
        )
    lines.append(
        f"| `gateway worker`, 1 process, a fast target | {rounded(dlv.rate)} deliveries/s (a drain of "
        f"{dlv.deliveries:,}; {dlv.ratio:.2f}x an aiohttp loop to the same target) | "
        f"{fmt(dlv.worker_cpu_us)} µs per delivery | {rounded(dlv.rate)} deliveries/s |"
    )
    for f in figures:
        (_, redis_sat, cmds_sat), (_, redis_half, cmds_half) = costs[f.method]
        lines.append(
            f"| Redis, ingest ({f.method}) | {fmt(cmds_sat, '.1f')} commands per callback at saturation "
            f"({f.saturation.callbacks_2xx / max(1, f.saturation.evalsha):.0f} per batch), "
            f"{fmt(cmds_half, '.1f')} at half ({f.paced.callbacks_2xx / max(1, f.paced.evalsha):.0f} per "
            f"batch) | {fmt(redis_sat)} µs per callback at saturation, {fmt(redis_half)} at half | "
            f"{rounded(per_second(redis_half))} (half load) to {rounded(per_second(redis_sat))} "
            "(saturation) callbacks/s |"
        )
    lines.append(
        f"| Redis, delivery | {fmt(dlv.redis_commands, '.1f')} commands per delivery | "
        f"{fmt(dlv.redis_cpu_us)} µs per delivery | {rounded(per_second(dlv.redis_cpu_us))} deliveries/s |"
    )
    for f in figures:
        low, high = (
            None if r is None or dlv.redis_cpu_us is None else r + dlv.redis_cpu_us
            for r in (costs[f.method][0][1], costs[f.method][1][1])
        )
        lines.append(
            f"| **Redis, a callback ({f.method}) with its one delivery** | | {fmt(low)} to {fmt(high)} µs | "
            f"**{rounded(per_second(high))} to {rounded(per_second(low))} callbacks/s** |"
        )
    return lines


def so_what(figures: Sequence[IngestFigures], dlv: delivery.Row) -> list[str]:
    """The sizing that follows from the table, in the README's terms."""
    worst_web = min(f.saturation.rate for f in figures) / 2
    redis_totals = [
        r + dlv.redis_cpu_us
        for f in figures
        for r in (f.per_callback(f.saturation)[1], f.per_callback(f.paced)[1])
        if r is not None and dlv.redis_cpu_us is not None
    ]
    redis_low = per_second(max(redis_totals)) if redis_totals else None
    return [
        f"So: a web process per about {rounded(worst_web)} callbacks/s at comfortable latency (half "
        f"the lower saturation rate), a worker per about {rounded(dlv.rate)} deliveries/s to fast "
        f"targets (slow targets need more workers or a larger GATEWAY_WORKER_CONCURRENCY, not faster "
        f"ones), and one Redis core for about {rounded(redis_low)} callbacks/s with one delivery each "
        "(the low end: small batches; with T targets per network, Redis' µs per delivery counts T "
        "times). Past that: more web and worker processes on more machines sharing that one Redis "
        "until its core is full, then one deployment per group of networks, each with its own Redis "
        "(README, Past one Redis).",
    ]


# -- report ----------------------------------------------------------------------------------------


def default_output(args: argparse.Namespace) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    return RESULTS_DIR / f"capacity-{stamp}{'-quick' if args.quick else ''}.md"


def report(
    args: argparse.Namespace,
    figures: Sequence[IngestFigures],
    ingest_rows: Sequence[ingest.Row],
    dlv: delivery.Row,
    started_at: str,
    load_start: str,
    argv: Sequence[str],
) -> str:
    mach = machine()
    command = shlex.join([".venv/bin/python", "bench/capacity.py", *argv])
    other = [r.other_cores for r in ingest_rows if r.other_cores is not None]
    host_note = (
        f"other load during the ingest runs up to {max(other):.2f} cores" if other else "other load unknown"
    )
    lines = [
        f"# Capacity of one deployment, {started_at}",
        "",
        f"- Machine: {mach['nproc']} cores (nproc), {mach['cpu_model']}, {mach['platform']}, Python "
        f"{mach['python']}; load average at start {load_start}, at end {mach['loadavg']}; {host_note}; "
        f"delivery row: all ours {fmt(dlv.cores_busy, '.2f')} of {fmt(dlv.host_cores, '.2f')} cores busy",
        f"- Command: `{command}`",
        "",
        f"Measured on this machine with `{command}` (Valkey on the same machine; the web pinned to "
        "one core with Redis and wrk on the other; the worker, its target and Redis unpinned):",
        "",
        *capacity_table(figures, dlv),
        "",
        *so_what(figures, dlv),
        "",
        "How: the web rows are bench/ingest.py's (wrk with a new invitation per request; the "
        "saturation rate is the better of -c64 and -c256; half: wrk -c16 on a fixed schedule at half "
        "that); the worker row is bench/delivery.py's drain row (a backlog accepted first, then one "
        "worker sends it to a uvicorn target answering 200). Redis' CPU is from /proc of the Redis "
        "process over each run, divided by the callbacks stored or the deliveries made (the drain "
        "row's includes the script's polls, 3 commands every 10 ms); its commands are from INFO "
        "commandstats. One core takes 10^6 / µs per item; a callback's batch is smaller at half load, "
        "so Redis' CPU per callback is higher there: the ranges run from saturation to half load.",
        "",
        "Checks: "
        + (
            "every ingest run passed bench/ingest.py's checks"
            if all(r.ok for r in ingest_rows)
            else "**an ingest run FAILED its checks** (see below)"
        )
        + f"; delivery: {dlv.check}.",
        "",
        "Rows:",
        "",
    ]
    for r in ingest_rows:
        lat = r.wrk.latency_us
        web, redis_us, cmds = IngestFigures.per_callback(r)
        lines.append(
            f"- ingest, {r.phase}, {r.method}: {r.rate:,.0f} req/s, p99 {lat['p99'] / 1000:.2f} ms, web "
            f"{fmt(web)} µs and Redis {fmt(redis_us)} µs CPU per callback, {fmt(cmds, '.2f')} commands "
            f"per callback, other cores {fmt(r.other_cores, '.2f')}; "
            + ("ok" if r.ok else "FAILED: " + "; ".join(r.problems))
        )
    lines.append(
        f"- delivery: {dlv.deliveries} deliveries in {dlv.seconds:.2f} s = {dlv.rate:,.0f}/s, baseline "
        f"{dlv.baseline.rps:,.0f} req/s (x{dlv.ratio:.2f}); worker {fmt(dlv.worker_cpu_us)}, Redis "
        f"{fmt(dlv.redis_cpu_us)}, target {fmt(dlv.target_cpu_us)} µs CPU per delivery; "
        f"{fmt(dlv.redis_commands, '.1f')} Redis commands and {fmt(dlv.scripts, '.3f')} scripts per "
        f"delivery; {dlv.check}"
    )
    warnings = [
        w for w in [load_warning(dlv.name, dlv.cores_busy, dlv.host_cores, dlv.steal_cores)] if w is not None
    ]
    if any(o > ingest.OTHER_LOAD_CORES for o in other):
        warnings.append(
            f"WARNING: other processes kept more than {ingest.OTHER_LOAD_CORES} cores busy during the ingest "
            "runs: these figures are not reliable"
        )
    if warnings:
        lines += ["", *(f"**{w}**" for w in warnings)]
    return "\n".join(lines) + "\n"


# -- command line ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run (0.5 s wrk runs, 2,000 deliveries)")
    parser.add_argument(
        "--callbacks", type=int, help=f"the delivery drain's backlog ({CALLBACKS:,}; --quick 2,000)"
    )
    parser.add_argument(
        "--methods",
        type=lambda v: tuple(m.strip().upper() for m in v.split(",") if m.strip()),
        default=ingest.METHODS,
        help="ingest methods (GET,POST)",
    )
    parser.add_argument("--output", type=Path, help="the markdown file (bench/results/capacity-DATE.md)")
    args = parser.parse_args(argv)
    args.callbacks = args.callbacks or (QUICK_CALLBACKS if args.quick else CALLBACKS)
    if not 100 <= args.callbacks <= 1_000_000:
        parser.error("--callbacks 100..1000000")
    if not args.methods or any(m not in ingest.METHODS for m in args.methods):
        parser.error("--methods: GET, POST or both")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    find_wrk()  # before anything starts
    exit_on_sigterm()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    load_start = machine()["loadavg"]
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp:
        ingest_dir, delivery_dir = Path(tmp) / "ingest", Path(tmp) / "delivery"
        ingest_dir.mkdir()
        delivery_dir.mkdir()
        figures, ingest_rows = measure_ingest(args, ingest_dir)
        dlv = measure_delivery(args, delivery_dir)
    text = report(args, figures, ingest_rows, dlv, started_at, load_start, argv)
    print(text)
    output = args.output or default_output(args)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"written to {output}", file=sys.stderr)
    return 0 if all(r.ok for r in ingest_rows) and dlv.check.startswith("ok") else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
