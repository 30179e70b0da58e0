"""A provider key trying every other network's event, target and delivery: 404, never the data."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from redis import Redis

from tests.admin.api_support import PROVIDERS, Deployment, deploy, problem
from tests.conftest import Gateway, TargetServer


@pytest.fixture
def deployment(gateway: Gateway, redis: Redis, target_server: TargetServer) -> Iterator[Deployment]:
    d = deploy(gateway, redis, target_server)
    # Beside each file-declared target, one made through the API by its provider.
    for who, (net, _, _) in PROVIDERS.items():
        r = d.client(who).post(
            "/targets",
            json={
                "name": f"{who}-api",
                "networks": [net],
                "url": f"{target_server.url}/{who}-api?secret-path",
                "headers": {"Authorization": f"Bearer {who}-token"},
            },
        )
        assert r.status_code == 201, r.text
    try:
        yield d
    finally:
        d.close()


def secrets_of(d: Deployment, who: str) -> list[str]:
    """Strings that only `who`'s data contains."""
    net, target, invitee = PROVIDERS[who]
    return [net, target, invitee, d.events[who], f"{who}-api", f"{who}-token", f"/{who}"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("me", "other"), [("acme", "globex"), ("globex", "acme")])
def test_a_provider_key_never_reaches_another_providers_data(
    deployment: Deployment, target_server: TargetServer, me: str, other: str
) -> None:
    d = deployment
    c = d.client(me)
    net, target, invitee = PROVIDERS[other]
    event, did, api_target = d.events[other], d.delivery(other), f"{other}-api"
    before = {
        "deliveries": d.store.get_deliveries(event),
        "targets": d.store.api_targets()[api_target],
        "requests": len(target_server.received),
    }
    answers: list[httpx.Response] = []

    def not_found(r: httpx.Response) -> None:
        problem(r, 404)
        answers.append(r)

    # Events: one, and lists filtered to the other network.
    not_found(c.get(f"/events/{event}"))
    for params in ({}, {"network": net}, {"invitee": invitee}, {"state": "failed"}, {"limit": 500}):
        r = c.get("/events", params=params)
        assert r.status_code == 200
        assert event not in r.text and invitee not in r.text
        answers.append(r)
    assert c.get("/events", params={"network": net}).json()["items"] == []

    # Targets: file-declared and API-made, every operation.
    for name in (target, api_target):
        not_found(c.get(f"/targets/{name}"))
        not_found(
            c.put(
                f"/targets/{name}",
                json={"name": name, "networks": [PROVIDERS[me][0]], "url": "https://a.example"},
            )
        )
        not_found(c.delete(f"/targets/{name}"))
        not_found(c.post(f"/targets/{name}/pause", json={"reason": "mine now"}))
        not_found(c.post(f"/targets/{name}/resume"))
        not_found(c.post(f"/targets/{name}/validate"))
        not_found(
            c.post(
                f"/targets/{name}/validate",
                json={"name": name, "networks": [PROVIDERS[me][0]], "url": "https://a.example"},
            )
        )
        not_found(c.post(f"/targets/{name}/test", json={"wait": 1}))
    r = c.get("/targets")
    assert {t["name"] for t in r.json()["items"]} == {PROVIDERS[me][1], f"{me}-api"}
    answers.append(r)
    # Nor can it make a target that serves the other network (or every network).
    for networks in ([net], ["*"], [PROVIDERS[me][0], net]):
        problem(
            c.post("/targets", json={"name": f"{me}-grab", "networks": networks, "url": "https://a.example"}),
            422,
        )

    # Deliveries: one, replay one, replay by id, replay a selection, the dead letters.
    not_found(c.get(f"/deliveries/{did}"))
    not_found(c.post(f"/deliveries/{did}/replay"))
    not_found(c.post(f"/deliveries/{did}/replay", params={"force": "true"}))
    r = c.post("/deliveries/replay", json={"delivery_ids": [did], "force": True})
    assert r.json()["results"] == {did: "unknown"}
    r = c.post("/deliveries/replay", json={"failed": {"network": [net]}})
    assert r.json()["results"] == {}
    r = c.post("/deliveries/replay", json={"failed": {"target": [target]}})
    assert r.json()["results"] == {}
    for params in ({}, {"network": net}, {"target": target}):
        r = c.get("/deliveries/failed", params=params)
        assert did not in r.text
        answers.append(r)
    assert c.get("/deliveries/failed", params={"network": net}).json()["items"] == []

    # The overview, and keys (the operator's).
    r = c.get("/overview")
    assert {t["target"] for t in r.json()["targets"]} == {PROVIDERS[me][1], f"{me}-api"}
    answers.append(r)
    problem(c.get("/keys"), 403)
    problem(c.post("/keys", json={"name": "mine", "networks": [net]}), 403)

    # Not one answer carries anything of the other provider's ...
    # (a 404 names what was asked for, which is the asker's own words: those are taken out).
    for r in answers:
        text = r.text
        if r.status_code == 404:
            for segment in r.request.url.path.split("/")[4:]:  # after /api/v1/{collection}/
                text = text.replace(segment, "") if segment not in ("pause", "resume", "replay") else text
        for s in secrets_of(d, other):
            assert s not in text, (r.request.method, r.request.url, s, r.text)
    # ... and nothing of the other provider's changed or was sent.
    assert d.store.get_deliveries(event) == before["deliveries"]
    assert d.store.api_targets()[api_target] == before["targets"]
    assert len(target_server.received) == before["requests"]
    op = d.client("operator")
    assert op.get(f"/targets/{api_target}").json()["health"]["state"] == "active"
    assert op.get(f"/targets/{target}").json()["health"]["state"] == "active"
    # The operator sees both.
    assert {e["id"] for e in op.get("/events").json()["items"]} == set(d.events.values())
    assert json.loads(op.get(f"/events/{event}").text)["event"]["invitee"] == invitee
