"""Connect Acrobits through real processes: the portal's values, ingest tokens made and removed
through the API (a rotation without a restart or a file edit), a provider key kept to its own
networks, and a test callback sent through the real ingest to the network's real target."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis import Redis

from gateway.embedded import free_port
from gateway.store.events import Store
from tests.admin.callbacks_support import KeyedDeployment, keyed
from tests.conftest import Gateway, TargetServer
from tests.e2e.e2e_support import run_gateway, two_providers, wait_until

FILE_TOKEN = "acme-file-token-0123456789"


def config(target_url: str) -> str:
    networks = """
[networks.acme]
tokens = ["${ACME_FILE_TOKEN}"]
"""
    return two_providers(target_url, "?invitee=%invitee%&by=%invitor%", networks=networks)


class Deployment(KeyedDeployment):
    def callback(self, token: str, network: str = "acme", invitee: str = "+15551239999") -> int:
        r = httpx.get(
            f"{self.base}/invitation_created/{token}",
            params={"invitee": invitee, "invitor": "alice", "network_id": network},
            timeout=30,
        )
        return r.status_code

    def reloaded(self) -> None:
        """Until the web process runs the configuration Redis holds (health reloads it)."""
        version = self.store.config_version()
        wait_until(
            lambda: httpx.get(self.base + "/healthz").json()["config_version"] == version,
            f"the web process on configuration version {version}",
        )


@pytest.fixture
def deployment(gateway: Gateway, redis: Redis, target_server: TargetServer) -> Iterator[Deployment]:
    gateway.write_config(config(target_server.url))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gateway.env.update(
        {"GATEWAY_OPEN_INGEST": "false", "ACME_FILE_TOKEN": FILE_TOKEN, "GATEWAY_PUBLIC_URL": base}
    )
    gateway.start_web(port)
    gateway.start_worker()
    store = Store(redis)
    d = keyed(base, store, gateway.environ(), Deployment)
    try:
        yield d
    finally:
        d.close()


@pytest.mark.timeout(180)
def test_a_token_made_through_the_api_opens_the_network_at_once_and_until_removed(
    deployment: Deployment, redis: Redis
) -> None:
    d = deployment
    acme, globex, operator = d.api("acme"), d.api("globex"), d.api("operator")
    assert d.callback(FILE_TOKEN) == 204

    # The portal's values, the token as <TOKEN>; the file's token listed by its variable.
    connect = acme.get("/connect", params={"network": "acme"}).json()
    assert (connect["base_url"], connect["base_url_source"]) == (d.base, "GATEWAY_PUBLIC_URL")
    values = connect["settings"]
    assert values["get"]["invitationCreatedUrl"] == (
        f"{d.base}/invitation_created/<TOKEN>?invitee=%invitee%&invitor=%invitor%&network_id=%network_id%"
    )
    assert (
        values["get"]["invitationAcceptedPostData"] == ""
        and values["get"]["invitationCreatedContentType"] == ""
    )
    assert values["json"]["invitationAcceptedUrl"] == f"{d.base}/invitation_accepted/<TOKEN>"
    assert json.loads(values["json"]["invitationCreatedPostData"]) == {
        "invitee": "%invitee%",
        "invitor": "%invitor%",
        "network_id": "%network_id%",
    }
    assert values["json"]["invitationCreatedContentType"] == "application/json"
    assert [(t["source"], t["ref"]) for t in connect["tokens"]] == [("file", "${ACME_FILE_TOKEN}")]
    assert connect["targets"] == ["acme-crm"]

    # A new token: shown once, with the values to paste; it works on the very next callback.
    r = acme.post("/tokens", json={"network": "acme"})
    assert r.status_code == 201, r.text
    first = r.json()
    assert (
        first["settings"]["json"]["invitationCreatedUrl"] == f"{d.base}/invitation_created/{first['token']}"
    )
    assert d.callback(first["token"]) == 204
    second = acme.post("/tokens", json={"network": "acme"}).json()
    assert d.callback(second["token"]) == 204 and d.callback(first["token"]) == 204
    assert d.callback(FILE_TOKEN) == 204  # the file's token works beside them
    listed = acme.get("/tokens", params={"network": "acme"}).json()["items"]
    assert [(t["source"], t["id"]) for t in listed] == [
        ("api", first["id"]),
        ("api", second["id"]),
        ("file", None),
    ]
    assert all("token" not in t for t in listed)
    # Only the digests are kept: no token anywhere in Redis.
    dump = json.dumps(
        [redis.get(k).decode() for k in redis.scan_iter("gw:config*") if redis.type(k) == b"string"]
    )
    dump += json.dumps({k.decode(): v.decode() for k, v in redis.hgetall("gw:config:tokens").items()})
    assert first["token"] not in dump and second["token"] not in dump and "sha256:" in dump

    # Another provider's key sees none of it and changes nothing.
    assert globex.get("/connect", params={"network": "acme"}).status_code == 404
    assert globex.get("/tokens", params={"network": "acme"}).status_code == 404
    assert globex.get("/tokens").json() == {"items": []}
    assert globex.post("/tokens", json={"network": "acme"}).status_code == 404
    assert globex.delete(f"/tokens/{first['id']}").status_code == 404
    assert d.callback(first["token"]) == 204

    # Removed: refused from the next callback on, the others still open the network.
    removed = acme.delete(f"/tokens/{first['id']}")
    assert removed.status_code == 200 and removed.json()["id"] == first["id"]
    d.reloaded()
    assert d.callback(first["token"]) == 401
    assert d.callback(second["token"]) == 204 and d.callback(FILE_TOKEN) == 204
    assert acme.delete(f"/tokens/{first['id']}").status_code == 404

    # A targets apply keeps the API's tokens (as it keeps API-made targets).
    path = run_gateway("targets", "apply", str(d.env["GATEWAY_CONFIG"]), env=d.env)
    assert path.returncode == 0, path.stderr
    assert d.callback(second["token"]) == 204

    # The CLI prints the API's documents, and makes and removes tokens the same way.
    def cli(*args: str) -> Any:
        done = run_gateway(*args, "--json", env=d.env)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return json.loads(done.stdout)

    assert json.dumps(cli("connect", "acme")) == json.dumps(
        operator.get("/connect", params={"network": "acme"}).json()
    )
    assert json.dumps(cli("tokens", "list")) == json.dumps(operator.get("/tokens").json())
    made = cli("tokens", "add", "acme")
    assert d.callback(made["token"]) == 204
    assert cli("tokens", "remove", made["id"])["id"] == made["id"]
    d.reloaded()
    assert d.callback(made["token"]) == 401


@pytest.mark.timeout(180)
def test_a_test_callback_takes_the_real_path_to_the_real_target(
    deployment: Deployment, redis: Redis, target_server: TargetServer
) -> None:
    d = deployment
    acme = d.api("acme")
    r = acme.post("/callbacks/test", json={"network": "acme", "format": "get"})
    assert r.status_code == 200, r.text
    test = r.json()
    assert test["status"] == 204 and test["error"] is None
    assert (
        test["sent"]["method"] == "GET"
        and "/invitation_created/****?invitee=+12025550123" in test["sent"]["url"]
    )
    callback = test["callback"]
    assert callback["outcome"] == "accepted" and callback["test_id"] == test["test_id"]
    assert callback["path"].startswith("/invitation_created/****?") and callback["token"] == "path"
    event = test["event"]
    assert event["event"]["invitee"] == "+12025550123" and event["event"]["invitor"].startswith(
        "gateway-test-"
    )
    assert [x["target"] for x in event["deliveries"]] == ["acme-crm"]
    # Delivered to the network's real target.
    [sent] = target_server.wait_for("/acme", 1)
    assert ("invitee", "+12025550123") in sent.query
    wait_until(
        lambda: (d.store.get_delivery(callback["event_id"], "acme-crm") or {}).get("status") == "delivered",
        "the test's delivery delivered",
    )
    # JSON, the accepted event, another number; the one-time token is gone, never stored.
    again = acme.post(
        "/callbacks/test", json={"network": "acme", "event": "invitation_accepted", "invitee": "+15550001234"}
    ).json()
    assert again["status"] == 204 and again["sent"]["method"] == "POST"
    assert json.loads(again["sent"]["body"])["invitee"] == "+15550001234"
    assert again["callback"]["content_type"] == "application/json"
    assert not list(redis.scan_iter("gw:callbacks:test:*"))
    assert "gwtest_" not in json.dumps(
        [redis.lrange(k, 0, -1) for k in redis.scan_iter("gw:callbacks:net:*")], default=str
    )
    # A network not the key's: 404, nothing sent.
    assert acme.post("/callbacks/test", json={"network": "globex"}).status_code == 404
    assert len(target_server.requests_to("/globex")) == 0
    # From the shell (it asks first; --yes).
    done = run_gateway("callbacks", "test", "acme", "--yes", "--json", env=d.env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["callback"]["outcome"] == "accepted"
