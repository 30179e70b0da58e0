"""Real parts for the tests: a private Redis server, HTTP targets on loopback, and the gateway's
own `web` and `worker` processes. Every process a test starts is stopped by its PID."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from redis import Redis

from gateway.embedded import EmbeddedRedis, free_port
from tests.serving import serving

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.stop()


_db_numbers = itertools.cycle(range(1, 64))


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """A URL to an empty database of the session's server, one database per test."""
    url = f"redis://127.0.0.1:{redis_server.port}/{next(_db_numbers)}"
    client = Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


# -- HTTP targets -----------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass
class TargetServer:
    """A real HTTP server on 127.0.0.1 that records requests and answers from a script per path.

    `script(path, [503, 503, 200])` answers the first two requests to `path` with 503 and every
    later one with 200 (the last entry repeats); a path with no script answers 200.
    """

    port: int = 0
    received: list[Received] = field(default_factory=list)
    scripts: dict[str, list[int | tuple[int, dict[str, str], bytes]]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, path: str, answers: list[int | tuple[int, dict[str, str], bytes]]) -> None:
        self.scripts[path] = list(answers)

    def answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        answers = self.scripts.get(path)
        if not answers:
            return 200, {}, b"ok"
        item = answers.pop(0) if len(answers) > 1 else answers[0]
        return item if isinstance(item, tuple) else (item, {}, b"scripted")

    def record(self, r: Received) -> None:
        with self.cond:
            self.received.append(r)
            self.cond.notify_all()

    def requests_to(self, path: str) -> list[Received]:
        with self.cond:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until `path` got at least `count` requests; return them."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [r for r in self.received if r.path == path]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{path} got {len(got)} requests, expected {count}: {self.received}")
                self.cond.wait(left)


@pytest.fixture
def target_server() -> Iterator[TargetServer]:
    state = TargetServer()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            state.record(
                Received(
                    self.command,
                    parts.path,
                    parse_qsl(parts.query, keep_blank_values=True),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
            )
            status, headers, payload = state.answer(parts.path)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler) as port:
        state.port = port
        yield state


# -- gateway processes --------------------------------------------------------------------------


class Process:
    """A child process with its output in a file, stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@dataclass
class Gateway:
    """Starts `gateway web` and `gateway worker` processes against one Redis database."""

    redis_url: str
    tmp_path: Path
    processes: list[Process] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    base_url: str = ""

    def environ(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "REDIS_"))}
        env.update({"REDIS_URL": self.redis_url, "GATEWAY_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
        # Spools and other data of the test's processes stay in the test's folder. Most tests
        # send the same callback more than once on purpose: the dedupe tests turn it back on.
        env.update({"GATEWAY_DATA_DIR": str(self.tmp_path / "data"), "GATEWAY_DEDUPE_SECONDS": "0"})
        # Likewise, ingest tokens are tested on their own; elsewhere the ingest is open.
        env["GATEWAY_OPEN_INGEST"] = "true"
        env.update(self.env)
        env.update(extra)
        return env

    def write_config(self, text: str) -> Path:
        path = self.tmp_path / "targets.toml"
        path.write_text(text)
        self.env["GATEWAY_CONFIG"] = str(path)
        return path

    def start_web(self, port: int | None = None, **extra: str) -> str:
        port = port or free_port()
        proc = Process(
            [sys.executable, "-m", "gateway", "web", "--host", "127.0.0.1", "--port", str(port)],
            self.environ(**extra),
            self.tmp_path / f"web-{port}.log",
        )
        self.processes.append(proc)
        self.base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            if proc.proc.poll() is not None:
                raise AssertionError(f"gateway web exited:\n{proc.output()}")
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return self.base_url
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway web did not start:\n{proc.output()}")
            time.sleep(0.05)

    def start_worker(self, **extra: str) -> Process:
        n = len(self.processes)
        proc = Process(
            [sys.executable, "-m", "gateway", "worker", "--name", f"test-worker-{os.getpid()}-{n}"],
            self.environ(**extra),
            self.tmp_path / f"worker-{n}.log",
        )
        self.processes.append(proc)
        return proc

    def start_process(self, args: list[str], name: str, env: dict[str, str] | None = None) -> Process:
        """Start any command (stopped at teardown like the others); `env` defaults to `environ()`."""
        proc = Process(args, self.environ() if env is None else env, self.tmp_path / f"{name}.log")
        self.processes.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.output()}" for p in self.processes)

    def stop(self) -> None:
        for p in self.processes:
            p.stop()


@pytest.fixture
def gateway(redis_url: str, tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(redis_url, tmp_path)
    try:
        yield gw
    finally:
        gw.stop()
