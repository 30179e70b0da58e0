"""Ingest benchmark: `gateway web` against bare Starlette, both under wrk, in the same run.

Every figure is set against a baseline measured in the same run: bare Starlette answering 204
(bench/bare_app.py) under uvicorn with the arguments of `gateway web` (uvloop, httptools, same
keep-alive, no access log). The gateway is `python -m gateway web` on a private Redis
(gateway.embedded.EmbeddedRedis), with GATEWAY_OPEN_INGEST=true and one matching target at a
127.0.0.1 port where nothing listens (no worker runs: nothing is sent), at log level INFO as in
production (one `accepted …` line per batch of callbacks) and at WARNING.

Load: wrk -t1 --latency with bench/ingest.lua (one invitation per request, each with its own
invitee, since the gateway drops identical callbacks as duplicates), GET (query string) and
JSON POST. wrk runs pinned to one core (taskset -c), the server to the other, Redis beside
wrk. Rows:

* saturation, 1 process: wrk -c64 and -c256 (--connections), each connection sending as soon as
  it has its answer; a server's saturation rate is its best of the two (bare Starlette's core is
  full at 64; the gateway holds each callback about 2 ms longer, for its batch's commit, so 64
  connections leave its core idle part of the time), and the report gives the ratio at each count
  and at each server's best;
* half saturation, 1 process: wrk -c16 sending on a fixed schedule of half the rate that the
  same server reached at saturation (its best) in this run: p50 and p99 at a load it can carry;
* saturation, 2 processes (`--workers 2`, WEB_CONCURRENCY=2): not pinned, against bare
  Starlette with 2 workers;
* duplicates, 1 process (gateway, INFO): a replay flood, every request the same invitation
  within the dedupe window (`--dup-keys K` cycles through K instead of 1), against new
  invitations to the same server at the same connection count in the same round: the ratio
  dup/new, the web's CPU and Redis' commands per callback of each.

`--rows` picks the rows (sat, paced, x2, dup; default all of them).

Durability (README, "What a 204 promises"): by default Redis keeps nothing on disk and the gateway
runs at GATEWAY_DURABILITY=memory, as in every row before. `--appendfsync everysec|always` gives
Redis an append-only file in the run's temporary folder with that fsync policy, and
`--durability disk` makes the gateway wait for its fsync (WAITAOF) behind every batch; the
standalone's default is measured by
``bench/ingest.py --rows sat --rounds 3 --appendfsync everysec`` (memory, as before),
``... --appendfsync always --durability disk`` and ``... --appendfsync always`` (memory on a
server that fsyncs before each answer), each against bare Starlette in the same run.

After every run it checks that wrk saw no error and no answer of 400 or above, that nothing was
in flight when wrk stopped, and for the gateway that Redis holds exactly one new event (ZCARD
gw:events) and one due delivery per 2xx answer, and no duplicate (a duplicates row: no new
event, no due delivery, and the duplicates counter moved by the number sent). It reports Redis
commands per callback from INFO commandstats (the Lua script's own commands included), and the
CPU of the server, Redis and wrk from /proc.

The table is printed and written to bench/results/ingest-<date>.md (-quick.md with --quick).
Every process started (Redis, servers and their workers, wrk, py-spy) is stopped by PID,
also on Ctrl-C and SIGTERM. Only 127.0.0.1 is used. Needs wrk: `apt-get install wrk`.

Run: ``.venv/bin/python bench/ingest.py [--quick] [--rounds N] [--rows sat,paced,x2,dup] [--profile]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from support import (
    BENCH_DIR,
    FOREIGN_LOAD_CORES,
    HOST,
    busy_runs_warning,
    clean_env,
    cpu_seconds,
    environment,
    exit_on_sigterm,
    free_port,
    host_cpu,
    host_delta,
    http_request,
    machine,
    start_http_server,
    write_targets_config,
)
from wrk_support import (
    Cores,
    Profile,
    ServerTree,
    WrkResult,
    choose_cores,
    command_calls,
    cpu_delta,
    find_py_spy,
    find_wrk,
    loaded_modules,
    pin_threads,
    run_wrk,
    start_py_spy,
    summarize_profile,
    taskset,
    wrk_version,
)

from gateway.embedded import EmbeddedRedis

PATH = "/invitation_created"
SCRIPT = BENCH_DIR / "ingest.lua"
RESULTS_DIR = BENCH_DIR / "results"
PREFIX = "gw"  # the gateway's default GATEWAY_PREFIX
CONNECTIONS = 64
# Saturation is each server's best rate over these connection counts. Bare Starlette is at 100%
# of its core with 64; the gateway holds each callback about 2 ms longer (its batch's commit), so
# with 64 connections about 46 of them wait in Redis and its core idles: it needs more requests
# in flight to be saturated (the Contacts server's callbacks come from independent users, not
# from a fixed set of connections).
SWEEP = (64, 256)
PACED_CONNECTIONS = 16
PACED_SHARE = 0.5  # of the saturation rate
KEPT_UP = 0.95  # a paced run that achieved less than this share of its schedule fell behind
METHODS = ("GET", "POST")
NATIVE = ("uvloop", "httptools")  # must be loaded in every server process
INVITEES_PER_RUN = 10_000_000  # invitee numbers of one wrk run: +447 + 9 digits, so <= 100 runs
INVITOR, NETWORK = "johnsnow", "mynetwork"  # as bench/ingest.lua sends them
# --rows: the saturation rows (1 process), half saturation (needs sat: half of its rate), 2
# processes, duplicates against new invitations.
ROWS = ("sat", "paced", "x2", "dup")
DUP_KEYS = 1  # a replay flood: every request the same callback (--dup-keys)
MAX_DUP_KEYS = 10_000  # each is sent once before its run, one after another
TOP_COMMANDS = 8
OTHER_LOAD_CORES = FOREIGN_LOAD_CORES  # busy CPU beyond ours worth a warning
PROFILE_NOTE = (
    "`py-spy record -p PID -d S -f raw --nonblocking`, pinned beside wrk, while wrk saturates the "
    "server (runs not in the table): 100 samples a second of the server's busy thread, idle ones left "
    "out. Own time counts the innermost Python frame: C code (uvloop, httptools, json, the socket) "
    "counts for the Python function that called it, and `Runner.run` (asyncio/runners.py) is "
    "uvloop's own loop. Stacks read without pausing the process are sometimes cut short, so "
    "inclusive shares are lower bounds and parents can be wrong; own time is the reliable part."
)


@dataclass(frozen=True, slots=True)
class Timing:
    send_s: float  # requests sent during this long; wrk's -d is this rounded up, plus a drain
    warmup_s: float  # a saturating run of this long, not counted, before each saturation row
    profile_s: int  # py-spy's -d (--profile)

    def wrk_duration(self, send_s: float) -> int:
        # wrk takes whole seconds; at least 0.5 s after the window for the answers in flight.
        return math.ceil(send_s + 0.5)


FULL = Timing(send_s=10.0, warmup_s=2.0, profile_s=8)
QUICK = Timing(send_s=0.5, warmup_s=0.3, profile_s=2)


@dataclass(frozen=True, slots=True)
class ServerSpec:
    key: str
    label: str
    gateway: bool
    workers: int
    log_level: str = "INFO"
    db: int = 0
    durability: str | None = None  # GATEWAY_DURABILITY; None: --durability
    disk_redis: bool = False  # on the second Redis (--with-disk: appendfsync always)
    floor: bool = False  # bench/floor_app.py (--with-floor)
    base: bool = False  # the gateway as checked out in --base DIR

    @property
    def bare(self) -> bool:
        """The baseline: bare Starlette."""
        return not self.gateway and not self.floor


@dataclass
class Row:
    phase: str
    spec: ServerSpec
    method: str
    connections: int
    offered: float | None  # requests/s of the fixed schedule; None: saturation
    wrk: WrkResult
    server_cpu_s: dict[int, float]
    redis_cpu_s: float | None
    host_busy_s: float | None
    wall_s: float
    commands: Counter[str]
    stored: int | None = None
    due: int | None = None
    duplicates: int | None = None
    problems: list[str] = field(default_factory=list)
    repeat: int = 0  # 0: a new invitation per request; K: K invitations repeated (duplicates)
    fsyncs: int | None = None  # Redis' fsync and fdatasync calls over the run (--appendfsync, perf)
    ratio: float | None = None  # rate over bare's, same phase and method (median rows); dup/new
    runs: list[float] = field(default_factory=list)  # rates of every round
    round_ratios: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.wrk.rate

    @property
    def answered(self) -> int:
        return self.wrk.requests

    @property
    def callbacks_2xx(self) -> int:
        return self.wrk.requests - self.wrk.errors["status"]

    @property
    def server_cpu_total(self) -> float:
        return sum(self.server_cpu_s.values())

    def per_request_us(self, seconds: float | None) -> float | None:
        return None if seconds is None or self.answered == 0 else seconds / self.answered * 1e6

    @property
    def server_cores(self) -> float:
        # The server is busy during the sending window; the drain after it is a few requests.
        return self.server_cpu_total / self.wrk.window_s

    @property
    def wrk_cores(self) -> float:
        return self.wrk.wrk_cpu_s / self.wrk.window_s

    @property
    def other_cores(self) -> float | None:
        """Cores kept busy by processes other than ours (server, Redis, wrk) during the run."""
        if self.host_busy_s is None or self.redis_cpu_s is None:
            return None
        ours = self.server_cpu_total + self.redis_cpu_s + self.wrk.wrk_cpu_s
        return max(0.0, (self.host_busy_s - ours) / self.wall_s)

    @property
    def evalsha(self) -> int:
        return self.commands["evalsha"] + self.commands["eval"]

    @property
    def total_commands(self) -> int:
        return sum(self.commands.values())

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Run:
    """The state of one benchmark run: Redis, the servers alive, what was measured."""

    args: argparse.Namespace
    timing: Timing
    wrk: str
    cores: Cores
    tmp: Path
    redis: EmbeddedRedis
    dead_url: str
    disk_redis: EmbeddedRedis | None = None  # --with-disk
    rows: list[Row] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    natives: dict[str, str] = field(default_factory=dict)
    wrk_runs: int = 0

    @property
    def sweep(self) -> tuple[int, ...]:
        """The connection counts of the saturation rows (--connections)."""
        return tuple(getattr(self.args, "connections", None) or SWEEP)

    @property
    def wanted(self) -> frozenset[str]:
        """The rows to run (--rows; all by default)."""
        return frozenset(getattr(self.args, "rows", None) or ROWS)

    def redis_for(self, spec: ServerSpec) -> EmbeddedRedis:
        if spec.disk_redis:
            assert self.disk_redis is not None
            return self.disk_redis
        return self.redis

    def next_base(self) -> int:
        self.wrk_runs += 1
        if self.wrk_runs >= 100:
            raise RuntimeError("more than 99 wrk runs: invitee numbers would repeat")
        return self.wrk_runs * INVITEES_PER_RUN


# -- servers ---------------------------------------------------------------------------------------


def start_server(run: Run, spec: ServerSpec, pin: bool) -> ServerTree:
    cpus = run.cores.server if pin else ()
    workers = ["--workers", str(spec.workers)]
    if spec.floor:
        env = clean_env({"REDIS_URL": f"redis://{HOST}:{run.redis.port}/{spec.db}"})

        def cmd(port: int) -> list[str]:
            args = [str(BENCH_DIR / "floor_app.py"), "--host", HOST, "--port", str(port)]
            return taskset(cpus, [sys.executable, *args])

        ready = "/"  # its 404
    elif spec.gateway:
        config = write_targets_config(run.tmp / f"targets-{spec.key}.toml", 1, run.dead_url)
        env = clean_env(
            {
                "REDIS_URL": f"redis://{HOST}:{run.redis_for(spec).port}/{spec.db}",
                "GATEWAY_CONFIG": str(config),
                "GATEWAY_LOG_LEVEL": spec.log_level,
                "GATEWAY_OPEN_INGEST": "true",
                "GATEWAY_DATA_DIR": str(run.tmp / f"data-{spec.key}"),  # its own spool folder
                # (capacity.py sets no --durability)
                "GATEWAY_DURABILITY": spec.durability or getattr(run.args, "durability", "memory"),
            }
        )
        if spec.base:
            # The base's package first on the path (before this checkout's, which -m would find).
            env["PYTHONPATH"] = str(run.args.base.resolve())

        def cmd(port: int) -> list[str]:
            args = ["-m", "gateway", "web", "--host", HOST, "--port", str(port), *workers]
            return taskset(cpus, [sys.executable, *args])

        ready = "/healthz"
    else:
        env = clean_env({})

        def cmd(port: int) -> list[str]:
            args = [str(BENCH_DIR / "bare_app.py"), "--host", HOST, "--port", str(port), *workers]
            return taskset(cpus, [sys.executable, *args])

        ready = PATH
    child, port = start_http_server(spec.key, cmd, env, run.tmp, ready)
    server = ServerTree(spec.label, child, port)
    try:
        wait_workers(server, spec)
    except BaseException:
        server.stop()
        raise
    return server


def wait_workers(server: ServerTree, spec: ServerSpec, timeout: float = 30.0) -> None:
    """Until every serving process has imported uvloop and httptools (uvicorn's workers start
    after the master answers nothing: the master only holds the socket), then record them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = server.workers()
        if len(procs) == spec.workers and all(loaded_modules(p, NATIVE) == set(NATIVE) for p in procs):
            time.sleep(0.5 if spec.workers > 1 else 0.0)  # the last one's startup, after its imports
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"{spec.label}: {spec.workers} process(es) with {' and '.join(NATIVE)} loaded did not "
        f"appear within {timeout:.0f} s; log tail:\n{server.child.log_tail()}"
    )


@contextlib.contextmanager
def servers(run: Run, specs: Sequence[ServerSpec], pin: bool) -> Iterator[dict[str, ServerTree]]:
    started: dict[str, ServerTree] = {}
    try:
        for spec in specs:
            if not spec.bare:
                Redis(host=HOST, port=run.redis_for(spec).port, db=spec.db).flushdb()
            started[spec.key] = start_server(run, spec, pin)
            procs = started[spec.key].workers()
            run.natives[spec.label] = ", ".join(
                f"{pid}: {'+'.join(sorted(loaded_modules(pid, NATIVE)))}" for pid in procs
            )
        yield started
    finally:
        for server in reversed(started.values()):
            server.stop()


# -- one wrk run -----------------------------------------------------------------------------------


def measure(
    run: Run,
    phase: str,
    spec: ServerSpec,
    server: ServerTree,
    method: str,
    connections: int,
    send_s: float,
    offered: float | None = None,
    note: str = "",
    repeat: int = 0,
    count_204: bool = False,
) -> Row:
    client = Redis(host=HOST, port=run.redis_for(spec).port, db=spec.db)
    try:
        base = run.next_base()
        if repeat:
            prime(server, method, base, repeat)  # so that every request of the run is a duplicate
        events0, due0, dup0 = gateway_state(client) if spec.gateway else (None, None, None)
        floor0 = int(client.get("floor:count") or 0) if spec.floor else 0
        redis_pid = run.redis_for(spec).pid
        stats0 = command_calls(client.info("commandstats"))
        cpu0, rcpu0, host0 = server.cpu_seconds(), cpu_seconds(redis_pid), host_cpu()
        counter = FsyncCount.start(redis_pid) if spec.gateway and (_aof(run) or spec.disk_redis) else None
        t0 = time.monotonic()
        args = [method, str(base), f"{send_s:g}", f"{offered or 0:.3f}", str(repeat), str(int(count_204))]
        log = run.tmp / f"wrk-{run.wrk_runs:02d}-{spec.key}-{method}{note}.log"
        result = run_wrk(
            run.wrk,
            f"http://{HOST}:{server.port}{PATH}",
            SCRIPT,
            args,
            connections,
            run.timing.wrk_duration(send_s),
            run.cores.client,
            log,
            clean_env({}),
        )
        wall = time.monotonic() - t0
        fsyncs = counter.stop() if counter is not None else None
        cpu1, rcpu1, host1 = server.cpu_seconds(), cpu_seconds(redis_pid), host_cpu()
        stats1 = command_calls(client.info("commandstats"))
        commands = stats1 - stats0
        commands.pop("info", None)  # our own snapshot (the one before counts in the one after)
        busy = host_delta(host0, host1)
        row = Row(
            phase=phase,
            spec=spec,
            method=method,
            connections=connections,
            offered=offered,
            wrk=result,
            server_cpu_s=cpu_delta(cpu0, cpu1),
            redis_cpu_s=None if rcpu0 is None or rcpu1 is None else rcpu1 - rcpu0,
            host_busy_s=None if busy is None else busy[0],
            wall_s=wall,
            commands=commands,
            repeat=repeat,
            fsyncs=fsyncs,
        )
        if spec.floor:
            row.stored = int(client.get("floor:count") or 0) - floor0
        if spec.gateway:
            events1, due1, dup1 = gateway_state(client)
            assert events0 is not None and due0 is not None and dup0 is not None
            row.stored, row.due, row.duplicates = events1 - events0, due1 - due0, dup1 - dup0
        row.problems = check(row)
        return row
    finally:
        client.close()


def _aof(run: Run) -> bool:
    return getattr(run.args, "appendfsync", "off") != "off"


class FsyncCount:
    """`perf stat` counting the fsync and fdatasync calls of Redis (every thread) over one run.

    With `appendfsync always` Redis fsyncs once per turn of its event loop, for every write of
    that turn: callbacks per fsync shows how many batches each fsync covers. None without perf
    (or without the permission to read the syscall tracepoints)."""

    EVENTS = "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync"

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, pid: int | None) -> FsyncCount | None:
        perf = shutil.which("perf")
        if perf is None or pid is None:
            return None
        command = [perf, "stat", "-x", ",", "-e", cls.EVENTS, "-p", str(pid)]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.2)  # attached before the load starts
        return cls(proc)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)  # perf prints its counts and exits
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()
            return None
        total = 0
        found = 0
        for line in err.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2].startswith("syscalls:sys_enter_") and fields[0].isdigit():
                total += int(fields[0])
                found += 1
        return total if found == 2 else None


def callback_request(port: int, method: str, invitee: str) -> tuple[str, bytes | None, dict[str, str]]:
    """The URL, body and headers of the callback bench/ingest.lua sends for `invitee`."""
    url = f"http://{HOST}:{port}{PATH}"
    if method == "GET":
        query = invitee.replace("+", "%2B")
        return f"{url}?invitee={query}&invitor={INVITOR}&network_id={NETWORK}", None, {}
    body = f'{{"invitee":"{invitee}","invitor":"{INVITOR}","network_id":"{NETWORK}"}}'.encode()
    return url, body, {"Content-Type": "application/json"}


def prime(server: ServerTree, method: str, base: int, keys: int) -> None:
    """Send the `keys` invitations a duplicates run repeats (bench/ingest.lua's REPEAT) once each,
    one after another, so that every request of the run is a duplicate of a stored one."""
    for n in range(1, keys + 1):
        url, body, headers = callback_request(server.port, method, f"+447{base + n:09d}")
        status, answer = http_request(url, method, body, headers)
        if status != 204:
            raise RuntimeError(f"priming {server.name}: {method} answered {status}: {answer[:200]!r}")


def gateway_state(client: Redis) -> tuple[int, int, int]:
    """(events stored, deliveries due, duplicates counted): key names as in gateway/store/keys.py."""
    pipe = client.pipeline(transaction=False)
    pipe.zcard(f"{PREFIX}:events")
    pipe.zcard(f"{PREFIX}:due")
    pipe.hget(f"{PREFIX}:counters", "duplicates")
    events, due, dups = pipe.execute()
    return int(events), int(due), int(dups or 0)


def check(row: Row) -> list[str]:
    w = row.wrk
    problems = []
    if w.error_count:
        problems.append(f"wrk errors {w.errors} (status = answers of 400 or above)")
    if w.sent != w.requests:
        problems.append(f"{w.sent} sent but {w.requests} answered: requests in flight when wrk stopped")
    if w.held != row.connections:
        problems.append(f"{w.held} of {row.connections} connections parked after the window")
    if w.requests == 0:
        problems.append("no answer at all")
    if w.answered_204 is not None and w.answered_204 != w.requests:
        problems.append(f"{w.answered_204} of {w.requests} answers were 204 ({w.other_status} others)")
    if row.spec.gateway and row.repeat:
        # A replay flood: each request a duplicate of an invitation stored before the run.
        if row.stored:
            problems.append(f"{row.stored} duplicates stored as new events")
        if row.due:
            problems.append(f"{row.due} deliveries due for duplicates")
        if row.duplicates != w.sent:
            problems.append(f"the duplicates counter moved by {row.duplicates} for {w.sent} duplicates sent")
    elif row.spec.floor:
        if row.stored != row.callbacks_2xx:
            problems.append(f"{row.stored} callbacks stored for {row.callbacks_2xx} 2xx answers")
    elif row.spec.gateway:
        ok_answers = row.callbacks_2xx
        if row.stored != ok_answers:
            problems.append(f"{row.stored} events stored for {ok_answers} 2xx answers")
        if row.due != ok_answers:
            problems.append(f"{row.due} deliveries due for {ok_answers} 2xx answers (1 target)")
        if row.duplicates:
            problems.append(f"{row.duplicates} callbacks taken as duplicates")
    return problems


def warm_up(run: Run, spec: ServerSpec, server: ServerTree, method: str) -> None:
    if run.timing.warmup_s > 0:
        row = measure(run, "warm-up", spec, server, method, CONNECTIONS, run.timing.warmup_s, note="-warmup")
        if row.problems:
            raise RuntimeError(f"warm-up of {spec.label} {method} failed: {'; '.join(row.problems)}")


def progress(row: Row) -> None:
    state = "ok" if row.ok else "PROBLEM: " + "; ".join(row.problems)
    pace = f" at {row.offered:.0f}/s offered" if row.offered else ""
    kind = ", duplicates" if row.repeat else ", new" if row.phase.startswith("dup-new") else ""
    p99 = row.wrk.latency_us["p99"] / 1000
    print(
        f"  {row.spec.label + kind:<24} {row.method:<4} -c{row.connections}{pace}: {row.rate:,.0f} req/s, "
        f"p99 {p99:.2f} ms, server {row.server_cores:.2f} cores; {state}",
        file=sys.stderr,
        flush=True,
    )


# -- phases ----------------------------------------------------------------------------------------

BARE_1 = ServerSpec("bare-1", "bare Starlette", gateway=False, workers=1)
GW_1 = ServerSpec("gw-1-info", "gateway web, INFO", gateway=True, workers=1, log_level="INFO", db=1)
GW_1_WARN = ServerSpec(
    "gw-1-warning", "gateway web, WARNING", gateway=True, workers=1, log_level="WARNING", db=2
)
GW_1_DISK = ServerSpec(
    "gw-1-disk", "gateway web, INFO, disk", gateway=True, workers=1, db=4, durability="disk", disk_redis=True
)
GW_1_BASE = ServerSpec("gw-1-base", "gateway web, INFO, base", gateway=True, workers=1, db=6, base=True)
FLOOR_1 = ServerSpec("floor-1", "floor (bench/floor_app.py)", gateway=False, workers=1, db=5, floor=True)
BARE_2 = ServerSpec("bare-2", "bare Starlette x2", gateway=False, workers=2)
GW_2 = ServerSpec("gw-2-info", "gateway web x2, INFO", gateway=True, workers=2, log_level="INFO", db=3)


def saturate(run: Run, phase: str, specs: Sequence[ServerSpec], started: dict[str, ServerTree]) -> None:
    """Each server and method at saturation, at each of `run.sweep`'s connection counts,
    `--rounds` times, servers taking turns. A row's phase names its count: `PHASE -cN`."""
    for _ in range(run.args.rounds):
        for method in METHODS:
            for spec in specs:
                server = started[spec.key]
                warm_up(run, spec, server, method)
                for connections in run.sweep:
                    row = measure(
                        run, f"{phase} -c{connections}", spec, server, method, connections, run.timing.send_s
                    )
                    progress(row)
                    run.rows.append(row)


def median_row(rows: Sequence[Row]) -> Row:
    ordered = sorted(rows, key=lambda r: r.rate)
    return ordered[(len(ordered) - 1) // 2]


def saturation_rate(run: Run, phase: str, spec: ServerSpec, method: str) -> float:
    """The server's saturation rate: the best, over the connection counts, of the rounds' median."""
    best = 0.0
    for connections in run.sweep:
        name = f"{phase} -c{connections}"
        rows = [r for r in run.rows if r.phase == name and r.spec == spec and r.method == method]
        if rows:
            best = max(best, median_row(rows).rate)
    return best


def phase_one_process(run: Run) -> None:
    wanted = run.wanted
    if "sat" in wanted or run.args.profile:
        specs = [BARE_1, GW_1, GW_1_WARN]
        if run.disk_redis is not None:
            specs.append(GW_1_DISK)  # taking turns with the others, in every round
        if run.args.with_floor:
            specs.append(FLOOR_1)
        if run.args.base is not None:
            specs.append(GW_1_BASE)
    elif "dup" in wanted:
        specs = [GW_1]  # the duplicates' baseline is the same server with new invitations
    else:
        return
    pinned = "pinned to CPU " + ",".join(map(str, run.cores.server)) if run.cores.pinned else "not pinned"
    print(f"1 process per server ({pinned}):", file=sys.stderr, flush=True)
    with servers(run, specs, pin=True) as started:
        if "sat" in wanted:
            saturate(run, "saturation", specs, started)
        if "paced" in wanted:
            for method in METHODS:
                for spec in (BARE_1, GW_1):
                    rate = PACED_SHARE * saturation_rate(run, "saturation", spec, method)
                    server = started[spec.key]
                    row = measure(
                        run, "paced", spec, server, method, PACED_CONNECTIONS, run.timing.send_s, offered=rate
                    )
                    progress(row)
                    run.rows.append(row)
        if "dup" in wanted:
            duplicates(run, GW_1, started[GW_1.key])
        if run.args.profile:
            profiles(run, started)


def duplicates(run: Run, spec: ServerSpec, server: ServerTree) -> None:
    """A replay flood against new invitations, at each connection count, `--rounds` times: each
    dup row right after a new-invitation row to the same server, method and count (its
    baseline), after a saturating warm-up per method. Phases `dup-new -cN` and `dup -cN`."""
    keys = getattr(run.args, "dup_keys", DUP_KEYS)
    for _ in range(run.args.rounds):
        for method in METHODS:
            warm_up(run, spec, server, method)
            for connections in run.sweep:
                for phase, repeat in (("dup-new", 0), ("dup", keys)):
                    row = measure(
                        run,
                        f"{phase} -c{connections}",
                        spec,
                        server,
                        method,
                        connections,
                        run.timing.send_s,
                        note=f"-{phase}",
                        repeat=repeat,
                        count_204=True,  # both rows: "every duplicate answered 204", at the same cost
                    )
                    progress(row)
                    run.rows.append(row)


def phase_two_processes(run: Run) -> None:
    if "x2" not in run.wanted:
        return
    specs = [BARE_2, GW_2]
    print("2 processes per server (--workers 2, not pinned):", file=sys.stderr, flush=True)
    with servers(run, specs, pin=False) as started:
        saturate(run, "2 processes", specs, started)


def profile(run: Run, spec: ServerSpec, server: ServerTree, method: str) -> tuple[Profile, Row, Path] | None:
    """A saturating run with py-spy attached to the server (not in the table)."""
    py_spy = find_py_spy()
    if py_spy is None:
        return None
    folder = run.args.stacks or run.tmp
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"ingest-pyspy-{spec.key}-{method}.txt"
    seconds = run.timing.profile_s
    log = run.tmp / f"py-spy-{spec.key}-{method}.log"
    spy = start_py_spy(py_spy, server.pid, seconds, out, run.cores.client, log)
    try:
        time.sleep(0.5)  # py-spy attaches while wrk connects
        row = measure(run, "profile", spec, server, method, CONNECTIONS, seconds + 2.0, note="-profile")
        if spy.wait(30.0) is None:
            raise RuntimeError("py-spy did not finish")
    finally:
        spy.stop()
    if not out.exists():
        raise RuntimeError(f"py-spy wrote nothing; its output:\n{spy.log_tail()}")
    prof = summarize_profile(out, top=1000)
    print(f"  profile of {spec.label} {method}: {prof.samples} samples -> {out}", file=sys.stderr, flush=True)
    return prof, row, out


def profiles(run: Run, started: dict[str, ServerTree]) -> None:
    """--profile: bare and gateway (INFO) under py-spy, each method; the comparison in µs/request."""
    if find_py_spy() is None:
        run.profiles.append("py-spy not found (pip install py-spy): no profile")
        return
    for method in METHODS:
        bare = profile(run, BARE_1, started[BARE_1.key], method)
        gateway = profile(run, GW_1, started[GW_1.key], method)
        if bare is not None and gateway is not None:
            run.profiles.append(profile_text(run, method, bare, gateway))


def profile_text(
    run: Run, method: str, bare: tuple[Profile, Row, Path], gateway: tuple[Profile, Row, Path]
) -> str:
    (bprof, brow, bout), (gprof, grow, gout) = bare, gateway
    bcpu = brow.per_request_us(brow.server_cpu_total) or 0.0
    gcpu = grow.per_request_us(grow.server_cpu_total) or 0.0

    def us(shares: Sequence[tuple[str, float]], cpu: float) -> dict[str, float]:
        return {name: share * cpu for name, share in shares}

    bfiles, gfiles = us(bprof.own_files, bcpu), us(gprof.own_files, gcpu)
    names = sorted(set(bfiles) | set(gfiles), key=lambda n: -(gfiles.get(n, 0.0) - bfiles.get(n, 0.0)))
    rows = [
        f"| {name} | {bfiles.get(name, 0.0):.1f} | {gfiles.get(name, 0.0):.1f} | "
        f"{gfiles.get(name, 0.0) - bfiles.get(name, 0.0):+.1f} |"
        for name in names
        if max(bfiles.get(name, 0.0), gfiles.get(name, 0.0)) >= 2.0
    ]

    def listing(shares: Sequence[tuple[str, float]], cpu: float, top: int) -> list[str]:
        return [f"- {share:6.1%}  {share * cpu:5.1f} µs  {name}" for name, share in shares[:top]]

    return "\n".join(
        [
            f"### {method}: bare Starlette and gateway web (INFO) under py-spy, wrk -c{CONNECTIONS}",
            "",
            f"While sampled: bare {brow.rate:,.0f} req/s, {bcpu:.0f} µs CPU/request, {bprof.samples} "
            f"samples (other load {fmt(brow.other_cores, '.2f')} cores); gateway {grow.rate:,.0f} req/s, "
            f"{gcpu:.0f} µs CPU/request, {gprof.samples} samples (other load "
            f"{fmt(grow.other_cores, '.2f')} cores)."
            + (f" Raw stacks: {bout}, {gout}." if run.args.stacks else ""),
            "",
            "Own time per file in µs of CPU per request (share of samples x the run's CPU per request; "
            "files with 2 µs or more; gateway minus bare, largest first):",
            "",
            "| file | bare µs | gateway µs | difference |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            "Gateway, own time per function (top 25):",
            "",
            *listing(gprof.own, gcpu, 25),
            "",
            "Gateway, inclusive time per function (on the stack; entry frames left out; top 30):",
            "",
            *listing(gprof.inclusive, gcpu, 30),
        ]
    )


# -- report ----------------------------------------------------------------------------------------


def summarize(run: Run) -> list[Row]:
    """One row per (phase, server, method): the median of the rounds, with ratios to bare."""
    out: list[Row] = []
    keys: list[tuple[str, ServerSpec, str]] = []
    for r in run.rows:
        if (r.phase, r.spec, r.method) not in keys:
            keys.append((r.phase, r.spec, r.method))
    for phase, spec, method in keys:
        group = [r for r in run.rows if (r.phase, r.spec, r.method) == (phase, spec, method)]
        row = median_row(group)
        row.runs = [r.rate for r in group]
        out.append(row)
    for row in out:
        if row.phase == "paced" or row.phase.startswith("dup-new"):
            continue
        if row.phase.startswith("dup "):  # against new invitations, same server, method, count
            base_phase = "dup-new " + row.phase.removeprefix("dup ")
            base = next(r for r in out if (r.phase, r.spec, r.method) == (base_phase, row.spec, row.method))
        else:
            base_phase = row.phase
            base = next(r for r in out if r.phase == row.phase and r.spec.bare and r.method == row.method)
        row.ratio = row.rate / base.rate
        mine = [r for r in run.rows if (r.phase, r.spec, r.method) == (row.phase, row.spec, row.method)]
        theirs = [r for r in run.rows if (r.phase, r.spec, r.method) == (base_phase, base.spec, row.method)]
        row.round_ratios = [a.rate / b.rate for a, b in zip(mine, theirs, strict=True)]
    order = {"saturation": 0, "paced": 1, "2 processes": 2, "dup-new": 3, "dup": 3}
    return sorted(
        out,
        key=lambda r: (
            order.get(r.phase.split(" -c")[0], 9),
            r.method,
            r.connections,
            r.repeat > 0,
            not r.spec.bare,
            r.spec.gateway,
            r.spec.log_level,
        ),
    )


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def scenario(row: Row) -> str:
    if row.phase == "paced":
        return f"{row.spec.label}, ½ saturation"
    if row.repeat:
        plural = "s" if row.repeat > 1 else ""
        return f"{row.spec.label}, duplicates ({row.repeat} invitation{plural} repeated)"
    if row.phase.startswith("dup-new"):
        return f"{row.spec.label}, new (the duplicates' baseline)"
    return row.spec.label


def load_column(row: Row) -> str:
    if row.offered is None:
        return f"-c{row.connections}"
    return f"-c{row.connections}, {row.offered:,.0f}/s"


def table(rows: Sequence[Row]) -> str:
    head = (
        "| scenario | method | wrk | req/s | x bare | p50 ms | p99 ms | Redis cmds/callback "
        "(EVALSHA; all) | server µs CPU/req | server cores | Redis µs CPU/req | wrk cores | other cores "
        "| check |"
    )
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lat = r.wrk.latency_us
        n = r.callbacks_2xx
        cmds = f"{r.evalsha / n:.3f}; {r.total_commands / n:.2f}" if not r.spec.bare and n else "-"
        ratio = f"**{r.ratio:.2f}**" if r.ratio is not None and r.spec.gateway else fmt(r.ratio, ".2f")
        if r.repeat and r.ratio is not None:
            ratio = f"**{r.ratio:.2f}** x new"
        lines.append(
            f"| {scenario(r)} | {r.method} | {load_column(r)} | {r.rate:,.0f} | {ratio} | "
            f"{lat['p50'] / 1000:.2f} | {lat['p99'] / 1000:.2f} | {cmds} | "
            f"{fmt(r.per_request_us(r.server_cpu_total))} | {r.server_cores:.2f} | "
            f"{fmt(r.per_request_us(r.redis_cpu_s))} | {r.wrk_cores:.2f} | {fmt(r.other_cores, '.2f')} | "
            f"{'ok' if r.ok else 'FAILED'} |"
        )
    return "\n".join(lines)


def details(run: Run, rows: Sequence[Row]) -> list[str]:
    out = []
    for r in rows:
        parts = []
        if r.runs and len(r.runs) > 1:
            parts.append("rounds " + " / ".join(f"{x:,.0f}" for x in r.runs) + " req/s (median shown)")
        if r.round_ratios and len(r.round_ratios) > 1:
            against = "new" if r.repeat else "bare"
            parts.append(f"x {against} per round " + " / ".join(f"{x:.2f}" for x in r.round_ratios))
        if r.offered is not None:
            parts.append(
                f"offered {r.offered:,.0f}/s ({PACED_SHARE:g} x this run's saturation rate, its best), "
                f"achieved {r.rate:,.0f}/s"
            )
            if r.rate < KEPT_UP * r.offered:
                parts.append(
                    "the server fell behind the schedule (a busy machine, or a noisy saturation figure): "
                    "these latencies are not at half load"
                )
        lat = r.wrk.latency_us
        parts.append(
            f"latency mean {lat['mean'] / 1000:.2f}, p90 {lat['p90'] / 1000:.2f}, "
            f"p99.9 {lat['p99.9'] / 1000:.2f}, max {lat['max'] / 1000:.2f} ms"
        )
        if not r.spec.bare and r.callbacks_2xx:
            n = r.callbacks_2xx
            top = ", ".join(f"{name} {calls / n:.2f}" for name, calls in r.commands.most_common(TOP_COMMANDS))
            batch = n / r.evalsha if r.evalsha else 0.0
            parts.append(f"commands/callback: {top}; {batch:.1f} callbacks per EVALSHA (batch)")
            if r.fsyncs:
                parts.append(
                    f"{r.fsyncs} fsyncs of Redis (perf stat): {n / r.fsyncs:.1f} callbacks and "
                    f"{r.evalsha / r.fsyncs:.2f} EVALSHA per fsync"
                )
        if len(r.server_cpu_s) > 1:
            split = " + ".join(f"{cpu:.2f}" for cpu in r.server_cpu_s.values())
            parts.append(f"server CPU s per process (master first) {split}")
        if r.spec.gateway and r.repeat:
            parts.append(
                f"{r.duplicates} counted as duplicates, {r.stored} events stored, {r.due} deliveries due, "
                f"for {r.wrk.sent} sent and {fmt(r.wrk.answered_204, 'd')} answers of 204"
            )
        elif r.spec.gateway:
            parts.append(
                f"{r.stored} events stored, {r.due} deliveries due, for {r.callbacks_2xx} 2xx answers"
            )
        else:
            parts.append(f"{r.answered} answers")
        parts.append("ok" if r.ok else "FAILED: " + "; ".join(r.problems))
        out.append(f"- {scenario(r)}, {r.method}, {load_column(r)}: " + "; ".join(parts))
    return out


def ratios_text(rows: Sequence[Row]) -> list[str]:
    lines = []
    for r in rows:
        if r.spec.bare or r.ratio is None or r.repeat:
            continue
        bare = next(b for b in rows if (b.phase, b.method, b.spec.bare) == (r.phase, r.method, True))
        cpu_bare, cpu_mine = bare.per_request_us(bare.server_cpu_total), r.per_request_us(r.server_cpu_total)
        by_cpu = f"{cpu_bare / cpu_mine:.2f}" if cpu_bare and cpu_mine else "-"
        lines.append(
            f"- {r.phase}, {r.method}: {r.spec.label} = **{r.ratio:.2f} x bare** req/s; by server CPU "
            f"per request (bare's µs / the gateway's): {by_cpu}"
        )
    for group in ("saturation", "2 processes"):
        for method in METHODS:
            mine = [r for r in rows if r.phase.startswith(f"{group} -c") and r.method == method]
            bare = max((r for r in mine if r.spec.bare), key=lambda r: r.rate, default=None)
            if bare is None or len({r.connections for r in mine}) < 2:
                continue
            for spec in dict.fromkeys(r.spec for r in mine if not r.spec.bare):
                best = max((r for r in mine if r.spec == spec), key=lambda r: r.rate)
                lines.append(
                    f"- {group}, {method}, each server at its best connection count: {spec.label} = "
                    f"**{best.rate / bare.rate:.2f} x bare** ({best.rate:,.0f} req/s at "
                    f"-c{best.connections}, bare {bare.rate:,.0f} at -c{bare.connections})"
                )
    lines += duplicates_text(rows)
    for method in METHODS:
        paced = {r.spec.gateway: r for r in rows if r.phase == "paced" and r.method == method}
        if True in paced and False in paced:
            g, b = paced[True], paced[False]
            lines.append(
                f"- ½ saturation, {method}: p99 gateway {g.wrk.latency_us['p99'] / 1000:.2f} ms at "
                f"{g.offered or 0:,.0f}/s, bare {b.wrk.latency_us['p99'] / 1000:.2f} ms at "
                f"{b.offered or 0:,.0f}/s"
            )
    return lines


def duplicates_text(rows: Sequence[Row]) -> list[str]:
    """dup/new per method and connection count, and at each one's best count; with the web's
    CPU, Redis' CPU and Redis' commands per callback of each."""
    lines = []

    def costs(r: Row) -> tuple[float | None, float | None, float | None]:
        n = r.callbacks_2xx
        return (
            r.per_request_us(r.server_cpu_total),
            r.per_request_us(r.redis_cpu_s),
            (r.total_commands / n if n else None),
        )

    for dup in (r for r in rows if r.repeat and r.ratio is not None):
        new_phase = "dup-new " + dup.phase.removeprefix("dup ")
        new = next(r for r in rows if (r.phase, r.spec, r.method) == (new_phase, dup.spec, dup.method))
        (dcpu, dredis, dcmds), (ncpu, nredis, ncmds) = costs(dup), costs(new)
        lines.append(
            f"- duplicates, {dup.method}, -c{dup.connections}: dup / new = **{dup.ratio:.2f}** "
            f"({dup.rate:,.0f} against {new.rate:,.0f} req/s); web CPU per callback {fmt(dcpu)} µs "
            f"against {fmt(ncpu)}; Redis CPU per callback {fmt(dredis)} µs against {fmt(nredis)}; Redis "
            f"commands per callback {fmt(dcmds, '.2f')} against {fmt(ncmds, '.2f')}"
        )
    for method in METHODS:
        dups = [r for r in rows if r.repeat and r.method == method]
        news = [r for r in rows if r.phase.startswith("dup-new") and r.method == method]
        if len({r.connections for r in dups}) < 2 or not news:
            continue
        best_dup, best_new = max(dups, key=lambda r: r.rate), max(news, key=lambda r: r.rate)
        lines.append(
            f"- duplicates, {method}, each at its best connection count: dup / new = "
            f"**{best_dup.rate / best_new.rate:.2f}** ({best_dup.rate:,.0f} req/s at "
            f"-c{best_dup.connections}, new {best_new.rate:,.0f} at -c{best_new.connections})"
        )
    return lines


def default_output(args: argparse.Namespace) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    rows = "" if set(args.rows) == set(ROWS) else "-" + "-".join(args.rows)  # a partial run: its own file
    if args.appendfsync != "off" or args.durability != "memory":
        rows += f"-aof-{args.appendfsync}-{args.durability}"
    if args.with_disk:
        rows += "-with-disk"
    if args.with_floor:
        rows += "-with-floor"
    if args.base is not None:
        rows += "-with-base"
    return RESULTS_DIR / f"ingest-{stamp}{rows}{'-quick' if args.quick else ''}.md"


def report(run: Run, started_at: str, load_start: str, argv: Sequence[str]) -> str:
    env = environment()
    mach = machine()
    rows = summarize(run)
    redis_version = "unknown"
    with contextlib.suppress(Exception):
        redis_version = str(Redis(host=HOST, port=run.redis.port).info("server").get("valkey_version", "?"))
    server_cpus, client_cpus = (",".join(map(str, c)) for c in (run.cores.server, run.cores.client))
    pin = (
        f"server on CPU {server_cpus} (`taskset -c {server_cpus}`), wrk and Redis on CPU {client_cpus} "
        f"(`taskset -c {client_cpus}`); the 2-process rows leave the server unpinned (both cores)"
        if run.cores.pinned
        else "nothing pinned (fewer than 2 usable cores)"
    )
    t = run.timing
    load_end = mach["loadavg"]
    lines = [
        f"# Ingest benchmark, {started_at}",
        "",
        f"- Machine: {mach['nproc']} cores (nproc), {mach['cpu_model']}, {mach['platform']}, Python "
        f"{mach['python']}; load average at start {load_start}, at end {load_end}",
        f"- Versions: starlette {env.get('starlette')}, uvicorn {env.get('uvicorn')}, uvloop "
        f"{env.get('uvloop')}, httptools {env.get('httptools')}, redis-py {env.get('redis')}, valkey "
        f"{redis_version}, {wrk_version(run.wrk)}; gateway {env['gateway_commit']}",
        f"- Command: `{' '.join(['.venv/bin/python', 'bench/ingest.py', *argv])}`",
        f"- Pinning: {pin}",
        *([f"- Base (`{GW_1_BASE.label}`): the gateway in {run.args.base}"] if run.args.base else []),
        f"- Durability: Redis {aof_text(run.args.appendfsync)}; the gateway at GATEWAY_DURABILITY="
        f"{run.args.durability}"
        + (" (WAITAOF 1 0 behind each batch)" if run.args.durability == "disk" else " (no wait sent)")
        + (
            f"; `{GW_1_DISK.label}`: GATEWAY_DURABILITY=disk (WAITAOF 1 0 behind each batch) on a second "
            "Redis, pinned beside the first, with an append-only file on the run's temporary folder, "
            "appendfsync always"
            if run.disk_redis is not None
            else ""
        ),
        f"- wrk: `wrk -t1 -cC -d{t.wrk_duration(t.send_s)}s --latency --timeout 10s -s bench/ingest.lua URL"
        f" -- METHOD BASE {t.send_s:g} RATE REPEAT`: requests sent for {t.send_s:g} s, then the connections "
        f"wait until wrk stops, so none is in flight; req/s = answers in those {t.send_s:g} s / "
        f"{t.send_s:g} s; a {t.warmup_s:g} s saturating warm-up before each saturation row; "
        f"{run.args.rounds} round(s); rows: {', '.join(r for r in ROWS if r in run.wanted)}",
        "- uvloop and httptools loaded (per serving process, from /proc/PID/maps): "
        + "; ".join(f"{label}: {procs}" for label, procs in run.natives.items()),
        "",
        table(rows),
        "",
        "req/s: answers per second while sending. x bare: req/s over bare Starlette's (same method, "
        "same number of processes); for duplicates, x new: req/s over new invitations' to the same "
        "server (same method and connection count, measured right before in the same round). "
        + (
            f"Duplicates: every request repeats one of {getattr(run.args, 'dup_keys', DUP_KEYS)} "
            "invitation(s) that was sent once before the run (`-- ... REPEAT` of bench/ingest.lua). "
            if "dup" in run.wanted
            else ""
        )
        + "p50, p99: wrk's latency (from writing the request to the end of "
        "the answer). Redis cmds/callback: commands Redis ran per 2xx answer, from INFO commandstats "
        "(the ingest Lua's own commands counted), EVALSHA alone first. CPU: from /proc over the run, "
        "per answer; cores = CPU seconds / sending seconds. other cores: the machine's busy CPU "
        "beyond the server, Redis and wrk (other work on the machine: the higher, the less reliable).",
        "",
        "Ratios:",
        "",
        *ratios_text(rows),
        "",
        "Rows:",
        "",
        *details(run, rows),
    ]
    if run.profiles:
        lines += ["", "## Profiles", "", PROFILE_NOTE, "", *run.profiles]
    busy = [r.other_cores for r in run.rows if r.other_cores is not None and r.other_cores > OTHER_LOAD_CORES]
    lines += busy_runs_warning(busy, len(run.rows))
    failed = [r for r in run.rows if r.problems]
    if failed:
        lines += ["", f"**{len(failed)} run(s) failed their checks** (see Rows)."]
    return "\n".join(lines) + "\n"


def aof_text(appendfsync: str) -> str:
    if appendfsync == "off":
        return "without persistence (appendonly no)"
    return f"with an append-only file on the run's temporary folder, appendfsync {appendfsync}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="0.5 s per run instead of 10 s (a smoke run)")
    parser.add_argument("--rounds", type=int, default=1, help="saturation runs per row, servers taking turns")
    parser.add_argument(
        "--connections",
        type=lambda v: tuple(int(x) for x in v.split(",")),
        default=SWEEP,
        help="wrk connection counts of the saturation rows (default 64,256): each server's best counts",
    )
    parser.add_argument(
        "--rows",
        type=rows_arg,
        default=ROWS,
        help="rows to run, comma-separated: sat (saturation, 1 process), paced (half saturation; "
        "runs sat too), x2 (2 processes), dup (duplicates against new invitations); default all",
    )
    parser.add_argument(
        "--dup-keys",
        type=int,
        default=DUP_KEYS,
        help="dup rows: how many invitations the flood repeats (default 1: every request the same)",
    )
    parser.add_argument(
        "--appendfsync",
        choices=("off", "everysec", "always"),
        default="off",
        help="Redis' append-only file: off (default: no persistence), or on with this fsync policy",
    )
    parser.add_argument(
        "--durability",
        choices=("memory", "disk"),
        default="memory",
        help="the gateway's GATEWAY_DURABILITY (disk needs --appendfsync; always, to be fast)",
    )
    parser.add_argument(
        "--with-disk",
        action="store_true",
        help="sat rows: also `gateway web, INFO, disk` (GATEWAY_DURABILITY=disk) on a second Redis with "
        "appendfsync always, taking turns with the others: the cost of disk in the same run",
    )
    parser.add_argument(
        "--with-floor",
        action="store_true",
        help="sat rows: also bench/floor_app.py (the gateway's group commit with none of its work), "
        "taking turns with the others",
    )
    parser.add_argument(
        "--base",
        type=Path,
        metavar="DIR",
        help="sat rows: also the gateway as checked out in DIR (`git archive COMMIT | tar -x -C DIR`), "
        "taking turns with the others: a change's before and after in the same run",
    )
    parser.add_argument("--profile", action="store_true", help="also profile bare and gateway with py-spy")
    parser.add_argument("--stacks", type=Path, metavar="DIR", help="--profile: keep py-spy's raw stacks here")
    parser.add_argument(
        "--output", type=Path, help="the markdown file (default bench/results/ingest-DATE.md)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 5:
        parser.error("--rounds must be 1 to 5")
    if args.durability == "disk" and args.appendfsync == "off":
        parser.error("--durability disk needs an append-only file: --appendfsync always (or everysec)")
    if not 1 <= args.dup_keys <= MAX_DUP_KEYS:
        parser.error(f"--dup-keys must be 1 to {MAX_DUP_KEYS}")
    if "paced" in args.rows and "sat" not in args.rows:
        print("--rows paced: sat runs too (half saturation is half of its rate)", file=sys.stderr)
        args.rows = tuple(r for r in ROWS if r in {*args.rows, "sat"})
    return args


def rows_arg(text: str) -> tuple[str, ...]:
    names = {v.strip() for v in text.split(",") if v.strip()}
    unknown = names - set(ROWS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"rows are {', '.join(ROWS)}; got {text!r}")
    return tuple(r for r in ROWS if r in names)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    wrk = find_wrk()
    exit_on_sigterm()
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    load_start = machine()["loadavg"]
    timing = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        if args.appendfsync == "off":
            redis = EmbeddedRedis()
        else:
            redis = EmbeddedRedis(data_dir=Path(tmp) / "redis", appendfsync=args.appendfsync)
        disk = (
            EmbeddedRedis(data_dir=Path(tmp) / "redis-disk", appendfsync="always") if args.with_disk else None
        )
        try:
            redis.start()
            assert redis.process is not None
            cores = choose_cores()
            pin_threads(redis.process.pid, cores.client)
            if disk is not None:
                disk.start()
                assert disk.pid is not None
                pin_threads(disk.pid, cores.client)
            dead_port = free_port()  # nothing listens there; no worker runs anyway
            run = Run(args, timing, wrk, cores, Path(tmp), redis, f"http://{HOST}:{dead_port}/hook", disk)
            phase_one_process(run)
            phase_two_processes(run)
            text = report(run, started_at, load_start, argv)
        finally:
            redis.stop()
            if disk is not None:
                disk.stop()
    print(text)
    output = args.output or default_output(args)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"written to {output}", file=sys.stderr)
    return 0 if all(r.ok for r in run.rows) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
