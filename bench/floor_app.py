"""The floor of bench/ingest.py (`--with-floor`): what the gateway's way of answering costs, with
none of its work.

A raw ASGI app (no Starlette) on uvicorn with the arguments of `gateway web`, built as the
gateway's accept step is (gateway/ingest/accept.py): each callback's raw query string (GET) or
body (POST) joins the batch pending, the request waits on a future, batches of at most
MAX_BATCH go to Redis with up to IN_FLIGHT on their way, one EVALSHA per batch through
gateway/fastredis.py, and each waiting request gets its 204 once its batch is stored. The script
stores each item under its own field (HSET, so every new callback writes a new field, as a new
invitation writes new keys) and counts them (`floor:count`, which bench/ingest.py checks
against the answers). Nothing is decoded, validated, normalized, logged or inspected.

Its rate against bare Starlette's says how far the gateway's design can go on this machine;
its CPU per callback against the gateway's says what the gateway's own work per callback costs
(decoding, the event, its E.164 form, the inspector's entry, the batch item, the log line).

Run: ``.venv/bin/python bench/floor_app.py --port 8002`` with REDIS_URL set (127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.fastredis import FastRedis, Script  # noqa: E402
from gateway.ingest.accept import IN_FLIGHT, MAX_BATCH  # noqa: E402

PATH = "/invitation_created"
STORE = Script(
    "for i = 1, #ARGV do redis.call('HSET', 'floor:' .. (i % 64), ARGV[i], '1') end "
    "return redis.call('INCRBY', 'floor:count', #ARGV)"
)
START = {"type": "http.response.start", "status": 204, "headers": []}
BODY = {"type": "http.response.body", "body": b""}
NOT_FOUND = {"type": "http.response.start", "status": 404, "headers": []}


class Floor:
    """The gateway's group commit (Accepter.accept / _flush_all), with nothing else."""

    def __init__(self, url: str) -> None:
        self.redis = FastRedis(url)
        self.pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self.collecting = False
        self.running = 0
        self.flushers: set[asyncio.Task[None]] = set()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.collecting = True
        self.running += 1
        task = loop.create_task(self._flush_all())
        self.flushers.add(task)
        task.add_done_callback(self.flushers.discard)

    async def _flush_all(self) -> None:
        try:
            while True:
                self.collecting = False
                pending = self.pending
                if not pending:
                    return
                batch, self.pending = pending[:MAX_BATCH], pending[MAX_BATCH:]
                if self.pending and self.running < IN_FLIGHT:
                    self._start(asyncio.get_running_loop())
                try:
                    await self.redis.evalsha(STORE, (), [item for item, _ in batch])
                except Exception as exc:
                    for _, done in batch:
                        done.set_exception(exc)
                else:
                    for _, done in batch:
                        done.set_result(None)
                if not self.pending or self.collecting:
                    return
                self.collecting = True
        finally:
            self.running -= 1

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await self.redis.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] != PATH:
            await send(NOT_FOUND)
            await send(BODY)
            return
        # (wrk's bodies come in one message)
        item = (await receive())["body"] if scope["method"] == "POST" else scope["query_string"]
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self.pending.append((item, done))
        if not self.collecting and self.running < IN_FLIGHT:
            self._start(loop)
        await done
        await send(START)
        await send(BODY)


def create_app() -> Floor:
    return Floor(os.environ["REDIS_URL"])


def main(argv: list[str] | None = None) -> None:
    from bare_app import serve  # bench/ is this script's folder, first on the path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve("floor_app:create_app", args.host, args.port)  # as bench/bare_app.py: `gateway web`'s arguments


if __name__ == "__main__":
    main()
