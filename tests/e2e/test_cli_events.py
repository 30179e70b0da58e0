"""`gateway events list | show` against a running web and worker (issue 8, point 9)."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pytest
from e2e_support import SETTINGS, http_call, run_gateway, store_for, wait_until

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer
    from redis import Redis

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
EPOCH_MS = re.compile(r"\b1\d{12}\b")


def config(url: str) -> str:
    return SETTINGS + (
        f'[[targets]]\nname = "crm"\nnetworks = ["mynetwork"]\nurl = "{url}/crm"\n\n'
        f'[[targets]]\nname = "later"\nnetworks = ["mynetwork"]\nurl = "{url}/later"\nretry = [3600]\n\n'
        f'[[targets]]\nname = "bad"\nnetworks = ["othernet"]\nurl = "{url}/bad"\n'
    )


@pytest.mark.timeout(120)
def test_events_list_and_show(gateway: Gateway, target_server: TargetServer, redis: Redis) -> None:
    target_server.script("/later", [503])
    target_server.script("/bad", [400])
    gateway.write_config(config(target_server.url))
    base = gateway.start_web()
    gateway.start_worker()
    for n in range(3):
        url = f"/invitation_created?invitee=%2B4477009001{n:02d}&invitor=alice{n}&network_id=mynetwork"
        assert http_call(base, "GET", url).status == 204
    url = "/invitation_created?invitee=%2B447700900999&invitor=bob&network_id=othernet"
    assert http_call(base, "GET", url).status == 204
    store = store_for(redis)

    def settled() -> bool:
        ids = store.recent_events(10)
        states = [d["status"] for _, ds in store.events_with_deliveries(ids) for d in ds.values()]
        return len(ids) == 4 and sorted(states) == ["delivered"] * 3 + ["failed"] + ["retrying"] * 3

    wait_until(settled, "every delivery attempted once", timeout=30)
    env = gateway.environ()

    def cli(*args: str) -> tuple[str, str]:
        result = run_gateway("events", *args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout, result.stderr

    out, _ = cli("list")
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["RECEIVED", "EVENT", "TYPE", "NETWORK", "INVITOR", "INVITEE"]
    assert len(lines) == 5
    assert "alice2" in lines[2] and "bob" in lines[1]  # newest first, with the invitor
    assert "crm=delivered/1" in out and "later=retrying/1" in out and "bad=failed/1" in out
    assert ISO.search(lines[1])

    out, err = cli("list", "--limit", "0")
    assert out == "" and err == ""
    result = run_gateway("events", "list", "--limit", "-1", env=env)
    assert result.returncode == 2 and "-1" in result.stderr

    out, err = cli("list", "--network", "nosuch")
    assert out == ""
    assert "no events matched (network 'nosuch')" in err

    out, _ = cli("list", "--state", "failed")
    assert len(out.splitlines()) == 2 and "othernet" in out
    out, _ = cli("list", "--state", "waiting", "--limit", "2")
    assert len(out.splitlines()) == 3 and "othernet" not in out
    out, err = cli("list", "--state", "suppressed")
    assert out == "" and "no events matched (a delivery suppressed)" in err
    out, _ = cli("list", "--network", "mynetwork", "--state", "delivered", "--json")
    page = json.loads(out)  # the shape of GET /api/v1/events
    rows = page["items"]
    assert len(rows) == 3 and page["next_cursor"] is None
    assert {r["network_id"] for r in rows} == {"mynetwork"}
    assert all(ISO.fullmatch(r["received_at"]) for r in rows)
    assert all(r["deliveries"]["crm"]["status"] == "delivered" for r in rows)

    event_id = rows[0]["id"]
    out, _ = cli("show", event_id)
    assert f"event      {event_id}" in out
    assert "TARGET" in out and "OUTCOME" in out and "later" in out and "HTTP 503" in out
    assert ISO.search(out) and not EPOCH_MS.search(out), out
    out, _ = cli("show", event_id, "--json")
    shown = json.loads(out)  # GET /api/v1/events/{id}'s document
    assert shown["event"]["id"] == event_id
    deliveries = {d["target"]: d for d in shown["deliveries"]}
    assert {a["target"] for d in shown["deliveries"] for a in d["attempts"]} == {"crm", "later"}
    assert all(ISO.fullmatch(a["at"]) for d in shown["deliveries"] for a in d["attempts"])
    assert ISO.fullmatch(deliveries["later"]["next_attempt_at"])
    assert deliveries["later"]["attempt_count"] == 1 and deliveries["later"]["status"] == "retrying"
    result = run_gateway("events", "show", "01NOSUCHEVENT0000000000000", env=env)
    assert result.returncode == 1 and "no event" in result.stderr
