"""The accept step against a real Redis: one transaction, reloads never missed."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis
from rq.serializers import JSONSerializer

from gateway.app import apply_config_file
from gateway.events import INVITATION_CREATED, InvitationEvent, make_event
from gateway.exceptions import ConfigError
from gateway.queue import accept, delivery_id, make_queue
from gateway.settings import LiveConfig
from gateway.store import PENDING, Store
from gateway.targets import config_from_dict


def _config(*names: str) -> dict[str, object]:
    targets = [{"name": n, "networks": ["net1"], "url": f"https://{n}.example.com/"} for n in names]
    return config_from_dict({"targets": targets}).to_dict()


def _event() -> InvitationEvent:
    return make_event(
        {"invitee": "+15551231234", "invitor": "j", "network_id": "net1"}, INVITATION_CREATED, "json"
    )


def test_accept_stores_event_and_one_job_per_target(redis: Redis) -> None:
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
    job_ids = set(queue.get_job_ids())
    assert job_ids == {delivery_id(event.id, "a"), delivery_id(event.id, "b")}
    job = queue.fetch_job(delivery_id(event.id, "a"))
    assert job is not None and job.func_name == "gateway.delivery.deliver"
    assert job.serializer is JSONSerializer


def test_a_process_with_stale_targets_still_enqueues_the_new_ones(redis: Redis) -> None:
    store = Store(redis)
    store.save_config(_config("a"))
    live = LiveConfig(store)
    live.get()  # this process has seen version 1
    store.save_config(_config("a", "b"))  # another process applies version 2
    queue = make_queue(redis, "q")
    event = _event()
    assert sorted(accept(store, queue, live, event)) == ["a", "b"]
    assert len(queue.get_job_ids()) == 2
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
