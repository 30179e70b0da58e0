"""The data access the API and the dashboard share, as each key sees it (real Redis)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis import Redis

from gateway.admin import Conflict, Invalid, NotFound
from gateway.admin.keys import Principal
from gateway.admin.queries import EventFilter, FailedFilter
from gateway.admin.redaction import REDACTED
from gateway.admin.service import Service
from gateway.events import make_event
from gateway.records import Delivery, DeliveryStatus, delivery_id
from gateway.store.events import Store
from tests.seeding import store_events

OPERATOR = Principal("op", "ops", None)
ACME = Principal("acme", "acme", frozenset({"net-a"}))
GLOBEX = Principal("globex", "globex", frozenset({"net-b"}))


def target(name: str, networks: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "networks": networks, "url": f"https://example.com/{name}?to=%invitee%", **extra}


def add_event(store: Store, network: str, invitee: str, targets: list[str], now: float | None = None) -> str:
    ev = make_event(
        {"invitee": invitee, "invitor": "alice", "network_id": network},
        "invitation_created",
        "query",
        now=now,
    )
    store_events(store, [(ev, targets)])
    return ev.id


def fail(store: Store, event_id: str, name: str) -> None:
    state = Delivery(status=DeliveryStatus.FAILED, attempts=3, last_status_code=500, last_error="HTTP 500")
    store.record_attempt(
        event_id, name, {"attempt": 3, "outcome": "failed", "status_code": 500}, state.to_dict()
    )
    store.redis.zadd(f"{store.prefix}:dead", {delivery_id(event_id, name): int(time.time() * 1000)})
    store.redis.zrem(f"{store.prefix}:due", delivery_id(event_id, name))


@pytest.fixture
def service(redis: Redis) -> Service:
    store = Store(redis)
    store.save_config({"targets": [target("shared", ["*"]), target("file-a", ["net-a"])]})
    return Service(store)


def test_events_are_filtered_by_the_keys_networks_and_paged(service: Service) -> None:
    store = service.store
    a_ids = [add_event(store, "net-a", f"+4206011122{i:02d}", ["shared"]) for i in range(7)]
    b_id = add_event(store, "net-b", "+420601112299", ["shared"])
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = service.list_events(ACME, cursor=cursor, limit=3)
        seen += [e["id"] for e in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(a_ids, reverse=True)
    assert b_id not in {e["id"] for e in service.list_events(ACME, limit=100).items}
    assert service.list_events(ACME, EventFilter(network="net-b")).items == []
    assert len(service.list_events(OPERATOR, limit=100).items) == 8
    only = service.list_events(OPERATOR, EventFilter(invitee="+420601112203")).items
    assert [e["id"] for e in only] == [a_ids[3]]
    with pytest.raises(NotFound):
        service.get_event(ACME, b_id)
    assert service.get_event(GLOBEX, b_id)["event"]["id"] == b_id
    with pytest.raises(Invalid):
        service.list_events(ACME, cursor="not-a-cursor")


def test_state_and_time_filters(service: Service) -> None:
    store = service.store
    old = add_event(store, "net-a", "+420601110001", ["file-a"], now=time.time() - 7200)
    new = add_event(store, "net-a", "+420601110002", ["file-a"])
    fail(store, new, "file-a")
    failed = service.list_events(ACME, EventFilter(state="failed")).items
    assert [e["id"] for e in failed] == [new]
    since = int((time.time() - 3600) * 1000)
    assert [e["id"] for e in service.list_events(ACME, EventFilter(since_ms=since)).items] == [new]
    assert [e["id"] for e in service.list_events(ACME, EventFilter(until_ms=since)).items] == [old]


def test_targets_api_made_beside_the_file(service: Service) -> None:
    made = service.create_target(ACME, target("crm", ["net-a"], auth={"username": "u", "password": "pw"}))
    assert made["source"] == "api" and made["auth"]["password"] == REDACTED
    names = {t["name"]: t["source"] for t in service.list_targets(ACME)}
    assert names == {"file-a": "file", "crm": "api"}  # "shared" serves every network: the operator's
    assert {t["name"] for t in service.list_targets(GLOBEX)} == set()
    with pytest.raises(Conflict):
        service.create_target(ACME, target("file-a", ["net-a"]))
    with pytest.raises(Invalid) as info:
        service.create_target(ACME, target("other", ["net-b"]))
    assert info.value.field == "networks"
    with pytest.raises(Invalid) as info:
        service.create_target(OPERATOR, target("envy", ["*"], headers={"X-Key": "${REDIS_URL}"}))
    assert info.value.field == "headers"
    with pytest.raises(Invalid) as info:
        service.create_target(ACME, {"name": "bad", "networks": ["net-a"], "url": "ftp://x"})
    assert info.value.field == "url"
    # An update that sends the redacted password back keeps the stored one.
    service.update_target(ACME, "crm", {**made, "url": "https://example.com/v2?to=%invitee%"})
    stored = service.store.api_targets()["crm"]
    assert stored["auth"]["password"] == "pw" and stored["url"].endswith("/v2?to=%invitee%")
    with pytest.raises(Conflict):
        service.update_target(ACME, "file-a", target("file-a", ["net-a"]))
    with pytest.raises(NotFound):
        service.update_target(GLOBEX, "crm", target("crm", ["net-b"]))
    with pytest.raises(NotFound):
        service.delete_target(GLOBEX, "crm")
    # A later `targets apply` keeps API-made targets, and wins a name clash.
    service.store.save_config({"targets": [target("file-a", ["net-a"])]})
    assert {t["name"] for t in service.list_targets(OPERATOR)} == {"file-a", "crm"}
    service.store.save_config({"targets": [target("crm", ["net-a"])]})
    assert [(t["name"], t["source"]) for t in service.list_targets(OPERATOR)] == [("crm", "file")]
    assert service.store.api_targets() == {}


def test_pause_resume_failed_and_replay(service: Service) -> None:
    store = service.store
    eid = add_event(store, "net-a", "+420601110003", ["file-a"])
    fail(store, eid, "file-a")
    other = add_event(store, "net-b", "+420601110004", ["shared"])
    fail(store, other, "shared")
    page = service.failed_deliveries(ACME)
    assert [d["delivery_id"] for d in page.items] == [delivery_id(eid, "file-a")]
    assert {d["event_id"] for d in service.failed_deliveries(OPERATOR).items} == {eid, other}
    by_target = service.failed_deliveries(OPERATOR, FailedFilter(targets=frozenset({"shared"})))
    assert [d["event_id"] for d in by_target.items] == [other]
    assert service.failed_deliveries(ACME, FailedFilter(networks=frozenset({"net-b"}))).items == []
    assert service.replay(ACME, [delivery_id(other, "shared")]) == {delivery_id(other, "shared"): "unknown"}
    assert service.replay_failed(ACME) == {delivery_id(eid, "file-a"): "replayed"}
    assert service.pause_target(ACME, "file-a")["state"] == "paused"
    with pytest.raises(NotFound):
        service.pause_target(GLOBEX, "file-a")
    assert service.resume_target(ACME, "file-a")["before"] == "paused"


def test_overview_counts_the_last_24_hours(service: Service) -> None:
    store = service.store
    add_event(store, "net-a", "+420601110005", ["file-a"])
    eid = add_event(store, "net-a", "+420601110006", ["file-a"])
    fail(store, eid, "file-a")
    add_event(store, "net-a", "+420601110007", ["file-a"], now=time.time() - 2 * 86400)
    view = service.overview(ACME)
    [row] = [t for t in view["targets"] if t["target"] == "file-a"]
    assert (row["received"], row["failed"], row["waiting"]) == (2, 1, 1)
    assert len(row["hours"]) == 24 and row["hours"][-1]["received"] == 2
    assert {t["target"] for t in service.overview(GLOBEX)["targets"]} == set()


def test_keys_are_the_operators(service: Service) -> None:
    with pytest.raises(NotFound):
        service.list_keys(ACME)
    made, secret = service.create_key(OPERATOR, "acme", ["net-a"])
    assert secret.startswith("gwk_") and service.revoke_key(OPERATOR, made["id"])["revoked"]


def test_ids_never_name_other_redis_keys(service: Service) -> None:
    eid = add_event(service.store, "net-a", "+420601110008", ["file-a"])
    for bad in (f"{eid}:deliveries", f"{eid}:attempts", "", "a b"):
        with pytest.raises(NotFound):
            service.get_event(OPERATOR, bad)
        with pytest.raises(NotFound):
            service.get_delivery(OPERATOR, f"{bad}-file-a")
    assert service.replay(OPERATOR, [f"{eid}:deliveries-file-a"]) == {f"{eid}:deliveries-file-a": "unknown"}
