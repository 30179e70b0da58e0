"""A flood of duplicates (a replay: the cheapest flood there is), through the web app in process
against the test Redis: every one answered 204, counted, kept in the callbacks inspector as a
duplicate of the right event, and logged summed rather than a line each (issue 16 point 2)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from redis import Redis

from gateway.app import IngestFastPath, create_app
from gateway.ingest import accept
from gateway.settings import Secret, Settings
from gateway.store.callbacks import Entry

PREFIX = "gw"
NETWORK = "mynetwork"
LINE = re.compile(
    r"^duplicate invitation_created \(network (\S+)\) of (\S+): not delivered again(?: \((\d+) times\))?$"
)


class InProcess:
    """The gateway's ASGI app with its lifespan entered, on an event loop of this thread."""

    def __init__(self, redis_url: str, data_dir: Path) -> None:
        settings = Settings(
            redis_url=Secret(redis_url), open_ingest=True, dedupe_seconds=600, data_dir=str(data_dir)
        )
        self.loop = asyncio.new_event_loop()
        self.app: IngestFastPath = create_app(settings)
        self._lifespan = self.app.app.router.lifespan_context(self.app.app)
        self.loop.run_until_complete(self._lifespan.__aenter__())

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.run_until_complete(self._lifespan.__aexit__(None, None, None))
            self.loop.close()

    def get_all(self, queries: list[bytes]) -> list[int]:
        """Every query as a GET /invitation_created at once; the statuses, in order."""

        async def all_at_once() -> list[int]:
            return await asyncio.gather(*(self._get(q) for q in queries))

        return self.loop.run_until_complete(all_at_once())

    async def _get(self, query: bytes) -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/invitation_created",
            "raw_path": b"/invitation_created",
            "query_string": query,
            "root_path": "",
            "headers": [(b"host", b"gateway.test")],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        statuses: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await self.app(scope, receive, send)
        return statuses[0]


@pytest.fixture
def gateway(redis_url: str, tmp_path: Path) -> Iterator[InProcess]:
    app = InProcess(redis_url, tmp_path / "data")
    try:
        yield app
    finally:
        app.close()


def _query(invitee: str) -> bytes:
    return urlencode({"invitee": invitee, "invitor": "johnsnow", "network_id": NETWORK}).encode()


def test_a_duplicate_flood_is_answered_counted_kept_and_logged_summed(
    gateway: InProcess, redis: Redis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One summary for the whole flood whatever the machine's speed: the first batch's line at
    # once, the rest when the process stops (a second later, otherwise).
    monkeypatch.setattr(accept, "DUPLICATES_EVERY", 3600.0)
    caplog.set_level(logging.INFO, logger="gateway.ingest")
    first, second = _query("+15551230001"), _query("+15551230002")
    assert gateway.get_all([first, second]) == [204, 204]
    taken = [Entry.parse(raw) for raw in redis.lrange(f"{PREFIX}:callbacks:net:{NETWORK}", 0, -1)]
    assert sorted(e.outcome for e in taken) == ["accepted", "accepted"]
    id_of = {e.path: e.id for e in taken}  # the path as kept (its query) -> its first event

    flood = [first, second, first] * 100  # two invitations replayed, interleaved
    assert gateway.get_all(flood) == [204] * len(flood)

    # Counted: the duplicates counter, and nothing stored again.
    assert int(redis.hget(f"{PREFIX}:counters", "duplicates") or 0) == len(flood)
    assert redis.zcard(f"{PREFIX}:events") == 2
    # Kept: each one in the inspector as a duplicate of its invitation's first event.
    entries = [Entry.parse(raw) for raw in redis.lrange(f"{PREFIX}:callbacks:net:{NETWORK}", 0, -1)]
    dups = [e for e in entries if e.outcome == "duplicate"]
    assert len(dups) == len(flood)
    assert all(e.detail == id_of[e.path] for e in dups)
    by_event = Counter(e.detail for e in dups)
    assert sorted(by_event.values()) == [100, 200]

    # Logged summed: a line per repeated event at once (the first batch's), then one per event
    # when the process stops; never a line per duplicate.
    gateway.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("duplicate")]
    assert 2 <= len(lines) <= 4, lines
    logged: Counter[str] = Counter()
    for line in lines:
        m = LINE.match(line)
        assert m is not None, line
        assert m.group(1) == NETWORK
        logged[m.group(2)] += int(m.group(3) or 1)
    assert logged == by_event


def test_a_replay_of_many_invitations_is_logged_in_a_bounded_number_of_lines(
    gateway: InProcess, redis: Redis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accept, "DUPLICATES_EVERY", 3600.0)
    monkeypatch.setattr(accept, "DUPLICATE_LINES", 3)
    caplog.set_level(logging.INFO, logger="gateway.ingest")
    queries = [_query(f"+1555123{i:04d}") for i in range(25)]
    assert gateway.get_all(queries) == [204] * 25
    assert gateway.get_all(queries) == [204] * 25  # each repeated once: 25 events repeated
    gateway.close()
    assert int(redis.hget(f"{PREFIX}:counters", "duplicates") or 0) == 25
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("duplicate")]
    named = [m for m in (LINE.match(line) for line in lines) if m is not None]
    rest = [re.match(r"^duplicate: (\d+) more of (\d+) other events", line) for line in lines]
    summed = [m for m in rest if m is not None]
    assert len(named) + len(summed) == len(lines)
    # At most 3 named a summary (here two: the first batch's at once, the rest at the stop).
    assert len(named) <= 6 and 1 <= len(summed) <= 2
    assert sum(int(m.group(3) or 1) for m in named) + sum(int(m.group(1)) for m in summed) == 25
    assert len({m.group(2) for m in named}) == len(named)
