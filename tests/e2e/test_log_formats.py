"""Logs of real web and worker processes, as text and as JSON, with numbers masked or not."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from e2e_support import SETTINGS, http_call, wait_until

if TYPE_CHECKING:
    from conftest import Gateway, Process, TargetServer

NUMBER = "447700900123"
CALLBACK = f"/invitation_created?invitee=%2B{NUMBER}&invitor=alice&network_id=mynetwork"
BAD_BODY = f"invitee=%2B{NUMBER}&invitor=alice".encode()  # network_id missing: 400, body logged
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def run(gateway: Gateway, target_server: TargetServer, **env: str) -> tuple[Process, Process]:
    gateway.write_config(
        SETTINGS + f'[[targets]]\nname = "crm"\nnetworks = ["mynetwork"]\nurl = "{target_server.url}/crm"\n'
    )
    base = gateway.start_web(**env)
    web = gateway.processes[-1]
    worker = gateway.start_worker(**env)
    assert http_call(base, "GET", CALLBACK).status == 204
    assert http_call(base, "POST", "/invitation_created", BAD_BODY, FORM).status == 400
    target_server.wait_for("/crm", 1)
    wait_until(lambda: "delivered" in worker.output(), "the delivery logged", timeout=20)
    wait_until(lambda: "rejected" in web.output(), "the rejection logged", timeout=20)
    return web, worker


@pytest.mark.timeout(90)
def test_json_logs_one_object_per_line_masked(gateway: Gateway, target_server: TargetServer) -> None:
    web, worker = run(gateway, target_server, GATEWAY_LOG_FORMAT="json")
    lines = [json.loads(line) for p in (web, worker) for line in p.output().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    accepted = next(x for x in lines if x["message"].startswith("accepted "))
    assert accepted["network"] == "mynetwork" and accepted["targets"] == ["crm"]
    delivered = next(x for x in lines if x["message"].startswith("delivered "))
    assert delivered["event_id"] == accepted["event_id"] and delivered["target"] == "crm"
    rejected = next(x for x in lines if x["message"].startswith("rejected "))
    assert "%2B4477****0123" in rejected["message"]
    assert all(NUMBER not in json.dumps(x) for x in lines)
    assert any(x["logger"].startswith("rq.") for x in lines)  # RQ's own lines are JSON too


@pytest.mark.timeout(90)
def test_text_logs_unmasked_when_asked(gateway: Gateway, target_server: TargetServer) -> None:
    web, _ = run(gateway, target_server, GATEWAY_LOG_MASK="false")
    text = web.output()
    rejected = next(line for line in text.splitlines() if "rejected" in line)
    assert f"%2B{NUMBER}" in rejected
    accepted = next(line for line in text.splitlines() if "gateway.ingest: accepted" in line)
    assert "INFO gateway.ingest: accepted 01" in accepted and "(network mynetwork: crm)" in accepted
    with pytest.raises(json.JSONDecodeError):
        json.loads(accepted)


@pytest.mark.timeout(90)
def test_text_logs_masked_by_default(gateway: Gateway, target_server: TargetServer) -> None:
    web, worker = run(gateway, target_server)
    assert NUMBER not in web.output() + worker.output()
    assert "%2B4477****0123" in web.output()
