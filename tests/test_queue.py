"""The accept step against a real Redis: one transaction, reloads never missed."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis
from rq.serializers import JSONSerializer

from gateway.app import apply_config_file
from gateway.config.load import config_from_dict
from gateway.events import INVITATION_CREATED, InvitationEvent, make_event
from gateway.exceptions import ConfigError
from gateway.live import LiveConfig
from gateway.queue import accept, delivery_id, make_queue
from gateway.store import PENDING, Store


def _config(*names: str) -> dict[str, object]:
    targets = [{"name": n, "networks": ["net1"], "url": f"https://{n}.example.com/"} for n in names]
    return config_from_dict({"targets": targets}).to_dict()


def _event() -> InvitationEvent:
    return make_event(
        {"invitee": "+15551231234", "invitor": "j", "network_id": "net1"}, INVITATION_CREATED, "json"
    )


def _waiting(redis: Redis) -> dict[str, float]:
    return {k.decode(): v for k, v in redis.zrange("gw:due", 0, -1, withscores=True)}


def test_accept_stores_event_and_its_waiting_deliveries_and_one_drain_job(redis: Redis) -> None:
    store = Store(redis)
    store.save_config(_config("a", "b"))
    queue = make_queue(redis, "q")
    event = _event()
    assert sorted(accept(store, queue, LiveConfig(store), event)) == ["a", "b"]
    assert store.get_event(event.id) == event
    assert {k: v["status"] for k, v in store.get_deliveries(event.id).items()} == {
        "a": PENDING,
        "b": PENDING,
    }
    assert _waiting(redis) == {
        delivery_id(event.id, "a"): event.received_at_ms,
        delivery_id(event.id, "b"): event.received_at_ms,
    }
    [job_id] = queue.get_job_ids()
    job = queue.fetch_job(job_id)
    assert job is not None and job.func_name == "gateway.jobs.drain"
    assert job.serializer is JSONSerializer
    assert job.retries_left == 2


def test_a_backlog_is_one_drain_job_not_one_per_callback(redis: Redis) -> None:
    store = Store(redis)
    store.save_config(_config("a"))
    queue = make_queue(redis, "q")
    live = LiveConfig(store)
    events = [_event() for _ in range(50)]
    for event in events:
        accept(store, queue, live, event)
    assert len(_waiting(redis)) == 50
    assert len(queue.get_job_ids()) == 1


def test_an_event_no_target_serves_queues_nothing(redis: Redis) -> None:
    store = Store(redis)
    queue = make_queue(redis, "q")
    assert accept(store, queue, LiveConfig(store), _event()) == []
    assert _waiting(redis) == {}
    assert queue.get_job_ids() == []
    store.save_config(_config("a"))  # and the next event that has a target still gets its job
    accept(store, queue, LiveConfig(store), _event())
    assert len(queue.get_job_ids()) == 1


def test_a_process_with_stale_targets_still_stores_the_new_ones(redis: Redis) -> None:
    store = Store(redis)
    store.save_config(_config("a"))
    live = LiveConfig(store)
    live.get()  # this process has seen version 1
    store.save_config(_config("a", "b"))  # another process applies version 2
    queue = make_queue(redis, "q")
    event = _event()
    assert sorted(accept(store, queue, live, event)) == ["a", "b"]
    assert set(_waiting(redis)) == {delivery_id(event.id, "a"), delivery_id(event.id, "b")}
    assert live.version == 2


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
