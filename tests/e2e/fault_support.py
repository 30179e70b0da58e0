"""Helpers for the fault suite: a misbehaving HTTP target in its own process, a callback sender,
counts measured at the target, and the per-scenario JSON summary.

The target is a small asyncio HTTP/1.1 server (standard library only; run this file as a script)
so that it is never the bottleneck of the gateway processes it serves, can hold thousands of
requests open at once without a thread each, and can do what a thread-per-request server does
badly: hang until the client gives up, or reset the connection (SO_LINGER 0). It records every
request it reads (path, Idempotency-Key, arrival and answer times, the status it answered) and
answers from a rule per path, which the test can change while it runs:

    delay               seconds to wait before answering
    status              the usual answer (200)
    fail_first          the first N requests to this path fail (counted across keys)
    fail_first_per_key  the first N requests of each Idempotency-Key fail
    fail_rate           each request fails with this probability
    fail_status         how a failure answers (503), with `fail_headers`
    fail_action         "status" (answer fail_status), "hang" (answer nothing until the client
                        goes away) or "reset" (close with a TCP RST)

A request "answered 2xx" is one the target decided to answer with a 2xx status, whether or not
the client was still there to read it: a real target acts on the request either way, so a second
2xx for the same key is a duplicate as the target sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from e2e_support import wait_until

PROJECT_ROOT = Path(__file__).resolve().parents[2]
OUTPUT_DIR = PROJECT_ROOT / "test-output" / "faults"
HANG_MAX = 30.0  # a hanging request is dropped after this long even if the client stays

_REASONS = {200: "OK", 400: "Bad Request", 410: "Gone", 429: "Too Many Requests", 500: "Server Error"}


# -- the server (standard library only: this part runs as its own process) ------------------------


class Rules:
    def __init__(self, rules: dict[str, dict[str, Any]], seed: int) -> None:
        self.rules = rules
        self.count: Counter[str] = Counter()
        self.per_key: Counter[tuple[str, str]] = Counter()
        self.rng = random.Random(seed)

    def decide(self, path: str, key: str) -> tuple[str, int, dict[str, str], float]:
        """(action, status, headers, delay) for this request; counts it."""
        rule = self.rules.get(path, {})
        self.count[path] += 1
        self.per_key[(path, key)] += 1
        failing = (
            self.count[path] <= rule.get("fail_first", 0)
            or self.per_key[(path, key)] <= rule.get("fail_first_per_key", 0)
            or (rule.get("fail_rate", 0) > 0 and self.rng.random() < rule["fail_rate"])
        )
        delay = float(rule.get("delay", 0))
        if failing:
            action = rule.get("fail_action", "status")
            return action, int(rule.get("fail_status", 503)), dict(rule.get("fail_headers", {})), delay
        return "status", int(rule.get("status", 200)), {}, delay


class FaultServer:
    def __init__(self, rules: dict[str, dict[str, Any]], seed: int = 1) -> None:
        self.rules = Rules(rules, seed)
        self.records: list[dict[str, Any]] = []
        self.holding = 0
        self.last_answer = 0.0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        line = await reader.readline()
        if not line.strip():
            return False
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        body = await reader.readexactly(length) if length else b""
        path = urlsplit(target).path
        if path.startswith("/_"):
            status, payload = self.control(method, path, body)
            self._write(writer, status, {"Content-Type": "application/json"}, payload)
            await writer.drain()
            return True
        key = headers.get("idempotency-key", "")
        record: dict[str, Any] = {"path": path, "key": key, "arrived": time.time(), "answered": None}
        self.records.append(record)
        action, status, extra, delay = self.rules.decide(path, key)
        self.holding += 1
        try:
            if delay:
                await asyncio.sleep(delay)
            if action == "hang":
                record["status"] = None
                record["action"] = "hang"
                with contextlib.suppress(TimeoutError):
                    # Nothing more comes on this connection: returns when the client closes it.
                    await asyncio.wait_for(reader.read(), HANG_MAX)
                return False
            if action == "reset":
                record["status"] = None
                record["action"] = "reset"
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return False
            record["status"] = status
            record["answered"] = self.last_answer = time.time()
        finally:
            self.holding -= 1
        self._write(writer, status, extra, b"ok" if status < 300 else b"fault")
        await writer.drain()
        return headers.get("connection", "").lower() != "close"

    @staticmethod
    def _write(writer: asyncio.StreamWriter, status: int, headers: dict[str, str], payload: bytes) -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Length: {len(payload)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)

    def control(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if path == "/_records":
            return 200, json.dumps(self.records).encode()
        if path == "/_stats":
            ok: dict[str, set[str]] = {}
            requests: Counter[str] = Counter()
            for r in self.records:
                requests[r["path"]] += 1
                if r.get("status") is not None and 200 <= r["status"] < 300:
                    ok.setdefault(r["path"], set()).add(r["key"])
            stats = {
                "requests": dict(requests),
                "ok_keys": {p: len(keys) for p, keys in ok.items()},
                "holding": self.holding,
                "last_answer": self.last_answer,
            }
            return 200, json.dumps(stats).encode()
        if path == "/_rule" and method == "POST":
            change = json.loads(body)
            self.rules.rules[change["path"]] = change["rule"]
            return 200, b"{}"
        return 404, b"{}"


async def _serve(port_file: str, rules: dict[str, dict[str, Any]], seed: int) -> None:
    server = FaultServer(rules, seed)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=1024)
    port = srv.sockets[0].getsockname()[1]
    tmp = port_file + ".tmp"
    Path(tmp).write_text(str(port))
    os.replace(tmp, port_file)
    # SIGTERM: gone at once. The records live in memory only, and cancelling the handlers
    # of open connections makes asyncio log noise about cancelled tasks.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, os._exit, 0)
    async with srv:
        await srv.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="a misbehaving HTTP target for the fault suite")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--rules", default="{}", help="JSON: path -> rule")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(_serve(args.port_file, json.loads(args.rules), args.seed))


# -- the test side ------------------------------------------------------------------------------


def _json_call(base: str, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    parts = urlsplit(base)
    assert parts.hostname == "127.0.0.1"
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        assert resp.status == 200, (resp.status, payload)
        return json.loads(payload)
    finally:
        conn.close()


@dataclass
class FaultTarget:
    """The test's handle on a FaultServer process."""

    url: str
    process: Any  # conftest.Process

    def rule(self, path: str, rule: dict[str, Any]) -> None:
        _json_call(self.url, "POST", "/_rule", {"path": path, "rule": rule})

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = _json_call(self.url, "GET", "/_stats")
        return result

    def records(self, path: str | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = _json_call(self.url, "GET", "/_records")
        return [r for r in rows if path is None or r["path"] == path]

    def ok_keys(self, path: str) -> int:
        return int(self.stats()["ok_keys"].get(path, 0))


def start_fault_target(
    gateway: Any, rules: dict[str, dict[str, Any]], name: str = "target", seed: int = 1
) -> FaultTarget:
    """Start the target process (stopped by PID at teardown, like the gateway's own)."""
    port_file = gateway.tmp_path / f"{name}.port"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "REDIS_"))}
    proc = gateway.start_process(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--port-file",
            str(port_file),
            "--rules",
            json.dumps(rules),
            "--seed",
            str(seed),
        ],
        name,
        env,
    )
    deadline = time.monotonic() + 20
    while not port_file.exists():
        if proc.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the fault target did not start:\n{proc.output()}")
        time.sleep(0.02)
    return FaultTarget(f"http://127.0.0.1:{port_file.read_text()}", proc)


def duplicates(records: Iterable[dict[str, Any]]) -> tuple[int, set[str], list[str]]:
    """(duplicates, keys answered 2xx, keys answered 2xx more than once), measured at the target."""
    ok: Counter[str] = Counter()
    for r in records:
        if r.get("status") is not None and 200 <= r["status"] < 300:
            ok[r["key"]] += 1
    dups = sorted(k for k, n in ok.items() if n > 1)
    return sum(n - 1 for n in ok.values()), set(ok), dups


# -- callbacks ------------------------------------------------------------------------------------


@dataclass
class Sent:
    sent: int = 0
    accepted: int = 0
    refused: list[tuple[int, bytes]] = field(default_factory=list)


def callback_path(network: str, n: int, tag: str) -> str:
    """A callback unique to (tag, n): the gateway does not take it for a repeat of another."""
    query = urlencode({"invitee": f"1555{n:07d}", "invitor": f"{tag}-{n}", "network_id": network})
    return f"/invitation_created?{query}"


def send_callbacks(
    base: str, network: str, count: int, tag: str, threads: int = 8, timeout: float = 30.0
) -> Sent:
    """Send `count` distinct callbacks over `threads` keep-alive connections; counts the answers."""
    parts = urlsplit(base)
    host = parts.hostname
    assert host == "127.0.0.1"
    result = Sent()
    lock = threading.Lock()

    def worker(numbers: range) -> None:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
        try:
            for n in numbers:
                conn.request("GET", callback_path(network, n, tag))
                resp = conn.getresponse()
                body = resp.read()
                with lock:
                    result.sent += 1
                    if 200 <= resp.status < 300:
                        result.accepted += 1
                    else:
                        result.refused.append((resp.status, body))
        finally:
            conn.close()

    threads = max(1, min(threads, count))
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(worker, range(i, count, threads)) for i in range(threads)]
        for f in futures:
            f.result()
    return result


# -- waiting and Redis reads ------------------------------------------------------------------------


def poll(
    check: Callable[[], Any],
    what: str,
    timeout: float,
    interval: float = 0.1,
    explain: Callable[[], str] = str,
) -> Any:
    """e2e_support.wait_until with the fault tests' argument order."""
    return wait_until(check, what, timeout, interval, explain)


def expected_deliveries(redis: Any, prefix: str = "gw") -> dict[str, dict[str, Any]]:
    """Every delivery of every stored event: delivery id -> its state."""
    ids = [m.decode() for m in redis.zrange(f"{prefix}:events", 0, -1)]
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        with redis.pipeline(transaction=False) as pipe:
            for eid in chunk:
                pipe.hgetall(f"{prefix}:event:{eid}:deliveries")
            for eid, states in zip(chunk, pipe.execute(), strict=True):
                for target, raw in states.items():
                    out[f"{eid}-{target.decode()}"] = json.loads(raw)
    return out


def statuses(states: dict[str, dict[str, Any]]) -> Counter[str]:
    return Counter(s["status"] for s in states.values())


def write_summary(name: str, **fields: Any) -> dict[str, Any]:
    """test-output/faults/<name>.json under the project root."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    summary = {"name": name, **fields}
    (OUTPUT_DIR / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
