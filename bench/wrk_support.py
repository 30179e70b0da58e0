"""What bench/ingest.py needs around wrk: finding wrk, pinning processes to cores, running wrk
with a Lua script and reading its result, whole server process trees (CPU, stop by PID), and
py-spy profiles.

Not a benchmark itself. Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import Child, cpu_seconds

WRK_MISSING = (
    "wrk is not installed: `apt-get install wrk` (Debian or Ubuntu, as root), or build it from "
    "https://github.com/wg/wrk. bench/ingest.py needs wrk 4.x, built with LuaJIT."
)
STOP_TIMEOUT_S = 5.0


def find_wrk() -> str:
    """The wrk binary, or SystemExit saying how to install it."""
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(WRK_MISSING)
    return path


def wrk_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.split("Copyright")[0].strip() or "unknown"


# -- cores ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cores:
    """The server's core and the load generator's core (wrk, and Redis beside it)."""

    server: tuple[int, ...]
    client: tuple[int, ...]

    @property
    def pinned(self) -> bool:
        return bool(self.server) and bool(self.client)


def choose_cores() -> Cores:
    """The first two cores this process may use: server on the first, wrk and Redis on the
    second. With fewer than two, nothing is pinned."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return Cores((), ())
    return Cores((allowed[0],), (allowed[1],))


def taskset(cpus: Sequence[int], cmd: Sequence[str]) -> list[str]:
    """`cmd` pinned to `cpus` with taskset(1) (which execs it: same PID); unchanged if no cpus."""
    if not cpus:
        return list(cmd)
    return ["taskset", "-c", ",".join(map(str, cpus)), *cmd]


def pin_threads(pid: int, cpus: Sequence[int]) -> None:
    """Pin every thread of a running process (os.sched_setaffinity acts on one thread)."""
    if not cpus:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(task.name), set(cpus))


# -- process trees --------------------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """The process' start time in clock ticks (field 22 of /proc/PID/stat): with the PID, it
    names one process even if the PID is reused later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc/PID/task/TID/children), parents first."""
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 1000:  # bounded: a server has a handful of children
        parent = todo.pop(0)
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    found.append(int(child))
                    todo.append(int(child))
    return found


def loaded_modules(pid: int, names: Sequence[str]) -> set[str]:
    """Which of `names` appear in the paths of the files `pid` has mapped (its extension modules)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return {name for name in names if f"/{name}/" in maps}


class ServerTree:
    """A server started through support.Child, with the processes it forks (uvicorn --workers).

    The children are recorded (PID and start time) whenever they are looked at, so that `stop`
    can end them by PID after their parent, even if the parent died without stopping them.
    """

    def __init__(self, name: str, child: Child, port: int) -> None:
        self.name = name
        self.child = child
        self.port = port
        self._known: dict[int, int] = {}

    @property
    def pid(self) -> int:
        assert self.child.pid is not None, f"{self.name} is not running"
        return self.child.pid

    def pids(self) -> list[int]:
        """The server process and its live descendants, recorded for `stop`."""
        kids = descendants(self.pid)
        for pid in kids:
            started = _start_time(pid)
            if started is not None:
                self._known.setdefault(pid, started)
        return [self.pid, *kids]

    def workers(self) -> list[int]:
        """The processes that serve requests: with `--workers N`, uvicorn's master only holds the
        socket and its workers are multiprocessing "spawn" children (beside them runs
        multiprocessing's resource tracker, which serves nothing); with 1, the process itself."""
        kids = [pid for pid in self.pids()[1:] if "--multiprocessing-fork" in _cmdline(pid)]
        return kids or [self.pid]

    def cpu_seconds(self) -> dict[int, float]:
        """CPU seconds so far of every process in the tree."""
        out: dict[int, float] = {}
        for pid in self.pids():
            cpu = cpu_seconds(pid)
            if cpu is not None:
                out[pid] = cpu
        return out

    def stop(self) -> None:
        with contextlib.suppress(AssertionError):
            self.pids()
        self.child.stop()  # SIGTERM, then SIGKILL after 5 s; uvicorn's master stops its workers
        for pid, started in self._known.items():
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while _start_time(pid) == started and time.monotonic() < deadline:
                time.sleep(0.05)
            if _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> dict[int, float]:
    """CPU used between two `ServerTree.cpu_seconds` readings, per process (new ones from 0)."""
    return {pid: cpu - before.get(pid, 0.0) for pid, cpu in after.items()}


# -- wrk --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What the BENCH_RESULT line of bench/ingest.lua says, and what wrk cost."""

    requests: int  # answers wrk read
    sent: int  # requests written
    window_s: float  # the sending window (SEND_S)
    answered_in_window: int  # answers read before the window ended
    held: int  # connections parked after the window (one each when all went well)
    errors: dict[str, int]  # connect, read, write, status (HTTP >= 400), timeout
    latency_us: dict[str, float]  # min, max, mean, stdev, and p50, p90, p99, p99.9
    duration_s: float  # wrk's own run time (-d, plus up to 0.1 s)
    wrk_cpu_s: float
    output: str = field(repr=False)
    answered_204: int | None = None  # answers that were 204 (bench/ingest.lua's COUNT), else None
    other_status: int | None = None  # answers that were not

    @property
    def rate(self) -> float:
        """Answers per second over the sending window."""
        return self.answered_in_window / self.window_s

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def parse_wrk(output: str, connections: int, wrk_cpu_s: float) -> WrkResult:
    lines = [line for line in output.splitlines() if line.startswith("BENCH_RESULT ")]
    if not lines:
        raise RuntimeError(f"wrk printed no BENCH_RESULT line; its output:\n{output[-2000:]}")
    doc: dict[str, Any] = json.loads(lines[-1].split(" ", 1)[1])
    lat = doc["latency_us"]
    latency = {k: float(lat[k]) for k in ("min", "max", "mean", "stdev")}
    latency.update({f"p{q}": float(v) for q, v in lat["percentiles"].items()})
    return WrkResult(
        requests=int(doc["requests"]),
        sent=int(doc["sent"]),
        window_s=doc["window_ms"] / 1000,
        # delay() runs once per connection before its first request, then once per answer.
        answered_in_window=max(0, int(doc["delay_calls"]) - connections),
        held=int(doc["held"]),
        answered_204=None if int(doc.get("answered_204", -1)) < 0 else int(doc["answered_204"]),
        other_status=None if int(doc.get("other_status", -1)) < 0 else int(doc["other_status"]),
        errors={k: int(v) for k, v in doc["errors"].items()},
        latency_us=latency,
        duration_s=doc["duration_us"] / 1e6,
        wrk_cpu_s=wrk_cpu_s,
        output=output,
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    binary: str,
    url: str,
    script: Path,
    script_args: Sequence[str],
    connections: int,
    duration_s: int,
    cpus: Sequence[int],
    log_path: Path,
    env: Mapping[str, str],
) -> WrkResult:
    """Run `wrk -t1 -cC -dD --latency -s SCRIPT URL -- ARGS` pinned to `cpus`, to completion.

    wrk's CPU time comes from RUSAGE_CHILDREN around its wait (no other child of this process
    ends meanwhile)."""
    cmd = taskset(
        cpus,
        [
            binary,
            "-t1",
            f"-c{connections}",
            f"-d{duration_s}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
            "--",
            *script_args,
        ],
    )
    child = Child("wrk", log_path)
    before = _children_cpu()
    child.spawn(cmd, env)
    try:
        code = child.wait(duration_s + 30.0)
        if code is None:
            raise RuntimeError(f"wrk did not finish within {duration_s + 30} s")
    finally:
        child.stop()
    wrk_cpu = _children_cpu() - before
    output = log_path.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"wrk exited with status {code}; its output:\n{output[-2000:]}")
    return parse_wrk(output, connections, wrk_cpu)


# -- Redis ------------------------------------------------------------------------------------------


def command_calls(info: Mapping[str, Any]) -> Counter[str]:
    """Calls per command from INFO commandstats (commands run by Lua scripts included)."""
    return Counter(
        {
            name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in info.items()
            if isinstance(stats, dict) and "calls" in stats
        }
    )


# -- py-spy -----------------------------------------------------------------------------------------


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"  # the venv's own, as in .venv/bin/py-spy
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def start_py_spy(binary: str, pid: int, seconds: int, out: Path, cpus: Sequence[int], log: Path) -> Child:
    """`py-spy record -p PID -d S -f raw -o OUT --nonblocking`, pinned beside wrk."""
    child = Child("py-spy", log)
    cmd = [binary, "record", "-p", str(pid), "-d", str(seconds), "-f", "raw", "-o", str(out), "--nonblocking"]
    child.spawn(taskset(cpus, cmd), dict(os.environ))
    return child


def _frame_name(frame: str) -> str:
    """'func (path/file.py:123)' -> 'func (path/file.py)': lines of one function merged."""
    name, _, where = frame.rpartition(" (")
    if not name:
        return frame
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({path})"


def _file(frame: str) -> str:
    """The file of a frame, as 'gateway/ingest/accept.py' or 'redis/asyncio/connection.py'."""
    _, _, where = frame.rpartition(" (")
    return where.rstrip(")").rsplit(":", 1)[0] or frame


# Frames every sample of a server has below the event loop: left out of the inclusive lists.
ENTRY_FILES = frozenset(
    {
        "<frozen runpy>",
        "click/core.py",
        "gateway/__main__.py",
        "gateway/cli/common.py",
        "gateway/cli/serve.py",
        "uvicorn/main.py",
        "uvicorn/server.py",
        "uvicorn/_compat.py",
        "asyncio/runners.py",
    }
)

Shares = list[tuple[str, float]]


@dataclass(frozen=True, slots=True)
class Profile:
    samples: int
    own: Shares  # functions by own time (innermost Python frame)
    own_files: Shares  # files by own time
    inclusive: Shares  # functions on the stack (entry frames left out)
    inclusive_files: Shares  # files on the stack (entry files left out)


def summarize_profile(raw: Path, top: int = 20) -> Profile:
    """Shares of samples from py-spy's raw output (collapsed stacks, one "a;b;c COUNT" a line)."""
    own: Counter[str] = Counter()
    own_files: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    inclusive_files: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[_frame_name(frames[-1])] += count
        own_files[_file(frames[-1])] += count
        inner = [f for f in frames if _file(f) not in ENTRY_FILES]
        for name in {_frame_name(f) for f in inner}:
            inclusive[name] += count
        for name in {_file(f) for f in inner}:
            inclusive_files[name] += count

    def shares(counter: Counter[str]) -> Shares:
        return [(name, n / total) for name, n in counter.most_common(top)] if total else []

    return Profile(total, shares(own), shares(own_files), shares(inclusive), shares(inclusive_files))
