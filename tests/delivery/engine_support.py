"""Real parts for the engine tests: an aiohttp target on 127.0.0.1 in the test's own event loop
(it can hold requests open and counts how many are open at once), a tiny forward proxy, and a
harness that writes events into the real Redis and builds real `Engine`s. Nothing is mocked."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from aiohttp import web
from redis import Redis

from gateway.config.load import config_from_dict
from gateway.config.targets import Config
from gateway.delivery.engine import Engine, EngineSettings
from gateway.delivery.sender import Sender
from gateway.events import INVITATION_CREATED, InvitationEvent, make_event
from gateway.fastredis import FastRedis
from gateway.records import delivery_id
from gateway.store.events import Store
from gateway.store.queue import DeliveryQueue
from tests.seeding import store_events
from tests.serving import serving

PREFIX = "gw"
NETWORK = "net1"
Answer = int | tuple[int, dict[str, str], bytes]
T = TypeVar("T")


# -- an HTTP target in the test's event loop ---------------------------------------------------


@dataclass
class Hit:
    """One request the target received: when it arrived and when its answer went out."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    wall_ms: int  # time.time() on arrival, in ms (comparable with the records' times)
    started: float  # time.monotonic() on arrival
    finished: float = 0.0  # time.monotonic() when the handler answered (0: never answered)
    status: int = 0

    @property
    def key(self) -> str:
        return self.headers.get("idempotency-key", "")

    def json(self) -> Any:
        return json.loads(self.body)


class AsyncTarget:
    """An aiohttp server on 127.0.0.1. Per path: a script of answers (the last one repeats; no
    script answers 200) and a delay before answering. Counts requests open at once per path."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.scripts: dict[str, list[Answer]] = {}
        self.delays: dict[str, float] = {}
        self.open: dict[str, int] = {}
        self.max_open: dict[str, int] = {}
        self.port = 0
        self.on_hit: Callable[[Hit], None] | None = None  # called as each request arrives
        self._closing = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self) -> AsyncTarget:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self._closing.set()  # requests still held open answer at once
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, path: str, answers: list[Answer]) -> None:
        self.scripts[path] = list(answers)

    def to(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    async def wait_for(self, path: str, count: int, timeout: float = 10.0) -> list[Hit]:
        """Wait until `path` got at least `count` requests (arrived, not necessarily answered)."""
        deadline = time.monotonic() + timeout
        while len(self.to(path)) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{path} got {len(self.to(path))} requests, expected {count}")
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.1))
        return self.to(path)

    def _answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        answers = self.scripts.get(path)
        if not answers:
            return 200, {}, b"ok"
        item = answers.pop(0) if len(answers) > 1 else answers[0]
        return item if isinstance(item, tuple) else (item, {}, b"scripted")

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        hit = Hit(
            request.method,
            path,
            dict(request.query),
            {k.lower(): v for k, v in request.headers.items()},
            await request.read(),
            int(time.time() * 1000),
            time.monotonic(),
        )
        self.hits.append(hit)
        self._changed.set()
        if self.on_hit is not None:
            self.on_hit(hit)
        self.open[path] = self.open.get(path, 0) + 1
        self.max_open[path] = max(self.max_open.get(path, 0), self.open[path])
        try:
            delay = self.delays.get(path, 0.0)
            if delay > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
            status, headers, payload = self._answer(path)
            hit.status = status
            return web.Response(status=status, headers=headers, body=payload)
        finally:
            self.open[path] -= 1
            hit.finished = time.monotonic()


# -- a forward proxy (absolute-form requests) --------------------------------------------------


@dataclass
class ForwardProxy:
    """Takes `POST http://host:port/path HTTP/1.1`, records it, and forwards it with http.client
    when the host is 127.0.0.1; any other host is answered here (nothing leaves loopback)."""

    port: int = 0
    seen: list[str] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def forward_proxy() -> Iterator[ForwardProxy]:
    state = ForwardProxy()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with state.lock:
                state.seen.append(self.path)
            parts = urlsplit(self.path)
            if parts.scheme != "http" or parts.hostname != "127.0.0.1":
                self._reply(200, {"X-Answered-By": "proxy"}, b"answered by the proxy")
                return
            headers = {
                k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")
            }
            conn = http.client.HTTPConnection("127.0.0.1", parts.port or 80, timeout=10)
            try:
                target = parts.path + (f"?{parts.query}" if parts.query else "")
                conn.request(self.command, target, body=body or None, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                with state.lock:
                    state.forwarded.append(self.path)
                self._reply(resp.status, {"X-Forwarded-By": "proxy"}, payload)
            finally:
                conn.close()

        def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler) as port:
        state.port = port
        yield state


# -- the harness --------------------------------------------------------------------------------


def target(name: str, url: str, **options: Any) -> dict[str, Any]:
    """A target declaration for the test network; `url` may use placeholders."""
    return {"name": name, "networks": [NETWORK], "url": url, **options}


class Harness:
    """The test's Redis (sync, for setup and checks), the config the engines read, and every
    engine's async Redis client and Sender, closed by `aclose`."""

    def __init__(self, redis: Redis, redis_url: str) -> None:
        self.redis = redis
        self.redis_url = redis_url
        self.store = Store(redis, prefix=PREFIX, retention=86400)
        self.queue = DeliveryQueue(redis, PREFIX, 86400)
        self.config = Config()
        self._clients: list[aioredis.Redis] = []
        self._senders: list[Sender] = []
        self._fast: list[FastRedis] = []

    def configure(self, targets: list[dict[str, Any]], **settings: Any) -> Config:
        self.config = config_from_dict(
            {"settings": {"allow_private_targets": True, **settings}, "targets": targets}
        )
        return self.config

    def add_events(self, count: int, names: list[str], at: float | None = None) -> list[InvitationEvent]:
        """Store `count` events, each with a pending delivery to every target in `names`."""
        events = [
            make_event(
                {"invitee": f"+1555{i:07d}", "invitor": f"inv{i}", "network_id": NETWORK},
                INVITATION_CREATED,
                "json",
                now=at,
            )
            for i in range(count)
        ]
        store_events(self.store, [(ev, names) for ev in events])  # the tests run their engines
        return events

    def async_queue(self, fast: bool = True) -> DeliveryQueue:
        """As `gateway worker` builds it: claims and completions through FastRedis (fast=False:
        through redis.asyncio, as behind Sentinel)."""
        client = aioredis.Redis.from_url(self.redis_url)
        self._clients.append(client)
        scripts = FastRedis(self.redis_url) if fast else None
        if scripts is not None:
            self._fast.append(scripts)
        return DeliveryQueue(client, PREFIX, 86400, scripts=scripts)

    def engine(self, allow_private: bool = True, fast: bool = True, **settings: Any) -> Engine:
        """A new Engine with its own async Redis client and Sender (as a second worker has)."""
        sender = Sender(allow_private=allow_private)
        self._senders.append(sender)
        return Engine(
            self.async_queue(fast),
            sender,
            lambda version: self.config,
            {},
            EngineSettings(allow_private=allow_private, **settings),
        )

    async def aclose(self) -> None:
        for sender in self._senders:
            await sender.close()
        for client in self._clients:
            await client.aclose()
        for fast in self._fast:
            await fast.aclose()

    # -- reading the records ---------------------------------------------------------------------
    def state(self, event_id: str, name: str) -> dict[str, Any]:
        got = self.store.get_delivery(event_id, name)
        assert got is not None, f"no delivery {event_id}-{name}"
        return got

    def attempts(self, event_id: str, name: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.store.get_attempts(event_id) if name is None or a["target"] == name]

    def due(self) -> dict[str, float]:
        return {k.decode(): v for k, v in self.redis.zrange(f"{PREFIX}:due", 0, -1, withscores=True)}

    def parked(self, name: str) -> set[str]:
        return {m.decode() for m in self.redis.zrange(f"{PREFIX}:parked:{name}", 0, -1)}

    def dead(self) -> set[str]:
        return {did for did, _ in self.queue.dead_letters()}

    def held(self) -> set[str]:
        return set(self.queue.held_targets())


def did(event: InvitationEvent, name: str) -> str:
    return delivery_id(event.id, name)


def run(redis: Redis, redis_url: str, body: Callable[[Harness, AsyncTarget], Awaitable[T]]) -> T:
    """Run `body(harness, target)` in a fresh event loop; close everything it opened."""

    async def main() -> T:
        harness = Harness(redis, redis_url)
        server = await AsyncTarget().start()
        try:
            return await body(harness, server)
        finally:
            await harness.aclose()
            await server.close()

    return asyncio.run(main())


async def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `check` (sync, cheap) every 20 ms until it holds; bounded."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
