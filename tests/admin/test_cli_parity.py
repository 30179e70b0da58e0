"""`gateway ... --json` prints the admin API's document: the same keys, types, values and order.

A real `gateway web` (uvicorn) and `gateway worker` on real Redis, two providers' dead letters
(tests/admin/api_support.py), one target paused by hand and one removed from the configuration
while paused; each CLI command in its own `python -m gateway` process, compared with the answer
of the same query to the API with an operator key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis import Redis

from tests.admin.api_support import PROVIDERS, Deployment, config, deploy
from tests.conftest import Gateway, TargetServer
from tests.e2e.e2e_support import run_gateway


@pytest.fixture
def deployment(gateway: Gateway, redis: Redis, target_server: TargetServer) -> Iterator[Deployment]:
    d = deploy(gateway, redis, target_server)
    try:
        yield d
    finally:
        d.close()


def same(cli: Any, api: httpx.Response) -> None:
    """Equal after json.loads, key order and list order included."""
    assert api.status_code == 200, api.text
    assert json.dumps(cli) == json.dumps(api.json())


@pytest.mark.timeout(240)
def test_the_cli_json_is_the_api_document(
    deployment: Deployment, gateway: Gateway, target_server: TargetServer
) -> None:
    d = deployment
    op = d.client("operator")
    env = gateway.environ()

    def cli(*args: str, status: int = 0) -> Any:
        done = run_gateway(*args, "--json", env=env)
        assert done.returncode == status, (args, done.stdout, done.stderr)
        return json.loads(done.stdout)

    # acme's target paused by hand (its health has a reason and a time); globex's paused, then
    # removed from the configuration: it is listed as unconfigured, its dead letter stays.
    assert op.post("/targets/acme-crm/pause", json={"reason": "CRM upgrade"}).status_code == 200
    assert op.post("/targets/globex-crm/pause").status_code == 200
    acme_only = config(target_server.url).split("[[targets]]")
    path = gateway.write_config("[[targets]]".join(acme_only[:2]))
    assert run_gateway("targets", "apply", str(path), env=env).returncode == 0
    acme_did, globex_did = d.delivery("acme"), d.delivery("globex")
    acme_target = PROVIDERS["acme"][1]

    # An event, the events (with filters and a cursor).
    same(cli("events", "show", d.events["acme"]), op.get(f"/events/{d.events['acme']}"))
    same(cli("events", "list"), op.get("/events", params={"limit": 20}))
    first = cli("events", "list", "--limit", "1")
    same(first, op.get("/events", params={"limit": 1}))
    same(
        cli("events", "list", "--cursor", first["next_cursor"]),
        op.get("/events", params={"cursor": first["next_cursor"], "limit": 20}),
    )

    # A target, the targets (the unconfigured one too).
    same(cli("targets", "show", acme_target), op.get(f"/targets/{acme_target}"))
    listed = cli("targets", "list")
    same(listed, op.get("/targets"))
    assert [t["name"] for t in listed["unconfigured"]] == [PROVIDERS["globex"][1]]
    assert listed["items"][0]["health"]["reason"] == "CRM upgrade"
    # The tables are rendered from the same documents.
    text = run_gateway("targets", "show", acme_target, env=env).stdout
    assert "paused (by hand) (CRM upgrade) since 20" in text and f"{target_server.url}/acme" in text
    text = run_gateway("targets", "list", env=env).stdout
    assert "(not configured)" in text and "configuration version 2, 1 targets" in text

    # A dead letter (its target configured, and not), the dead letters (filtered, in pages).
    shown = cli("deliveries", "show", acme_did)
    same(shown, op.get(f"/deliveries/{acme_did}"))
    assert shown["target_configured"] is True and shown["attempt_count"] == 1
    gone = cli("deliveries", "show", globex_did)
    same(gone, op.get(f"/deliveries/{globex_did}"))
    assert gone["target_configured"] is False
    text = run_gateway("deliveries", "show", globex_did, env=env).stdout
    assert "globex-crm: not configured any more" in text and "attempts 1, retries 0" in text
    dead = cli("deliveries", "failed")
    same(dead, op.get("/deliveries/failed"))
    assert {x["delivery_id"] for x in dead["items"]} == {acme_did, globex_did}
    same(
        cli("deliveries", "failed", "--network", "net-acme"),
        op.get("/deliveries/failed", params={"network": "net-acme"}),
    )
    page = cli("deliveries", "failed", "--limit", "1")
    same(page, op.get("/deliveries/failed", params={"limit": 1}))
    same(
        cli("deliveries", "failed", "--cursor", page["next_cursor"]),
        op.get("/deliveries/failed", params={"cursor": page["next_cursor"]}),
    )

    # Acting: a replay's answer, a resume's (the unconfigured target: an operator's, as the CLI's).
    nosuch = ["01NOSUCHEVENT0000000000000-crm", "garbage"]
    same(
        cli("replay", *nosuch, "--yes", status=1),
        op.post("/deliveries/replay", json={"delivery_ids": nosuch}),
    )
    paused = cli("targets", "pause", acme_target)
    assert paused == {"target": acme_target, "before": "paused", "state": "paused", "held_deliveries": 0}
    same(paused, op.post(f"/targets/{acme_target}/pause"))
    resumed = cli("targets", "resume", PROVIDERS["globex"][1])
    assert (resumed["before"], resumed["state"]) == ("paused", "active")
    # Resumed, it has no health left to show: gone for the API as for the CLI.
    assert op.post(f"/targets/{PROVIDERS['globex'][1]}/resume").status_code == 404
    assert run_gateway("targets", "resume", PROVIDERS["globex"][1], env=env).returncode == 2
