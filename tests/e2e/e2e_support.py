"""Helpers shared by the end-to-end tests: raw HTTP over sockets, bounded waits, Redis reads.

Everything here talks to real processes on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from redis import Redis

from gateway.queue import make_queue
from gateway.store.events import Store

QUEUE_NAME = "gateway-deliveries"
PREFIX = "gw"
SETTINGS = "[settings]\nallow_private_targets = true\n"


def two_providers(target_url: str, acme_query: str = "", globex_query: str = "", networks: str = "") -> str:
    """A targets file of two providers' networks, acme and globex, each with a CRM target at
    `target_url` that is not retried (`acme_query`/`globex_query` end its URL), then `networks`
    (their [networks.*] tables, if any)."""
    return f"""{SETTINGS}
[[targets]]
name = "acme-crm"
networks = ["acme"]
url = "{target_url}/acme{acme_query}"
retry = []

[[targets]]
name = "globex-crm"
networks = ["globex"]
url = "{target_url}/globex{globex_query}"
retry = []
{networks}"""


FINAL_STATES = frozenset({"delivered", "failed", "skipped"})

T = TypeVar("T")


# -- raw HTTP/1.1 over a socket -----------------------------------------------------------------


@dataclass
class RawResponse:
    status_line: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def build_request(method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes = b"") -> bytes:
    """An HTTP/1.1 request as bytes; Content-Length is computed when there is a body."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_response(raw: bytes) -> RawResponse:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw!r}"
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0]
    parts = status_line.split(" ", 2)
    assert len(parts) >= 2 and parts[0].startswith("HTTP/"), f"bad status line {status_line!r}"
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    body = rest
    length = next((v for k, v in headers if k.lower() == "content-length"), None)
    if length is not None:
        body = rest[: int(length)]
    elif any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers):
        body = _dechunk(rest)
    return RawResponse(status_line, int(parts[1]), headers, body, raw)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def read_until_closed(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """Read until the server closes the connection (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"server did not close the connection; got {b''.join(chunks)!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def raw_exchange(base_url: str, data: bytes, timeout: float = 30.0) -> RawResponse:
    """Send `data` as is, read the answer until the server closes (requests say Connection: close)."""
    parts = urlsplit(base_url)
    assert parts.hostname == "127.0.0.1"
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout) as sock:
        sock.sendall(data)
        return parse_response(read_until_closed(sock, timeout))


# -- ordinary HTTP --------------------------------------------------------------------------------


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_call(
    base_url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> HttpResponse:
    parts = urlsplit(base_url)
    assert parts.hostname == "127.0.0.1"
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


# -- the gateway command -----------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def run_gateway(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m gateway ARGS...` in the project folder, output captured, bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- waiting --------------------------------------------------------------------------------------


def wait_until(
    check: Callable[[], T | None],
    what: str,
    timeout: float = 20.0,
    interval: float = 0.05,
    explain: Callable[[], str] | None = None,
) -> T:
    """Call `check` until it returns something truthy; fail with `what` (and `explain()`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            more = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{more}")
        time.sleep(interval)


# -- Redis ----------------------------------------------------------------------------------------


def store_for(redis: Redis) -> Store:
    return Store(redis, prefix=PREFIX)


def the_event_id(store: Store, timeout: float = 10.0) -> str:
    """The id of the one event stored so far."""
    ids = wait_until(lambda: store.recent_events(10), "an event in Redis", timeout)
    assert len(ids) == 1, f"expected exactly one event, found {ids}"
    return ids[0]


def wait_final(
    store: Store, event_id: str, names: Iterable[str], timeout: float = 20.0
) -> dict[str, dict[str, Any]]:
    """Wait until every named delivery of the event is in a final state; return all deliveries."""
    wanted = set(names)

    def done() -> dict[str, dict[str, Any]] | None:
        deliveries = store.get_deliveries(event_id)
        if wanted <= set(deliveries) and all(deliveries[n]["status"] in FINAL_STATES for n in wanted):
            return deliveries
        return None

    return wait_until(done, f"final states of {sorted(wanted)} for {event_id}", timeout)


def attempts_of(store: Store, event_id: str, target: str) -> list[dict[str, Any]]:
    return [a for a in store.get_attempts(event_id) if a["target"] == target]


def queued_job_count(redis: Redis) -> int:
    return int(make_queue(redis, QUEUE_NAME).count)


def waiting_count(redis: Redis) -> int:
    """Deliveries waiting (due, scheduled or leased to a worker)."""
    return int(redis.zcard(f"{PREFIX}:due"))


def job_keys(redis: Redis) -> list[bytes]:
    return list(redis.scan_iter(match="rq:job:*"))


def dead_letter_ids(redis: Redis) -> list[str]:
    """Deliveries that failed for good (or expired), oldest first."""
    return [m.decode() for m in redis.zrange(f"{PREFIX}:dead", 0, -1)]


# -- configuration ----------------------------------------------------------------------------------


def toml_str(value: str) -> str:
    """A TOML basic string (JSON string escaping is valid TOML for these values)."""
    return json.dumps(value, ensure_ascii=False)
