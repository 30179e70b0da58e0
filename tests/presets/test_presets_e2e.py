"""Presets through real processes: `gateway web` takes a callback, a `gateway worker` delivers it
to three preset targets on a real HTTP server on 127.0.0.1: OpenForce (OAuth2 token first),
Ramen answering 404 "already invited", and a Standard Webhooks event during a secret rotation."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

import pytest
from standardwebhooks.webhooks import Webhook

from tests.e2e.e2e_support import SETTINGS, http_call, store_for, the_event_id, wait_final

if TYPE_CHECKING:
    from redis import Redis

    from tests.conftest import Gateway, TargetServer

NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()


@pytest.mark.timeout(90)
def test_a_callback_reaches_three_preset_targets_through_a_real_worker(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    url = target_server.url
    target_server.script(
        "/oauth/token",
        [(200, {"Content-Type": "application/json"}, b'{"access_token": "tok-e2e", "expires_in": 600}')],
    )
    already = b'{"error": {"message": "recipient_email already invited", "param": "recipient_email"}}'
    target_server.script("/api/v1/invitations", [(404, {}, already)])
    gateway.write_config(
        SETTINGS
        + f"""
[[targets]]
name = "openforce"
preset = "openforce"
networks = ["mynetwork"]
[targets.vars]
base_url = "{url}"
token_url = "{url}/oauth/token"
client_id = "${{OF_ID}}"
client_secret = "${{OF_SECRET}}"
first_name = "%invitor%"
last_name = "-"
email = "%invitor%@example.com"
activation_code = "AC-1"

[[targets]]
name = "ramen"
preset = "ramen"
networks = ["mynetwork"]
vars = {{ base_url = "{url}", api_key = "${{RAMEN_KEY}}", email = "%invitor%@example.com" }}

[[targets]]
name = "hook"
preset = "standard-webhooks"
networks = ["mynetwork"]
vars = {{ endpoint = "{url}/hook", secret = "${{NEW_SECRET}}" }}
previous_signing_secret = "${{OLD_SECRET}}"
previous_signing_secret_until = 2999-01-01T00:00:00Z
"""
    )
    env = {
        "OF_ID": "of-client",
        "OF_SECRET": "of-secret",
        "RAMEN_KEY": "rk",
        "NEW_SECRET": NEW,
        "OLD_SECRET": OLD,
    }
    gateway.env.update(env)
    base = gateway.start_web()
    gateway.start_worker()
    query = "/invitation_created?invitee=15551231234&invitor=johnsnow&network_id=mynetwork"
    assert http_call(base, "GET", query).status == 204
    store = store_for(redis)
    event_id = the_event_id(store)
    deliveries = wait_final(store, event_id, ["openforce", "ramen", "hook"], timeout=40)
    assert {n: d["status"] for n, d in deliveries.items()} == {
        "openforce": "delivered",
        "ramen": "delivered",
        "hook": "delivered",
    }

    [token] = target_server.requests_to("/oauth/token")
    assert token.headers["authorization"] == "Basic " + base64.b64encode(b"of-client:of-secret").decode()
    [invite] = target_server.requests_to("/clients/of-client/invitations")
    assert invite.headers["authorization"] == "Bearer tok-e2e"
    assert invite.json()["activiation_code"] == "AC-1"
    [ramen] = target_server.requests_to("/api/v1/invitations")
    assert ramen.headers["ramen_api_key"] == "rk"
    assert ramen.json()["recipient_email"] == "johnsnow@example.com"
    [hook] = target_server.requests_to("/hook")
    for secret in (NEW, OLD):
        assert Webhook(secret).verify(hook.body, hook.headers)["data"]["event_id"] == event_id
    assert "of-secret" not in gateway.logs() + json.dumps(store.get_attempts(event_id))
