"""The admin API through a real `gateway web` (uvicorn) and `gateway worker`, on real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from redis import Redis

from gateway.admin.openapi import SPEC
from tests.admin.api_support import PROVIDERS, Deployment, deploy, problem, send_callback
from tests.conftest import Gateway, TargetServer
from tests.e2e.e2e_support import wait_final


@pytest.fixture
def deployment(gateway: Gateway, redis: Redis, target_server: TargetServer) -> Iterator[Deployment]:
    d = deploy(gateway, redis, target_server)
    try:
        yield d
    finally:
        d.close()


@pytest.mark.timeout(180)
def test_events_targets_deliveries_and_replay(
    deployment: Deployment, target_server: TargetServer, redis: Redis
) -> None:
    d = deployment
    acme = d.client("acme")
    assert acme.get("/me").json() == {
        "id": d.keys["acme"].split("_")[1],
        "name": "acme",
        "kind": "provider",
        "networks": ["net-acme"],
    }
    # Events: the list, filters, one event with its attempts.
    page = acme.get("/events").json()
    assert [e["id"] for e in page["items"]] == [d.events["acme"]] and page["next_cursor"] is None
    assert acme.get("/events", params={"state": "delivered"}).json()["items"] == []
    assert (
        len(acme.get("/events", params={"state": "failed", "invitee": "+15550001111"}).json()["items"]) == 1
    )
    one = acme.get(f"/events/{d.events['acme']}").json()
    [delivery] = one["deliveries"]
    assert delivery["status"] == "failed" and delivery["attempt_count"] == 1
    assert [a["status_code"] for a in delivery["attempts"]] == [500]

    # A target made through the API reaches the web and worker processes without a restart.
    made = acme.post(
        "/targets",
        json={
            "name": "acme-sms",
            "networks": ["net-acme"],
            "url": f"{target_server.url}/sms",
            "post_data": '{"to": "%invitee%"}',
            "content_type": "application/json",
            "headers": {"X-Api-Key": "k-123"},
        },
    )
    assert made.status_code == 201, made.text
    assert made.headers["location"] == "/api/v1/targets/acme-sms"
    assert made.json()["source"] == "api" and made.json()["headers"]["X-Api-Key"] == "********"
    problem(
        acme.post(
            "/targets", json={"name": "acme-sms", "networks": ["net-acme"], "url": "https://x.example"}
        ),
        409,
    )
    bad = problem(
        acme.post("/targets", json={"name": "x", "networks": ["net-acme"], "url": "https://x/?a=%nope%"}), 422
    )
    assert bad["field"] == "url" and "%nope%" in bad["detail"]
    # Every problem at once, each naming its key.
    worse = {"name": "x", "networks": ["net-acme"], "url": "https://x/?a=%nope%", "timeout": 0, "retry": [-1]}
    many = problem(acme.post("/targets", json=worse), 422)
    assert {p["name"] for p in many["invalid-params"]} >= {"url", "timeout", "retry"}, many
    target_server.script("/sms", [200])
    target_server.script("/acme", [200])  # this one reaches acme-crm as well
    send_callback(d.base, "net-acme", "+15550003333")
    [sms] = target_server.wait_for("/sms", 1)
    assert sms.json() == {"to": "+15550003333"} and sms.headers["x-api-key"] == "k-123"
    names = {t["name"]: t["source"] for t in acme.get("/targets").json()["items"]}
    assert names == {"acme-crm": "file", "acme-sms": "api"}

    # Update (the redacted header comes back and keeps its value), pause, resume, delete.
    current = acme.get("/targets/acme-sms").json()
    updated = acme.put("/targets/acme-sms", json={**current, "timeout": 5})
    assert updated.status_code == 200, updated.text
    assert d.store.api_targets()["acme-sms"]["headers"] == {"X-Api-Key": "k-123"}
    assert d.store.api_targets()["acme-sms"]["timeout"] == 5
    problem(
        acme.put(
            "/targets/acme-crm",
            json={"name": "acme-crm", "networks": ["net-acme"], "url": "https://x.example"},
        ),
        409,
    )
    assert acme.post("/targets/acme-sms/pause", json={"reason": "maintenance"}).json()["state"] == "paused"
    health = acme.get("/targets/acme-sms").json()["health"]
    assert health["state"] == "paused" and health["reason"] == "maintenance"
    assert acme.post("/targets/acme-sms/resume").json()["before"] == "paused"
    assert acme.delete("/targets/acme-sms").status_code == 204
    problem(acme.get("/targets/acme-sms"), 404)

    # Dead letters and replay: the same machinery as `gateway replay`.
    failed = acme.get("/deliveries/failed").json()
    assert [f["delivery_id"] for f in failed["items"]] == [d.delivery("acme")]
    r = acme.post(f"/deliveries/{d.delivery('acme')}/replay")
    assert r.json() == {"results": {d.delivery("acme"): "replayed"}, "counts": {"replayed": 1}}
    wait_final(d.store, d.events["acme"], ["acme-crm"])
    assert acme.get(f"/deliveries/{d.delivery('acme')}").json()["status"] == "delivered"
    assert acme.get("/deliveries/failed").json()["items"] == []
    again = acme.post("/deliveries/replay", json={"delivery_ids": [d.delivery("acme")]}).json()
    assert again["results"] == {d.delivery("acme"): "delivered"}  # force sends it again

    # The overview counts it.
    view = acme.get("/overview").json()
    [crm] = [t for t in view["targets"] if t["target"] == "acme-crm"]
    assert crm["received"] == 2 and crm["delivered"] == 2 and len(crm["hours"]) == 24


def test_replay_a_selection_of_dead_letters(deployment: Deployment, target_server: TargetServer) -> None:
    d = deployment
    op = d.client("operator")
    assert {f["delivery_id"] for f in op.get("/deliveries/failed").json()["items"]} == {
        d.delivery("acme"),
        d.delivery("globex"),
    }
    for name in PROVIDERS:
        target_server.script(f"/{name}", [200])
    r = op.post("/deliveries/replay", json={"failed": {"network": ["net-globex"]}})
    assert r.json()["results"] == {d.delivery("globex"): "replayed"}
    wait_final(d.store, d.events["globex"], ["globex-crm"])
    assert d.store.get_deliveries(d.events["globex"])["globex-crm"]["status"] == "delivered"
    assert d.store.get_deliveries(d.events["acme"])["acme-crm"]["status"] == "failed"


def test_keys_shown_once_hashed_and_revocable(deployment: Deployment, redis: Redis) -> None:
    d = deployment
    op = d.client("operator")
    made = op.post("/keys", json={"name": "initech", "networks": ["net-initech"]})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert key.startswith("gwk_") and made.json()["networks"] == ["net-initech"]
    # Shown once: never in a list, never in Redis.
    listed = op.get("/keys").json()["items"]
    assert key not in json.dumps(listed) and {k["name"] for k in listed} >= {"initech", "ops"}
    assert all(key.encode() not in (redis.dump(k) or b"") for k in redis.scan_iter("*"))
    initech = httpx.Client(base_url=d.base + "/api/v1", headers={"Authorization": f"Bearer {key}"})
    try:
        assert initech.get("/events").json() == {"items": [], "next_cursor": None}
        problem(initech.get("/keys"), 403)  # a provider key does not manage keys
        revoked = op.delete(f"/keys/{made.json()['id']}").json()
        assert revoked["revoked"] is True
        body = problem(initech.get("/events"), 401)
        assert "revoked" in body["detail"]
    finally:
        initech.close()
    problem(op.delete("/keys/000000000000"), 404)
    # No key, a malformed header, a made-up key: 401 with a Bearer challenge.
    for headers in ({}, {"Authorization": "Basic Zm9vOmJhcg=="}, {"Authorization": "Bearer gwk_nope"}):
        r = httpx.get(d.base + "/api/v1/events", headers=headers)
        problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_the_openapi_document_is_served(deployment: Deployment) -> None:
    r = httpx.get(deployment.base + "/api/v1/openapi.json")
    assert r.status_code == 200 and r.json() == json.loads(json.dumps(SPEC))
    assert r.json()["openapi"].startswith("3.")


@pytest.mark.timeout(120)
def test_validate_and_test_a_target(deployment: Deployment, target_server: TargetServer) -> None:
    d = deployment
    acme = d.client("acme")
    declaration = {
        "name": "acme-hook",
        "networks": ["net-acme"],
        "url": f"{target_server.url}/hook?to=%invitee%",
        "post_data": '{"who": "%invitor%"}',
        "content_type": "application/json",
        "headers": {"X-Api-Key": "literal-secret-123"},
        "auth": {"username": "me", "password": "pass-456"},
    }
    # A declaration not saved yet: shown, not stored.
    preview = acme.post("/targets/acme-hook/validate", json=declaration)
    assert preview.status_code == 200, preview.text
    request = preview.json()["request"]
    assert request["method"] == "POST" and request["url"].startswith(f"{target_server.url}/hook?to=%2B")
    assert json.loads(request["body"]) == {"who": preview.json()["event"]["invitor"]}
    assert "literal-secret-123" not in preview.text and "pass-456" not in preview.text
    problem(acme.get("/targets/acme-hook"), 404)
    bad = problem(
        acme.post("/targets/acme-hook/validate", json={**declaration, "post_data": '{"who": %invitor%}'}), 422
    )
    assert bad["field"] == "post_data"
    # Saved, then validated and tested as stored.
    assert acme.post("/targets", json=declaration).status_code == 201
    stored = acme.post("/targets/acme-hook/validate")
    assert stored.status_code == 200 and "literal-secret-123" not in stored.text
    target_server.script("/hook", [(200, {"Content-Type": "text/plain"}, b"hello back")])
    tested = acme.post("/targets/acme-hook/test", json={"invitee": "+15550009999", "wait": 30})
    assert tested.status_code == 200, tested.text
    body = tested.json()
    assert body["completed"] is True and body["result"]["outcome"] == "delivered", body
    assert body["result"]["response"]["status"] == 200 and body["result"]["response"]["body"] == "hello back"
    assert "literal-secret-123" not in tested.text and "pass-456" not in tested.text
    [sent] = target_server.wait_for("/hook", 1)
    assert sent.headers["x-api-key"] == "literal-secret-123"  # the real one went out
    assert dict(sent.query)["to"] == "+15550009999"
    # Another network's sample: refused.
    problem(acme.post("/targets/acme-hook/test", json={"network_id": "net-globex"}), 422)


@pytest.mark.timeout(120)
def test_what_the_document_calls_invalid_is_refused_naming_it(
    deployment: Deployment, target_server: TargetServer
) -> None:
    """A query parameter the OpenAPI document calls invalid is a 400 naming it; an empty one is
    never read as "no filter" (schemathesis found `?type=` and `?event=` taken so)."""
    d = deployment
    acme = d.client("acme")
    cases: list[tuple[str, dict[str, str | list[str]], str]] = [
        ("/events", {"type": ""}, "type"),
        ("/events", {"type": "nope"}, "type"),
        ("/events", {"state": ""}, "state"),
        ("/events", {"network": ""}, "network"),
        ("/events", {"invitee": ""}, "invitee"),
        ("/events", {"invitor": ""}, "invitor"),
        ("/events", {"cursor": ""}, "cursor"),
        ("/events", {"cursor": "not-one-of-ours"}, "cursor"),
        ("/events", {"limit": "0"}, "limit"),
        ("/events", {"limit": ""}, "limit"),
        ("/events", {"since": "yesterday"}, "since"),
        ("/events", {"since": "2026-05-02T00:00:00Z", "until": "2026-05-01T00:00:00Z"}, "since"),
        ("/events", {"type": ["invitation_created", "invitation_created"]}, "type"),
        ("/deliveries/failed", {"event": ""}, "event"),
        ("/deliveries/failed", {"event": "nope"}, "event"),
        ("/deliveries/failed", {"target": ["acme-crm", ""]}, "target"),
        ("/deliveries/failed", {"network": ""}, "network"),
        ("/deliveries/failed", {"error": ""}, "error"),
        ("/deliveries/failed", {"until": ""}, "until"),
    ]
    for path, params, field in cases:
        body = problem(acme.get(path, params=params), 400)
        assert body["field"] == field and body["title"] == "Invalid query parameter", (path, params, body)
    assert problem(acme.post(f"/deliveries/{d.delivery('acme')}/replay", params={"force": ""}), 400)[
        "field"
    ] == ("force")
    # A replay's selection is a body: 422. An empty filter would have replayed every dead letter.
    for failed, field in [({"event": ""}, "event"), ({"error": ""}, "error"), ({"network": [""]}, "network")]:
        assert problem(acme.post("/deliveries/replay", json={"failed": failed}), 422)["field"] == field
    letters = acme.get("/deliveries/failed").json()["items"]
    assert [x["delivery_id"] for x in letters] == [d.delivery("acme")] and letters[0]["replays"] == 0

    # validate and PUT take the name from the path: a body may leave it out, not contradict it.
    declaration = {"networks": ["net-acme"], "url": f"{target_server.url}/hook"}
    preview = acme.post("/targets/acme-new/validate", json=declaration)
    assert preview.status_code == 200 and preview.json()["target"] == "acme-new", preview.text
    assert (
        problem(acme.post("/targets/acme-new/validate", json={**declaration, "name": "other"}), 422)["field"]
        == "name"
    )
    # A body, even {}, is a declaration to validate (networks and url are required); no body: the
    # stored target. Whitespace alone (a form feed, a space) is a body that is not JSON (schemathesis).
    problem(acme.post("/targets/acme-crm/validate", json={}), 422)
    for path in ("/targets/acme-crm/validate", "/targets/acme-crm/test", "/targets/acme-crm/pause"):
        for blank in (b"\x0c", b" ", b"\r\n"):
            problem(acme.post(path, content=blank, headers={"Content-Type": "application/json"}), 400)
    assert acme.post("/targets/acme-crm/validate").json()["target"] == "acme-crm"
    assert acme.post("/targets", json={**declaration, "name": "acme-new"}).status_code == 201
    changed = acme.put("/targets/acme-new", json={**declaration, "retry": [5]})
    assert changed.status_code == 200 and changed.json()["retry"] == [5], changed.text
