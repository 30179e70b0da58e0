"""What an erasure costs (`gateway forget`, gateway/store/erasure.py) for N stored events.

Starts a private Redis (gateway.embedded: a server of its own, nothing on disk, stopped by PID),
stores N events through the ingest script (one target each, created and accepted alternately,
every invitee its own number but 10 events of the number erased, spread over the store), then
erases that number as an operator (the global index) and as a provider of one network of 10
(its network's index only). Per erasure: the wall time, Redis' CPU (INFO cpu), the commands
Redis ran (INFO commandstats, the scripts' own included), the script calls and the longest one
(Redis runs nothing else meanwhile), and what was found. Also the memory of the N events.

Run: ``.venv/bin/python bench/erasure.py --events 100000 [--events 1000000]``. Loopback only.
On a shared machine the times are indicative; the command counts are exact.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from redis import Redis

from gateway.config.targets import Config
from gateway.embedded import EmbeddedRedis
from gateway.events import EVENT_TYPES, make_event
from gateway.store.erasure import Erasure, Number, erase
from gateway.store.ingest import IngestHead, IngestItem, dedupe_key, ingest_sync
from gateway.store.keys import Keys

PREFIX = "gw"
NUMBER = "+447700900123"
NETWORKS = [f"net-{i}" for i in range(10)]


def seed(redis: Redis, count: int) -> None:
    now = int(time.time() * 1000)
    head = IngestHead(PREFIX, now, 30 * 86400, 600_000, wake_ttl=0)
    every = max(count // 10, 1)
    mine = {j * every + j for j in range(10)}  # one in each network, spread over the store
    batch: list[IngestItem] = []
    for i in range(count):
        invitee = NUMBER if i in mine else f"+1555{i:07d}"
        fields = {"invitee": invitee, "invitor": f"user{i % 977}", "network_id": NETWORKS[i % 10]}
        event = make_event(fields, EVENT_TYPES[i % 2], "json", now=(now - count + i) / 1000)
        batch.append(IngestItem.new(event, ["crm"], dedupe_key(event)))
        if len(batch) == 500:
            ingest_sync(redis, head, batch)
            batch = []
    if batch:
        ingest_sync(redis, head, batch)


def redis_cpu(redis: Redis) -> float:
    info = redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def commands(redis: Redis) -> dict[str, int]:
    return {k: int(v["calls"]) for k, v in redis.info("commandstats").items()}


def measure(redis: Redis, networks: frozenset[str] | None) -> dict[str, Any]:
    redis.slowlog_reset()
    redis.config_set("slowlog-log-slower-than", 0)
    redis.config_set("slowlog-max-len", 100_000)
    cmd0, cpu0, t0 = commands(redis), redis_cpu(redis), time.perf_counter()
    job = Erasure(redis, Keys(PREFIX), Number.parse(NUMBER), networks, Config(), int(time.time() * 1000))
    counts = erase(job)
    wall = time.perf_counter() - t0
    cpu, cmd1 = redis_cpu(redis) - cpu0, commands(redis)
    entries = redis.slowlog_get(100_000)
    scripts = [e["duration"] for e in entries if e["command"].split(b" ")[0].upper() in (b"EVALSHA", b"EVAL")]
    redis.config_set("slowlog-log-slower-than", 10_000)
    total = sum(cmd1.values()) - sum(cmd0.get(k, 0) for k in cmd1)
    return {
        "scope": "operator (every network)" if networks is None else f"provider ({len(networks)} network)",
        "wall_s": round(wall, 2),
        "redis_cpu_s": round(cpu, 2),
        "redis_commands": total,
        "script_calls": sum(cmd1.get(k, 0) - cmd0.get(k, 0) for k in ("cmdstat_evalsha", "cmdstat_eval")),
        "timed_script_calls": len(scripts),
        "script_ms_median": round(sorted(scripts)[len(scripts) // 2] / 1000, 1) if scripts else 0,
        "longest_script_ms": round(max(scripts, default=0) / 1000, 1),
        "events": counts["events"]["events"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, action="append", help="stored events (repeatable)")
    args = parser.parse_args()
    for count in args.events or [100_000]:
        with EmbeddedRedis() as server:
            redis = Redis.from_url(server.url)
            t0 = time.perf_counter()
            seed(redis, count)
            seeded = time.perf_counter() - t0
            memory = int(redis.info("memory")["used_memory"])
            print(f"{count:,} events stored in {seeded:.0f} s, Redis uses {memory / 2**20:.0f} MiB")
            # The provider's first: the operator's would erase its events.
            for networks in (frozenset({NETWORKS[5]}), None):
                print(" ", measure(redis, networks))
            redis.close()


if __name__ == "__main__":
    main()
