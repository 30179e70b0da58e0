"""The accept step as the web wires it (gateway.app.ingest_parts), against a real Redis: the
event and its waiting deliveries stored, one drain job for a backlog, reloads never missed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from redis import Redis
from rq.serializers import JSONSerializer

from gateway.app import IngestParts, apply_config_file, ingest_parts
from gateway.config.load import config_from_dict
from gateway.events import INVITATION_CREATED, InvitationEvent, make_event
from gateway.exceptions import ConfigError
from gateway.ingest.spool import Spool
from gateway.live import LiveConfig
from gateway.queue import make_queue
from gateway.records import DeliveryStatus, delivery_id
from gateway.settings import Secret, Settings
from gateway.store.events import Store
from gateway.store.ingest import ACCEPTED, AcceptResult


def _config(*names: str) -> dict[str, object]:
    targets = [{"name": n, "networks": ["net1"], "url": f"https://{n}.example.com/"} for n in names]
    return config_from_dict({"targets": targets}).to_dict()


def _event() -> InvitationEvent:
    return make_event(
        {"invitee": "+15551231234", "invitor": "j", "network_id": "net1"}, INVITATION_CREATED, "json"
    )


def _waiting(redis: Redis) -> dict[str, float]:
    return {k.decode(): v for k, v in redis.zrange("gw:due", 0, -1, withscores=True)}


def _accept(
    redis_url: str,
    tmp_path: Path,
    events: Sequence[InvitationEvent],
    before: Callable[[IngestParts], None] | None = None,
) -> tuple[list[AcceptResult], list[list[str]], int]:
    """Accept `events` one after the other as the callback endpoint does (the targets chosen by
    the configuration in hand, with its version): (statuses, targets chosen, version after)."""
    settings = Settings(redis_url=Secret(redis_url), queue_name="q", dedupe_seconds=0)
    spool = Spool(tmp_path / "spool", name="test")
    parts = ingest_parts(settings, spool)
    parts.live.refresh()  # as the web's start does

    async def go() -> tuple[list[AcceptResult], list[list[str]]]:
        statuses: list[AcceptResult] = []
        chosen: list[list[str]] = []
        try:
            if before is not None:
                before(parts)
            for event in events:
                version, config = parts.live.in_hand
                targets = [t.name for t in config.routes(event.type, event.network_id)]
                statuses.append(await parts.accepter.accept(event, targets, version))
                chosen.append(targets)
            return statuses, chosen
        finally:
            await parts.fast.aclose()
            await parts.aio.aclose()

    try:
        statuses, chosen = asyncio.run(go())
        return statuses, chosen, parts.live.version
    finally:
        parts.redis.close()
        spool.close()


def test_accept_stores_event_and_its_waiting_deliveries_and_one_drain_job(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    store = Store(redis)
    store.save_config(_config("a", "b"))
    event = _event()
    statuses, [chosen], _ = _accept(redis_url, tmp_path, [event])
    assert statuses == [ACCEPTED] and sorted(chosen) == ["a", "b"]
    assert store.get_event(event.id) == event
    assert {k: v["status"] for k, v in store.get_deliveries(event.id).items()} == {
        "a": DeliveryStatus.PENDING,
        "b": DeliveryStatus.PENDING,
    }
    assert _waiting(redis) == {
        delivery_id(event.id, "a"): event.received_at_ms,
        delivery_id(event.id, "b"): event.received_at_ms,
    }
    queue = make_queue(redis, "q")
    [job_id] = queue.get_job_ids()
    job = queue.fetch_job(job_id)
    assert job is not None and job.func_name == "gateway.jobs.drain"
    assert job.serializer is JSONSerializer
    assert job.retries_left == 2


def test_a_backlog_is_one_drain_job_not_one_per_callback(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    Store(redis).save_config(_config("a"))
    statuses, _, _ = _accept(redis_url, tmp_path, [_event() for _ in range(50)])
    assert statuses == [ACCEPTED] * 50
    assert len(_waiting(redis)) == 50
    assert len(make_queue(redis, "q").get_job_ids()) == 1


def test_an_event_no_target_serves_queues_nothing(redis_url: str, redis: Redis, tmp_path: Path) -> None:
    store = Store(redis)
    statuses, chosen, _ = _accept(redis_url, tmp_path, [_event()])
    assert statuses == [ACCEPTED] and chosen == [[]]
    assert _waiting(redis) == {}
    assert make_queue(redis, "q").get_job_ids() == []
    store.save_config(_config("a"))  # and the next event that has a target still gets its job
    _accept(redis_url, tmp_path, [_event()])
    assert len(make_queue(redis, "q").get_job_ids()) == 1


def test_a_process_with_stale_targets_still_stores_the_new_ones(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    store = Store(redis)
    store.save_config(_config("a"))  # this process has seen version 1 ...
    event = _event()

    def another_process_applies_version_2(parts: IngestParts) -> None:
        assert parts.live.version == 1
        store.save_config(_config("a", "b"))

    statuses, [chosen], version = _accept(redis_url, tmp_path, [event], another_process_applies_version_2)
    assert statuses == [ACCEPTED] and chosen == ["a"]  # chosen by version 1 ...
    assert set(_waiting(redis)) == {delivery_id(event.id, "a"), delivery_id(event.id, "b")}  # ... both
    assert version == 2


def test_an_unreadable_stored_config_keeps_the_last_good_one(redis: Redis) -> None:
    store = Store(redis)
    store.save_config(_config("a"))
    live = LiveConfig(store)
    assert [t.name for t in live.get().targets] == ["a"]
    store.save_config({"targets": [{"name": "b", "networks": ["*"], "url": "x", "from_the_future": 1}]})
    assert [t.name for t in live.refresh().targets] == ["a"]


def test_a_retry_schedule_longer_than_retention_is_refused(redis: Redis, tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        '[[targets]]\nname = "slow"\nnetworks = ["*"]\n'
        'url = "https://x.example.com/"\nretry = [86400, 86400]\n'
    )
    with pytest.raises(ConfigError) as info:
        apply_config_file(Store(redis, retention=86400), str(path))
    assert (info.value.target, info.value.key) == ("slow", "retry")
    assert apply_config_file(Store(redis, retention=30 * 86400), str(path))[1] is True
