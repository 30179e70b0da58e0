"""Instructions per callback: `gateway web` against bare Starlette, counted by callgrind.

bench/ingest.py measures the ingest's rate against bare Starlette's with wrk; on a shared VM
both rates move by 30% or more from one run to the next. Instructions do not: valgrind's
callgrind counts every instruction a process executes in user space (the kernel's part of a
syscall is not counted), the same on a busy machine as on a quiet one. When the server's core
is the limit (it is at saturation: bench/README.md), the ratio of instructions per request
predicts the ratio of rates. This benchmark counts them for the two sides of that ratio:

* bare: bench/bare_app.py (uvicorn, uvloop, httptools, a handler that reads the body);
* gateway: `python -m gateway web` as bench/ingest.py starts it (one process, INFO logged to a
  file, GATEWAY_DURABILITY=memory, GATEWAY_OPEN_INGEST, one JSON POST target), a new invitation
  on every request; with `--dup`, also a replay flood (every request the same callback, stored
  once before: each is a duplicate).

Each server runs under `valgrind --tool=callgrind` for all its phases. A phase (method, new or
duplicates) is a warm-up of `--warmup` requests, then two counted runs of `--small` and `--big`
requests, each between `callgrind_control --zero` and `--dump`: the figure is the difference of
the two counts divided by the difference in requests, so the fixed cost of a zero and a dump
cancels out. The client is this process (asyncio, `--connections` keep-alive connections, each
sending its next request when it has its answer, as wrk does, with wrk's request lines), not
under valgrind. Under callgrind the server runs about 50 times slower than usual, so the client
and Redis answer at once from its point of view: batches fill as at saturation.

What the server does while idle (uvicorn's clock; the gateway's 1-second tasks: metrics flush,
configuration look, spool look) is counted too, per second of wall time (`idle`, 3 s after the
phases), and taken out of the per-request figure: under valgrind a request takes about 50 times
as long, so the idle work of that time would count about 50 times too much (for the gateway,
about 11k instructions per request at 90 requests/s under valgrind; at its real rate, under 100).
The table shows both (`raw`: nothing taken out).

`--base DIR`: a third side, `base`, the gateway as checked out in DIR (`git archive COMMIT | tar
-x -C DIR`), run by the same Python: a change's before and after counted in the same run, each
beside the same bare figure.

Checks: every answer 204; for the gateway, one stored event per new request and none for a
duplicate, the duplicates counter moved by the duplicates sent.

Every process started is stopped by PID; only 127.0.0.1 is contacted. Needs valgrind (Debian
package `valgrind`, which has callgrind_control).

Run: ``.venv/bin/python bench/ingest_instructions.py [--small 300] [--big 1500] [--dup] [--base DIR]``
(about 5 minutes on 2 cores, 8 with --base; `--quick`: 100 and 300, a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from support import BENCH_DIR, HOST, Child, clean_env, environment, free_port, machine, write_targets_config

from gateway.embedded import EmbeddedRedis

PATH = "/invitation_created"
PREFIX = "gw"  # the gateway's default GATEWAY_PREFIX
INVITOR, NETWORK = "johnsnow", "mynetwork"  # as bench/ingest.lua sends them
START_TIMEOUT_S = 600.0  # imports under valgrind are slow
CONTROL_TIMEOUT_S = 120.0
IDLE_S = 3.0


@dataclass
class Phase:
    side: str
    method: str
    dup: bool
    counts: dict[int, int] = field(default_factory=dict)  # requests -> instructions
    walls: dict[int, float] = field(default_factory=dict)  # requests -> seconds the run took
    calls: dict[int, int] = field(default_factory=dict)  # requests -> ingest script calls (gateway)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.side} {self.method}" + (" duplicates" if self.dup else "")

    def per_request(self, idle: float = 0.0) -> float:
        """Instructions per request; `idle`: per second of wall time, taken out."""
        (n1, c1), (n2, c2) = sorted(self.counts.items())
        return (c2 - idle * self.walls[n2] - (c1 - idle * self.walls[n1])) / (n2 - n1)

    def per_call(self) -> str:
        """Callbacks per ingest script call in the big run (the batch size), or ""."""
        n = max(self.counts)
        return f"{n / self.calls[n]:.1f}" if self.calls.get(n) else ""

    def per_second(self) -> float:
        """Requests per second of wall time under valgrind (the big run)."""
        n = max(self.walls)
        return n / self.walls[n]


def request_bytes(port: int, method: str, invitee: int) -> bytes:
    """What wrk.format sends for bench/ingest.lua's request (Host first, Content-Length added)."""
    number = f"+447{invitee:09d}"  # as bench/ingest.lua's: international, so parsed into E.164
    host = f"Host: {HOST}:{port}\r\n"
    if method == "GET":
        query = f"invitee=%2B{number[1:]}&invitor={INVITOR}&network_id={NETWORK}"
        return f"GET {PATH}?{query} HTTP/1.1\r\n{host}\r\n".encode()
    body = f'{{"invitee":"{number}","invitor":"{INVITOR}","network_id":"{NETWORK}"}}'
    return (
        f"POST {PATH} HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


async def _connection(port: int, requests: list[bytes], statuses: Counter[int]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while requests:
            writer.write(requests.pop())
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            statuses[int(lines[0].split()[1])] += 1
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and int(value):
                    await reader.readexactly(int(value))
    finally:
        writer.close()


def send(port: int, requests: list[bytes], connections: int) -> Counter[int]:
    """Send every request over `connections` keep-alive connections; answers by status."""
    statuses: Counter[int] = Counter()
    todo = list(reversed(requests))

    async def main() -> None:
        await asyncio.gather(*(_connection(port, todo, statuses) for _ in range(connections)))

    asyncio.run(main())
    return statuses


class Counted:
    """A server under callgrind: its dumps read as they come."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.out = tmp / f"callgrind.{name}"
        self.child = Child(name, tmp / f"{name}.log")
        self.dumps = 0

    def start(self, args: Sequence[str], env: dict[str, str], ready_path: str) -> int:
        port = free_port()
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={self.out}",
            sys.executable,
            *args,
            "--host",
            HOST,
            "--port",
            str(port),
        ]
        self.child.spawn(cmd, env)
        url = f"http://{HOST}:{port}{ready_path}"

        def ready() -> bool:
            with urllib.request.urlopen(url, timeout=30) as answer:  # loopback
                return bool(answer.status < 500)

        if not self.child.wait_ready(ready, START_TIMEOUT_S):
            raise RuntimeError(f"{self.name} did not start:\n{self.child.log_tail()}")
        return port

    def control(self, option: str) -> None:
        pid = str(self.child.pid)
        done = subprocess.run(
            ["callgrind_control", option, pid], capture_output=True, text=True, timeout=CONTROL_TIMEOUT_S
        )
        if done.returncode != 0 or "OK" not in done.stdout:
            raise RuntimeError(f"callgrind_control {option} {pid}: {done.stdout}{done.stderr}")

    def zero(self) -> None:
        self.control("--zero")

    def dump(self) -> int:
        """Dump; the instructions since the last zero."""
        self.control("--dump")
        self.dumps += 1
        path = Path(f"{self.out}.{self.dumps}")
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        while time.monotonic() < deadline:
            if path.exists():
                match = re.search(r"^(?:summary|totals): (\d+)", path.read_text(errors="replace"), re.M)
                if match:
                    count = int(match.group(1))
                    path.unlink()  # a dump is megabytes: only its total is kept
                    return count
            time.sleep(0.1)
        raise RuntimeError(f"no dump {path}")

    def stop(self) -> None:
        self.child.stop()


def gateway_state(redis: Redis) -> tuple[int, int]:
    """(events stored, duplicates counted): key names as in gateway/store/keys.py."""
    pipe = redis.pipeline(transaction=False)
    pipe.zcard(f"{PREFIX}:events")
    pipe.hget(f"{PREFIX}:counters", "duplicates")
    events, dups = pipe.execute()
    return int(events), int(dups or 0)


def script_calls(redis: Redis) -> int:
    """EVALSHA and EVAL calls so far (the ingest script's, and the few other scripts')."""
    stats = redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


def run_phase(
    server: Counted, port: int, phase: Phase, args: argparse.Namespace, serial: list[int], redis: Redis | None
) -> None:
    def batch(n: int) -> list[bytes]:
        if phase.dup:
            return [request_bytes(port, phase.method, serial[0])] * n
        out = [request_bytes(port, phase.method, serial[0] + i) for i in range(1, n + 1)]
        serial[0] += n
        return out

    if phase.dup:
        serial[0] += 1
        if send(port, [request_bytes(port, phase.method, serial[0])], 1) != {204: 1}:
            phase.problems.append("the repeated callback was not stored")
    statuses = send(port, batch(args.warmup), args.connections)
    if statuses != {204: args.warmup}:
        phase.problems.append(f"warm-up answers {dict(statuses)}")
    for n in (args.small, args.big):
        requests = batch(n)
        before = gateway_state(redis) if redis is not None else None
        calls = script_calls(redis) if redis is not None else 0
        server.zero()
        started = time.monotonic()
        statuses = send(port, requests, args.connections)
        phase.walls[n] = time.monotonic() - started
        phase.counts[n] = server.dump()
        if redis is not None:
            phase.calls[n] = script_calls(redis) - calls
        if statuses != {204: n}:
            phase.problems.append(f"{n} requests: answers {dict(statuses)}")
        if redis is not None and before is not None:
            time.sleep(0.2)  # (the counter is in Redis by the answer: no wait needed; a margin)
            events, dups = (a - b for a, b in zip(gateway_state(redis), before, strict=True))
            want = (0, n) if phase.dup else (n, 0)
            if (events, dups) != want:
                phase.problems.append(f"{n} requests: {events} events stored, {dups} duplicates counted")
    print(
        f"{phase.name}: {phase.per_request():,.0f} instructions per request "
        f"({phase.per_second():.0f} req/s under valgrind)",
        file=sys.stderr,
        flush=True,
    )


def idle(server: Counted) -> float:
    server.zero()
    time.sleep(IDLE_S)
    return server.dump() / IDLE_S


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--small", type=int, default=300, help="requests of the smaller counted run")
    parser.add_argument("--big", type=int, default=1500, help="requests of the bigger counted run")
    parser.add_argument("--warmup", type=int, default=300, help="requests before the counted runs")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--methods", default="GET,POST", help="GET, POST or both (default)")
    parser.add_argument("--dup", action="store_true", help="the gateway's duplicates too")
    parser.add_argument("--sides", default="bare,gateway", help="bare, gateway or both (default)")
    parser.add_argument("--base", type=Path, help="also the gateway as checked out in this folder")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 and 300, 100 warm-up")
    parser.add_argument("--log-level", default="INFO", help="the gateway's GATEWAY_LOG_LEVEL (INFO)")
    parser.add_argument("--out", type=Path, help="markdown (bench/results/ingest-instructions-DATE.md)")
    args = parser.parse_args(argv)
    if args.quick:
        args.small, args.big, args.warmup = 100, 300, 100
    if not 10 <= args.small < args.big <= 100_000:
        parser.error("need 10 <= --small < --big <= 100000")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("valgrind not found: apt-get install valgrind")
    methods = [m.strip().upper() for m in args.methods.split(",")]
    sides = [s.strip() for s in args.sides.split(",")]
    if args.base is not None:
        if not (args.base / "gateway" / "__init__.py").exists():
            parser.error(f"--base {args.base}: no gateway package there")
        sides.append("base")
    mach = machine()
    phases: list[Phase] = []
    idles: dict[str, float] = {}
    serial = [0]
    with tempfile.TemporaryDirectory(prefix="bench-ingest-instructions-") as tmp_name:
        tmp = Path(tmp_name)
        redis_server = EmbeddedRedis().start()
        try:
            for side in sides:
                server = Counted(side, tmp)
                redis = None
                try:
                    if side == "bare":
                        port = server.start([str(BENCH_DIR / "bare_app.py")], clean_env({}), PATH)
                    else:
                        url = f"redis://{HOST}:{redis_server.port}/0"
                        config = write_targets_config(tmp / "targets.toml", 1, f"http://{HOST}:9")
                        env = clean_env(
                            {
                                "REDIS_URL": url,
                                "GATEWAY_CONFIG": str(config),
                                "GATEWAY_LOG_LEVEL": args.log_level,
                                "GATEWAY_OPEN_INGEST": "true",
                                "GATEWAY_DATA_DIR": str(tmp / "data"),
                                "GATEWAY_DURABILITY": "memory",
                            }
                        )
                        # The base's package first on the path (before this checkout's, which -m
                        # and the editable install would put there).
                        src = str(args.base.resolve()) if side == "base" else str(BENCH_DIR.parent)
                        boot = f"import sys, runpy; sys.path.insert(0, {src!r}); "
                        boot += "runpy.run_module('gateway', run_name='__main__')"
                        port = server.start(["-c", boot, "web"], env, "/healthz")
                        redis = Redis.from_url(url)
                    for method in methods:
                        for dup in (False, True) if side != "bare" and args.dup else (False,):
                            phase = Phase(side, method, dup)
                            phases.append(phase)
                            run_phase(server, port, phase, args, serial, redis)
                    idles[side] = idle(server)
                finally:
                    server.stop()
                    if redis is not None:
                        redis.close()
        finally:
            redis_server.stop()
    by = {(p.side, p.method, p.dup): p for p in phases}
    lines = [
        f"# Ingest instructions, {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        "",
        f"- Machine: {mach['nproc']} cores, {mach['cpu_model']}, Python {mach['python']}",
        f"- Gateway {environment({})['gateway_commit']}; counted runs of {args.small} and {args.big} "
        f"requests after {args.warmup}, {args.connections} connections; gateway at {args.log_level}",
        "",
        "| server | method | callbacks | instructions per request | x bare | raw | req/s under valgrind "
        "| per script call |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]

    def per_request(p: Phase) -> float:
        return p.per_request(idles.get(p.side, 0.0))

    for p in phases:
        bare = by.get(("bare", p.method, False))
        ratio = f"{per_request(p) / per_request(bare):.2f}" if bare is not None else ""
        kind = "duplicates" if p.dup else "new"
        lines.append(
            f"| {p.side} | {p.method} | {kind} | {per_request(p):,.0f} | {ratio} | {p.per_request():,.0f} "
            f"| {p.per_second():.0f} | {p.per_call()} |"
        )
    lines.append("")
    for side, per_s in idles.items():
        lines.append(f"- {side} idle: {per_s:,.0f} instructions per second of wall time (taken out)")
    for side in ("gateway", "base"):
        for method in methods:
            bare, gw = by.get(("bare", method, False)), by.get((side, method, False))
            if bare is not None and gw is not None:
                ratio = per_request(bare) / per_request(gw)
                lines.append(
                    f"- {side} {method}: predicted rate x bare (instructions, the server's core the limit): "
                    f"**{ratio:.2f}**"
                )
            dup = by.get((side, method, True))
            if dup is not None and gw is not None:
                share = per_request(dup) / per_request(gw)
                lines.append(
                    f"- {side} {method}: duplicates / new, instructions: {share:.2f} "
                    f"(predicted rate dup / new {1 / share:.2f})"
                )
    problems = [f"- {p.name}: {problem}" for p in phases for problem in p.problems]
    if problems:
        lines += ["", "CHECKS FAILED:", *problems]
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or BENCH_DIR / "results" / f"ingest-instructions-{dt.date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
