"""What the callbacks inspector costs per callback: web CPU and Redis commands, with it and without.

In process, no HTTP: the gateway's ASGI app (gateway.app.create_app, the same fast path uvicorn
calls) is driven directly, waves of `--concurrency` callbacks at once (so the accept commits them
as one batch, as under load), against a private Redis (gateway.embedded.EmbeddedRedis), with
GATEWAY_CALLBACKS_KEPT=1000 (on) and 0 (off), taking turns for `--rounds` rounds. For each it
reports the process' CPU per callback (time.process_time over the run: the app, its event loop,
its Redis client; not uvicorn's HTTP parsing, the same either way), Redis commands per callback
(INFO commandstats, reset before each run; the Lua scripts' own commands included) and the Redis
server's CPU per callback (from /proc, during the run). Scenarios: new invitations by GET (query)
and by JSON POST (taken: the entry is built and pushed by the ingest script), and callbacks
rejected with 400 (their entries go through the background writer). Also the entry's build
alone (timeit of Inspector.taken), and the ingest script alone with entries and without (its time
in Redis, the least noisy of these figures).

This is a cost measurement, not a throughput benchmark (bench/ingest.py is): CPU time per
callback moves less with the machine's load than a rate does, but still moves; medians of the
rounds are given. Only 127.0.0.1; the Redis it starts is stopped by PID.

Run: ``.venv/bin/python bench/inspector.py [--quick] [--callbacks N] [--rounds R] [--concurrency C]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.support import cpu_seconds  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.embedded import EmbeddedRedis  # noqa: E402
from gateway.events import make_event  # noqa: E402
from gateway.ingest.callback import Callback  # noqa: E402
from gateway.ingest.inspector import Inspector  # noqa: E402
from gateway.settings import Settings, parse_redis_url  # noqa: E402
from gateway.store.ingest import IngestHead, IngestItem, ingest_sync  # noqa: E402

CONFIG = """
[settings]
allow_private_targets = true

[[targets]]
name = "sink"
networks = ["bench"]
url = "http://127.0.0.1:9/hook?invitee=%invitee%"
"""


def scope(method: str, query: bytes, body: bytes) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"user-agent", b"Sync Server 1.1")]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/invitation_created",
        "raw_path": b"/invitation_created",
        "root_path": "",
        "query_string": query,
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


def request(kind: str, i: int) -> tuple[dict[str, Any], bytes]:
    invitee = f"+1555{i:07d}"
    if kind == "get":
        return scope("GET", f"invitee={invitee}&invitor=bench&network_id=bench".encode(), b""), b""
    if kind == "json":
        body = json.dumps({"invitee": invitee, "invitor": "bench", "network_id": "bench"}).encode()
        return scope("POST", b"", body), body
    # rejected: the invitee under a name no alias knows (400)
    return scope("GET", f"phone={invitee}&invitor=bench&network_id=bench".encode(), b""), b""


async def call(app: Any, kind: str, i: int) -> int:
    sc, body = request(kind, i)
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(sc, receive, send)
    return status


async def drive(app: Any, kind: str, start: int, count: int, concurrency: int) -> float:
    """CPU seconds of this process for `count` callbacks, `concurrency` at a time."""
    expected = 400 if kind == "rejected" else 204
    cpu = time.process_time()
    for base in range(start, start + count, concurrency):
        statuses = await asyncio.gather(*(call(app, kind, i) for i in range(base, base + concurrency)))
        if any(s != expected for s in statuses):
            raise SystemExit(f"{kind}: answers {sorted(set(statuses))}, expected {expected}")
    return time.process_time() - cpu


def commands(redis: Redis) -> tuple[int, float]:
    """(commands so far, µs in scripts so far): INFO commandstats, a Lua script's own commands
    counted one by one, its time (theirs included) as EVALSHA's."""
    stats = {k: v for k, v in redis.info("commandstats").items() if isinstance(v, dict)}
    skip = ("cmdstat_info", "cmdstat_config|resetstat")
    calls = sum(int(v["calls"]) for k, v in stats.items() if k not in skip)
    return calls, sum(float(v["usec"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


async def run_mode(
    url: str,
    kept: int,
    kind: str,
    start: int,
    count: int,
    concurrency: int,
    redis: Redis,
    redis_pid: int | None,
) -> dict[str, float]:
    data = tempfile.mkdtemp(prefix="gw-bench-inspector-")
    settings = Settings(
        redis_url=parse_redis_url(url),
        data_dir=data,
        open_ingest=True,
        dedupe_seconds=0,
        callbacks_kept=kept,
    )
    app = create_app(settings)
    async with app.app.router.lifespan_context(app.app):
        await drive(app, kind, start - 10_000_000, 2 * concurrency, concurrency)  # warm up
        if kind == "rejected":
            await asyncio.sleep(0.3)  # the writer's last batch
        redis.config_resetstat()
        redis_cpu = cpu_seconds(redis_pid) or 0.0
        cpu = await drive(app, kind, start, count, concurrency)
        if kind == "rejected":
            await asyncio.sleep(0.3)
        redis_cpu = (cpu_seconds(redis_pid) or 0.0) - redis_cpu
        calls, script_us = commands(redis)
        # What the writer (rejected ones) did not keep: its count of drops.
        dropped = (
            app.ingest.metrics.tally.data.get(("gateway_inspector_dropped",), 0) if app.ingest.metrics else 0
        )
    return {
        "cpu_us": cpu / count * 1e6,
        "cmds": calls / count,
        "redis_us": redis_cpu / count * 1e6,
        "script_us": script_us / count,
        "dropped": dropped,
    }


def script_cost(redis: Redis, count: int, rounds: int) -> dict[str, float]:
    """µs of the ingest script per callback (EVALSHA's time in INFO commandstats) for batches of
    16 new events with entries (the inspector on) and without: Redis alone, no web process in it."""
    now = int(time.time() * 1000)
    taken: dict[str, list[float]] = {"get": [], "json": []}
    off: list[float] = []
    serial = 0
    for n in range(rounds):
        for mode in ("off", "get", "json") if n % 2 == 0 else ("json", "get", "off"):
            redis.flushdb()
            redis.config_resetstat()
            for _batch in range(count // 16):
                items = []
                for _ in range(16):
                    serial += 1
                    sc, body = request(mode if mode != "off" else "get", serial)
                    event = make_event(
                        {"invitee": f"+1555{serial:07d}", "invitor": "bench", "network_id": "bench"},
                        "invitation_created",
                        "json",
                        now=now / 1000,
                    )

                    async def receive() -> dict[str, Any]:
                        return {}

                    entry = (
                        ""
                        if mode == "off"
                        else Inspector.taken(Callback(sc, receive, "t"), event, body, 204, None)
                    )
                    items.append(IngestItem.new(event, ["sink"], entry=entry))
                head = IngestHead("bench", now, 3600, callbacks_kept=1000, callbacks_ms=7 * 86_400_000)
                ingest_sync(redis, head, items)
            usec = float(redis.info("commandstats")["cmdstat_evalsha"]["usec"]) / count
            (off if mode == "off" else taken[mode]).append(usec)
    return {
        "off": statistics.median(off),
        "get": statistics.median(taken["get"]),
        "json": statistics.median(taken["json"]),
    }


def entry_cost(n: int) -> dict[str, float]:
    """µs to build a taken callback's entry, GET and JSON (no secret in them)."""
    event = make_event(
        {"invitee": "+15551231234", "invitor": "bench", "network_id": "bench"}, "invitation_created", "json"
    )
    out = {}
    for kind in ("get", "json"):
        sc, body = request(kind, 1)

        async def receive() -> dict[str, Any]:
            return {}

        cb = Callback(sc, receive, "a-token-in-the-path")
        seconds = timeit.timeit(
            lambda cb=cb, body=body: Inspector.taken(cb, event, body, 204, None), number=n
        )
        out[kind] = seconds / n * 1e6
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 400 callbacks, 1 round")
    parser.add_argument("--callbacks", type=int, default=4000, help="callbacks per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each mode, taking turns")
    parser.add_argument("--concurrency", type=int, default=16, help="callbacks at once (a batch)")
    args = parser.parse_args(argv)
    count, rounds = (400, 1) if args.quick else (args.callbacks, args.rounds)
    # Rejected callbacks are logged a line each, in both modes alike: left out of the measure.
    os.environ.setdefault("GATEWAY_LOG_LEVEL", "ERROR")
    server = EmbeddedRedis().start()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        redis = Redis.from_url(server.url)
        config_path = Path(tempfile.mkdtemp(prefix="gw-bench-inspector-")) / "targets.toml"
        config_path.write_text(CONFIG)
        from gateway.app import apply_config_file
        from gateway.store.events import Store

        serial = 0
        for n in range(rounds):
            for kind in ("get", "json", "rejected"):
                # Each run on an empty database (a keyspace that grows run after run makes the later
                # runs pay Redis' rehashing), the two modes in turn first.
                modes = (("off", 0), ("on", 1000)) if n % 2 == 0 else (("on", 1000), ("off", 0))
                for mode, kept in modes:
                    redis.flushdb()
                    apply_config_file(Store(redis), str(config_path), None)
                    serial += count + 2 * args.concurrency
                    r = asyncio.run(
                        run_mode(
                            server.url, kept, kind, serial * 10, count, args.concurrency, redis, server.pid
                        )
                    )
                    results.setdefault((kind, mode), []).append(r)
        script = script_cost(redis, count, rounds)
        redis.close()
    finally:
        server.stop()
    entry = entry_cost(2000 if args.quick else 20000)
    lines = [
        f"callbacks inspector cost: {count} callbacks per run, {rounds} round(s), "
        f"{args.concurrency} at once; medians",
        "",
        "| callbacks | inspector | web CPU µs/callback | Redis commands/callback | Redis CPU µs/callback "
        "| in scripts µs/callback |",
        "|---|---|---:|---:|---:|---:|",
    ]
    columns = ("cpu_us", "cmds", "redis_us", "script_us")
    for kind in ("get", "json", "rejected"):
        for mode in ("off", "on"):
            med = {k: statistics.median(r[k] for r in results[(kind, mode)]) for k in columns}
            lines.append(
                f"| {kind} | {mode} | {med['cpu_us']:.1f} | {med['cmds']:.2f} | {med['redis_us']:.1f} "
                f"| {med['script_us']:.1f} |"
            )
        d = {
            k: statistics.median(r[k] for r in results[(kind, "on")])
            - statistics.median(r[k] for r in results[(kind, "off")])
            for k in columns
        }
        lines.append(
            f"| {kind} | difference | {d['cpu_us']:+.1f} | {d['cmds']:+.2f} | {d['redis_us']:+.1f} "
            f"| {d['script_us']:+.1f} |"
        )
    dropped = sum(r["dropped"] for r in results[("rejected", "on")])
    load = os.getloadavg()[0]
    lines += [
        "",
        f"load average at the end: {load:.2f} on {os.cpu_count()} cores (Redis CPU moves most with it)",
        f"entry build alone (Inspector.taken): GET {entry['get']:.1f} µs, JSON {entry['json']:.1f} µs",
        f"the ingest script alone, µs of Redis per callback in batches of 16: without entries "
        f"{script['off']:.1f}, with GET entries {script['get']:.1f} ({script['get'] - script['off']:+.1f}), "
        f"with JSON entries {script['json']:.1f} ({script['json'] - script['off']:+.1f})",
        f"rejected entries the writer dropped: {dropped:g}",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
