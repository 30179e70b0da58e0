"""Benchmark: deliveries per second of `gateway worker` processes, against a bare aiohttp loop.

Everything runs on 127.0.0.1, in separate processes:

* a private Redis (gateway.embedded.EmbeddedRedis);
* the target: uvicorn with uvloop and httptools (`--workers 1` unless `--target-workers`) serving
  bench/http_clients.py's raw ASGI app, which reads the request and answers 200 "ok";
* baseline (bench/delivery_load.py baseline): one aiohttp `ClientSession` on a uvloop loop with
  32 requests in flight, POSTing the gateway's own rendered request (`build_request`: same URL,
  headers and body) to the target. Measured right before each drain row, in the same run;
* drain: N callbacks stored in this process through the ingest script (as the web's accept step
  stores them, 500 per call) while no worker runs, then K
  `python -m gateway worker` processes are started. The
  window runs from the first poll at which all K workers are registered with RQ and a delivery
  has been recorded, to `ZCARD gw:due == 0`. Afterwards every delivery must be `delivered`, HTTP
  200, 1 attempt;
* saturated: a backlog accepted first, then bench/delivery_load.py feed accepts callbacks
  (through the web's `Accepter`) while the K workers run, paced at `--feed-factor` x the drain
  rate of the same K. The window ends
  after `--steady` seconds (or when the backlog runs low, which the output flags). Deliveries in
  the window = callbacks accepted x targets - change of ZCARD gw:due;
* matrix: `--workers` (1 target) and `--targets` per network (1 worker). Every targets row
  delivers about the same number of deliveries (N / targets callbacks).

Per row: deliveries/s and its ratio to the baseline's req/s; CPU per delivery of the workers,
Redis and the target (/proc); Redis commands per delivery (INFO commandstats delta, our own polls
taken out, and in saturated rows the feeder's own, from its connection's CLIENT LIST tot-cmds;
commands run inside Lua scripts included) and script calls (EVALSHA) per delivery; the peak RSS
of each worker (sampled every 0.1 s, and the kernel's VmHWM). The table is printed and written
as markdown to bench/results/delivery-<date>.md (`-quick` for --quick runs). `--py-spy DIR`
also samples each drain row's workers with py-spy (not a project dependency).

Every process started is stopped by PID (SIGTERM, then SIGKILL) in `finally` blocks, also on
Ctrl-C and SIGTERM; every loop has a count or a deadline.

On a shared VM both sides' CPU time per request moves by a third between runs minutes apart:
`--rounds N` runs the whole matrix N times (each drain row with its own baseline) and the table
shows each row's median round, with every round's ratio listed below it.

Run: ``.venv/bin/python bench/delivery.py [--quick] [--rounds N] [--callbacks N]
[--workers 1,2,4] [--targets 1,10,100]``
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import datetime as dt
import json
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from delivery_load import FEEDER_CLIENT
from redis import Redis
from rq.worker_registration import WORKERS_BY_QUEUE_KEY
from support import (
    BENCH_DIR,
    HOST,
    Child,
    clean_env,
    command_stats,
    cpu_delta,
    environment,
    exit_on_sigterm,
    fmt,
    host_cpu,
    host_delta,
    load_warning,
    machine,
    peak_rss_bytes,
    rss_bytes,
    start_target_server,
    write_targets_config,
)

from gateway.config.load import load_config
from gateway.delivery.request import build_request
from gateway.delivery.sender import USER_AGENT
from gateway.embedded import EmbeddedRedis
from gateway.events import INVITATION_CREATED, make_event
from gateway.ingest.accept import DRAIN_BATCH
from gateway.live import LiveConfig
from gateway.queue import enqueue_drain, make_queue
from gateway.records import DeliveryStatus
from gateway.settings import Settings
from gateway.store.codec import now_ms
from gateway.store.events import Store
from gateway.store.ingest import IngestHead, IngestItem, ingest_sync

FIELDS = {"invitee": "15551231234", "invitor": "johnsnow", "network_id": "mynetwork"}
SETTINGS = Settings()  # the defaults: prefix "gw", the default queue name, 30 days retention
DUE_KEY = f"{SETTINGS.prefix}:due"
EVENTS_KEY = f"{SETTINGS.prefix}:events"
WORKERS_KEY = WORKERS_BY_QUEUE_KEY % SETTINGS.queue_name
POLL_S = 0.010
RSS_EVERY_S = 0.1
POLL_COMMANDS = {"zcard": 2, "scard": 1}  # one poll: ZCARD due, ZCARD events, SCARD workers
REDIS_DB = 0
MB = 1024 * 1024
CHECK_CHUNK = 1000
DRAIN_MIN_RATIO = 0.8  # the issue: a backlog drains within 20% of the saturated rate
RSS_GOAL_MB = 100
PY_SPY_STOP_S = 15.0


# ---------------------------------------------------------------------------------------------
# Results.
# ---------------------------------------------------------------------------------------------


@dataclass
class Baseline:
    requests: int
    seconds: float
    rps: float
    client_cpu_us: float
    target_cpu_us: float | None
    check: str


@dataclass
class Row:
    case: str  # "drain" or "saturated"
    workers: int
    targets: int
    callbacks: int  # accepted for this row (backlog, plus fed for "saturated")
    deliveries: int  # recorded inside the timed window
    seconds: float
    rate: float  # deliveries/s in the window
    window: str  # what started the window
    startup_s: float  # first worker spawned -> window start
    baseline: Baseline
    ratio: float  # rate / baseline req/s
    worker_cpu_us: float | None  # all workers together, per delivery
    redis_cpu_us: float | None
    target_cpu_us: float | None
    worker_cores: float | None  # workers' CPU / window
    target_cores: float | None  # how busy the target was (1.0 = one core)
    feeder_cores: float | None  # the feeder's CPU / window ("saturated")
    redis_commands: float | None  # per delivery
    scripts: float | None  # EVALSHA (and EVAL) per delivery
    top_commands: dict[str, float]
    rss_mb: list[float]  # sampled peak per worker
    hwm_mb: list[float]  # the kernel's VmHWM per worker
    feed_rate: float | None = None  # callbacks/s accepted in the window ("saturated")
    min_backlog: int | None = None  # smallest ZCARD gw:due in the window ("saturated")
    cores_busy: float | None = None  # workers + Redis + target (+ feeder) / window
    host_cores: float | None = None
    steal_cores: float | None = None
    check: str = ""
    notes: list[str] = field(default_factory=list)
    round: int = 1

    @property
    def name(self) -> str:
        suffix = f", round {self.round}" if self.round > 1 else ""
        return f"{self.case}, {self.workers} worker(s), {self.targets} target(s){suffix}"

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.case, self.workers, self.targets)


@dataclass(frozen=True, slots=True)
class Snap:
    t: float
    due: int
    events: int
    polls: int
    commands: dict[str, int]
    workers_cpu: float | None
    redis_cpu: float | None
    target_cpu: float | None
    feeder_cpu: float | None
    feeder_commands: int | None  # CLIENT LIST tot-cmds of the feeder's connection
    host: tuple[float, float] | None


def tree_cpu(pid: int | None) -> float | None:
    """User+system CPU seconds of a process and its children (uvicorn --workers N)."""
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                continue
        return total
    except psutil.Error:
        return None


def sum_cpu(pids: Sequence[int | None]) -> float | None:
    values = [tree_cpu(p) for p in pids]
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def feeder_commands(client: Redis) -> int:
    """Commands run so far by the feeder's connection (its Lua scripts' calls included)."""
    clients = [c for c in client.client_list() if c.get("name") == FEEDER_CLIENT]
    if not clients:
        raise RuntimeError(f"no Redis connection named {FEEDER_CLIENT}")
    return sum(int(c["tot-cmds"]) for c in clients)


def py_spy_binary() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    return found


def start_py_spy(workers: Sequence[Child], out_dir: Path, logs: Path) -> list[tuple[Child, Path]]:
    """Sample each worker with py-spy (100 Hz, without pausing it) until `stop_py_spy`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spies = []
    for w in workers:
        path = out_dir / f"{w.name}.txt"
        spy = Child(f"py-spy-{w.name}", logs / f"py-spy-{w.name}.log")
        cmd = [py_spy_binary(), "record", "--pid", str(w.pid), "--rate", "100", "--nonblocking"]
        cmd += ["--format", "raw", "--output", str(path)]
        spy.spawn(cmd, clean_env({}))
        spies.append((spy, path))
    return spies


def stop_py_spy(spies: Sequence[tuple[Child, Path]]) -> None:
    """SIGINT makes py-spy write its file; then stop it by PID like every child."""
    for spy, _ in spies:
        if spy.proc is not None and spy.proc.poll() is None:
            spy.proc.send_signal(signal.SIGINT)
    for spy, _ in spies:
        spy.wait(PY_SPY_STOP_S)
        spy.stop()


def py_spy_summary(path: Path, top: int = 25) -> str:
    """The functions with the most samples on top of the stack (self) and anywhere (inclusive).

    py-spy samples threads that are not idle: time spent preempted in a system call (a write to
    Redis or the target that wakes them on a busy machine) counts too, so read it as wall time
    of a busy worker, not CPU."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        names = [_frame_name(f) for f in stack.split(";")]
        own[names[-1]] += n
        for name in set(names):
            inclusive[name] += n
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples", "self:"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in own.most_common(top)]
    lines += ["inclusive:"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    """'send (/x/site-packages/aiohttp/client.py:12)' -> 'aiohttp/client.py:send'."""
    func, _, where = frame.rpartition(" (")
    if not func:
        return frame
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.", str(BENCH_DIR.parent) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("/lib/python3."):
                path = "stdlib/" + path.split("/", 1)[-1]
            break
    return f"{path}:{func}"


def stop_all(children: Sequence[Child]) -> None:
    """SIGTERM every child at once, then wait for each (SIGKILL after a while): by PID."""
    for child in children:
        if child.proc is not None and child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.terminate()
    for child in children:
        child.stop()


# ---------------------------------------------------------------------------------------------
# The benchmark.
# ---------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, logs: Path) -> None:
        self.args = args
        self.logs = logs
        self.redis = EmbeddedRedis()
        self.target: Child | None = None
        self.target_url = ""
        self.rows = 0
        self.baselines: list[Baseline] = []

    @property
    def redis_pid(self) -> int | None:
        return self.redis.process.pid if self.redis.process else None

    @property
    def target_pid(self) -> int | None:
        return self.target.pid if self.target else None

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis.port}/{REDIS_DB}"

    def start(self) -> None:
        self.redis.start()
        self.target, port = start_target_server(
            self.logs, loop="uvloop", http="httptools", workers=self.args.target_workers
        )
        self.target_url = f"http://{HOST}:{port}"

    def stop(self) -> None:
        try:
            if self.target is not None:
                self.target.stop()
        finally:
            self.redis.stop()

    def redis_version(self) -> str:
        client = Redis.from_url(self.redis_url)
        try:
            info = client.info("server")
            return str(info.get("valkey_version") or info.get("redis_version"))
        finally:
            client.close()

    # -- set-up -----------------------------------------------------------------------------------

    def fresh(self, targets: int) -> tuple[Redis, Store, Any, LiveConfig]:
        """An empty database with `targets` targets for the network applied (as `targets apply`)."""
        client = Redis.from_url(self.redis_url)
        client.flushdb()
        store = Store(client, prefix=SETTINGS.prefix, retention=SETTINGS.retention_days * 86400)
        path = write_targets_config(self.logs / f"targets-{targets}.toml", targets, self.target_url)
        store.save_config(load_config(path, {}).to_dict())
        return client, store, make_queue(client, SETTINGS.queue_name), LiveConfig(store)

    def accept_many(self, store: Store, queue: Any, live: LiveConfig, n: int) -> list[str]:
        """N callbacks stored as the web's accept step stores them (the ingest script, a spool
        drain's batch per call), and a drain job queued when the script says none is."""
        names = [t.name for t in live.get().routes(INVITATION_CREATED, FIELDS["network_id"])]
        if not names:
            raise RuntimeError("no target matches the callbacks")
        ids = []
        for start in range(0, n, DRAIN_BATCH):
            events = [
                make_event(FIELDS, INVITATION_CREATED, "json", client=HOST)
                for _ in range(min(DRAIN_BATCH, n - start))
            ]
            head = IngestHead(store.prefix, now_ms(), store.retention)
            if ingest_sync(store.redis, head, [IngestItem.new(ev, names) for ev in events]).woke:
                enqueue_drain(queue)
            ids += [ev.id for ev in events]
        return ids

    def spawn_workers(self, k: int) -> list[Child]:
        self.rows += 1
        env = {
            "REDIS_URL": self.redis_url,
            "GATEWAY_ALLOW_PRIVATE_TARGETS": "true",
            "GATEWAY_LOG_LEVEL": self.args.log_level,
        }
        if self.args.concurrency:
            env["GATEWAY_WORKER_CONCURRENCY"] = str(self.args.concurrency)
        workers = []
        for i in range(k):
            name = f"bench-{self.rows}-{i + 1}"
            child = Child(name, self.logs / f"{name}.log")
            workers.append(child)
            child.spawn([sys.executable, "-m", "gateway", "worker", "--name", name], clean_env(env))
        return workers

    # -- the baseline -----------------------------------------------------------------------------

    def baseline(self, live: LiveConfig) -> Baseline:
        """The aiohttp loop, in its own process, posting the gateway's rendered request."""
        target = live.get().target("t1")
        assert target is not None
        request = build_request(target, make_event(FIELDS, INVITATION_CREATED, "json", client=HOST), {})
        spec = {
            "method": request.method,
            "url": request.url,
            "headers": [list(h) for h in request.headers],
            "session_headers": {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            "body": None if request.body is None else base64.b64encode(request.body).decode(),
        }
        n = len(self.baselines) + 1
        spec_path, out = self.logs / f"baseline-{n}.json", self.logs / f"baseline-{n}.out.json"
        spec_path.write_text(json.dumps(spec))
        child = Child(f"baseline-{n}", self.logs / f"baseline-{n}.log")
        cmd = [sys.executable, str(BENCH_DIR / "delivery_load.py"), "baseline", str(spec_path), str(out)]
        cmd += ["--requests", str(self.args.baseline_requests), "--concurrency", "32"]
        cmd += ["--warmup", str(max(100, self.args.baseline_requests // 10))]
        try:
            tgt0 = tree_cpu(self.target_pid)
            child.spawn(cmd, clean_env({}))
            code = child.wait(self.args.timeout)
            tgt = cpu_delta(tgt0, tree_cpu(self.target_pid))
            if code is None:
                raise TimeoutError(f"baseline did not finish in {self.args.timeout} s")
        finally:
            child.stop()
        if not out.exists():
            raise RuntimeError(f"baseline failed (exit {code}):\n{child.log_tail()}")
        res = json.loads(out.read_text())
        total = res["requests"] + res["warmup"]
        ok = code == 0
        b = Baseline(
            requests=res["requests"],
            seconds=res["seconds"],
            rps=res["rps"],
            client_cpu_us=res["cpu_seconds"] / res["requests"] * 1e6,
            target_cpu_us=None if tgt is None else tgt / total * 1e6,  # warm-up included
            check="ok" if ok else f"MISMATCH: {res['statuses']}",
        )
        self.baselines.append(b)
        return b

    # -- timing ---------------------------------------------------------------------------------

    def poll(self, client: Redis) -> tuple[int, int, int]:
        with client.pipeline(transaction=False) as pipe:
            pipe.zcard(DUE_KEY)
            pipe.zcard(EVENTS_KEY)
            pipe.scard(WORKERS_KEY)
            due, events, registered = (int(v) for v in pipe.execute())
        return due, events, registered

    def snap(
        self,
        client: Redis,
        t: float,
        due: int,
        events: int,
        polls: int,
        workers: Sequence[Child],
        feeder: Child | None = None,
    ) -> Snap:
        return Snap(
            t=t,
            due=due,
            events=events,
            polls=polls,
            commands=command_stats(client),
            workers_cpu=sum_cpu([w.pid for w in workers]),
            redis_cpu=tree_cpu(self.redis_pid),
            target_cpu=tree_cpu(self.target_pid),
            feeder_cpu=None if feeder is None else tree_cpu(feeder.pid),
            feeder_commands=None if feeder is None else feeder_commands(client),
            host=host_cpu(),
        )

    def measure(
        self,
        case: str,
        k: int,
        targets: int,
        callbacks: int,
        a: Snap,
        b: Snap,
        window: str,
        spawn_t: float,
        baseline: Baseline,
        rss: dict[int, int],
        hwm: list[int | None],
    ) -> Row:
        n = (b.events - a.events) * targets - (b.due - a.due)
        wall = b.t - a.t
        cmds = {c: b.commands.get(c, 0) - a.commands.get(c, 0) for c in b.commands}
        cmds["info"] = cmds.get("info", 0) - 1  # the first snapshot's INFO commandstats
        if a.feeder_commands is not None:
            cmds["client|list"] = cmds.get("client|list", 0) - 1  # ... and its CLIENT LIST
        for c, per_poll in POLL_COMMANDS.items():
            cmds[c] = cmds.get(c, 0) - per_poll * (b.polls - a.polls)
        cmds = {c: v for c, v in cmds.items() if v > 0}
        total_cmds = sum(cmds.values())
        if a.feeder_commands is not None and b.feeder_commands is not None:
            total_cmds -= b.feeder_commands - a.feeder_commands  # the callbacks' own commands
        top = sorted(cmds.items(), key=lambda kv: -kv[1])[:8]
        workers_cpu = cpu_delta(a.workers_cpu, b.workers_cpu)
        redis_cpu = cpu_delta(a.redis_cpu, b.redis_cpu)
        target_cpu = cpu_delta(a.target_cpu, b.target_cpu)
        feeder_cpu = cpu_delta(a.feeder_cpu, b.feeder_cpu)
        busy = [c for c in (workers_cpu, redis_cpu, target_cpu, feeder_cpu) if c is not None]
        host = host_delta(a.host, b.host)

        def per(x: float | None) -> float | None:
            return None if x is None or n <= 0 else x / n * 1e6

        rate = n / wall if wall > 0 else 0.0
        return Row(
            case=case,
            workers=k,
            targets=targets,
            callbacks=callbacks,
            deliveries=n,
            seconds=wall,
            rate=rate,
            window=window,
            startup_s=a.t - spawn_t,
            baseline=baseline,
            ratio=rate / baseline.rps,
            worker_cpu_us=per(workers_cpu),
            redis_cpu_us=per(redis_cpu),
            target_cpu_us=per(target_cpu),
            worker_cores=None if workers_cpu is None else workers_cpu / wall,
            feeder_cores=None if feeder_cpu is None else feeder_cpu / wall,
            target_cores=None if target_cpu is None else target_cpu / wall,
            redis_commands=total_cmds / n if n > 0 else None,
            scripts=(cmds.get("evalsha", 0) + cmds.get("eval", 0)) / n if n > 0 else None,
            top_commands={c: v / n for c, v in top} if n > 0 else {},
            rss_mb=[rss.get(w, 0) / MB for w in sorted(rss)],
            hwm_mb=[(h or 0) / MB for h in hwm],
            cores_busy=sum(busy) / wall if wall > 0 else None,
            host_cores=None if host is None else host[0] / wall,
            steal_cores=None if host is None else host[1] / wall,
        )

    def sample_rss(self, workers: Sequence[Child], peaks: dict[int, int]) -> None:
        for i, w in enumerate(workers):
            rss = rss_bytes(w.pid)
            if rss is not None:
                peaks[i] = max(peaks.get(i, 0), rss)

    def check_alive(self, workers: Sequence[Child]) -> None:
        for w in workers:
            if w.exited():
                raise RuntimeError(f"{w.name} exited:\n{w.log_tail()}")

    # -- rows -----------------------------------------------------------------------------------

    def drain_row(self, k: int, targets: int, callbacks: int) -> Row:
        client, store, queue, live = self.fresh(targets)
        workers: list[Child] = []
        spies: list[tuple[Child, Path]] = []
        try:
            baseline = self.baseline(live)
            ids = self.accept_many(store, queue, live, callbacks)
            total = callbacks * targets
            due, events, registered = self.poll(client)
            if due != total or events != callbacks or registered:
                raise RuntimeError(f"before the workers: {due} due, {events} events, {registered} workers")
            rss: dict[int, int] = {}
            polls = 0
            first: Snap | None = None
            all_up: Snap | None = None
            spawn_t = time.perf_counter()
            workers = self.spawn_workers(k)
            deadline = spawn_t + self.args.timeout
            next_rss = spawn_t
            while True:  # bounded by the deadline
                due, events, registered = self.poll(client)
                polls += 1
                now = time.perf_counter()
                if now >= next_rss:
                    self.sample_rss(workers, rss)
                    next_rss = now + RSS_EVERY_S
                if first is None and due < total:
                    first = self.snap(client, now, due, events, polls, workers)
                if all_up is None and registered >= k and due < total:
                    all_up = first if first.t == now else self.snap(client, now, due, events, polls, workers)
                    if self.args.py_spy is not None:
                        spies = start_py_spy(workers, self.args.py_spy / f"row-{self.rows}", self.logs)
                if due == 0:
                    end = self.snap(client, now, due, events, polls, workers)
                    break
                self.check_alive(workers)
                if now > deadline:
                    raise TimeoutError(f"{due} of {total} deliveries left after {self.args.timeout} s")
                time.sleep(POLL_S)
            assert first is not None
            self.sample_rss(workers, rss)
            hwm = [peak_rss_bytes(w.pid) for w in workers]
            # Start when every worker is up, unless they were up only for the last tenth.
            if all_up is not None and all_up.due >= total // 10:
                start, window = all_up, "all workers up"
            else:
                start, window = first, "first delivery"
            row = self.measure(
                "drain", k, targets, callbacks, start, end, window, spawn_t, baseline, rss, hwm
            )
            if spies:
                stop_py_spy(spies)
                for _, path in spies:
                    if path.exists():
                        summary = py_spy_summary(path)
                        path.with_suffix(".summary.txt").write_text(summary + "\n")
                        print(f"  py-spy, {row.name}: {path} (summary: {path.with_suffix('.summary.txt')})")
            stop_all(workers)
            row.check = self.verify(client, store, ids, targets)
            return row
        finally:
            stop_py_spy(spies)
            stop_all(workers)
            client.flushdb()
            client.close()

    def saturated_row(self, k: int, drain_rate: float, baseline: Baseline) -> Row:
        targets = 1
        client, store, queue, live = self.fresh(targets)
        workers: list[Child] = []
        feeder = Child(f"feeder-{k}", self.logs / f"feeder-{k}.log")
        out = self.logs / f"feeder-{k}.json"
        try:
            backlog = self.args.backlog
            self.accept_many(store, queue, live, backlog)
            rate = self.args.feed_factor * drain_rate
            cmd = [sys.executable, str(BENCH_DIR / "delivery_load.py"), "feed", self.redis_url, str(out)]
            cmd += ["--rate", f"{rate:.1f}", "--seconds", str(self.args.steady + self.args.timeout)]
            cmd += ["--max", str(int(rate * (self.args.steady + 60)) + backlog)]
            feeder.spawn(cmd, clean_env({}))
            t_feed = time.perf_counter()
            while self.poll(client)[1] <= backlog:  # bounded: the feeder starts within 30 s
                if feeder.exited() or time.perf_counter() - t_feed > 30:
                    raise RuntimeError(f"the feeder did not start:\n{feeder.log_tail()}")
                time.sleep(POLL_S)
            rss: dict[int, int] = {}
            polls = 0
            start: Snap | None = None
            low = 2 * k * (self.args.concurrency or SETTINGS.worker_concurrency)
            min_due: int | None = None
            ran_low = False
            spawn_t = time.perf_counter()
            workers = self.spawn_workers(k)
            deadline = spawn_t + self.args.timeout
            next_rss = spawn_t
            while True:  # bounded by the deadline
                due, events, registered = self.poll(client)
                polls += 1
                now = time.perf_counter()
                if now >= next_rss:
                    self.sample_rss(workers, rss)
                    next_rss = now + RSS_EVERY_S
                if start is None and registered >= k and due < events * targets:
                    start = self.snap(client, now, due, events, polls, workers, feeder)
                if start is not None:
                    min_due = due if min_due is None else min(min_due, due)
                    ran_low = due < low
                    if now - start.t >= self.args.steady or ran_low or feeder.exited():
                        end = self.snap(client, now, due, events, polls, workers, feeder)
                        break
                self.check_alive(workers)
                if now > deadline:
                    raise TimeoutError(f"no steady window in {self.args.timeout} s")
                time.sleep(POLL_S)
            feeder.stop()
            self.sample_rss(workers, rss)
            row = self.measure(
                "saturated", k, targets, 0, start, end, "all workers up", spawn_t, baseline, rss, []
            )
            row.feed_rate = (end.events - start.events) / row.seconds
            row.min_backlog = min_due
            if ran_low:
                row.notes.append(f"backlog ran low ({min_due} due) after {row.seconds:.1f} s: not saturated")
            if row.feed_rate < row.rate:
                row.notes.append(
                    f"the feeder accepted {row.feed_rate:.0f} callbacks/s, below the workers' rate "
                    "(the backlog kept them busy)"
                )
            # Let the workers finish what the feeder left, then check every delivery.
            t_end = time.perf_counter()
            while self.poll(client)[0] > 0:  # bounded by the timeout
                self.check_alive(workers)
                if time.perf_counter() - t_end > self.args.timeout:
                    raise TimeoutError("the backlog left after the saturated window did not drain")
                time.sleep(0.05)
            self.sample_rss(workers, rss)
            row.rss_mb = [rss.get(i, 0) / MB for i in sorted(rss)]
            row.hwm_mb = [(peak_rss_bytes(w.pid) or 0) / MB for w in workers]
            stop_all(workers)
            ids = [v.decode() for v in client.zrange(EVENTS_KEY, 0, -1)]
            row.callbacks = len(ids)
            row.check = self.verify(client, store, ids, targets)
            return row
        finally:
            feeder.stop()
            stop_all(workers)
            client.flushdb()
            client.close()

    def verify(self, client: Redis, store: Store, ids: Sequence[str], targets: int) -> str:
        """Every delivery of every event: delivered, HTTP 200, 1 attempt."""
        outcome: collections.Counter[str] = collections.Counter()
        for i in range(0, len(ids), CHECK_CHUNK):
            with client.pipeline(transaction=False) as pipe:
                for event_id in ids[i : i + CHECK_CHUNK]:
                    pipe.hgetall(store.keys.deliveries(event_id))
                for states in pipe.execute():
                    if len(states) != targets:
                        outcome[f"{len(states)} deliveries for an event"] += 1
                    for raw in states.values():
                        s = json.loads(raw)
                        outcome[f"{s['status']}/{s.get('last_status_code')}/{s['attempts']}"] += 1
        expected = len(ids) * targets
        if outcome == {f"{DeliveryStatus.DELIVERED.value}/200/1": expected}:
            return f"ok: {expected} delivered, HTTP 200, 1 attempt"
        return f"MISMATCH: {dict(outcome)}"


def run_all(args: argparse.Namespace, bench: Bench) -> list[Row]:
    """Every row, `--rounds` times: each round runs the whole matrix again, baselines included."""
    rows: list[Row] = []

    def add(row: Row, n: int) -> Row:
        row.round = n
        rows.append(row)
        print(one_line(row), flush=True)
        return row

    for n in range(1, args.rounds + 1):
        for k in args.workers:
            drain = add(bench.drain_row(k, 1, args.callbacks), n)
            if k in args.saturated:
                add(bench.saturated_row(k, drain.rate, drain.baseline), n)
        for t in args.targets:
            if t == 1 and 1 in args.workers:
                continue  # the 1-worker row above
            add(bench.drain_row(1, t, max(1, args.callbacks // t)), n)
    return rows


def median_rows(rows: Sequence[Row]) -> list[Row]:
    """Per row of the matrix, the round with the median ratio (the lower middle one)."""
    keys = list(dict.fromkeys(r.key for r in rows))
    out = []
    for key in keys:
        ordered = sorted((r for r in rows if r.key == key), key=lambda r: r.ratio)
        out.append(ordered[(len(ordered) - 1) // 2])
    return out


def rounds_summary(rows: Sequence[Row]) -> list[str]:
    lines = []
    for med in median_rows(rows):
        each = [r for r in rows if r.key == med.key]
        lines.append(
            f"- {med.case}, {med.workers} worker(s), {med.targets} target(s): x baseline per round "
            + " / ".join(f"{r.ratio:.2f}" for r in each)
            + f"; median **{med.ratio:.2f}**; CPU ÷ baseline per round "
            + " / ".join(fmt(cpu_ratio(r), ".2f") for r in each)
        )
    return lines


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------


def one_line(r: Row) -> str:
    return (
        f"  {r.name}: {r.deliveries} in {r.seconds:.2f} s = {r.rate:.0f}/s, baseline "
        f"{r.baseline.rps:.0f} req/s, x{r.ratio:.2f}; CPU {fmt(r.worker_cpu_us)} µs/dlv vs "
        f"{fmt(r.baseline.client_cpu_us)} µs/req, x{fmt(cpu_ratio(r), '.2f')}; {r.check}"
    )


def cpu_ratio(r: Row) -> float | None:
    """Worker CPU per delivery / the baseline's CPU per request (all workers together)."""
    if r.worker_cpu_us is None or not r.baseline.client_cpu_us:
        return None
    return r.worker_cpu_us / r.baseline.client_cpu_us


def mb(values: Sequence[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values) if values else "n/a"


def markdown_table(rows: Sequence[Row]) -> str:
    head = (
        "| case | workers | targets/net | deliveries | s | deliveries/s | baseline req/s | x baseline "
        "| worker µs CPU/dlv | baseline µs CPU/req | CPU ÷ baseline | Redis µs CPU/dlv | target µs CPU/dlv "
        "| Redis cmds/dlv | scripts/dlv | worker peak RSS MB | host cores |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    lines = [head, rule]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.workers} | {r.targets} | {r.deliveries} | {r.seconds:.2f} | {r.rate:.0f} "
            f"| {r.baseline.rps:.0f} | **{r.ratio:.2f}** | {fmt(r.worker_cpu_us)} "
            f"| {fmt(r.baseline.client_cpu_us)} | {fmt(cpu_ratio(r), '.2f')} | {fmt(r.redis_cpu_us)} "
            f"| {fmt(r.target_cpu_us)} | {fmt(r.redis_commands, '.1f')} | {fmt(r.scripts, '.3f')} "
            f"| {mb(r.hwm_mb or r.rss_mb)} | {fmt(r.host_cores, '.2f')} |"
        )
    return "\n".join(lines)


def drain_vs_saturated(rows: Sequence[Row]) -> list[str]:
    lines = []
    for sat in (r for r in rows if r.case == "saturated"):
        drain = next(
            r
            for r in rows
            if r.case == "drain" and r.workers == sat.workers and r.targets == 1 and r.round == sat.round
        )
        ratio = drain.rate / sat.rate if sat.rate else float("nan")
        ok = ratio >= DRAIN_MIN_RATIO
        lines.append(
            f"- {sat.workers} worker(s): drain {drain.rate:.0f}/s, saturated {sat.rate:.0f}/s (callbacks "
            f"fed at {fmt(sat.feed_rate)}/s, backlog never below {sat.min_backlog}): drain / saturated = "
            f"**{ratio:.2f}** ({'ok' if ok else 'BELOW'} the 0.8 floor)"
        )
    return lines


def details(rows: Sequence[Row]) -> list[str]:
    lines = []
    for r in rows:
        top = ", ".join(f"{c} {v:.2f}" for c, v in r.top_commands.items())
        lines.append(
            f"- {r.name}: window from {r.window} ({r.startup_s:.2f} s after spawn); workers "
            f"{fmt(r.worker_cores, '.2f')} cores, target {fmt(r.target_cores, '.2f')} cores, "
            + (f"feeder {r.feeder_cores:.2f} cores, " if r.feeder_cores is not None else "")
            + f"all ours "
            f"{fmt(r.cores_busy, '.2f')} of {fmt(r.host_cores, '.2f')} busy on the host; RSS sampled "
            f"{mb(r.rss_mb)} MB, VmHWM {mb(r.hwm_mb)} MB; commands/dlv"
            + (" (the feeder's included)" if r.case == "saturated" else "")
            + f": {top}; {r.check}"
            + "".join(f"; NOTE: {n}" for n in r.notes)
        )
    return lines


def render(args: argparse.Namespace, env: dict[str, Any], mach: dict[str, Any], rows: list[Row]) -> str:
    baselines = [r.baseline for r in rows if r.case == "drain"]
    target = (
        f"uvicorn --loop uvloop --http httptools --workers {args.target_workers}, "
        'bench/http_clients.py:target_app (200 "ok")'
    )
    warnings = [
        w for r in rows if (w := load_warning(r.name, r.cores_busy, r.host_cores, r.steal_cores)) is not None
    ]
    rss_all = [v for r in rows for v in (r.hwm_mb or r.rss_mb)]
    out = [
        f"# Delivery benchmark, {env['date']}",
        "",
        f"- Machine: {mach['nproc']} cores, {mach['cpu_model']}, {mach['platform']}, Python "
        f"{mach['python']}; load average at start {mach['loadavg']}, at end {env['loadavg_end']}",
        f"- Versions: aiohttp {env.get('aiohttp')}, uvloop {env.get('uvloop')}, httptools "
        f"{env.get('httptools')}, uvicorn {env.get('uvicorn')}, rq {env.get('rq')}, redis-py "
        f"{env.get('redis')}, valkey {env['redis_server']}; gateway {env['gateway_commit']}",
        f"- Command: `{env['command']}`",
        f"- Target: {target}; baseline: aiohttp, 32 in flight, uvloop, own process, "
        f"{args.baseline_requests} requests, the gateway's rendered request; workers: "
        f"`python -m gateway worker`, GATEWAY_WORKER_CONCURRENCY "
        f"{args.concurrency or SETTINGS.worker_concurrency}, log level {args.log_level}",
        "",
        markdown_table(rows if args.rounds == 1 else median_rows(rows)),
        "",
        *(
            []
            if args.rounds == 1
            else [
                f"{args.rounds} rounds, each the whole matrix with its own baselines; the table shows "
                "each row's median round (by x baseline). Per round:",
                *rounds_summary(rows),
                "",
            ]
        ),
        "Baseline req/s is the aiohttp loop measured right before the drain row (the saturated row "
        "uses its drain row's). deliveries/s counts deliveries recorded in the window; CPU is per "
        "delivery, all worker processes together; baseline µs CPU/req is the aiohttp loop's own process "
        "per request, and CPU ÷ baseline the worker's CPU per delivery over it (the steadier signal on "
        "a shared machine; 0.5x the baseline's rate needs about 2 or less); Redis cmds/dlv counts "
        "every command Redis ran "
        "(Lua scripts' own calls included, our polls taken out); scripts/dlv = EVALSHA calls; peak RSS = "
        "VmHWM of each worker.",
        "",
        "Drain vs saturated:",
        *drain_vs_saturated(rows),
        "",
        f"Worker peak RSS: max {max(rss_all):.0f} MB (goal <= {RSS_GOAL_MB} MB)." if rss_all else "",
        f"Baselines: {', '.join(f'{b.rps:.0f}' for b in baselines)} req/s; target CPU "
        f"{', '.join(fmt(b.target_cpu_us) for b in baselines)} µs/request, aiohttp client CPU "
        f"{', '.join(f'{b.client_cpu_us:.0f}' for b in baselines)} µs/request.",
        "",
        "Rows:",
        *details(rows),
    ]
    if warnings:
        out += ["", *warnings]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of numbers, got {text!r}") from None
    if not values or any(not 1 <= v <= 1000 for v in values):
        raise argparse.ArgumentTypeError("each value 1..1000")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke check in under a minute")
    parser.add_argument("--callbacks", type=int, help="backlog for the drain rows (10000; --quick 1000)")
    parser.add_argument("--workers", type=int_list, help="worker processes, 1 target (1,2,4; --quick 1,2)")
    parser.add_argument(
        "--targets", type=int_list, help="targets per network, 1 worker (1,10,100; quick 1,10)"
    )
    parser.add_argument(
        "--saturated", type=int_list, help="worker counts with a saturated row (all of --workers; --quick 1)"
    )
    parser.add_argument("--steady", type=float, help="seconds of the saturated window (10; --quick 3)")
    parser.add_argument("--backlog", type=int, help="backlog before a saturated window (--callbacks)")
    parser.add_argument("--feed-factor", type=float, default=1.2, help="feed rate / drain rate (1.2)")
    parser.add_argument(
        "--baseline-requests", type=int, help="timed baseline requests (max(--callbacks, 5000))"
    )
    parser.add_argument("--target-workers", type=int, default=1, help="uvicorn --workers of the target (1)")
    parser.add_argument("--rounds", type=int, default=1, help="run the whole matrix N times (1..5)")
    parser.add_argument("--concurrency", type=int, default=0, help="GATEWAY_WORKER_CONCURRENCY (its default)")
    parser.add_argument("--log-level", default="INFO", help="GATEWAY_LOG_LEVEL of the workers (INFO)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per wait (300)")
    parser.add_argument("--out", type=Path, help="markdown file (bench/results/delivery-<date>[-quick].md)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON here")
    parser.add_argument(
        "--py-spy", type=Path, metavar="DIR", help="py-spy profiles of the drain rows' workers"
    )
    args = parser.parse_args(argv)
    q = args.quick
    args.callbacks = args.callbacks or (1000 if q else 10_000)
    args.workers = args.workers or ([1, 2] if q else [1, 2, 4])
    args.targets = args.targets or ([1, 10] if q else [1, 10, 100])
    args.saturated = args.saturated or ([1] if q else list(args.workers))
    args.steady = args.steady or (3.0 if q else 10.0)
    args.backlog = args.backlog or args.callbacks
    args.baseline_requests = args.baseline_requests or max(args.callbacks, 5000)
    if not 10 <= args.callbacks <= 1_000_000 or not 10 <= args.baseline_requests <= 1_000_000:
        parser.error("--callbacks and --baseline-requests must be 10..1000000")
    if not 1 <= args.rounds <= 5:
        parser.error("--rounds must be 1..5")
    if not 0 < args.steady <= 600 or not 0 < args.timeout <= 3600 or not 1 <= args.target_workers <= 8:
        parser.error("--steady in (0, 600], --timeout in (0, 3600], --target-workers 1..8")
    if args.feed_factor <= 0 or args.concurrency < 0 or args.backlog < 1:
        parser.error("--feed-factor > 0, --concurrency >= 0, --backlog >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    # Ctrl-C stops it too when started from a shell that ignores SIGINT (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    mach = machine()
    command = shlex.join([".venv/bin/python", "bench/delivery.py", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.start()
            env = environment({"command": command, "redis_server": bench.redis_version()})
            print(
                f"{mach['nproc']} cores, {mach['cpu_model']}, Python {mach['python']}, "
                f"load {mach['loadavg']}; target {bench.target_url}",
                flush=True,
            )
            rows = run_all(args, bench)
        finally:
            bench.stop()
    env["loadavg_end"] = machine()["loadavg"]
    env["seconds"] = round(time.perf_counter() - started, 1)
    text = render(args, env, mach, rows)
    print()
    print(text)
    date = dt.date.today().isoformat()
    out = args.out or BENCH_DIR / "results" / f"delivery-{date}{'-quick' if args.quick else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out} ({env['seconds']} s)")
    if args.json is not None:
        doc = {
            "environment": env,
            "machine": mach,
            "settings": _settings(args),
            "rows": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    ok = all(r.check.startswith("ok") for r in rows)
    return 0 if ok else 1


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


if __name__ == "__main__":
    sys.exit(main())
