"""Benchmark: which HTTP client should the delivery worker use?

Starts a tiny uvicorn target server (raw ASGI app, h11, asyncio loop) in a child process on
127.0.0.1, then POSTs a ~200-byte JSON body to it with several client set-ups:

* httpx.Client, one keep-alive client, sequential;
* aiohttp.ClientSession driven from sync code through one persistent event loop
  (``loop.run_until_complete(...)`` per request) -- how a sync RQ job would call it;
* aiohttp, httpx.AsyncClient and pyreqwest with N concurrent requests (asyncio.gather + semaphore);
* a fresh client per request (httpx.Client, aiohttp session + ``asyncio.run``), which is what a
  fork-per-job RQ worker pays, with N/10 requests.

Every response body is read fully and checked. Only 127.0.0.1 is contacted; every loop is bounded.

Run: ``.venv/bin/python bench/http_clients.py [--requests 2000] [--json results.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from support import HOST, Child, cpu_delta, fmt, latency, per_op_us, start_target_server, table

RESPONSE_BODY = b"ok"
REQUEST_TIMEOUT_S = 10.0
JSON_HEADERS = {"content-type": "application/json"}

# ---------------------------------------------------------------------------------------------
# Target server (support.TARGET_APP: runs in the child process of support.start_target_server).
# ---------------------------------------------------------------------------------------------

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def target_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Minimal raw ASGI app: drain the request body, answer 200 "ok"."""
    if scope["type"] != "http":  # lifespan is disabled on the command line; ignore anything else
        return
    more_body = True
    while more_body:  # bounded by the request's own body
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more_body = bool(message.get("more_body", False))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(RESPONSE_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": RESPONSE_BODY})


# ---------------------------------------------------------------------------------------------
# Client scenarios.
# ---------------------------------------------------------------------------------------------


def make_payload(size: int = 200) -> bytes:
    """A JSON body shaped like an invitation callback, padded to exactly ``size`` bytes."""
    doc: dict[str, str] = {
        "event": "invitation",
        "id": "01JD5X7Q3G8W2N4R6T8V0Y2A4C",
        "inviter": "alice@example.com",
        "invitee": "bob@example.com",
        "cloud_id": "demo-cloud",
        "pad": "",
    }
    base = len(json.dumps(doc, separators=(",", ":")).encode())
    doc["pad"] = "x" * max(0, size - base)
    return json.dumps(doc, separators=(",", ":")).encode()


def _check(status: int, body: bytes) -> None:
    if status != 200 or body != RESPONSE_BODY:
        raise RuntimeError(f"unexpected response: {status} {body[:80]!r}")


@dataclass
class Result:
    name: str
    kind: str  # "sequential" or "concurrent"
    requests: int
    concurrency: int
    seconds: float
    rps: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    client_cpu_us_per_req: float
    server_cpu_us_per_req: float | None
    ratio_vs_best_sequential: float = 0.0


class Timer:
    """Collects per-request latencies plus wall/CPU time of the client and the server."""

    def __init__(self, server: Child) -> None:
        self.server = server
        self.latencies: list[float] = []
        self.wall = 0.0
        self.cpu = 0.0
        self.srv: float | None = None

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.latencies.append(time.perf_counter() - t0)

    @contextlib.contextmanager
    def run(self) -> Iterator[None]:
        self.latencies.clear()
        srv0 = self.server.cpu_seconds()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        yield
        self.wall = time.perf_counter() - t0
        self.cpu = time.process_time() - cpu0
        self.srv = cpu_delta(srv0, self.server.cpu_seconds())

    def result(self, name: str, kind: str, concurrency: int) -> Result:
        n = len(self.latencies)
        lat = latency(self.latencies)
        return Result(
            name=name,
            kind=kind,
            requests=n,
            concurrency=concurrency,
            seconds=self.wall,
            rps=n / self.wall,
            mean_ms=lat.mean_ms,
            p50_ms=lat.p50_ms,
            p99_ms=lat.p99_ms,
            client_cpu_us_per_req=self.cpu / n * 1e6,
            server_cpu_us_per_req=per_op_us(self.srv, n),
        )


def bench_httpx_sync(url: str, body: bytes, n: int, warmup: int, timer: Timer) -> Result:
    with httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False) as client:

        def once() -> None:
            resp = client.post(url, content=body, headers=JSON_HEADERS)
            _check(resp.status_code, resp.read())

        for _ in range(warmup):
            once()
        with timer.run():
            for _ in range(n):
                with timer.one():
                    once()
    return timer.result("httpx.Client, reused", "sequential", 1)


async def _aiohttp_post(session: aiohttp.ClientSession, url: str, body: bytes) -> None:
    async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
        _check(resp.status, await resp.read())


def _aiohttp_session(pool_size: int = 100) -> aiohttp.ClientSession:
    """Pool of ``pool_size`` connections (aiohttp keeps every idle one), bounded timeout."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=pool_size),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        trust_env=False,
    )


def bench_aiohttp_sync_loop(url: str, body: bytes, n: int, warmup: int, timer: Timer) -> Result:
    """One session on one persistent loop, one run_until_complete per request (sync RQ job)."""
    loop = asyncio.new_event_loop()
    try:

        async def open_session() -> aiohttp.ClientSession:
            return _aiohttp_session()

        session = loop.run_until_complete(open_session())
        try:
            for _ in range(warmup):
                loop.run_until_complete(_aiohttp_post(session, url, body))
            with timer.run():
                for _ in range(n):
                    with timer.one():
                        loop.run_until_complete(_aiohttp_post(session, url, body))
        finally:
            loop.run_until_complete(session.close())
    finally:
        loop.close()
    return timer.result("aiohttp, reused, persistent loop", "sequential", 1)


async def _gather_bounded(
    post: Callable[[], Awaitable[None]], n: int, concurrency: int, timer: Timer | None
) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            if timer is None:
                await post()
            else:
                with timer.one():
                    await post()

    await asyncio.gather(*(one() for _ in range(n)))


def bench_aiohttp_concurrent(
    url: str, body: bytes, n: int, warmup: int, concurrency: int, timer: Timer
) -> Result:
    async def main() -> None:
        async with _aiohttp_session(pool_size=concurrency) as session:

            async def post() -> None:
                await _aiohttp_post(session, url, body)

            await _gather_bounded(post, warmup, concurrency, None)
            with timer.run():
                await _gather_bounded(post, n, concurrency, timer)

    asyncio.run(main())
    return timer.result(f"aiohttp, {concurrency} concurrent", "concurrent", concurrency)


def bench_httpx_async_concurrent(
    url: str, body: bytes, n: int, warmup: int, concurrency: int, timer: Timer
) -> Result:
    # Pool sized to the concurrency: httpx's default keeps only 20 idle connections, so with 32 in
    # flight it would close and reopen connections all the time.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def main() -> None:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, trust_env=False, limits=limits) as client:

            async def post() -> None:
                resp = await client.post(url, content=body, headers=JSON_HEADERS)
                _check(resp.status_code, await resp.aread())

            await _gather_bounded(post, warmup, concurrency, None)
            with timer.run():
                await _gather_bounded(post, n, concurrency, timer)

    asyncio.run(main())
    return timer.result(f"httpx.AsyncClient, {concurrency} concurrent", "concurrent", concurrency)


def bench_pyreqwest_concurrent(
    url: str, body: bytes, n: int, warmup: int, concurrency: int, timer: Timer
) -> Result:
    """pyreqwest (Rust's reqwest) as gateway/delivery/sender.py uses it: a streamed response,
    its first bytes read."""
    from datetime import timedelta

    from pyreqwest.client import ClientBuilder

    timeout = timedelta(seconds=REQUEST_TIMEOUT_S)
    headers = tuple(JSON_HEADERS.items())

    async def main() -> None:
        client = ClientBuilder().no_proxy().follow_redirects(False).max_connections(concurrency).build()
        async with client:

            async def post() -> None:
                builder = client.request("POST", url).headers(headers).body_bytes(body).timeout(timeout)
                async with builder.build_streamed() as resp:
                    _check(resp.status, bytes(await resp.body_reader.bytes()))

            await _gather_bounded(post, warmup, concurrency, None)
            with timer.run():
                await _gather_bounded(post, n, concurrency, timer)

    asyncio.run(main())
    return timer.result(f"pyreqwest, {concurrency} concurrent", "concurrent", concurrency)


def bench_httpx_fresh(
    url: str, body: bytes, n: int, warmup: int, timer: Timer, ssl_context: ssl.SSLContext | None = None
) -> Result:
    """New httpx.Client per request. By default each one builds its own SSLContext (loads the CA
    bundle), even for http:// URLs; passing a pre-built context (``verify=ctx``) skips that."""
    verify: ssl.SSLContext | bool = True if ssl_context is None else ssl_context

    def once() -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S, trust_env=False, verify=verify) as client:
            resp = client.post(url, content=body, headers=JSON_HEADERS)
            _check(resp.status_code, resp.read())

    for _ in range(warmup):
        once()
    with timer.run():
        for _ in range(n):
            with timer.one():
                once()
    suffix = ", shared SSLContext" if ssl_context is not None else ""
    return timer.result(f"httpx.Client, fresh per request{suffix}", "sequential", 1)


def bench_aiohttp_fresh(url: str, body: bytes, n: int, warmup: int, timer: Timer) -> Result:
    """New event loop (asyncio.run) + new session per request, as a job in a forked child would do."""

    async def once() -> None:
        async with _aiohttp_session() as session:
            await _aiohttp_post(session, url, body)

    for _ in range(warmup):
        asyncio.run(once())
    with timer.run():
        for _ in range(n):
            with timer.one():
                asyncio.run(once())
    return timer.result("aiohttp, fresh session+loop per request", "sequential", 1)


# ---------------------------------------------------------------------------------------------
# Driver and output.
# ---------------------------------------------------------------------------------------------


def run_all(n: int, concurrency: int, warmup: int) -> list[Result]:
    body = make_payload()
    n_fresh = max(1, n // 10)
    warm_fresh = max(1, warmup // 10)
    with tempfile.TemporaryDirectory(prefix="bench-http-clients-") as tmp:
        server, port = start_target_server(Path(tmp))
        try:
            url = f"http://{HOST}:{port}/callback"
            timer = Timer(server)
            results = [
                bench_httpx_sync(url, body, n, warmup, timer),
                bench_aiohttp_sync_loop(url, body, n, warmup, timer),
                bench_aiohttp_concurrent(url, body, n, warmup, concurrency, timer),
                bench_httpx_async_concurrent(url, body, n, warmup, concurrency, timer),
                bench_pyreqwest_concurrent(url, body, n, warmup, concurrency, timer),
                bench_httpx_fresh(url, body, n_fresh, warm_fresh, timer),
                bench_httpx_fresh(url, body, n_fresh, warm_fresh, timer, ssl.create_default_context()),
                bench_aiohttp_fresh(url, body, n_fresh, warm_fresh, timer),
            ]
        finally:
            server.stop()
    best_seq = max(r.rps for r in results if r.kind == "sequential")
    for r in results:
        r.ratio_vs_best_sequential = r.rps / best_seq
    return results


def format_table(results: list[Result]) -> str:
    header = (
        f"{'scenario':<52} {'reqs':>5} {'req/s':>8} {'mean ms':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'cli us/req':>10} {'srv us/req':>10} {'x best seq':>10}"
    )
    rows = (
        f"{r.name:<52} {r.requests:>5} {r.rps:>8.0f} {r.mean_ms:>8.3f} {r.p50_ms:>7.3f} {r.p99_ms:>7.3f} "
        f"{r.client_cpu_us_per_req:>10.0f} {fmt(r.server_cpu_us_per_req):>10} "
        f"{r.ratio_vs_best_sequential:>10.2f}"
        for r in results
    )
    return table(header, rows)


def environment() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "httpx": httpx.__version__,
        "aiohttp": aiohttp.__version__,
        "server": "uvicorn, raw ASGI app, --http h11 --loop asyncio, 1 process",
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="requests per scenario (default 2000)")
    parser.add_argument("--concurrency", type=int, default=32, help="in-flight requests (default 32)")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up requests per scenario")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON here")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--requests and --concurrency must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment()
    results = run_all(args.requests, args.concurrency, args.warmup)
    print(
        f"{env['date']}  python {env['python']}  httpx {env['httpx']}  aiohttp {env['aiohttp']}  "
        f"cpus {env['cpu_count']}  server: {env['server']}"
    )
    print(format_table(results))
    print("cli/srv us/req = client / target-server CPU time per request; x best seq = req/s ratio.")
    if args.json is not None:
        doc = {"environment": env, "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
