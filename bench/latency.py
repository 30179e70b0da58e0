"""End-to-end latency: callbacks at a steady rate through `gateway web` and one `gateway worker`
to a recording target, everything on this machine (issue 16, point 4).

The chain, every process on 127.0.0.1, nothing pinned (they share the machine's cores as they
would on a one-machine deployment):

* a private Redis (gateway.embedded.EmbeddedRedis; `--redis-data` persists it: append-only
  file, fsync every second, GATEWAY_DURABILITY=memory);
* the target: bench/latency_load.py target, a raw asyncio server (uvloop, httptools) that records
  each delivery's receipt time minus the send time the callback carries;
* `python -m gateway web` (1 process, GATEWAY_LOG_LEVEL INFO, GATEWAY_OPEN_INGEST=true) with one
  JSON POST target for network `mynetwork` at the target (GATEWAY_CONFIG, applied at start-up);
* `python -m gateway worker` (1 process, the default GATEWAY_WORKER_CONCURRENCY);
* the sender: bench/latency_load.py send, the Contacts server. Open loop: request i leaves at
  start + i / rate however slowly earlier ones are answered (a busy connection never holds a
  send back: another is opened), so no coordinated omission. Each callback carries its sequence
  number (invitee) and the moment it was sent (invitor, µs of CLOCK_REALTIME).

Each rate is held for `--seconds` (15), after a warm-up of 2 s at 500/s. After the window, the
script waits until the target has every invitation (bounded by `--drain-timeout`), then asks it
for the latencies of that rate's sequence numbers. Per rate: offered and achieved rate, sent,
answered 204, delivered, delivered twice, p50 / p99 / p99.9 / max from the sender's request to
the target's receipt, and the CPU of each process (web, worker, Redis, sender, target) per
invitation and in cores during the window. A rate passes its check when every callback was
answered 204 and every invitation delivered exactly once. `--find-max` searches the highest rate
with p99 under `--p99-limit` (100 ms): up by `--step` until a rate fails, then halving the gap.

The table is printed and written to bench/results/latency-<date>.md (-quick.md with --quick).
Every process started is stopped by PID, also on Ctrl-C and SIGTERM.

Run: ``.venv/bin/python bench/latency.py [--rates 1000,3000,4000,5000] [--find-max] [--quick]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import (
    BENCH_DIR,
    FOREIGN_LOAD_CORES,
    HOST,
    Child,
    busy_runs_warning,
    clean_env,
    cpu_seconds,
    environment,
    exit_on_sigterm,
    fmt,
    host_cpu,
    host_delta,
    http_request,
    machine,
    start_http_server,
    write_targets_config,
)
from wrk_support import ServerTree

from gateway.embedded import EmbeddedRedis

PATH = "/invitation_created"
LOAD = BENCH_DIR / "latency_load.py"
RESULTS_DIR = BENCH_DIR / "results"
RATES = (1000, 3000, 4000, 5000)
HOLD_S = 15.0  # issue 16: each rate held for at least 15 s
QUICK_RATES = (500, 1000)
QUICK_HOLD_S = 3.0
WARMUP_RATE, WARMUP_S = 500.0, 2.0
# Issue 16's goals: p99 at most this at these rates (callbacks/s).
GOALS_MS = {1000: 10.0, 3000: 25.0, 4000: 100.0}
P99_LIMIT_MS = 100.0  # --find-max: "the highest rate this machine sustains with p99 under 100 ms"
START_DELAY_S = 2.0  # the sender's start-up (imports, warm connections) before its schedule starts
DRAIN_TIMEOUT_S = 120.0  # after a window, for the last deliveries
SETTLE_TIMEOUT_S = 300.0  # after a rate that did not drain in time, before the next one
LAG_LIMIT_MS = 5.0  # the sender's p99 lag behind its schedule beyond which the rate was not held
KEPT_UP = 0.98  # achieved / offered below this: the sender did not hold the rate
OTHER_LOAD_CORES = FOREIGN_LOAD_CORES  # busy CPU beyond ours worth a warning
POLL_S = 0.1
Search = tuple[float | None, float | None]  # (the best passing rate, the lowest failing one)


@dataclass
class Chain:
    """The processes of the chain and where their sequence numbers are."""

    tmp: Path
    redis: EmbeddedRedis
    target: Child
    target_port: int
    web: ServerTree
    worker: ServerTree
    method: str
    next_seq: int = 0
    expected: int = 0  # deliveries the target should have received by now, all rows together

    @property
    def target_url(self) -> str:
        return f"http://{HOST}:{self.target_port}"

    def received(self) -> int:
        status, body = http_request(f"{self.target_url}/__stats")
        if status != 200:
            raise RuntimeError(f"the target answered {status} to /__stats")
        return int(json.loads(body)["received"])

    def dump(self, lo: int, hi: int) -> list[tuple[int, int]]:
        status, body = http_request(f"{self.target_url}/__dump?lo={lo}&hi={hi}", timeout=60.0)
        if status != 200:
            raise RuntimeError(f"the target answered {status} to /__dump")
        return [(int(s), int(lat)) for s, lat in json.loads(body)]

    def cpu(self) -> dict[str, float | None]:
        return {
            "web": sum(self.web.cpu_seconds().values()),
            "worker": sum(self.worker.cpu_seconds().values()),
            "Redis": cpu_seconds(self.redis.pid),
            "target": cpu_seconds(self.target.pid),
        }

    def check_alive(self) -> None:
        for name, child in (("web", self.web.child), ("worker", self.worker.child), ("target", self.target)):
            if child.exited():
                raise RuntimeError(f"{name} exited; log tail:\n{child.log_tail()}")
        if self.redis.exited() is not None:
            raise RuntimeError("Redis exited")


@dataclass
class Row:
    kind: str  # "rate", "search" or "warm-up"
    rate: float
    seconds: float
    first: int  # sequence numbers first .. first + count - 1
    count: int
    sender: dict[str, Any]
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    delivered: int = 0  # distinct sequence numbers received
    receipts: int = 0  # deliveries received, repeats included
    drain_s: float | None = None  # from the end of the window to the last delivery; None: timed out
    window_cpu: dict[str, float | None] = field(default_factory=dict)  # CPU s during the window
    total_cpu: dict[str, float | None] = field(default_factory=dict)  # CPU s, window + drain
    host_busy_s: float | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stamp: str = "sent"  # what the latency counts from (--stamp)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def answered_204(self) -> int:
        return int(self.sender.get("statuses", {}).get("204", 0))

    @property
    def twice(self) -> int:
        return self.receipts - self.delivered

    def pct(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = self.latencies_ms  # sorted once, when filled
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    @property
    def p99(self) -> float | None:
        return self.pct(0.99)

    @property
    def max_ms(self) -> float | None:
        return self.latencies_ms[-1] if self.latencies_ms else None

    @property
    def achieved(self) -> float:
        return float(self.sender.get("achieved_rate", 0.0))

    def per_invitation_us(self, name: str) -> float | None:
        cpu = self.sender.get("cpu_send_s") if name == "sender" else self.total_cpu.get(name)
        return None if cpu is None or not self.count else cpu / self.count * 1e6

    def cores(self, name: str) -> float | None:
        cpu = self.sender.get("cpu_send_s") if name == "sender" else self.window_cpu.get(name)
        return None if cpu is None else cpu / self.seconds

    @property
    def other_cores(self) -> float | None:
        """Busy CPU beyond the chain's own processes during the window (other work on the machine)."""
        parts = [self.cores(n) for n in PROCESSES]
        if self.host_busy_s is None or any(p is None for p in parts):
            return None
        return max(0.0, self.host_busy_s / self.seconds - sum(p for p in parts if p is not None))

    def passes(self, limit_ms: float) -> bool:
        return self.ok and self.p99 is not None and self.p99 < limit_ms


PROCESSES = ("web", "worker", "Redis", "sender", "target")


# -- the chain -------------------------------------------------------------------------------------


@contextlib.contextmanager
def chain(args: argparse.Namespace, tmp: Path) -> Any:
    redis = EmbeddedRedis(data_dir=tmp / "redis" if args.redis_data else None)
    target: Child | None = None
    web: ServerTree | None = None
    worker: ServerTree | None = None
    try:
        redis.start()
        target, target_port = start_http_server(
            "target",
            lambda port: [sys.executable, str(LOAD), "target", "--port", str(port)],
            clean_env({}),
            tmp,
            "/__stats",
        )
        config = write_targets_config(tmp / "targets.toml", 1, f"http://{HOST}:{target_port}")
        redis_url = f"redis://{HOST}:{redis.port}/0"
        web_env = clean_env(
            {
                "REDIS_URL": redis_url,
                "GATEWAY_CONFIG": str(config),
                "GATEWAY_LOG_LEVEL": args.log_level,
                "GATEWAY_OPEN_INGEST": "true",
                "GATEWAY_DATA_DIR": str(tmp / "data-web"),
            }
        )
        web_child, web_port = start_http_server(
            "web",
            lambda port: [sys.executable, "-m", "gateway", "web", "--host", HOST, "--port", str(port)],
            web_env,
            tmp,
            "/healthz",
        )
        web = ServerTree("gateway web", web_child, web_port)
        worker_env = {
            "REDIS_URL": redis_url,
            "GATEWAY_ALLOW_PRIVATE_TARGETS": "true",
            "GATEWAY_LOG_LEVEL": args.log_level,
        }
        if args.concurrency:
            worker_env["GATEWAY_WORKER_CONCURRENCY"] = str(args.concurrency)
        worker_child = Child("worker", tmp / "worker.log")
        worker_child.spawn(
            [sys.executable, "-m", "gateway", "worker", "--name", f"bench-latency-{int(time.time())}"],
            clean_env(worker_env),
        )
        worker = ServerTree("gateway worker", worker_child, 0)
        yield Chain(tmp, redis, target, target_port, web, worker, args.method)
    finally:
        for server in (worker, web):
            if server is not None:
                server.stop()
        if target is not None:
            target.stop()
        redis.stop()


# -- one rate --------------------------------------------------------------------------------------


def run_rate(args: argparse.Namespace, ch: Chain, kind: str, rate: float, seconds: float) -> Row:
    """`rate` callbacks/s for `seconds`, then wait for every delivery; the row, checked."""
    ch.check_alive()
    count = round(rate * seconds)
    first = ch.next_seq
    ch.next_seq += count
    ch.expected += count
    out = ch.tmp / f"sender-{first}.json"
    sender = Child(f"sender-{first}", ch.tmp / f"sender-{first}.log")
    start_at = time.time() + START_DELAY_S
    cmd = [sys.executable, str(LOAD), "send", f"http://{HOST}:{ch.web.port}{PATH}", str(out)]
    cmd += ["--rate", f"{rate:g}", "--seconds", f"{seconds:g}", "--first", str(first)]
    cmd += ["--start-at", f"{start_at:.6f}", "--method", ch.method, "--stamp", args.stamp]
    cmd += ["--connections", str(args.connections), "--max-connections", str(args.max_connections)]
    row = Row(kind, rate, seconds, first, count, {}, stamp=args.stamp)
    try:
        sender.spawn(cmd, clean_env({}))
        time.sleep(max(0.0, start_at - time.time()))
        cpu0, host0 = ch.cpu(), host_cpu()
        time.sleep(max(0.0, start_at + seconds - time.time()))
        cpu1, host1 = ch.cpu(), host_cpu()
        window_end = time.monotonic()
        code = sender.wait(seconds + 90.0)  # its answers get 30 s after its last send
        if code is None:
            raise RuntimeError(f"the sender did not finish; log tail:\n{sender.log_tail()}")
    finally:
        sender.stop()
    if not out.exists():
        raise RuntimeError(f"the sender wrote no result (exit {code}); log tail:\n{sender.log_tail()}")
    row.sender = json.loads(out.read_text())
    row.window_cpu = {k: _delta(cpu0[k], cpu1[k]) for k in cpu0}
    busy = host_delta(host0, host1)
    row.host_busy_s = None if busy is None else busy[0]
    wait_for_deliveries(args, ch, row, window_end)
    cpu2 = ch.cpu()
    row.total_cpu = {k: _delta(cpu0[k], cpu2[k]) for k in cpu0}
    row.problems = check(row)
    row.notes = notes(row)
    return row


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def wait_for_deliveries(args: argparse.Namespace, ch: Chain, row: Row, window_end: float) -> None:
    """Until the target has every invitation of the row (or the drain timeout); then its latencies."""
    deadline = window_end + args.drain_timeout
    pairs: list[tuple[int, int]] = []
    while True:  # bounded by the deadline
        ch.check_alive()
        if ch.received() >= ch.expected:
            pairs = ch.dump(row.first, row.first + row.count)
            if len({s for s, _ in pairs}) >= row.count:
                row.drain_s = time.monotonic() - window_end
                break
        if time.monotonic() > deadline:
            pairs = ch.dump(row.first, row.first + row.count)
            break
        time.sleep(POLL_S)
    row.receipts = len(pairs)
    row.delivered = len({s for s, _ in pairs})
    seen: set[int] = set()
    lat = []
    for seq, us in pairs:  # a repeat's latency is not the invitation's: the first receipt counts
        if seq not in seen:
            seen.add(seq)
            lat.append(us / 1000)
    row.latencies_ms = sorted(lat)


def settle(ch: Chain) -> None:
    """After a rate that did not drain in time: wait for its backlog, so the next rate starts
    from an empty queue (else it would measure the backlog)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while ch.received() < ch.expected:  # bounded by the deadline
        ch.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{ch.expected - ch.received()} deliveries still missing {SETTLE_TIMEOUT_S:.0f} s after "
                "the drain timeout: stopping"
            )
        time.sleep(POLL_S * 5)


def check(row: Row) -> list[str]:
    problems = []
    s = row.sender
    if s.get("statuses") != {"204": row.count}:
        problems.append(
            f"the web's answers: {s.get('statuses')} for {row.count} callbacks (all 204 expected)"
        )
    if row.drain_s is None:
        problems.append(f"{row.count - row.delivered} of {row.count} not delivered within the drain timeout")
    elif row.delivered != row.count:
        problems.append(f"{row.delivered} of {row.count} delivered")
    if row.twice:
        problems.append(f"{row.twice} deliveries received twice")
    return problems


def notes(row: Row) -> list[str]:
    out = []
    lag = row.sender.get("lag_ms", {})
    if lag.get("p99", 0.0) > LAG_LIMIT_MS or row.achieved < KEPT_UP * row.rate:
        out.append(
            f"the sender fell behind its schedule (achieved {row.achieved:,.0f}/s, lag p99 "
            f"{lag.get('p99', 0.0):.1f} ms): the machine starved it, its sends bunched up"
            + (
                " (each latency still counts from the callback's actual send)"
                if row.stamp == "sent"
                else " (counted in the latencies: --stamp due)"
            )
        )
    if row.sender.get("late_start_ms", 0.0) > 0:
        out.append(f"the sender started {row.sender['late_start_ms']:.0f} ms late (slow start-up)")
    return out


def progress(row: Row) -> None:
    state = "ok" if row.ok else "FAILED: " + "; ".join(row.problems)
    print(
        f"  {row.kind} {row.rate:,.0f}/s for {row.seconds:g} s: achieved {row.achieved:,.0f}/s, "
        f"{row.delivered}/{row.count} delivered, p50 {fmt(row.pct(0.5), '.1f')} p99 {fmt(row.p99, '.1f')} "
        f"max {fmt(row.max_ms, '.1f')} ms, drain {fmt(row.drain_s, '.1f')} s; {state}",
        file=sys.stderr,
        flush=True,
    )


# -- rates and the search --------------------------------------------------------------------------


def run_rates(args: argparse.Namespace, ch: Chain, rows: list[Row]) -> None:
    for rate in args.rates:
        row = run_rate(args, ch, "rate", rate, args.seconds)
        progress(row)
        rows.append(row)
        if row.drain_s is None:
            print("  a backlog was left: the higher rates are not run", file=sys.stderr, flush=True)
            settle(ch)
            break


def find_max(args: argparse.Namespace, ch: Chain, rows: list[Row]) -> Search:
    """Up from --search-from by --step until a rate fails (p99 at or above the limit, or its
    check), then halve the gap down to --resolution. (best passing, lowest failing) rate."""
    good: float | None = None
    bad: float | None = None

    def probe(rate: float) -> bool:
        row = run_rate(args, ch, "search", rate, args.seconds)
        progress(row)
        rows.append(row)
        if row.drain_s is None:
            settle(ch)
        return row.passes(args.p99_limit)

    rate = args.search_from
    while rate <= args.search_max:  # bounded: rate grows by --step
        if probe(rate):
            good = rate
            rate += args.step
        else:
            bad = rate
            break
    while good is not None and bad is not None and bad - good > args.resolution:  # halves each time
        mid = round((good + bad) / 2 / 50) * 50 or (good + bad) / 2
        if mid in (good, bad):
            break
        if probe(mid):
            good = mid
        else:
            bad = mid
    return good, bad


# -- report ----------------------------------------------------------------------------------------


def goal_text(row: Row) -> str:
    goal = GOALS_MS.get(round(row.rate))
    if goal is None or row.p99 is None:
        return "-"
    return f"≤ {goal:g}: {'met' if row.p99 <= goal and row.ok else 'NOT met'}"


def cpu_cell(row: Row, name: str) -> str:
    return f"{fmt(row.per_invitation_us(name))} ({fmt(row.cores(name), '.2f')})"


def table(rows: Sequence[Row]) -> str:
    head = (
        "| rate | offered /s | achieved /s | sent | 204 | delivered | twice | p50 ms | p99 ms | max ms "
        "| goal p99 ms | web µs/inv (cores) | worker | Redis | sender | target | other cores | check |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        at_least = "≥ " if r.delivered < r.count else ""  # over the delivered ones only
        lines.append(
            f"| {r.kind} | {r.rate:,.0f} | {r.achieved:,.0f} | {r.sender.get('sent', 0):,} | "
            f"{r.answered_204:,} | {r.delivered:,} | {r.twice} | {fmt(r.pct(0.5), '.1f')} | "
            f"**{at_least}{fmt(r.p99, '.1f')}** | {at_least}{fmt(r.max_ms, '.1f')} | {goal_text(r)} | "
            + " | ".join(cpu_cell(r, n) for n in PROCESSES)
            + f" | {fmt(r.other_cores, '.2f')} | {'ok' if r.ok else 'FAILED'} |"
        )
    return "\n".join(lines)


def details(rows: Sequence[Row]) -> list[str]:
    out = []
    for r in rows:
        s = r.sender
        lag, answer = s.get("lag_ms", {}), s.get("answer_ms", {})
        parts = [
            f"p99.9 {fmt(r.pct(0.999), '.1f')} ms",
            f"last delivery {fmt(r.drain_s, '.2f')} s after the window",
            f"the web's 204: p50 {answer.get('p50', 0):.2f}, p99 {answer.get('p99', 0):.2f}, max "
            f"{answer.get('max', 0):.1f} ms",
            f"sender lag behind its schedule: p50 {lag.get('p50', 0):.2f}, p99 {lag.get('p99', 0):.2f}, "
            f"max {lag.get('max', 0):.1f} ms",
            f"{s.get('connections_opened', 0)} connections opened, {s.get('waited_at_cap', 0)} requests "
            "waited for one at the cap",
            "ok" if r.ok else "FAILED: " + "; ".join(r.problems),
        ]
        parts += [f"NOTE: {n}" for n in r.notes]
        out.append(
            f"- {r.kind} {r.rate:,.0f}/s (sequence {r.first} to {r.first + r.count - 1}): " + "; ".join(parts)
        )
    return out


def summary(args: argparse.Namespace, rows: Sequence[Row], search: Search | None) -> list[str]:
    lines = []
    limit = args.p99_limit
    if search is not None:
        good, bad = search
        bad_row = next((r for r in rows if r.kind == "search" and r.rate == bad), None)
        why = ""
        if bad_row is not None:
            failed = "" if bad_row.ok else ", and failed its check"
            why = f"{bad:,.0f}/s gave p99 {fmt(bad_row.p99, '.0f')} ms{failed}; "
        if good is None:
            lines.append(f"- **No rate probed had p99 under {limit:g} ms** ({why}the first was the lowest).")
        elif bad is None:
            lines.append(f"- **Every rate probed up to {good:,.0f}/s had p99 under {limit:g} ms** (the top).")
        else:
            lines.append(
                f"- **The highest rate sustained with p99 under {limit:g} ms: {good:,.0f}/s** ({why}search "
                f"resolution {args.resolution:g}/s)."
            )
    fixed = [r for r in rows if r.kind == "rate"]
    if fixed:
        passing = []
        for r in fixed:  # ascending: the first failure ends the run of passing rates
            if not r.passes(limit):
                break
            passing.append(r)
        best = f"{passing[-1].rate:,.0f}/s" if passing else "none"
        lines.append(f"- Of the rates run, the highest with p99 under {limit:g} ms and all below it: {best}.")
    return lines


def default_output(args: argparse.Namespace) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    return RESULTS_DIR / f"latency-{stamp}{'-quick' if args.quick else ''}.md"


LEGEND = (
    "Latency: from the moment the sender wrote the callback (its wall clock, carried in the invitor) "
    "to the moment the target had read the whole delivery (the same clock), over every invitation of "
    "the rate, each counted once (its first receipt); ≥: some were not delivered within the drain "
    "timeout, so the figure is over those that were (a lower bound). offered: the sender's "
    "schedule; achieved: its sends per second. sent, 204: callbacks sent, and answered 204 by the "
    "web. delivered: distinct invitations the target received; twice: receipts beyond one. CPU per "
    "invitation (µs): from /proc, over the window and the drain after it, divided by the "
    "invitations of the rate (the sender's: over its sending); in brackets, cores during the "
    "window. other cores: the machine's busy CPU beyond these five processes during the window "
    "(other work: the higher, the less reliable). goal: issue 16's p99 goal for that rate."
)


def report(
    args: argparse.Namespace,
    rows: Sequence[Row],
    search: Search | None,
    started_at: str,
    load_start: str,
    argv: Sequence[str],
    redis_version: str,
) -> str:
    env = environment()
    mach = machine()
    warm = [r for r in rows if r.kind == "warm-up"]
    shown = [r for r in rows if r.kind != "warm-up"]
    lines = [
        f"# End-to-end latency, {started_at}",
        "",
        f"- Machine: {mach['nproc']} cores (nproc), {mach['cpu_model']}, {mach['platform']}, Python "
        f"{mach['python']}; load average at start {load_start}, at end {mach['loadavg']}",
        f"- Versions: uvicorn {env.get('uvicorn')}, uvloop {env.get('uvloop')}, httptools "
        f"{env.get('httptools')}, rq {env.get('rq')}, redis-py {env.get('redis')}, valkey {redis_version}; "
        f"gateway {env['gateway_commit']}",
        f"- Command: `{shlex.join(['.venv/bin/python', 'bench/latency.py', *argv])}`",
        f"- Chain, all on 127.0.0.1, nothing pinned: sender (bench/latency_load.py send: {args.method}"
        f"{' JSON' if args.method == 'POST' else ''}, open loop, {args.connections} connections opened "
        f"before, up to {args.max_connections}) -> `gateway web` (1 process, log level {args.log_level}) "
        f"-> Redis ({'append-only file, fsync every second' if args.redis_data else 'in memory'}) -> "
        f"`gateway worker` (1 process, GATEWAY_WORKER_CONCURRENCY "
        f"{args.concurrency or 'default'}) -> target (bench/latency_load.py target: 1 JSON POST target)",
        "- Latency counted from "
        + (
            "the moment each callback was due on the sender's schedule (`--stamp due`: its lag counted)"
            if args.stamp == "due"
            else "the moment each callback was sent (the sender's lag behind its schedule is in Rows)"
        ),
        f"- Each rate held {args.seconds:g} s, after a warm-up of {WARMUP_S:g} s at {WARMUP_RATE:g}/s "
        + (f"({'ok' if all(r.ok for r in warm) else 'FAILED'})" if warm else "")
        + f"; then up to {args.drain_timeout:g} s for the last deliveries",
        "",
        table(shown),
        "",
        LEGEND,
        "",
        "Summary:",
        "",
        *summary(args, shown, search),
        "",
        "Rows:",
        "",
        *details(shown),
    ]
    busy = [r.other_cores for r in shown if r.other_cores is not None and r.other_cores > OTHER_LOAD_CORES]
    lines += busy_runs_warning(busy, len(shown), "rates")
    failed = [r for r in shown if not r.ok]
    if failed:
        lines += ["", f"**{len(failed)} rate(s) failed their checks** (see Rows)."]
    return "\n".join(lines) + "\n"


# -- command line ----------------------------------------------------------------------------------


def rate_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of rates, got {text!r}") from None
    if not values or any(not 1 <= v <= 50_000 for v in values):
        raise argparse.ArgumentTypeError("each rate 1..50000 callbacks/s")
    return values


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rates", type=rate_list, help="callbacks/s, ascending (1000,3000,4000,5000)")
    parser.add_argument("--seconds", type=float, help=f"each rate held this long ({HOLD_S:g}; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 500 and 1000/s for 3 s each")
    parser.add_argument(
        "--find-max", action="store_true", help="search the highest rate with p99 under the limit"
    )
    parser.add_argument("--only-search", action="store_true", help="--find-max without the --rates rows")
    parser.add_argument("--p99-limit", type=float, default=P99_LIMIT_MS, help="ms, for --find-max (100)")
    parser.add_argument("--search-from", type=float, default=1000.0, help="--find-max's first rate (1000)")
    parser.add_argument("--step", type=float, default=500.0, help="--find-max's step up (500)")
    parser.add_argument("--resolution", type=float, default=250.0, help="--find-max stops at this gap (250)")
    parser.add_argument("--search-max", type=float, default=20_000.0, help="--find-max's last rate (20000)")
    parser.add_argument(
        "--method", choices=("GET", "POST"), default="POST", help="POST JSON (default) or GET"
    )
    parser.add_argument(
        "--stamp",
        choices=("sent", "due"),
        default="sent",
        help="latency from each callback's send (default), or from when it was due on the schedule",
    )
    parser.add_argument("--connections", type=int, default=32, help="sender connections opened before (32)")
    parser.add_argument("--max-connections", type=int, default=1000, help="sender connections at most (1000)")
    parser.add_argument(
        "--concurrency", type=int, default=0, help="GATEWAY_WORKER_CONCURRENCY (default: its own)"
    )
    parser.add_argument("--log-level", default="INFO", help="GATEWAY_LOG_LEVEL of web and worker (INFO)")
    parser.add_argument(
        "--redis-data", action="store_true", help="Redis with an append-only file fsync'd every second"
    )
    parser.add_argument("--drain-timeout", type=float, default=DRAIN_TIMEOUT_S, help="s after a window (120)")
    parser.add_argument("--output", type=Path, help="the markdown file (bench/results/latency-DATE.md)")
    args = parser.parse_args(argv)
    args.rates = args.rates or (QUICK_RATES if args.quick else RATES)
    args.seconds = args.seconds or (QUICK_HOLD_S if args.quick else HOLD_S)
    if list(args.rates) != sorted(args.rates):
        parser.error("--rates must be ascending (a rate that leaves a backlog ends the run)")
    if not 0 < args.seconds <= 300 or not 1 <= args.drain_timeout <= 1800:
        parser.error("--seconds in (0, 300], --drain-timeout 1..1800")
    if args.only_search:
        args.find_max = True
    if args.find_max and not (
        args.step > 0 and args.resolution > 0 and 1 <= args.search_from <= args.search_max <= 50_000
    ):
        parser.error("--step and --resolution > 0, 1 <= --search-from <= --search-max <= 50000")
    if not 1 <= args.connections <= args.max_connections <= 10_000:
        parser.error("1 <= --connections <= --max-connections <= 10000")
    if args.concurrency < 0:
        parser.error("--concurrency >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    exit_on_sigterm()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    load_start = machine()["loadavg"]
    rows: list[Row] = []
    search: Search | None = None
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp, chain(args, Path(tmp)) as ch:
        redis_version = redis_server_version(ch)
        print(f"chain up: web {ch.web.port}, target {ch.target_port}, Redis {ch.redis.port}", file=sys.stderr)
        warm = run_rate(args, ch, "warm-up", WARMUP_RATE, WARMUP_S)
        progress(warm)
        rows.append(warm)
        if not warm.ok:
            raise RuntimeError(f"the warm-up failed: {'; '.join(warm.problems)}")
        if not args.only_search:
            run_rates(args, ch, rows)
        if args.find_max:
            search = find_max(args, ch, rows)
    text = report(args, rows, search, started_at, load_start, argv, redis_version)
    print(text)
    output = args.output or default_output(args)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"written to {output}", file=sys.stderr)
    return 0 if all(r.ok for r in rows) else 1


def redis_server_version(ch: Chain) -> str:
    from redis import Redis

    client = Redis(host=HOST, port=ch.redis.port)
    try:
        info = client.info("server")
        return str(info.get("valkey_version") or info.get("redis_version"))
    except Exception:
        return "unknown"
    finally:
        client.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
