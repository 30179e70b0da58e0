"""Redis commands per callback of the ingest script, with and without abuse limits (not a timing).

Stores `--callbacks` created invitations through the ingest script (gateway/store/ingest.py, in
batches of `--batch`, as the web's accept step does), once for a network without any limit and
once for a network with the policy below, each on an empty database of a private Redis server,
and prints the commands the server ran per callback (INFO commandstats; a script's own commands
included), by command and in all. Deterministic: run it on a loaded machine, or on two checkouts
to compare them (`PYTHONPATH=OTHER_CHECKOUT .venv/bin/python bench/limit_commands.py`).

    [networks.limited]
    limits = [{ per = "invitee", max = 3, window = "1d" }, { per = "invitor", max = 20, window = "1h" },
              { per = "network", max = 100000, window = "1h" }]
    cooldown = "10m"
    guard = { min_created = 10000 }

Each callback has its own invitee and invitor, so that nothing is over a limit (the
limits are counted, never fired); `--suppressed` sends every callback to one number instead (all
but the first held back by the cooldown).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from support import command_stats

from gateway.embedded import EmbeddedRedis
from gateway.events import INVITATION_CREATED, make_event
from gateway.ingest.accept import dedupe_key
from gateway.networks import policy_from_dict
from gateway.store.ingest import IngestHead, IngestItem, ingest_sync, limit_fields

POLICY = {
    "limits": [
        {"per": "invitee", "max": 3, "window": "1d"},
        {"per": "invitor", "max": 20, "window": "1h"},
        {"per": "network", "max": 100_000, "window": "1h"},
    ],
    "cooldown": "10m",
    "guard": {"min_created": 10_000},
}


def run(
    redis: Redis, network: str, limited: bool, callbacks: int, batch: int, one_number: bool
) -> dict[str, float]:
    policy = policy_from_dict(network, POLICY if limited else {})
    redis.flushdb()
    redis.config_resetstat()
    before = command_stats(redis)
    now = int(time.time() * 1000)
    for start in range(0, callbacks, batch):
        items = []
        for n in range(start, min(start + batch, callbacks)):
            invitee = "+15550100009" if one_number else f"+1555{n:07d}"
            fields = {"invitee": invitee, "invitor": f"user{n}", "network_id": network}
            event = make_event(fields, INVITATION_CREATED, "query")
            items.append(IngestItem.new(event, ["t"], dedupe_key(event), limit_fields(event, policy, now)))
        now += 1
        ingest_sync(redis, IngestHead("gw", now, 86400, 600_000), items)
    after = command_stats(redis)
    skip = {"evalsha", "eval", "config|resetstat", "flushdb", "info", "script|load"}
    return {
        name: (after.get(name, 0) - before.get(name, 0)) / callbacks
        for name in after
        if name not in skip and after.get(name, 0) != before.get(name, 0)
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--callbacks", type=int, default=1600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--suppressed", action="store_true", help="every callback to one number")
    args = parser.parse_args()
    server = EmbeddedRedis().start()
    try:
        redis = Redis(port=server.port)
        rows = {
            "no limits": run(redis, "open", False, args.callbacks, args.batch, args.suppressed),
            "limits": run(redis, "limited", True, args.callbacks, args.batch, args.suppressed),
        }
        redis.close()
    finally:
        server.stop()
    names = sorted({n for r in rows.values() for n in r})
    print(
        f"Redis commands per callback ({args.callbacks} callbacks in batches of {args.batch}"
        + (", all to one number" if args.suppressed else "")
        + ")\n"
    )
    print("| command | " + " | ".join(rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{r.get(name, 0):.2f}" for r in rows.values()) + " |")
    print("| **all** | " + " | ".join(f"**{sum(r.values()):.2f}**" for r in rows.values()) + " |")


if __name__ == "__main__":
    main()
