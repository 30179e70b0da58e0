"""Lookups' paths and the redaction of previews and test sends (pure), and the CIDR allowlist at
connect time through the real Sender."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway.config.load import config_from_dict
from gateway.delivery.lookups import read_path
from gateway.delivery.request import OutboundRequest
from gateway.delivery.sender import SendError
from gateway.delivery.testsend import redact, render_preview
from tests.conftest import TargetServer
from tests.test_sender import SyncSender

DOC: dict[str, Any] = {
    "contact": {"email": "jon@example.com", "age": 41, "vip": True, "empty": "", "none": None},
    "results": [{"email": "a@example.com"}, {"email": "b@example.com"}],
}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("contact.email", "jon@example.com"),
        ("contact.age", "41"),
        ("contact.vip", "true"),
        ("results.1.email", "b@example.com"),
        ("contact.empty", None),
        ("contact.none", None),
        ("contact", None),  # a table is no value
        ("results.2.email", None),
        ("contact.email.more", None),
        ("missing", None),
    ],
)
def test_read_path(path: str, value: str | None) -> None:
    assert read_path(DOC, path) == value


def test_redact_hides_every_kind_of_secret() -> None:
    basic = base64.b64encode(b"api:s3cret").decode()
    request = OutboundRequest(
        "POST",
        "https://x.example.com/hooks/T0KEN-PATH?to=%2B1",
        (
            ("Authorization", f"Basic {basic}"),
            ("X-Api-Key", "key-abc"),
            ("webhook-signature", "v1,AAAA v1,BBBB"),
        ),
        b'{"token": "key-abc"}',
        10.0,
        "http://user:pw-proxy@proxy.example.com:3128",
    )
    shown = redact(request, {"T0KEN-PATH": "${PATH_SECRET}", "key-abc": "${API_KEY}"})
    assert shown["url"] == "https://x.example.com/hooks/${PATH_SECRET}?to=%2B1"
    assert dict(shown["headers"]) == {
        "Authorization": "Basic ***",
        "X-Api-Key": "${API_KEY}",
        "webhook-signature": "v1,*** v1,***",
    }
    assert shown["body"] == '{"token": "${API_KEY}"}'
    assert shown["proxy"] == "http://user:***@proxy.example.com:3128"
    bearer = OutboundRequest("GET", "https://x.example.com/", (("Authorization", "Bearer eyJ.tok"),), None, 5)
    assert dict(redact(bearer)["headers"]) == {"Authorization": "Bearer ***"}


def test_render_preview_of_a_form_target_with_a_literal_signing_secret() -> None:
    secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    config = config_from_dict(
        {
            "targets": [
                {
                    "name": "sms",
                    "networks": ["*"],
                    "events": ["invitation_accepted"],
                    "url": "https://api.example.com/Messages.json",
                    "post_data": "To=%invitee%&Body=%message%",
                    "signing_secret": secret,
                }
            ]
        }
    )
    preview = render_preview(config, "sms", {"UNUSED": "x"}, {"invitee": "+447700900123"})
    assert preview["event"]["type"] == "invitation_accepted"
    assert preview["event"]["network_id"] == "mynetwork"
    assert preview["request"]["body"].startswith("To=%2B447700900123&Body=")
    assert dict(preview["request"]["headers"])["webhook-signature"] == "v1,***"
    assert secret not in str(preview)
    assert preview["env"] == {}
    assert preview["lookups"] == {}


def test_a_network_list_is_honoured_at_connect_time(target_server: TargetServer) -> None:
    request = OutboundRequest("GET", f"{target_server.url}/x", (), None, 5.0)
    allowed = SyncSender(allow_private=("127.0.0.0/8",))
    refused = SyncSender(allow_private=("10.0.0.0/8", "fd00::/8"))
    try:
        assert allowed.send(request).status == 200
        with pytest.raises(SendError) as info:
            refused.send(request)
        assert info.value.blocked
        assert "list its network in allow_private_targets" in info.value.reason
        # A name is vetted on the addresses it resolves to, before any connection.
        by_name = OutboundRequest("GET", f"http://localhost:{target_server.port}/y", (), None, 5.0)
        with pytest.raises(SendError) as info:
            refused.send(by_name)
        assert info.value.blocked
    finally:
        allowed.close()
        refused.close()
    assert [r.path for r in target_server.received] == ["/x"]


def test_the_readme_lookup_example_loads(tmp_path: Any) -> None:
    from pathlib import Path

    from gateway.config.load import load_config

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = next(b for b in readme.split("```toml")[1:] if "[targets.lookups.crm]" in b).split("```")[0]
    path = tmp_path / "lookup.toml"
    path.write_text(block)
    config = load_config(path, {"RAMEN_API_KEY": "k", "CRM_TOKEN": "t"})
    [target] = config.targets
    [lookup] = target.lookups
    assert lookup.placeholders() == ["crm.email", "crm.name"]
    assert (lookup.cache, lookup.not_found, lookup.on_not_found) == (3600, (404,), "skip")
    preview = render_preview(config, "ramen")
    assert "<crm.email>" in preview["request"]["body"]
