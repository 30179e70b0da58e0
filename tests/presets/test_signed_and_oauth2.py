"""The Standard Webhooks preset and signing-secret rotation (verified with the `standardwebhooks`
reference library), and OpenForce's OAuth2 client credentials: the token fetched with Basic
client_id:client_secret, shared by every worker through Redis, renewed once on a 401."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any
from urllib.parse import parse_qs

import pytest
from redis import Redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.config.load import target_from_dict
from gateway.exceptions import ConfigError
from tests.delivery.engine_support import NETWORK, AsyncTarget, Harness, did, run

NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"x" * 32).decode()
CLIENT_SECRET = "s3cr3t-do-not-show"
ENV = {"NEW_SECRET": NEW, "OLD_SECRET": OLD, "OF_ID": "client-77", "OF_SECRET": CLIENT_SECRET}


def _verify(secret: str, hit: Any) -> Any:
    return Webhook(secret).verify(hit.body, hit.headers)


def test_standard_webhooks_event_is_signed_and_verifies(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        h.configure(
            [
                {
                    "name": "hook",
                    "networks": [NETWORK],
                    "preset": "standard-webhooks",
                    "vars": {"endpoint": f"{srv.base}/hook", "secret": "${NEW_SECRET}"},
                }
            ]
        )
        [ev] = h.add_events(1, ["hook"])
        engine = h.engine()
        engine.environ = ENV
        await engine.run(30)
        [hit] = srv.to("/hook")
        payload = _verify(NEW, hit)
        assert payload == {
            "type": "invitation_created",
            "timestamp": ev.received_at,
            "data": {
                "event_id": ev.id,
                "invitee": ev.invitee,
                "invitee_raw": ev.invitee_raw,
                "invitor": ev.invitor,
                "network_id": NETWORK,
            },
        }
        assert hit.headers["webhook-id"] == did(ev, "hook")
        assert len(hit.headers["webhook-signature"].split(" ")) == 1
        with pytest.raises(WebhookVerificationError):
            _verify(OTHER, hit)

    run(redis, redis_url, body)


def _rotating(url: str, until: str) -> dict[str, Any]:
    return {
        "name": "hook",
        "networks": [NETWORK],
        "url": url,
        "post_data": '{"invitee": "%invitee%"}',
        "content_type": "application/json",
        "signing_secret": "${NEW_SECRET}",
        "previous_signing_secret": "${OLD_SECRET}",
        "previous_signing_secret_until": until,
    }


def test_during_a_rotation_both_secrets_verify_and_after_it_only_the_new_one(
    redis: Redis, redis_url: str
) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        h.configure([_rotating(f"{srv.base}/during", "2999-01-01T00:00:00Z")])
        h.add_events(1, ["hook"])
        engine = h.engine()
        engine.environ = ENV
        await engine.run(30)
        [hit] = srv.to("/during")
        assert len(hit.headers["webhook-signature"].split(" ")) == 2
        assert _verify(NEW, hit) == _verify(OLD, hit) == {"invitee": "+15550000000"}
        with pytest.raises(WebhookVerificationError):
            _verify(OTHER, hit)

        h.configure([_rotating(f"{srv.base}/after", "2020-01-01T00:00:00+00:00")])
        h.add_events(1, ["hook"])
        await engine.run(30)
        [hit] = srv.to("/after")
        assert len(hit.headers["webhook-signature"].split(" ")) == 1
        assert _verify(NEW, hit) == {"invitee": "+15550000000"}
        with pytest.raises(WebhookVerificationError):
            _verify(OLD, hit)

    run(redis, redis_url, body)


def test_rotation_settings_are_checked_at_load() -> None:
    base = _rotating("https://x.example/hook", "2026-12-01T00:00:00Z")
    t = target_from_dict(base, ENV)
    assert t.previous_signing_secret_expires == 1796083200.0
    assert t.to_dict()["previous_signing_secret_until"] == "2026-12-01T00:00:00Z"
    for change, key in (
        ({"previous_signing_secret_until": "2026-12-01"}, "previous_signing_secret_until"),
        ({"previous_signing_secret_until": None}, "previous_signing_secret_until"),
        ({"previous_signing_secret": "whsec_short"}, "previous_signing_secret"),
        ({"signing_secret": None}, "previous_signing_secret"),
    ):
        data = {k: v for k, v in {**base, **change}.items() if v is not None}
        with pytest.raises(ConfigError) as info:
            target_from_dict(data, ENV)
        assert (info.value.target, info.value.key) == ("hook", key)
    with pytest.raises(ConfigError) as info:
        target_from_dict(base, {"NEW_SECRET": NEW})
    assert (info.value.key, info.value.reason) == (
        "previous_signing_secret",
        "environment variable OLD_SECRET is not set",
    )


# -- OpenForce: OAuth2 client credentials --------------------------------------------------------


def _token(value: str, expires_in: int = 3600) -> tuple[int, dict[str, str], bytes]:
    answer = {"access_token": value, "token_type": "Bearer", "expires_in": expires_in}
    return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()


def _openforce(srv: AsyncTarget, **options: Any) -> dict[str, Any]:
    return {
        "name": "openforce",
        "networks": [NETWORK],
        "preset": "openforce",
        "vars": {
            "base_url": srv.base,
            "token_url": f"{srv.base}/oauth/token",
            "client_id": "${OF_ID}",
            "client_secret": "${OF_SECRET}",
            "first_name": "%invitor%",
            "last_name": "Invitee",
            "email": "%invitor%@mail.example.com",
            "activation_code": "C50DFA35-5BA9",
        },
        **options,
    }


def test_openforce_fetches_one_token_for_every_worker_and_sends_the_invitation(
    redis: Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script("/oauth/token", [_token("tok-1"), _token("tok-unexpected")])
        h.configure([_openforce(srv)])
        events = h.add_events(20, ["openforce"])
        first, second = h.engine(), h.engine()  # two workers, each its own Sender and Redis client
        first.environ = second.environ = ENV
        await first.run(30)
        more = h.add_events(5, ["openforce"])
        await second.run(30)

        [token_call] = srv.to("/oauth/token")  # one fetch: the second worker read it from Redis
        assert token_call.method == "POST"
        assert (
            token_call.headers["authorization"]
            == "Basic " + base64.b64encode(f"client-77:{CLIENT_SECRET}".encode()).decode()
        )
        assert parse_qs(token_call.body.decode()) == {"grant_type": ["client_credentials"]}
        assert first.tokens.fetches == 1 and second.tokens.fetches == 0

        hits = srv.to("/clients/client-77/invitations")
        assert len(hits) == 25
        for hit in hits:
            assert hit.method == "POST" and hit.headers["authorization"] == "Bearer tok-1"
            assert hit.headers["content-type"] == "application/json"
        sent = next(x for x in hits if x.key == did(events[0], "openforce")).json()
        assert sent == {
            "first_name": "inv0",
            "last_name": "Invitee",
            "mobile_phone": events[0].invitee,
            "email": "inv0@mail.example.com",
            "activiation_code": "C50DFA35-5BA9",  # sic: the API's spelling
        }
        for ev in events + more:
            assert h.state(ev.id, "openforce")["status"] == "delivered"
        [key] = [k for k in h.redis.scan_iter("gw:oauth2:*")]
        ttl = h.redis.pttl(key)
        assert 3600_000 - 61_000 < ttl <= 3600_000 - 60_000  # renewed a minute before it expires
        shown = (
            json.dumps([h.attempts(ev.id) for ev in events]) + caplog.text + json.dumps(h.config.to_dict())
        )
        assert CLIENT_SECRET not in shown

    run(redis, redis_url, body)


def test_openforce_renews_the_token_once_on_a_401(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script("/oauth/token", [_token("tok-old"), _token("tok-new"), _token("tok-third")])
        srv.script("/clients/client-77/invitations", [401, 201, 401])
        h.configure([_openforce(srv, retry=[0])])
        [ev] = h.add_events(1, ["openforce"])
        engine = h.engine()
        engine.environ = ENV
        await engine.run(30)
        hits = srv.to("/clients/client-77/invitations")
        assert [x.headers["authorization"] for x in hits] == ["Bearer tok-old", "Bearer tok-new"]
        assert len(srv.to("/oauth/token")) == 2
        state = h.state(ev.id, "openforce")
        assert (state["status"], state["attempts"]) == ("delivered", 1)

        # A token refused twice in a row: one renewal only, then the 401 is the attempt's answer.
        [ev2] = h.add_events(1, ["openforce"])
        srv.script("/clients/client-77/invitations", [401])
        await engine.run(5)
        assert len(srv.to("/oauth/token")) == 3  # tok-new refused -> tok-third, refused too
        state = h.state(ev2.id, "openforce")
        assert state["last_status_code"] == 401 and state["status"] == "failed"

    run(redis, redis_url, body)


def test_a_failing_token_endpoint_is_a_retryable_failure_without_the_secret(
    redis: Redis, redis_url: str
) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script("/oauth/token", [(401, {}, b'{"error": "invalid_client"}')])
        h.configure([_openforce(srv, retry=[3600])])
        [ev] = h.add_events(1, ["openforce"])
        engine = h.engine()
        engine.environ = ENV
        await engine.run(5)
        assert srv.to("/clients/client-77/invitations") == []
        state = h.state(ev.id, "openforce")
        assert state["status"] == "retrying"
        assert state["last_error"] == "OAuth2 token endpoint answered HTTP 401 (invalid_client)"
        assert CLIENT_SECRET not in json.dumps(h.attempts(ev.id))

    run(redis, redis_url, body)


def test_oauth2_settings_are_checked_at_load() -> None:
    good = {
        "name": "t",
        "networks": ["*"],
        "url": "https://x.example/a",
        "oauth2": {"token_url": "https://x.example/token", "client_id": "${ID}", "client_secret": "${S}"},
    }
    assert target_from_dict(good, {"ID": "1", "S": "2"}).oauth2 is not None
    for oauth2, key in (
        ({"token_url": "https://x.example/token", "client_id": "a"}, "oauth2.client_secret"),
        ({"token_url": "ftp://x.example/token", "client_id": "a", "client_secret": "b"}, "oauth2.token_url"),
        ({"token_url": "https://x/t", "client_id": "%invitee%", "client_secret": "b"}, "oauth2.client_id"),
        ({"token_url": "https://x/t", "client_id": "a", "client_secret": "b", "grant": "x"}, "oauth2.grant"),
    ):
        with pytest.raises(ConfigError) as info:
            target_from_dict({**good, "oauth2": oauth2})
        assert (info.value.target, info.value.key) == ("t", key)
    with pytest.raises(ConfigError) as info:
        target_from_dict(good, {"ID": "1"})
    assert (info.value.key, info.value.reason) == (
        "oauth2.client_secret",
        "environment variable S is not set",
    )
    with pytest.raises(ConfigError) as info:
        target_from_dict({**good, "auth": {"username": "a", "password": "b"}})
    assert info.value.key == "oauth2"
