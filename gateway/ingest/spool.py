"""The web process's spool: where accepted invitations wait while Redis cannot take them.

An append-only file of JSON lines, one per process (`web-<pid>.jsonl` in the spool folder),
fsync'd before the 204 (a whole group of callbacks shares one fsync). Each process holds an
exclusive `flock` on its own file, so a drain (in the background, at startup, or `gateway spool
drain`) takes only files nobody writes: its own after swapping to a fresh one, and those of
processes that died. A drain stores each line through the same accept step as a live callback;
the event id was fixed before spooling, so a drain repeated after a crash stores nothing twice.

The spool is a bridge over a Redis outage, never a second store: on a platform whose disk
vanishes on restart (Heroku dynos) it bridges minutes, not days.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("gateway.spool")

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class SpoolFull(Exception):
    """The spool is at its size bound: the invitation cannot be kept."""


@dataclass(frozen=True, slots=True)
class SpoolFile:
    path: Path
    bytes: int
    lines: int
    oldest_ms: int | None


class Spool:
    """This process' spool file; `append` is thread-safe and durable when it returns."""

    def __init__(
        self, directory: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, name: str | None = None
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._name = name or f"web-{os.getpid()}"
        self._lock = threading.Lock()
        self._fh: Any = None
        self._size = 0

    @property
    def path(self) -> Path:
        return self.directory / f"{self._name}.jsonl"

    def _open(self) -> Any:
        if self._fh is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "ab")  # noqa: SIM115 - kept open for the process' life
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fh = fh
            self._size = fh.tell()
        return self._fh

    def size(self) -> int:
        return self._size

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Write and fsync the records; SpoolFull (nothing written) past the size bound."""
        data = b"".join(
            json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for r in records
        )
        with self._lock:
            fh = self._open()
            if self._size + len(data) > self.max_bytes:
                raise SpoolFull(f"spool {self.path} is at its bound of {self.max_bytes} bytes")
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            self._size += len(data)

    @contextmanager
    def taken(self) -> Iterator[Path | None]:
        """Swap this process' file for a fresh one and yield the old one (None if empty).

        The old file is renamed so that appends go on meanwhile; whoever drains it deletes it.
        """
        with self._lock:
            if self._fh is None or self._size == 0:
                yield None
                return
            old = self.path.with_name(f"{self._name}.{time.time_ns()}.draining.jsonl")
            os.replace(self.path, old)
            fh, self._fh, self._size = self._fh, None, 0
        try:
            yield old
        finally:
            fh.close()  # releases the lock on the renamed file: another drain may take it

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The records of a spool file; a torn last line (a crash mid-write) is skipped."""
    records = []
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.endswith(b"\n"):
                log.error(
                    "spool %s: line %d is incomplete (a crash mid-write?): %r", path, number, line[:2048]
                )
                break
            try:
                records.append(json.loads(line))
            except ValueError:
                log.error("spool %s: line %d is not JSON, skipped: %r", path, number, line[:2048])
    return records


@contextmanager
def claim_orphan(path: Path) -> Iterator[bool]:
    """Lock a spool file no live process writes; yields False if someone holds it."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        fh.close()


def spool_files(directory: str | Path) -> list[SpoolFile]:
    """Every spool file in the folder, with its size, line count and oldest invitation's time."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.jsonl")):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        lines = 0
        oldest: int | None = None
        try:
            with path.open("rb") as fh:
                for line in fh:
                    lines += 1
                    if oldest is None:
                        try:
                            oldest = int(json.loads(line)["event"]["received_at_ms"])
                        except (ValueError, KeyError, TypeError):
                            oldest = None
        except FileNotFoundError:
            continue
        out.append(SpoolFile(path, size, lines, oldest))
    return out


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
