"""The two child processes of bench/delivery.py: the aiohttp baseline and the callback feeder.

* ``baseline SPEC OUT``: POSTs the request described in SPEC (a JSON file: method, url, headers,
  body; the gateway's own rendered request) to the target, `--concurrency` requests in flight
  from one aiohttp `ClientSession` on a uvloop event loop (the loop the worker runs), `--warmup`
  untimed requests first, then `--requests` timed ones. Every answer must be a 200. Writes
  req/s, the CPU time of this process and the status counts to OUT (JSON).
* ``feed REDIS_URL OUT``: accepts invitation callbacks through the web process' own accept
  step (`gateway.ingest.accept.Accepter`: the ingest Lua through FastRedis, a drain job queued
  when the Lua says so), each with its own invitee, at `--rate` per second (0: as fast as it
  can) until `--max` callbacks or `--seconds` pass, or SIGTERM. Callbacks due at the same moment
  are committed together, as the web's group commit does at that rate; no HTTP is parsed (the
  web's own share of the CPU is left out). Writes how many it accepted and when to OUT (JSON).

Only the URL in SPEC (127.0.0.1, checked) and REDIS_URL are contacted; every loop is bounded by
a count and a time.

Run by bench/delivery.py; by hand: ``.venv/bin/python bench/delivery_load.py baseline --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

FIELDS = {"invitee": "15551231234", "invitor": "johnsnow", "network_id": "mynetwork"}
REQUEST_TIMEOUT_S = 10.0
LOOPBACK = ("127.0.0.1", "::1", "localhost")
FEEDER_CLIENT = "bench-feeder"


def _stop_on_sigterm() -> None:
    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)


# -- baseline --------------------------------------------------------------------------------------


async def _post_all(
    spec: dict[str, Any], n: int, concurrency: int, statuses: collections.Counter[str]
) -> None:
    import aiohttp

    body = base64.b64decode(spec["body"]) if spec["body"] is not None else None
    headers = [tuple(h) for h in spec["headers"]]
    # As gateway.delivery.sender.Sender sets up its session: the same default headers, no
    # cookies, no decompression, no proxies from the environment.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        headers=spec["session_headers"],
    )
    remaining = n

    async def one_at_a_time() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                async with session.request(
                    spec["method"], spec["url"], headers=headers, data=body, allow_redirects=False
                ) as resp:
                    await resp.read()
                    statuses[str(resp.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[type(exc).__name__] += 1

    try:
        await asyncio.gather(*(one_at_a_time() for _ in range(min(concurrency, n))))
    finally:
        await session.close()


def baseline(args: argparse.Namespace) -> int:
    import uvloop

    spec = json.loads(Path(args.spec).read_text())
    host = urlsplit(spec["url"]).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to send to {host!r}: 127.0.0.1 only")
    statuses: collections.Counter[str] = collections.Counter()
    warm: collections.Counter[str] = collections.Counter()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if args.warmup:
            runner.run(_post_all(spec, args.warmup, args.concurrency, warm))
        cpu0, t0 = time.process_time(), time.perf_counter()
        runner.run(_post_all(spec, args.requests, args.concurrency, statuses))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    result = {
        "requests": args.requests,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "seconds": wall,
        "rps": args.requests / wall,
        "cpu_seconds": cpu,
        "statuses": dict(statuses),
        "warmup_statuses": dict(warm),
    }
    Path(args.out).write_text(json.dumps(result))
    return 0 if statuses == {"200": args.requests} else 1


# -- feeder ----------------------------------------------------------------------------------------


def feed(args: argparse.Namespace) -> int:
    import tempfile

    import uvloop
    from redis import Redis

    from gateway.events import INVITATION_CREATED, InvitationEvent, make_event
    from gateway.fastredis import FastRedis
    from gateway.ingest.accept import Accepter
    from gateway.ingest.spool import Spool
    from gateway.live import LiveConfig
    from gateway.queue import enqueue_drain, make_queue
    from gateway.settings import Settings
    from gateway.store.events import Store
    from gateway.store.ingest import ACCEPTED

    host = urlsplit(args.redis_url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to use Redis at {host!r}: 127.0.0.1 only")
    _stop_on_sigterm()
    settings = Settings()
    # Named, so that bench/delivery.py can take these connections' commands out of its count.
    client = Redis.from_url(args.redis_url, client_name=FEEDER_CLIENT)
    client.ping()
    store = Store(client, prefix=settings.prefix, retention=settings.retention_days * 86400)
    queue = make_queue(client, settings.queue_name)
    live = LiveConfig(store)
    live.refresh()
    sep = "&" if "?" in args.redis_url else "?"
    fast = FastRedis(f"{args.redis_url}{sep}client_name={FEEDER_CLIENT}")
    accepted = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    out = Path(args.out)

    def routes(event: InvitationEvent) -> list[str]:
        return [t.name for t in live.current.routes(event.type, event.network_id)]

    async def on_version(version: int) -> bool:
        return False  # the bench does not change the configuration while it feeds

    async def wake() -> None:
        enqueue_drain(queue)

    async def run(spool: Spool) -> None:
        nonlocal accepted
        accepter = Accepter(
            fast,
            settings.prefix,
            settings.retention_days * 86400,
            spool,
            routes,
            lambda event, now: {},
            on_version,
            wake,
            dedupe_seconds=settings.dedupe_seconds,
        )
        names = routes(make_event(FIELDS, INVITATION_CREATED, "json"))
        end = t0 + args.seconds
        while accepted < args.max:  # bounded by --max, and by --seconds below
            now = time.perf_counter()
            if now >= end:
                break
            # Those due by now, committed together: the web's group commit at this rate.
            due = args.max - accepted if args.rate <= 0 else int((now - t0) * args.rate) + 1 - accepted
            due = min(due, args.max - accepted, 500)
            if due <= 0:
                await asyncio.sleep(0.001)
                continue
            batch = []
            for _ in range(due):
                # Each its own invitee: the same invitation twice would be deduplicated.
                fields = {**FIELDS, "invitee": f"+1555{accepted + len(batch):07d}"}
                batch.append((make_event(fields, INVITATION_CREATED, "json", client="127.0.0.1"), names))
            async with asyncio.timeout(30):  # FastRedis has no socket timeout of its own
                statuses = await accepter.commit(batch)
            if any(status != ACCEPTED for status in statuses):
                raise SystemExit(f"the feeder's callbacks were not all accepted: {set(statuses)}")
            accepted += len(batch)

    try:
        with tempfile.TemporaryDirectory(prefix="bench-feeder-") as tmp:
            spool = Spool(Path(tmp), name="feeder")
            try:
                uvloop.run(run(spool))
            finally:
                spool.close()
    finally:
        wall = time.perf_counter() - t0
        out.write_text(
            json.dumps({"accepted": accepted, "seconds": wall, "cpu_seconds": time.process_time() - cpu0})
        )
        client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("baseline", help="aiohttp loop posting the gateway's request")
    b.add_argument("spec", help="JSON file: method, url, headers, session_headers, body (base64)")
    b.add_argument("out", help="JSON file for the result")
    b.add_argument("--requests", type=int, default=10_000)
    b.add_argument("--concurrency", type=int, default=32)
    b.add_argument("--warmup", type=int, default=500)
    f = sub.add_parser("feed", help="accept callbacks through the web's accept step")
    f.add_argument("redis_url")
    f.add_argument("out", help="JSON file for the result")
    f.add_argument("--rate", type=float, default=0.0, help="callbacks per second (0: flat out)")
    f.add_argument("--max", type=int, default=100_000, help="stop after this many callbacks")
    f.add_argument("--seconds", type=float, default=60.0, help="stop after this long")
    args = parser.parse_args(argv)
    if args.command == "baseline":
        if not (1 <= args.requests <= 1_000_000 and 1 <= args.concurrency <= 1024 and args.warmup >= 0):
            parser.error("--requests 1..1000000, --concurrency 1..1024, --warmup >= 0")
        return baseline(args)
    if not (args.rate >= 0 and 1 <= args.max <= 10_000_000 and 0 < args.seconds <= 3600):
        parser.error("--rate >= 0, --max 1..10000000, --seconds in (0, 3600]")
    return feed(args)


if __name__ == "__main__":
    sys.exit(main())
