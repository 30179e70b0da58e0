"""The two child processes of bench/latency.py: the open-loop sender and the recording target.

* ``send URL OUT``: the Contacts server. Sends invitation callbacks to `gateway web` at a fixed
  `--rate` for `--seconds`, starting at the wall-clock time `--start-at`, open loop: request i is
  due at start + i / rate whatever happened to the requests before it. At each tick (uvloop's
  timers have a resolution of 1 ms, so at 5,000/s about 5 requests leave per tick) every request
  due is written at once, on an idle keep-alive connection, or on a new one when all are busy (up
  to `--max-connections`; past that it waits for one, and that wait counts in its latency: the
  time it carries is taken at the tick). So a slow answer never holds the next send back: no
  coordinated omission. Each callback carries its
  sequence number in the invitee (`1555` + 9 digits) and the moment it was sent in the invitor
  (`t` + microseconds since the epoch, CLOCK_REALTIME; `--stamp due`: the moment it was due on
  the schedule instead, so that the sender's own lag counts in the latency too). Every answer
  must be a 204. Writes to OUT (JSON): counts, answers by status, its lag behind the schedule
  (the time a request left minus the time it was due), the 204's latency, connections opened,
  and its own CPU time.
* ``target --port P``: the recording target the gateway's worker delivers to, a raw asyncio
  server on uvloop with httptools' parser (cheaper than any framework). Any path but `/__...`
  is a delivery: it reads the JSON body, takes the invitee's sequence number and the invitor's
  send time, and records (sequence, receipt - send) in µs, the receipt taken from the same
  clock when the request is complete; answers 200 "ok". `GET /__stats` answers the number of
  deliveries received so far; `GET /__dump?lo=A&hi=B` answers those with A <= sequence < B as
  JSON `[[seq, µs], ...]` in the order received (a sequence twice: delivered twice).

Only 127.0.0.1 is used (the sender refuses any other host); every loop is bounded by a count or
a time. Run by bench/latency.py; by hand: ``.venv/bin/python bench/latency_load.py send --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import resource
import signal
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"
INVITEE_PREFIX = "1555"  # + the sequence number, 9 digits
SEQ_DIGITS = 9
NETWORK = "mynetwork"
ANSWER_WAIT_S = 30.0  # after the last send, for the answers still on their way
CONNECT_TIMEOUT_S = 5.0
TICK_S = 0.001


def _stop_on_sigterm() -> None:
    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99, p99.9 and max of `values` (0 for none): nearest rank, as bench/support.latency."""
    if not values:
        return {"p50": 0.0, "p99": 0.0, "p99.9": 0.0, "max": 0.0, "n": 0}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, int(n * q))]

    return {"p50": rank(0.50), "p99": rank(0.99), "p99.9": rank(0.999), "max": ordered[-1], "n": n}


# -- the sender ------------------------------------------------------------------------------------


class Connection(asyncio.Protocol):
    """One keep-alive connection to the web, one request at a time (no pipelining)."""

    def __init__(self, sender: Sender) -> None:
        import httptools

        self.sender = sender
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0  # loop time the request in flight was written
        self.busy = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # a malformed answer: count it, drop the connection
            self.sender.failed(self, f"bad answer: {type(exc).__name__}")

    def on_message_complete(self) -> None:
        self.sender.answered(self, self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.sender.lost(self)

    def write(self, request: bytes) -> None:
        assert self.transport is not None
        self.busy = True
        self.sent_at = time.perf_counter()
        self.transport.write(request)


class Sender:
    def __init__(self, args: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> None:
        self.args = args
        self.loop = loop
        parts = urlsplit(args.url)
        if parts.hostname != HOST:
            raise SystemExit(f"refusing to send to {parts.hostname!r}: {HOST} only")
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.host_header = f"{HOST}:{self.port}"
        self.idle: list[Connection] = []
        self.open = 0  # connections open or opening
        self.opened = 0
        self.waiting: collections.deque[bytes] = collections.deque()  # at the connection cap
        self.waited = 0
        self.in_flight = 0
        self.statuses: collections.Counter[str] = collections.Counter()
        self.answer_ms: list[float] = []
        self.lag_ms: list[float] = []
        self.sent = 0
        self.all_answered = asyncio.Event()

    def request(self, seq: int, sent_us: int) -> bytes:
        invitee = f"{INVITEE_PREFIX}{seq:0{SEQ_DIGITS}d}"
        invitor = f"t{sent_us}"
        if self.args.method == "GET":
            return (
                f"GET {self.path}?invitee={invitee}&invitor={invitor}&network_id={NETWORK} HTTP/1.1\r\n"
                f"Host: {self.host_header}\r\n\r\n"
            ).encode()
        body = f'{{"invitee":"{invitee}","invitor":"{invitor}","network_id":"{NETWORK}"}}'
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host_header}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()

    async def connect(self) -> Connection | None:
        """A new connection; the caller has counted it in `open` (so that the requests of one
        tick never open more than --max-connections between them)."""
        self.opened += 1
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, conn = await self.loop.create_connection(lambda: Connection(self), HOST, self.port)
        except (OSError, TimeoutError) as exc:
            self.open -= 1
            self.statuses[f"connect: {type(exc).__name__}"] += 1
            return None
        return conn

    def send(self, request: bytes) -> None:
        self.sent += 1
        self.in_flight += 1
        if self.idle:
            self.idle.pop().write(request)
        elif self.open < self.args.max_connections:
            self.open += 1
            self.loop.create_task(self._send_on_new(request))
        else:
            self.waited += 1
            self.waiting.append(request)

    async def _send_on_new(self, request: bytes) -> None:
        conn = await self.connect()
        if conn is None:
            self._done()
            return
        conn.write(request)

    def answered(self, conn: Connection, status: int) -> None:
        self.answer_ms.append((time.perf_counter() - conn.sent_at) * 1e3)
        self.statuses[str(status)] += 1
        conn.busy = False
        self._done()
        self._reuse(conn)

    def failed(self, conn: Connection, why: str) -> None:
        if conn.busy:
            conn.busy = False
            self.statuses[why] += 1
            self._done()
        if conn.transport is not None:
            conn.transport.close()

    def lost(self, conn: Connection) -> None:
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.busy:
            conn.busy = False
            self.statuses["connection lost"] += 1
            self._done()

    def _reuse(self, conn: Connection) -> None:
        if conn.closed:
            return
        if self.waiting:
            conn.write(self.waiting.popleft())
        else:
            self.idle.append(conn)

    def _done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self.sent >= self.total:
            self.all_answered.set()

    @property
    def total(self) -> int:
        return round(float(self.args.rate) * float(self.args.seconds))

    async def run(self) -> dict[str, Any]:
        args = self.args
        for _ in range(min(args.connections, args.max_connections)):  # warm connections, untimed
            self.open += 1
            conn = await self.connect()
            if conn is not None:
                self.idle.append(conn)
        # The schedule starts at --start-at (wall clock), mapped once onto the loop's clock.
        # (perf_counter, not loop.time(): uvloop's clock counts whole milliseconds.)
        start = time.perf_counter() + (args.start_at - time.time())
        late_start_ms = max(0.0, (time.perf_counter() - start) * 1e3)
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        cpu0 = time.process_time()
        wall0 = time.time()
        interval = 1.0 / args.rate
        total = self.total
        seq0 = args.first
        by_schedule = args.stamp == "due"
        i = 0
        while i < total:  # bounded: i grows by at least one per iteration that sends
            now = time.perf_counter()
            due = min(total, int((now - start) * args.rate) + 1)
            if due > i:
                sent_us = time.time_ns() // 1000  # "the moment the sender sends it", for all due now
                for k in range(i, due):
                    self.lag_ms.append((now - (start + k * interval)) * 1e3)
                    if by_schedule:  # --stamp due: the moment it was due, so the lag counts too
                        sent_us = round((args.start_at + k * interval) * 1e6)
                    self.send(self.request(seq0 + k, sent_us))
                i = due
            if i < total:
                # At least 1 ms: uvloop's timers have that resolution, and a shorter sleep returns
                # at once (a busy loop). Above 1,000/s, the requests due leave a tick at a time.
                await asyncio.sleep(max(TICK_S, start + i * interval - time.perf_counter()))
        wall1 = time.time()
        cpu_send = time.process_time() - cpu0
        if self.in_flight:
            try:
                async with asyncio.timeout(ANSWER_WAIT_S):
                    await self.all_answered.wait()
            except TimeoutError:
                self.statuses["no answer"] += self.in_flight
        return {
            "first": seq0,
            "count": total,
            "sent": self.sent,
            "rate": args.rate,
            "method": args.method,
            "started_at": wall0,
            "ended_at": wall1,
            "late_start_ms": late_start_ms,
            "achieved_rate": (total - 1) / (wall1 - wall0) if total > 1 and wall1 > wall0 else 0.0,
            "statuses": dict(self.statuses),
            "lag_ms": percentiles(self.lag_ms),
            "answer_ms": percentiles(self.answer_ms),
            "connections_opened": self.opened,
            "waited_at_cap": self.waited,
            "cpu_send_s": cpu_send,
            "cpu_total_s": time.process_time(),
        }


def send(args: argparse.Namespace) -> int:
    import uvloop

    _stop_on_sigterm()
    # Room for the connections: a soft limit of 1024 would cap them below --max-connections.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = (
        min(hard, args.max_connections + 64) if hard != resource.RLIM_INFINITY else args.max_connections + 64
    )
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    args.max_connections = min(args.max_connections, max(1, want - 64))

    async def main() -> dict[str, Any]:
        sender = Sender(args, asyncio.get_running_loop())
        return await sender.run()

    result = uvloop.run(main())
    Path(args.out).write_text(json.dumps(result))
    return 0 if result["statuses"] == {"204": result["count"]} else 1


# -- the target ------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.seqs = array("q")
        self.lat_us = array("q")
        self.bad = 0  # deliveries whose body could not be read

    def record(self, body: bytes, received_us: int) -> None:
        try:
            doc = json.loads(body)
            seq = int(doc["invitee"][-SEQ_DIGITS:])
            sent_us = int(doc["invitor"][1:])
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            return
        self.seqs.append(seq)
        self.lat_us.append(received_us - sent_us)

    def stats(self) -> bytes:
        return json.dumps({"received": len(self.seqs), "bad": self.bad}).encode()

    def dump(self, lo: int, hi: int) -> bytes:
        pairs = [[s, lat] for s, lat in zip(self.seqs, self.lat_us, strict=True) if lo <= s < hi]
        return json.dumps(pairs).encode()


OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def _answer(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class TargetProtocol(asyncio.Protocol):
    def __init__(self, recorder: Recorder) -> None:
        import httptools

        self.recorder = recorder
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:  # not HTTP: drop the connection
            if self.transport is not None:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        received_us = time.time_ns() // 1000
        url, body = self.url, b"".join(self.body)
        self.url, self.body = b"", []
        assert self.transport is not None
        if not url.startswith(b"/__"):
            self.recorder.record(body, received_us)
            self.transport.write(OK)
            return
        parts = urlsplit(url.decode())
        if parts.path == "/__stats":
            self.transport.write(_answer("200 OK", self.recorder.stats()))
        elif parts.path == "/__dump":
            query = parse_qs(parts.query)
            lo, hi = int(query["lo"][0]), int(query["hi"][0])
            self.transport.write(_answer("200 OK", self.recorder.dump(lo, hi)))
        else:
            self.transport.write(_answer("404 Not Found", b"{}"))


def target(args: argparse.Namespace) -> int:
    import uvloop

    _stop_on_sigterm()
    recorder = Recorder()
    factory: Callable[[], TargetProtocol] = lambda: TargetProtocol(recorder)  # noqa: E731

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(factory, HOST, args.port, backlog=1024)
        async with server:
            await asyncio.sleep(args.lifetime)  # bounded: stopped by SIGTERM long before

    uvloop.run(serve())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("send", help="open-loop callbacks to gateway web")
    s.add_argument("url", help="the web's callback URL, http://127.0.0.1:PORT/invitation_created")
    s.add_argument("out", help="JSON file for the result")
    s.add_argument("--rate", type=float, required=True, help="callbacks per second")
    s.add_argument("--seconds", type=float, required=True, help="how long")
    s.add_argument("--first", type=int, default=0, help="the first sequence number")
    s.add_argument("--start-at", type=float, default=0.0, help="wall-clock time to start (default now)")
    s.add_argument("--method", choices=("GET", "POST"), default="POST")
    s.add_argument(
        "--stamp",
        choices=("sent", "due"),
        default="sent",
        help="the time a callback carries: when it was sent (default), or when it was due",
    )
    s.add_argument("--connections", type=int, default=32, help="connections opened before the start")
    s.add_argument("--max-connections", type=int, default=1000, help="connections at most")
    t = sub.add_parser("target", help="the recording target")
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--lifetime", type=float, default=6 * 3600, help="seconds before it stops by itself")
    args = parser.parse_args(argv)
    if args.command == "send":
        if not (0 < args.rate <= 100_000 and 0 < args.seconds <= 600):
            parser.error("--rate in (0, 100000], --seconds in (0, 600]")
        if not (1 <= args.connections <= 10_000 and 1 <= args.max_connections <= 10_000):
            parser.error("--connections and --max-connections 1..10000")
        if args.first < 0 or args.first + args.rate * args.seconds >= 10**SEQ_DIGITS:
            parser.error(f"sequence numbers must fit in {SEQ_DIGITS} digits")
        if not args.start_at:
            args.start_at = time.time()
        return send(args)
    if not 0 < args.port < 65536:
        parser.error("--port 1..65535")
    return target(args)


if __name__ == "__main__":
    sys.exit(main())
