"""What the benchmarks share: child processes stopped by PID, the uvicorn target server of
bench/http_clients.py, CPU time and memory from /proc, latency percentiles, Redis command
counts, the machine and environment lines, and the report (printed, and written as JSON) of
bench/ingest.py.

Not a benchmark itself. Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from redis import Redis

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
# Every variable the gateway reads, so that the caller's shell cannot change what is measured.
GATEWAY_ENV_PREFIXES = ("GATEWAY_", "REDIS_URL", "WEB_CONCURRENCY", "HOST", "PORT")
# A proxy from the caller's shell would take requests off 127.0.0.1 (the worker sends through
# HTTPS_PROXY): never passed on.
PROXY_VARIABLES = frozenset({"HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"})


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that the `finally` blocks stop every child process."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def worker_logging(path: Path) -> Any:
    """The gateway's own log setup at INFO (text, masked, as `gateway worker` runs), writing to
    `path` instead of stderr: what the benchmarks' in-process engines log costs what it costs
    the worker. Returns the open file (closed at exit)."""
    from gateway.logs import setup_logging

    stream = path.open("w")
    saved, sys.stderr = sys.stderr, stream
    try:
        setup_logging("INFO", "text", True)
    finally:
        sys.stderr = saved
    return stream


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The current environment without the gateway's own variables and proxies, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(GATEWAY_ENV_PREFIXES) and k.upper() not in PROXY_VARIABLES
    }
    env.update(extra)
    return env


def cpu_seconds(pid: int | None) -> float | None:
    """User+system CPU time of a process so far (all its threads; Linux /proc), else None."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime/stime are fields 14/15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_cpu() -> tuple[float, float] | None:
    """Machine-wide (busy, steal) CPU seconds so far, from /proc/stat; None elsewhere.

    Busy is user + nice + system + irq + softirq over all cores. Compared with what the
    benchmark's own processes used, it shows load from anything else on the machine; steal is
    time the hypervisor gave to other guests.
    """
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def host_delta(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> tuple[float, float] | None:
    if before is None or after is None:
        return None
    return after[0] - before[0], after[1] - before[1]


FOREIGN_LOAD_CORES = 0.25  # machine-wide busy CPU beyond ours worth a warning
STEAL_CORES = 0.10


def load_warning(name: str, ours: float | None, host: float | None, steal: float | None) -> str | None:
    """A warning when something besides the benchmark loaded the machine during a measurement."""
    if ours is None or host is None or steal is None:
        return None
    if host - ours > FOREIGN_LOAD_CORES or steal > STEAL_CORES:
        return (
            f"WARNING: {name}: the machine was busier than this benchmark ({host:.2f} cores busy, "
            f"{ours:.2f} of them ours; steal {steal:.2f} cores): figures are less reliable"
        )
    return None


def busy_runs_warning(busy: Sequence[float], runs: int, what: str = "runs") -> list[str]:
    """The closing WARNING of a report whose `busy` runs (their other cores) of `runs` had more
    than FOREIGN_LOAD_CORES of other load: as Markdown lines, none if there were none."""
    if not busy:
        return []
    return [
        "",
        f"**WARNING: other processes kept more than {FOREIGN_LOAD_CORES} cores busy during "
        f"{len(busy)} of {runs} {what} (up to {max(busy):.2f} cores; column other cores): "
        "these figures are not reliable. Run it again on a quiet machine.**",
    ]


def load_warnings(results: Iterable[Any]) -> list[str]:
    """`load_warning` for each result (with name, cores_busy, host_cores, steal_cores) that has one."""
    warnings = (load_warning(r.name, r.cores_busy, r.host_cores, r.steal_cores) for r in results)
    return [w for w in warnings if w]


def cpu_delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


class Child:
    """A child process with its output in a log file; stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def spawn(self, cmd: Sequence[str], env: Mapping[str, str]) -> None:
        # A file, not a pipe: nobody reads a pipe while the benchmark runs, and a full pipe blocks.
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(cmd), env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def wait_ready(self, ready: Callable[[], bool], timeout: float = START_TIMEOUT_S) -> bool:
        """Poll `ready` until it is true, the process exits, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exited():
                return False
            with contextlib.suppress(OSError):
                if ready():
                    return True
            time.sleep(0.05)
        return False

    def wait(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)


def start_http_server(
    name: str, cmd_for_port: Callable[[int], Sequence[str]], env: Mapping[str, str], log_dir: Path, path: str
) -> tuple[Child, int]:
    """Start a server on a free port and wait until GET `path` answers; retried on a port race."""
    for attempt in range(3):  # a free port can be taken between the probe and the bind: bounded
        port = free_port()
        child = Child(name, log_dir / f"{name}.{attempt}.log")
        child.spawn(cmd_for_port(port), env)
        url = f"http://{HOST}:{port}{path}"
        if child.wait_ready(lambda url=url: _answers(url)):
            return child, port
        tail = child.log_tail()
        child.stop()
        print(f"{name} did not start on port {port}; log tail:\n{tail}", file=sys.stderr)
    raise RuntimeError(f"{name} did not start")


# bench/http_clients.py's raw ASGI app (200 "ok" to any request), imported by uvicorn from bench/.
TARGET_APP = "http_clients:target_app"


def target_server_cmd(port: int, loop: str = "asyncio", http: str = "h11", workers: int = 0) -> list[str]:
    """uvicorn serving TARGET_APP on `port`: no lifespan, no access log, warnings only. By default
    asyncio and h11 in 1 process (bench/http_clients.py); bench/delivery.py asks for uvloop,
    httptools and `--workers N`."""
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(BENCH_DIR),
        TARGET_APP,
        "--host",
        HOST,
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
        "--loop",
        loop,
        "--http",
        http,
        "--lifespan",
        "off",
    ]
    if workers:
        cmd += ["--workers", str(workers)]
    return cmd


def start_target_server(
    log_dir: Path, loop: str = "asyncio", http: str = "h11", workers: int = 0
) -> tuple[Child, int]:
    """The target server (`target_server_cmd`) on a free port, with the gateway's variables unset."""
    return start_http_server(
        "target", lambda port: target_server_cmd(port, loop, http, workers), clean_env({}), log_dir, "/"
    )


# No proxy from the environment: these probes go to 127.0.0.1 and nowhere else.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One HTTP request to 127.0.0.1 (no proxy from the environment): (status, body)."""
    if urllib.parse.urlsplit(url).hostname != HOST:
        raise ValueError(f"refusing to send to {url!r}: {HOST} only")
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _answers(url: str) -> bool:
    """True once the server answers anything over HTTP (any status)."""
    try:
        with _OPENER.open(url, timeout=1.0) as resp:
            resp.read()
            return True
    except urllib.error.HTTPError:
        return True  # 404/405 from a route that only takes POST: the server is up
    except urllib.error.URLError:
        return False


def write_targets_config(path: Path, targets: int, base_url: str) -> Path:
    """A gateway configuration: `targets` JSON POST targets t1..tN for network "mynetwork", at
    `base_url`/t1..., with private (loopback) targets allowed."""
    lines = ["[settings]", "allow_private_targets = true", ""]
    for i in range(1, targets + 1):
        lines += [
            "[[targets]]",
            f'name = "t{i}"',
            'networks = ["mynetwork"]',
            f'url = "{base_url}/t{i}"',
            'post_data = \'{"invitee":"%invitee%","invitor":"%invitor%",'
            '"network":"%network_id%","id":"%delivery_id%"}\'',
            'content_type = "application/json"',
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def redis_commands(redis: Redis) -> int:
    """Commands the server has processed so far (the INFO call itself counts as one)."""
    return int(redis.info("stats")["total_commands_processed"])


def command_stats(redis: Redis) -> dict[str, int]:
    """Calls so far per command (INFO commandstats; commands run by Lua scripts included, the
    INFO call itself not)."""
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in redis.info("commandstats").items()
        if isinstance(stats, dict)
    }


def rss_bytes(pid: int | None) -> int | None:
    """Resident memory of a process now (VmRSS, Linux /proc), else None."""
    return _proc_status_kb(pid, "VmRSS:")


def peak_rss_bytes(pid: int | None) -> int | None:
    """The most resident memory the process ever had (VmHWM, Linux /proc), else None."""
    return _proc_status_kb(pid, "VmHWM:")


def _proc_status_kb(pid: int | None, field: str) -> int | None:
    if pid is None:
        return None
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return None


def machine() -> dict[str, Any]:
    """The machine: cores, CPU model, Python, OS, and the load averages right now."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = "unknown"
    with contextlib.suppress(OSError):
        load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": load,
    }


@dataclass(frozen=True, slots=True)
class Latency:
    mean_ms: float
    p50_ms: float
    p99_ms: float


def latency(seconds: Sequence[float]) -> Latency:
    if not seconds:
        return Latency(0.0, 0.0, 0.0)
    ordered = sorted(seconds)
    n = len(ordered)
    return Latency(
        mean_ms=statistics.fmean(ordered) * 1e3,
        p50_ms=ordered[n // 2] * 1e3,
        p99_ms=ordered[min(n - 1, int(n * 0.99))] * 1e3,
    )


def per_op_us(seconds: float | None, ops: int) -> float | None:
    return None if seconds is None or ops <= 0 else seconds / ops * 1e6


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "n/a" if value is None else format(value, spec)


def table(header: str, rows: Iterable[str]) -> str:
    """A text table: the header line, a rule as long as it, then the rows."""
    return "\n".join([header, "-" * len(header), *rows])


def report(
    args: argparse.Namespace,
    env: Mapping[str, Any],
    header: Sequence[str],
    results: Sequence[Any],
    table_text: str,
    legend: str,
    ratios: Mapping[str, float],
    ratios_text: str,
) -> None:
    """Print a benchmark's header lines, table, legend and ratios; with --json, also write the
    environment, the settings (`args`), the results (dataclasses) and the ratios to that file."""
    for line in header:
        print(line)
    print(table_text)
    print(legend)
    print()
    print(ratios_text)
    if args.json is not None:
        doc = {
            "environment": env,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": [asdict(r) for r in results],
            "ratios": ratios,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


def environment(extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    for package in (
        "rq",
        "redis",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "aiohttp",
        "invitation-gateway",
    ):
        with contextlib.suppress(Exception):
            env[package] = version(package)
    env["gateway_commit"] = _commit()
    env.update(extra or {})
    return env


def _commit() -> str:
    """The checkout's commit, with "+changes" when gateway/ differs from it."""
    root = BENCH_DIR.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "gateway"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+changes" if changes else head
