"""The callbacks inspector in Redis: capped lists of callbacks as they arrived, per network.

Three kinds of list (key names: keys.py; the Lua: scripts/callbacks.lua):

* a network's callbacks the ingest took (accepted, duplicate, suppressed), pushed by the ingest
  script itself in the call that accepts them (one LPUSH and one LTRIM per network and batch), and
  its spooled ones, pushed by the web process' writer once Redis answers;
* a network's rejected callbacks, pushed by the writer (`write`): a flood of bad requests can
  push out only other rejected ones, never the network's accepted history;
* the callbacks whose network could not be told (no token that opens one, no readable
  `network_id` of a known network): one list, an operator's.

Each keeps the newest `Kept.count` entries received within `Kept.window_ms`, newest first. An
entry is a JSON array (`Entry`: positional, so that the ingest script's arguments stay small, as
every taken callback sends one): gateway/ingest/inspector.py makes them, gateway/admin/callbacks.py
reads them. The one-time tokens of "send test callback" live here too (`put_test_token`,
`take_test_token`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis import Redis

from gateway.fastredis import FastRedis, Script, ScriptsViaRedisPy
from gateway.store import lua
from gateway.store.keys import Keys

WRITE: Script = lua.load("callbacks_write", "callbacks")
TAKE_TEST_TOKEN: Script = lua.load("callbacks_test_token")


class CallbackList(StrEnum):
    """Which list an entry goes to (the scripts' one-letter kinds)."""

    TAKEN = "n"  # the network's callbacks the ingest took
    REJECTED = "r"  # the network's rejected callbacks
    UNROUTABLE = "u"  # rejected ones of no network that could be told (network "")


@dataclass(frozen=True, slots=True)
class Entry:
    """One callback as kept: a JSON array of these fields in this order. The ingest script (or
    the writer) appends the outcome, and for a duplicate the first event's id, for a suppressed
    one the reason. A taken callback's fields are read again from its path and body when shown;
    a rejected one's are in `extra`."""

    at: int  # ms received
    id: str  # the event's id (a taken callback), or the entry's own (a rejected one)
    method: str
    path: str  # path and query, token segment and secrets masked; its first segment is the event
    content_type: str | None
    body: str  # the first KiB, secrets masked
    body_bytes: int
    token: str | None  # where a token was: path, query, header
    client: str | None
    # test_id, ls (the status a suppressed one was answered with, if not 204); a rejected one's
    # status, field, reason, fields, names
    extra: Mapping[str, Any]
    outcome: str  # accepted | duplicate | suppressed | spooled | rejected
    detail: str | None = None  # duplicate: the first event's id; suppressed: why

    @classmethod
    def parse(cls, raw: bytes | str) -> Entry:
        v = json.loads(raw)
        return cls(
            int(v[0]),
            str(v[1]),
            str(v[2]),
            str(v[3]),
            v[4],
            str(v[5]),
            int(v[6]),
            v[7],
            v[8],
            v[9] or {},
            str(v[10]),
            v[11] if len(v) > 11 else None,
        )

    @property
    def event(self) -> str:
        return self.path.lstrip("/").partition("/")[0].partition("?")[0]


@dataclass(frozen=True, slots=True)
class Kept:
    """The bounds of every list: GATEWAY_CALLBACKS_KEPT entries, GATEWAY_CALLBACKS_DAYS."""

    count: int = 1000  # 0: the inspector is off
    window_ms: int = 7 * 86_400_000


def encode_write(
    prefix: str, now_ms: int, kept: Kept, groups: Mapping[tuple[CallbackList, str], Sequence[str]]
) -> list[Any]:
    """scripts/callbacks_write.lua's ARGV: the head, then per list its kind, network, count, entries."""
    args: list[Any] = [prefix, now_ms, kept.count, kept.window_ms]
    for (kind, network), entries in groups.items():
        args += (kind.value, network, len(entries), *entries)
    return args


async def write(
    client: FastRedis | ScriptsViaRedisPy,
    prefix: str,
    now_ms: int,
    kept: Kept,
    groups: Mapping[tuple[CallbackList, str], Sequence[str]],
) -> None:
    """Push complete entries onto their lists (the writer's one call per batch)."""
    await client.evalsha(WRITE, (), encode_write(prefix, now_ms, kept, groups))


def list_key(keys: Keys, kind: CallbackList, network: str) -> str:
    if kind is CallbackList.TAKEN:
        return keys.callbacks(network)
    if kind is CallbackList.REJECTED:
        return keys.callbacks_rejected(network)
    return keys.callbacks_unroutable


def read_entries(redis: Redis, key: str, start: int, count: int) -> list[bytes | str]:
    """`count` entries of a list from position `start` (0: the newest)."""
    return list(redis.lrange(key, start, start + count - 1))


def networks_with_lists(redis: Redis, keys: Keys) -> list[str]:
    """The networks that have a list; those whose lists have all expired are forgotten here."""
    names = [
        m.decode() if isinstance(m, bytes) else str(m) for m in redis.zrange(keys.callbacks_networks, 0, -1)
    ]
    if not names:
        return []
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.exists(keys.callbacks(name), keys.callbacks_rejected(name))
        found = pipe.execute()
    gone = [name for name, n in zip(names, found, strict=True) if not n]
    if gone:
        redis.zrem(keys.callbacks_networks, *gone)
    return sorted(name for name, n in zip(names, found, strict=True) if n)


# -- "send test callback": one-time ingest tokens -------------------------------------------------

TEST_TOKEN_SECONDS = 60


def put_test_token(
    redis: Redis, keys: Keys, digest: str, value: str, seconds: int = TEST_TOKEN_SECONDS
) -> None:
    """A token that opens one network once, within `seconds` (`value`: JSON {network, test_id})."""
    redis.set(keys.callbacks_test(digest), value, ex=seconds)


async def take_test_token(client: FastRedis | ScriptsViaRedisPy, prefix: str, digest: str) -> str | None:
    """The value of a one-time token, which is gone once taken (None: unknown or lapsed)."""
    value = await client.evalsha(TAKE_TEST_TOKEN, (), [prefix, digest])
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
