"""`gateway targets validate NAME` and `gateway targets test NAME` through real processes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from e2e_support import SETTINGS, run_gateway, wait_until

from gateway.testsends import request_test, wait_test_result

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer
    from redis import Redis

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes of base64


def _config(url: str, settings: str = SETTINGS) -> str:
    return (
        settings
        + f"""
[[targets]]
name = "crm"
networks = ["mynetwork"]
url = "{url}/hook/${{CRM_PATH}}?to=%invitee%"
content_type = "application/json"
post_data = '{{"invitee": "%invitee%", "invitor": "%invitor%", "email": "%crm.email%"}}'
headers = {{ X-Api-Key = "${{CRM_TOKEN}}" }}
auth = {{ username = "api", password = "${{CRM_PASSWORD}}" }}
signing_secret = "${{CRM_SECRET}}"

[targets.lookups.crm]
url = "{url}/contacts?phone=%invitee%"
headers = {{ Authorization = "Bearer ${{CRM_TOKEN}}" }}
fields = {{ email = "contact.email" }}
"""
    )


WORKER_ENV = {
    "CRM_PATH": "path-on-worker",
    "CRM_TOKEN": "token-on-worker",
    "CRM_PASSWORD": "password-on-worker",
    "CRM_SECRET": SECRET,
}
CLI_ENV = {"CRM_PATH": "cli-path", "CRM_TOKEN": "cli-token", "CRM_PASSWORD": "cli-pw", "CRM_SECRET": SECRET}


def _apply(gateway: Gateway, tmp_path: Path, text: str, **env: str) -> None:
    path = tmp_path / "targets.toml"
    path.write_text(text)
    result = run_gateway("targets", "apply", str(path), env=gateway.environ(**{**CLI_ENV, **env}))
    assert result.returncode == 0, result.stderr


def _no_secret(text: str) -> None:
    for value in [*WORKER_ENV.values(), *CLI_ENV.values()]:
        assert value not in text, value


def test_validate_shows_the_exact_request_with_secrets_redacted(
    gateway: Gateway, target_server: TargetServer, tmp_path: Path
) -> None:
    _apply(gateway, tmp_path, _config(target_server.url))
    env = gateway.environ(CRM_TOKEN="cli-token")  # the others are not set here
    result = run_gateway("targets", "validate", "crm", "--json", env=env)
    assert result.returncode == 0, result.stderr
    _no_secret(result.stdout)
    preview = json.loads(result.stdout)
    request = preview["request"]
    assert request["method"] == "POST"
    assert request["url"] == f"{target_server.url}/hook/${{CRM_PATH}}?to=%2B15551231234"
    headers = dict(request["headers"])
    assert headers["X-Api-Key"] == "${CRM_TOKEN}"
    assert headers["Authorization"] == "Basic ***"
    assert headers["webhook-signature"] == "v1,***"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == {
        "invitee": "+15551231234",
        "invitor": "johnsnow",
        "email": "<crm.email>",
    }
    lookup = preview["lookups"]["crm"]["request"]
    assert lookup["url"] == f"{target_server.url}/contacts?phone=%2B15551231234"
    assert dict(lookup["headers"]) == {"Authorization": "Bearer ${CRM_TOKEN}"}
    assert preview["env"] == {
        "CRM_PASSWORD": False,
        "CRM_PATH": False,
        "CRM_SECRET": False,
        "CRM_TOKEN": True,
    }
    assert target_server.received == []  # nothing was sent

    text = run_gateway("targets", "validate", "crm", env=env)
    assert text.returncode == 0, text.stderr
    assert "POST " in text.stdout and "X-Api-Key: ${CRM_TOKEN}" in text.stdout
    assert "not set here: CRM_PASSWORD, CRM_PATH, CRM_SECRET" in text.stdout
    _no_secret(text.stdout)

    unknown = run_gateway("targets", "validate", "nosuch", env=env)
    assert unknown.returncode == 2 and "unknown target 'nosuch' (known: crm)" in unknown.stderr


def test_validate_reads_a_file_without_redis(target_server: TargetServer, tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(_config(target_server.url))
    env = {"PATH": "/usr/bin:/bin"}
    result = run_gateway("targets", "validate", "crm", "--file", str(path), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["request"]["method"] == "POST"


@pytest.mark.timeout(150)
def test_a_worker_sends_the_test_with_its_own_environment(
    gateway: Gateway, target_server: TargetServer, redis: Redis, tmp_path: Path
) -> None:
    target_server.script("/contacts", [(200, {}, b'{"contact": {"email": "jon@example.com"}}')])
    target_server.script("/hook/path-on-worker", [(201, {"X-Request-Id": "r-1"}, b'{"id": 42}')])
    _apply(gateway, tmp_path, _config(target_server.url))
    gateway.start_worker(**WORKER_ENV)

    result = run_gateway(
        "targets", "test", "crm", "--json", "--invitee", "+447700900123", env=gateway.environ()
    )
    assert result.returncode == 0, (result.stdout, result.stderr, gateway.logs())
    _no_secret(result.stdout)
    exchange = json.loads(result.stdout)
    assert exchange["outcome"] == "delivered" and exchange["error"] is None
    assert exchange["lookups"] == {"crm": {"values": {"crm.email": "jon@example.com"}}}
    assert exchange["request"]["url"] == f"{target_server.url}/hook/${{CRM_PATH}}?to=%2B447700900123"
    headers = dict(exchange["request"]["headers"])
    assert headers["X-Api-Key"] == "${CRM_TOKEN}"
    assert headers["Authorization"] == "Basic ***"
    assert headers["webhook-signature"] == "v1,***"
    assert exchange["response"]["status"] == 201
    assert ["x-request-id", "r-1"] in [[k.lower(), v] for k, v in exchange["response"]["headers"]]
    assert exchange["response"]["body"] == '{"id": 42}'
    assert exchange["latency_ms"] >= 0

    # What the target got: the worker's values, not the CLI's.
    [sent] = target_server.wait_for("/hook/path-on-worker", 1)
    assert sent.headers["x-api-key"] == "token-on-worker"
    assert sent.json()["email"] == "jon@example.com"
    assert sent.json()["invitee"] == "+447700900123"
    [lookup] = target_server.requests_to("/contacts")
    assert lookup.headers["authorization"] == "Bearer token-on-worker"
    # A test is not an event: nothing is stored as one.
    assert redis.zcard("gw:events") == 0

    text = run_gateway("targets", "test", "crm", env=gateway.environ())
    assert text.returncode == 0, text.stderr
    assert "response: HTTP 201" in text.stdout and "outcome: delivered" in text.stdout
    assert "lookup crm: %crm.email% = jon@example.com" in text.stdout
    _no_secret(text.stdout)


@pytest.mark.timeout(150)
def test_the_worker_address_policy_applies_to_a_test(
    gateway: Gateway, target_server: TargetServer, tmp_path: Path
) -> None:
    # Applied from a shell that allows private targets; the workers do not: their policy counts.
    text = _config(target_server.url, settings="")
    text = text.split("[targets.lookups.crm]")[0].replace(', "email": "%crm.email%"', "")
    _apply(gateway, tmp_path, text, GATEWAY_ALLOW_PRIVATE_TARGETS="1")
    gateway.start_worker(**WORKER_ENV)
    result = run_gateway("targets", "test", "crm", "--json", env=gateway.environ())
    assert result.returncode == 1
    exchange = json.loads(result.stdout)
    assert exchange["outcome"] == "failed"
    assert "127.0.0.1 is private, loopback or reserved" in exchange["error"]
    assert exchange["response"] is None
    assert target_server.received == []


@pytest.mark.timeout(150)
def test_no_worker_is_said_plainly_and_the_test_lapses_unsent(
    gateway: Gateway, target_server: TargetServer, redis: Redis, tmp_path: Path
) -> None:
    _apply(gateway, tmp_path, _config(target_server.url))
    started = time.monotonic()
    result = run_gateway("targets", "test", "crm", "--wait", "2", env=gateway.environ())
    assert result.returncode == 1
    assert "no worker answered within 2 s" in result.stderr
    assert time.monotonic() - started < 60
    # A worker that starts later sends nothing: the request lapsed with the wait.
    time.sleep(2.5)
    worker = gateway.start_worker(**WORKER_ENV)
    wait_until(lambda: "Listening on" in worker.output() or "worker test-" in worker.output(), "the worker")
    time.sleep(3)
    assert target_server.received == []


@pytest.mark.timeout(150)
def test_request_test_and_wait_test_result_for_the_admin_api(
    gateway: Gateway, target_server: TargetServer, redis: Redis, tmp_path: Path
) -> None:
    from e2e_support import store_for

    target_server.script("/contacts", [(404, {}, b"{}")])
    _apply(gateway, tmp_path, _config(target_server.url))
    gateway.start_worker(**WORKER_ENV)
    store = store_for(redis)
    test_id = request_test(store, "crm")
    result = wait_test_result(store, test_id, 60)
    assert result is not None, gateway.logs()
    assert result["test_id"] == test_id
    assert result["outcome"] == "retrying"  # a lookup "not found" retries by default
    assert result["error"] == "lookup crm: not found (HTTP 404)"
    assert result["request"] is None  # the target itself was not asked
    assert target_server.requests_to("/hook/path-on-worker") == []
    # Read again later (the API polls): still there.
    assert wait_test_result(store, test_id, 0) == result
