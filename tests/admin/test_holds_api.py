"""GET /holds, DELETE /holds/{id}, GET /suppressed and POST /suppressed/release through a real
deployment: each provider key sees and acts on its own networks' only (404 for the others')."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from tests.admin.api_support import PROVIDERS, Deployment, deploy, problem
from tests.conftest import Gateway, TargetServer
from tests.e2e.e2e_support import wait_until
from tests.seeding import hold_prefix


@pytest.fixture
def deployment(gateway: Gateway, redis: Redis, target_server: TargetServer) -> Iterator[Deployment]:
    d = deploy(gateway, redis, target_server)
    try:
        yield d
    finally:
        d.close()


@pytest.mark.timeout(120)
def test_holds_and_suppressed_deliveries_per_key(deployment: Deployment, target_server: TargetServer) -> None:
    d = deployment
    held = {who: hold_prefix(d.store, net, target) for who, (net, target, _) in PROVIDERS.items()}
    acme, globex, op = d.client("acme"), d.client("globex"), d.client("operator")

    # Each key lists its own network's hold; the operator both.
    [mine] = acme.get("/holds").json()["items"]
    assert (mine["network"], mine["prefix"]) == ("net-acme", "+8821")
    assert "held: almost none of its invitations are accepted" in mine["reason"]
    [theirs] = globex.get("/holds").json()["items"]
    assert theirs["network"] == "net-globex" and theirs["id"] != mine["id"]
    assert {h["network"] for h in op.get("/holds").json()["items"]} == {"net-acme", "net-globex"}
    assert acme.get("/holds", params={"network": "net-globex"}).json()["items"] == []

    # Suppressed deliveries likewise, with their reason and the rule that held them back.
    [s] = acme.get("/suppressed").json()["items"]
    assert (s["delivery_id"], s["network"], s["kind"]) == (held["acme"], "net-acme", "guard")
    assert s["reason"].startswith("prefix +8821 held")
    assert acme.get("/suppressed", params={"network": "net-globex"}).json()["items"] == []
    problem(acme.get("/suppressed", params={"reason": "weather"}), 400)  # a query parameter: 400

    # Another provider's hold: 404, and it stays.
    problem(acme.delete(f"/holds/{theirs['id']}"), 404)
    problem(acme.delete("/holds/not-an-id"), 404)
    assert len(globex.get("/holds").json()["items"]) == 1

    # Lifting its own: gone from the list, told once (a second lift is 404).
    lifted = acme.delete(f"/holds/{mine['id']}")
    assert lifted.status_code == 200 and lifted.json()["lifted"] == "through the API by acme"
    assert acme.get("/holds").json()["items"] == []
    problem(acme.delete(f"/holds/{mine['id']}"), 404)

    # Releasing "everything" releases its own only: the counts say what was done.
    r = acme.post("/suppressed/release", json={"reason": ["guard"]})
    assert r.status_code == 200 and r.json() == {
        "results": {held["acme"]: "replayed"},
        "counts": {"replayed": 1},
    }
    assert globex.get("/suppressed").json()["items"][0]["delivery_id"] == held["globex"]
    problem(acme.post("/suppressed/release", json={"target": ["x"]}), 422)
    # The released one is delivered (to acme's target, which fails for good: a dead letter now).
    wait_until(
        lambda: (
            d.store.get_deliveries(held["acme"].partition("-")[0])[PROVIDERS["acme"][1]]["status"] == "failed"
        ),
        "the released delivery tried",
    )
    assert d.store.get_deliveries(held["globex"].partition("-")[0])[PROVIDERS["globex"][1]]["status"] == (
        "suppressed"
    )
