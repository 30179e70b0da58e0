"""Every preset against a local fake of its API: the real delivery engine (real Redis, the real
Sender) sends a stored invitation to an aiohttp server on 127.0.0.1, which checks the
documented request: method, path, headers, body fields, and the answers that mean success."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from redis import Redis

from gateway.config.load import target_from_dict
from gateway.config.presets import PRESETS_DIR, load_preset, preset_from_dict, preset_names
from gateway.exceptions import ConfigError
from tests.delivery.engine_support import NETWORK, AsyncTarget, Harness, did, run

ENV = {"API_KEY": "key-123", "API_SECRET": "secret-456", "USER": "SUPERSUDS", "PASSWORD": "pw:789"}


def preset(name: str, preset_name: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "networks": [NETWORK], "preset": preset_name, **options}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def deliver(h: Harness, targets: list[dict[str, Any]], count: int = 1) -> list[Any]:
    """Store `count` invitations for every target, run one engine until nothing is due."""
    config = h.configure(targets)
    events = h.add_events(count, [t.name for t in config.targets])
    engine = h.engine()
    engine.environ = ENV
    await engine.run(30)
    return events


# -- loading -------------------------------------------------------------------------------------


def test_every_shipped_preset_loads_and_each_required_variable_is_named_when_missing() -> None:
    names = preset_names()
    assert {"openforce", "ramen", "doselect", "brillium", "twilio-sms", "slack", "sendgrid"} <= set(names)
    assert {"hubspot-contact", "acrobits-get", "acrobits-form", "acrobits-json", "acrobits-xml"} <= set(names)
    assert "standard-webhooks" in names
    for name in names:
        p = load_preset(name)
        assert p.description
        for missing in p.required:
            given = {v: "https://x.example" for v in p.required if v != missing}
            with pytest.raises(ConfigError) as info:
                target_from_dict({"name": "t1", "networks": ["*"], "preset": name, "vars": given})
            assert (info.value.target, info.value.key) == ("t1", f"vars.{missing}")
            assert f"preset {name!r} needs the variable {missing!r}" in info.value.reason


def test_an_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        target_from_dict({"name": "t1", "networks": ["*"], "preset": "nope"})
    assert (info.value.target, info.value.key) == ("t1", "preset")
    assert "unknown preset 'nope'" in info.value.reason and "ramen" in info.value.reason


def test_the_operators_own_presets_come_first_and_the_shipped_ones_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my-crm.toml").write_text(
        'description = "our CRM"\n[variables]\nbase = { required = true, raw = true }\n'
        '[target]\nurl = "{{base}}/invites"\n'
    )
    # A shipped name replaced: the operator's file wins.
    (tmp_path / "slack.toml").write_text(
        'description = "our Slack relay"\n[target]\nurl = "https://relay.example.com/slack"\n'
    )
    monkeypatch.setenv("GATEWAY_PRESETS_DIR", str(tmp_path))
    assert {"my-crm", "slack", "ramen"} <= set(preset_names())
    own = target_from_dict(preset("crm", "my-crm", vars={"base": "https://crm.example.com"}))
    assert own.url == "https://crm.example.com/invites"
    assert target_from_dict(preset("s", "slack")).url == "https://relay.example.com/slack"
    assert load_preset("ramen").description  # the shipped ones are still there

    monkeypatch.setenv("GATEWAY_PRESETS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError) as info:
        target_from_dict(preset("crm", "my-crm", vars={"base": "https://crm.example.com"}))
    assert "GATEWAY_PRESETS_DIR" in info.value.reason and "is not a directory" in info.value.reason


def test_a_preset_file_must_declare_what_it_uses() -> None:
    with pytest.raises(ConfigError, match="does not declare"):
        preset_from_dict("x", {"target": {"url": "{{base}}/x"}})
    with pytest.raises(ConfigError, match="never used"):
        preset_from_dict("x", {"variables": {"a": {"default": "1"}}, "target": {"url": "https://x.example"}})
    with pytest.raises(ConfigError, match="cannot set 'networks'"):
        preset_from_dict("x", {"target": {"url": "https://x.example", "networks": ["*"]}})
    assert PRESETS_DIR.is_dir()


def test_what_the_target_sets_overrides_the_preset_and_headers_merge() -> None:
    t = target_from_dict(
        preset(
            "ramen",
            "ramen",
            vars={"api_key": "${RAMEN_KEY}", "email": "%invitee%@sms.example.com", "tier": "gold"},
            url="https://ramen.example.com/api/v1/invitations",
            headers={"X-Extra": "%tier%"},
            events=["invitation_created", "invitation_accepted"],
        )
    )
    assert t.url == "https://ramen.example.com/api/v1/invitations"
    assert dict(t.headers) == {"RAMEN_API_KEY": "${RAMEN_KEY}", "X-Extra": "%tier%"}
    assert dict(t.vars) == {"tier": "gold"}  # the preset's variables are used up, the others stay
    assert t.events == ("invitation_created", "invitation_accepted")
    assert '"recipient_email": "%invitee%@sms%2Eexample%2Ecom"' not in (t.post_data or "")
    assert '"recipient_email": "%invitee%@sms.example.com"' in (t.post_data or "")
    # A literal with a quote stays one JSON string; in a form body, an & stays in its field.
    t2 = target_from_dict(preset("r2", "ramen", vars={"api_key": "k", "email": 'a"b@x.example'}))
    assert json.loads(t2.post_data or "")["recipient_email"] == 'a"b@x.example'
    sms = target_from_dict(
        preset(
            "sms",
            "twilio-sms",
            vars={"account_sid": "AC1", "auth_token": "t", "from": "+1500", "body": "Tom & Jerry: %invitor%"},
        )
    )
    assert "Body=Tom%20%26%20Jerry%3A%20%invitor%" in (sms.post_data or "")


def test_a_preset_variable_left_as_a_placeholder_outside_a_json_string_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        target_from_dict(
            preset(
                "b",
                "brillium",
                vars={
                    "base_url": "https://b.example",
                    "username": "u",
                    "password": "p",
                    "assess_id": "A1",
                    "email": "e@x.example",
                    "send_emails": "%invitor%",
                },
            )
        )
    assert (info.value.target, info.value.key) == ("b", "post_data")


# -- the seed APIs -------------------------------------------------------------------------------


def test_ramen_sends_the_invitation_and_counts_already_invited_as_delivered(
    redis: Redis, redis_url: str
) -> None:
    already = json.dumps(
        {"error": {"message": "recipient_email already invited", "param": "recipient_email"}}
    )

    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script(
            "/api/v1/invitations", [(200, {}, b'{"id": "1"}'), (404, {}, already.encode()), (404, {}, b"no")]
        )
        vars = {"api_key": "${API_KEY}", "email": "%invitor%@mail.example.com", "base_url": srv.base}
        events = await deliver(h, [preset("ramen", "ramen", vars=vars, retry=[])], count=3)
        hits = srv.to("/api/v1/invitations")
        assert len(hits) == 3
        for hit in hits:
            assert hit.method == "POST"
            assert hit.headers["ramen_api_key"] == "key-123"
            assert hit.headers["content-type"] == "application/json"
        sent = sorted((hit.json() for hit in hits), key=lambda b: b["recipient_email"])
        assert sent[0] == {
            "recipient_email": "inv0@mail.example.com",
            "invitation_type": "org_customer",
            "meta_data": {"segment": NETWORK},
        }
        by_key = {hit.key: hit.status for hit in hits}
        # 200 and the 404 "already invited" are delivered; a 404 that says something else is not.
        outcome = sorted((by_key[did(ev, "ramen")], h.state(ev.id, "ramen")["status"]) for ev in events)
        assert outcome == [(200, "delivered"), (404, "delivered"), (404, "failed")]

    run(redis, redis_url, body)


def test_doselect_sends_key_and_secret_headers_the_test_slug_and_suppress_email(
    redis: Redis, redis_url: str
) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        vars = {
            "api_key": "${API_KEY}",
            "api_secret": "${API_SECRET}",
            "test_slug": "esows",
            "email": "%invitor%@mail.example.com",
            "suppress_email": "True",
            "base_url": srv.base,
        }
        config = h.configure([preset("doselect", "doselect", vars=vars)])
        assert str(config.targets[0].rate) == "200/s"  # DoSelect's documented limit, by default
        h.add_events(1, ["doselect"])
        engine = h.engine()
        engine.environ = ENV
        await engine.run(30)
        [hit] = srv.to("/platform/v1/test/esows/candidates/")
        assert hit.method == "POST" and hit.query == {"suppress_email": "True"}
        assert hit.headers["doselect-api-key"] == "key-123"
        assert hit.headers["doselect-api-secret"] == "secret-456"
        assert hit.json() == {"email": "inv0@mail.example.com"}

    run(redis, redis_url, body)


def test_brillium_sends_the_invitations_envelope_with_basic_auth_and_the_vendor_accept(
    redis: Redis, redis_url: str
) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script("/api/Invitations", [(200, {}, b'{"Invitations": [{"Id": 463, "Status": "Invited"}]}')])
        vars = {
            "base_url": srv.base,
            "username": "${USER}",
            "password": "${PASSWORD}",
            "assess_id": "000TEST",
            "email": "%invitor%@mail.example.com",
        }
        [ev] = await deliver(h, [preset("brillium", "brillium", vars=vars)])
        [hit] = srv.to("/api/Invitations")
        assert hit.method == "POST"
        assert hit.headers["accept"] == "application/vnd.ingeniousgroup.testcraftapi-v1+json"
        assert hit.headers["authorization"] == basic("SUPERSUDS", "pw:789")
        assert hit.json() == {
            "Invitations": [
                {
                    "AssessId": "000TEST",
                    "FirstName": "inv0",
                    "LastName": "-",
                    "Email": "inv0@mail.example.com",
                    "Custom": [ev.invitee],
                }
            ],
            "SendEmails": True,
        }
        assert h.state(ev.id, "brillium")["status"] == "delivered"

    run(redis, redis_url, body)


# -- other targets -------------------------------------------------------------------------------


def test_twilio_sends_a_form_with_basic_auth_to_from_and_body(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        path = "/2010-04-01/Accounts/AC123/Messages.json"
        srv.script(path, [201])
        vars = {
            "account_sid": "AC123",
            "auth_token": "${API_SECRET}",
            "from": "+15017122661",
            "base_url": srv.base,
        }
        [ev] = await deliver(h, [preset("sms", "twilio-sms", vars=vars)])
        [hit] = srv.to(path)
        assert hit.method == "POST"
        assert hit.headers["content-type"] == "application/x-www-form-urlencoded"
        assert hit.headers["authorization"] == basic("AC123", "secret-456")
        form = parse_qs(hit.body.decode(), strict_parsing=True)
        assert form == {
            "To": [ev.invitee],
            "From": ["+15017122661"],
            "Body": ["inv0 invited you to join. Install the app to accept."],
        }
        assert h.state(ev.id, "sms")["status"] == "delivered"

    run(redis, redis_url, body)


def test_slack_posts_the_message_as_text(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        vars = {"path": "T000/B000/XXXX", "base_url": srv.base}
        config = h.configure([preset("slack", "slack", vars=vars)])
        assert str(config.targets[0].rate) == "1/s"
        [ev] = h.add_events(1, ["slack"])
        await h.engine().run(30)
        [hit] = srv.to("/services/T000/B000/XXXX")
        assert hit.method == "POST" and hit.headers["content-type"] == "application/json"
        assert hit.json() == {"text": f"inv0 invited {ev.invitee} (network {NETWORK})"}

    run(redis, redis_url, body)


def test_sendgrid_sends_mail_send_with_a_bearer_and_202_is_success(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script("/v3/mail/send", [202, 200])
        vars = {"api_key": "${API_KEY}", "to": "%invitor%@mail.example.com", "from": "hi@example.com"}
        [ev1, ev2] = await deliver(
            h, [preset("mail", "sendgrid", vars={**vars, "base_url": srv.base}, retry=[])], 2
        )
        hits = srv.to("/v3/mail/send")
        assert len(hits) == 2
        hit = next(x for x in hits if x.key == did(ev1, "mail"))
        assert hit.headers["authorization"] == "Bearer key-123"
        assert hit.json() == {
            "personalizations": [{"to": [{"email": "inv0@mail.example.com"}]}],
            "from": {"email": "hi@example.com"},
            "subject": "inv0 invited you",
            "content": [
                {"type": "text/plain", "value": "inv0 invited you to join. Install the app to accept."}
            ],
        }
        statuses = sorted(
            (srv_hit.status, h.state(ev.id, "mail")["status"])
            for ev in (ev1, ev2)
            for srv_hit in hits
            if srv_hit.key == did(ev, "mail")
        )
        assert statuses == [(200, "failed"), (202, "delivered")]  # SendGrid answers 202, nothing else

    run(redis, redis_url, body)


def test_hubspot_creates_a_contact_and_409_duplicate_counts_as_delivered(
    redis: Redis, redis_url: str
) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script("/crm/v3/objects/contacts", [201, (409, {}, b'{"message": "Contact already exists"}')])
        vars = {"token": "${API_KEY}", "email": "%invitor%@mail.example.com", "base_url": srv.base}
        events = await deliver(h, [preset("crm", "hubspot-contact", vars=vars, retry=[])], 2)
        hits = srv.to("/crm/v3/objects/contacts")
        assert len(hits) == 2
        for hit in hits:
            assert hit.method == "POST" and hit.headers["authorization"] == "Bearer key-123"
            assert set(hit.json()["properties"]) == {"email", "phone"}
        assert sorted(hit.status for hit in hits) == [201, 409]
        assert [h.state(ev.id, "crm")["status"] for ev in events] == ["delivered", "delivered"]

    run(redis, redis_url, body)


def test_the_four_acrobits_shapes_pass_the_callback_through(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        targets = [
            preset(shape, f"acrobits-{shape}", vars={"endpoint": f"{srv.base}/%event%/{shape}"})
            for shape in ("get", "form", "json", "xml")
        ]
        [ev] = await deliver(h, targets)
        expected = {"invitee": ev.invitee_raw, "invitor": ev.invitor, "network_id": NETWORK}
        [get] = srv.to("/invitation_created/get")
        assert get.method == "GET" and get.query == expected and get.body == b""
        [form] = srv.to("/invitation_created/form")
        assert form.method == "POST" and form.headers["content-type"] == "application/x-www-form-urlencoded"
        assert {k: v[0] for k, v in parse_qs(form.body.decode()).items()} == expected
        [js] = srv.to("/invitation_created/json")
        assert js.headers["content-type"] == "application/json" and js.json() == expected
        [xml] = srv.to("/invitation_created/xml")
        assert xml.headers["content-type"] == "application/xml"
        root = ET.fromstring(xml.body)
        assert {child.tag: child.text for child in root} == expected
        assert urlsplit(f"{srv.base}{get.path}").path == "/invitation_created/get"

    run(redis, redis_url, body)


def test_a_preset_variable_filled_by_a_lookup(redis: Redis, redis_url: str) -> None:
    # Ramen wants an email the callback lacks: the target's lookup finds it, the preset's
    # `email` variable names the lookup's placeholder.
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script(
            "/contacts",
            [(200, {"Content-Type": "application/json"}, b'{"contact": {"email": "a@b.example"}}')],
        )
        target = preset(
            "ramen",
            "ramen",
            vars={"api_key": "k", "email": "%crm.email%", "base_url": srv.base},
            lookups={
                "crm": {"url": f"{srv.base}/contacts?phone=%invitee%", "fields": {"email": "contact.email"}}
            },
        )
        [ev] = await deliver(h, [target])
        [lookup] = srv.to("/contacts")
        assert lookup.query == {"phone": ev.invitee}
        [hit] = srv.to("/api/v1/invitations")
        assert hit.json()["recipient_email"] == "a@b.example"
        assert h.state(ev.id, "ramen")["status"] == "delivered"

    run(redis, redis_url, body)
