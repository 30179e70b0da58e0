"""Target declarations and their load-time validation (gateway/config/load.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from gateway.config.load import config_from_dict, load_config, target_from_dict
from gateway.config.targets import (
    DEFAULT_CONTENT_TYPE,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    EVENT_PLACEHOLDERS,
    Config,
    Rate,
    Target,
)
from gateway.events import INVITATION_ACCEPTED, INVITATION_CREATED, make_event
from gateway.exceptions import ConfigError
from gateway.templating import FORM_KIND, JSON_KIND, TEXT_KIND, XML_KIND, Template, parse_body

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
BASE: dict[str, Any] = {"name": "t1", "networks": ["*"], "url": "https://api.example.com/hook?i=%invitee%"}


def _target(**changes: Any) -> dict[str, Any]:
    data = {**BASE, **changes}
    return {k: v for k, v in data.items() if v is not None}


def _config_error(data: dict[str, Any], environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        target_from_dict(data, environ)
    return info.value


# -- valid targets ------------------------------------------------------------------------------


def test_minimal_get_target_defaults() -> None:
    target = target_from_dict(BASE)
    assert target.method == "GET"
    assert target.post_data is None
    assert target.content_type == DEFAULT_CONTENT_TYPE
    assert target.events == (INVITATION_CREATED, INVITATION_ACCEPTED)
    assert target.retry == DEFAULT_RETRY
    assert target.timeout == DEFAULT_TIMEOUT
    assert target.success_codes is None
    assert target.headers == ()
    assert target.auth is None


@pytest.mark.parametrize(
    ("content_type", "post_data", "kind"),
    [
        (
            "application/x-www-form-urlencoded",
            "invitee=%invitee%&invitor=%invitor%&net=%network_id%",
            FORM_KIND,
        ),
        (
            "application/json",
            '{"invitee": "%invitee%", "invitor": "%invitor%", "n": ["%network_id%"]}',
            JSON_KIND,
        ),
        ("application/json; charset=utf-8", '{"a": {"b": "x %invitee% y"}, "c": 1, "d": true}', JSON_KIND),
        ("text/json", '{"a": "%invitee%"}', JSON_KIND),
        ("application/vnd.example.v1+json", '{"a": "%invitee%"}', JSON_KIND),
        ("application/xml", "<root><invitee>%invitee%</invitee><x a='%invitor%'/></root>", XML_KIND),
        ("text/xml", '<?xml version="1.0"?><r><a b="%network_id%">%invitor%</a></r>', XML_KIND),
        ("application/soap+xml", "<e:Envelope xmlns:e='urn:e'><e:B>%invitee%</e:B></e:Envelope>", XML_KIND),
        ("text/plain", "New invitation for %invitee% from %invitor% on %network_id%", TEXT_KIND),
    ],
)
def test_valid_target_per_content_type(content_type: str, post_data: str, kind: object) -> None:
    target = target_from_dict(_target(post_data=post_data, content_type=content_type))
    assert target.method == "POST"
    assert target.post_data == post_data
    assert target.body_kind is kind


def test_full_target() -> None:
    target = target_from_dict(
        _target(
            events=["invitation_accepted"],
            networks="mynetwork",
            method="put",
            post_data='{"e": "%event%", "id": "%event_id%", "d": "%delivery_id%", "at": "%received_at%"}',
            content_type="application/json",
            headers={"Authorization": "Bearer ${TOKEN}", "X-Network": "%network_id%"},
            auth={"username": "${USER}", "password": "p"},
            signing_secret=SECRET,
            success_codes=[200, 201],
            timeout=2.5,
            retry=[0, 1, 60],
        )
    )
    assert target.method == "PUT"
    assert target.networks == ("mynetwork",)
    assert target.events == (INVITATION_ACCEPTED,)
    assert target.headers == (("Authorization", "Bearer ${TOKEN}"), ("X-Network", "%network_id%"))
    assert target.auth == ("${USER}", "p")
    assert target.success_codes == (200, 201)
    assert target.timeout == 2.5
    assert target.retry == (0, 1, 60)
    assert target.env_names() == {"TOKEN", "USER"}


def test_empty_post_data_means_get() -> None:
    target = target_from_dict(_target(post_data=""))
    assert target.post_data is None
    assert target.method == "GET"


def test_vars_are_placeholders() -> None:
    target = target_from_dict(
        _target(
            url="https://api.example.com/clients/%client_id%/invitations",
            post_data='{"email": "%email%", "mobile_phone": "%invitee%", "code": "%code%"}',
            content_type="application/json",
            headers={"X-Team": "%team%"},
            vars={"client_id": "c-42", "email": "ops+invites@example.com", "code": "", "team": "ä b"},
        )
    )
    assert dict(target.vars) == {
        "client_id": "c-42",
        "email": "ops+invites@example.com",
        "code": "",
        "team": "ä b",
    }
    event = make_event(
        {"invitee": "+15551231234", "invitor": "j", "network_id": "n"}, INVITATION_CREATED, "q"
    )
    values = {**event.placeholders(), **dict(target.vars)}
    body = Template.parse(target.post_data or "").render(values, target.body_kind.escape, {})
    assert json.loads(body) == {
        "email": "ops+invites@example.com",
        "mobile_phone": "+15551231234",
        "code": "",
    }


def test_unknown_var_is_still_unknown() -> None:
    error = _config_error(_target(url="https://h/%client_id%", vars={"client": "x"}))
    assert error.key == "url"
    assert "%client_id%" in str(error)


@pytest.mark.parametrize("name", ["invitee", "network_id", "delivery_id", "event"])
def test_vars_cannot_redefine_event_values(name: str) -> None:
    error = _config_error(_target(vars={name: "x"}))
    assert (error.target, error.key) == ("t1", "vars")
    assert name in str(error)


@pytest.mark.parametrize("vars_", [{"bad-name": "x"}, {"n": 1}, ["x"], {"1n": "x"}])
def test_vars_must_be_a_table_of_text(vars_: object) -> None:
    assert _config_error(_target(vars=vars_)).key == "vars"


def test_url_with_percent_encoded_literal_text() -> None:
    # A provider pastes a URL that is already percent-encoded (José = Jos%C3%A9). Only
    # %name% tokens are placeholders; hex escapes must stay literal text.
    target = target_from_dict(_target(url="https://api.example.com/hook?n=Jos%C3%A9&i=%invitee%"))
    assert Template.parse(target.url).placeholders() == {"invitee"}


# -- broken targets: each error names the target and the key -------------------------------------


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"post_dta": "invitee=%invitee%"}, "post_dta", "unknown key"),
        ({"url": "https://api.example.com/%foo%"}, "url", "%foo%"),
        ({"post_data": "a=%foo%"}, "post_data", "%foo%"),
        ({"headers": {"X-A": "%foo%"}}, "headers.X-A", "%foo%"),
        ({"post_data": '{"n": %invitee%}', "content_type": "application/json"}, "post_data", "JSON string"),
        ({"post_data": '{"n": "%invitee%"', "content_type": "application/json"}, "post_data", "JSON"),
        (
            {
                "post_data": "{ \u201cinvitee\u201d : \u201c%invitee%\u201d }",
                "content_type": "application/json",
            },
            "post_data",
            "JSON",
        ),
        ({"post_data": "<r><a>%invitee%</r>", "content_type": "application/xml"}, "post_data", "XML"),
        ({"post_data": "<r a=%invitee%/>", "content_type": "application/xml"}, "post_data", "XML"),
        ({"post_data": "<r>%invitee%", "content_type": "text/xml"}, "post_data", "XML"),
        ({"post_data": "%invitee%"}, "post_data", "form"),
        ({"url": "https://%network_id%.example.com/hook"}, "url", "host"),
        ({"url": "https://%invitee%/hook"}, "url", "host"),
        ({"url": "https://api.example.com%invitee%/hook"}, "url", "host"),
        ({"url": "https://api.example.com:%invitee%/hook"}, "url", "host"),
        ({"url": "ftp://api.example.com/hook"}, "url", "http"),
        ({"url": "file:///etc/passwd"}, "url", "http"),
        ({"url": "api.example.com/hook"}, "url", "http"),
        ({"url": "%invitee%://api.example.com/"}, "url", "http"),
        ({"url": "https:///nohost"}, "url", "http"),
        ({"url": "https://user:pass@api.example.com/hook"}, "url", "user:password"),
        ({"url": "https://user@api.example.com/hook"}, "url", "user:password"),
        ({"url": ""}, "url", "non-empty"),
        ({"url": None}, "url", "non-empty"),
        ({"method": "GET", "post_data": "a=%invitee%"}, "method", "GET"),
        ({"method": "HEAD"}, "method", "HEAD"),
        ({"method": "CONNECT"}, "method", "CONNECT"),
        ({"post_data": "a=1", "content_type": "application/pdf"}, "content_type", "application/pdf"),
        ({"content_type": "multipart/form-data"}, "content_type", "multipart/form-data"),
        ({"content_type": ""}, "content_type", "non-empty"),
        ({"post_data": 5}, "post_data", "string"),
        ({"networks": None}, "networks", "required"),
        ({"networks": []}, "networks", "non-empty"),
        ({"networks": [""]}, "networks", "non-empty"),
        ({"networks": [1]}, "networks", "non-empty"),
        ({"events": ["created"]}, "events", "created"),
        ({"events": []}, "events", "non-empty"),
        ({"retry": [5, "x"]}, "retry", "whole seconds"),
        ({"retry": [-1]}, "retry", "whole seconds"),
        ({"retry": [1.5]}, "retry", "whole seconds"),
        ({"retry": [True]}, "retry", "whole seconds"),
        ({"retry": [7 * 86400 + 1]}, "retry", "whole seconds"),
        ({"retry": "5, 300"}, "retry", "whole seconds"),
        ({"retry": [1] * 26}, "retry", "25"),
        ({"timeout": 0}, "timeout", "seconds"),
        ({"timeout": -1}, "timeout", "seconds"),
        ({"timeout": 60.5}, "timeout", "seconds"),
        ({"timeout": "10"}, "timeout", "seconds"),
        ({"timeout": True}, "timeout", "seconds"),
        ({"headers": {"Host": "evil.example"}}, "headers", "Host"),
        ({"headers": {"host": "evil.example"}}, "headers", "host"),
        ({"headers": {"Content-Length": "1"}}, "headers", "Content-Length"),
        ({"headers": {"Transfer-Encoding": "chunked"}}, "headers", "Transfer-Encoding"),
        ({"headers": {"Webhook-Signature": "v1,x"}}, "headers", "Webhook-Signature"),
        ({"headers": {"Bad Name": "x"}}, "headers", "Bad Name"),
        ({"headers": {"X-A": 1}}, "headers", "X-A"),
        ({"headers": {"X-A": "a\r\nX-B: b"}}, "headers", "line break"),
        ({"headers": ["X-A: 1"]}, "headers", "table"),
        ({"auth": {"username": "u"}}, "auth", "Basic"),
        ({"auth": {"username": "u", "password": ""}}, "auth", "non-empty"),
        ({"auth": "u:p"}, "auth", "Basic"),
        ({"signing_secret": "not-a-secret"}, "signing_secret", "whsec_"),
        ({"signing_secret": "whsec_!!!notbase64"}, "signing_secret", "base64"),
        ({"signing_secret": "whsec_" + base64.b64encode(b"short").decode()}, "signing_secret", "24 to 64"),
        ({"signing_secret": "whsec_" + base64.b64encode(bytes(65)).decode()}, "signing_secret", "24 to 64"),
        ({"signing_secret": ""}, "signing_secret", "non-empty"),
        ({"success_codes": []}, "success_codes", "status codes"),
        ({"success_codes": [99]}, "success_codes", "status codes"),
        ({"success_codes": [600]}, "success_codes", "status codes"),
        ({"success_codes": ["200"]}, "success_codes", "status codes"),
        ({"success_codes": 200}, "success_codes", "status codes"),
    ],
)
def test_broken_target_names_target_and_key(changes: dict[str, Any], key: str, words: str) -> None:
    data = {**BASE, **changes}
    data = {k: v for k, v in data.items() if v is not None}
    error = _config_error(data)
    assert error.target == "t1"
    assert error.key == key
    assert str(error).startswith(f"target 't1', key {key!r}: ")
    assert words in str(error)


@pytest.mark.parametrize("name", [None, "", "bad name", "a/b", "x" * 65, 5, "ü"])
def test_bad_target_name(name: object) -> None:
    data = {**BASE, "name": name}
    error = _config_error({k: v for k, v in data.items() if v is not None})
    assert error.key == "name"


@pytest.mark.parametrize(
    ("changes", "variable", "key"),
    [
        ({"headers": {"X-Key": "${API_KEY}"}}, "API_KEY", "headers.X-Key"),
        ({"url": "https://api.example.com/${PATH_SECRET}/hook"}, "PATH_SECRET", "url"),
        ({"post_data": "token=${API_KEY}&i=%invitee%"}, "API_KEY", "post_data"),
        ({"auth": {"username": "u", "password": "${API_KEY}"}}, "API_KEY", "auth"),
        ({"signing_secret": "${SIGNING}"}, "SIGNING", "signing_secret"),
    ],
)
def test_missing_env_names_variable_never_value(changes: dict[str, Any], variable: str, key: str) -> None:
    environ = {"OTHER_SECRET": "hunter2-value", "API_KEYS": "also-not-this"}
    error = _config_error(_target(**changes), environ)
    assert error.target == "t1"
    assert error.key == key
    assert variable in str(error)
    assert "hunter2-value" not in str(error)
    assert "also-not-this" not in str(error)


def test_env_present_in_environ_is_fine_and_not_kept() -> None:
    target = target_from_dict(_target(headers={"X-Key": "${API_KEY}"}), {"API_KEY": "the-real-key"})
    assert "the-real-key" not in repr(target)
    assert "the-real-key" not in json.dumps(target.to_dict())


def test_env_not_checked_without_environ() -> None:
    assert target_from_dict(_target(headers={"X-Key": "${API_KEY}"})).env_names() == {"API_KEY"}


# -- whole configurations ------------------------------------------------------------------------


def test_duplicate_target_names() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"targets": [dict(BASE), {**BASE, "url": "https://other.example.com/"}]})
    assert info.value.target == "t1"
    assert info.value.key == "name"
    assert "twice" in str(info.value)


def test_broken_target_inside_config_names_it() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"targets": [dict(BASE), {**BASE, "name": "second", "post_dta": "x"}]})
    assert (info.value.target, info.value.key) == ("second", "post_dta")


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"target": []}, "target"),
        ({"settings": {"allow_private": True}}, "settings.allow_private"),
        ({"settings": {"allow_private_targets": "yes"}}, "settings.allow_private_targets"),
        ({"settings": []}, "settings"),
        ({"aliases": {"phone": ["x"]}}, "aliases.phone"),
        ({"aliases": {"invitee": ["net"]}}, "aliases.invitee"),
        ({"aliases": {"invitee": ["Inviter"]}}, "aliases.invitee"),
        ({"aliases": {"invitee": ["x"], "invitor": ["X"]}}, "aliases.invitor"),
        ({"aliases": ["x"]}, "aliases"),
        ({"targets": {"name": "t"}}, "targets"),
        ({"targets": ["t"]}, "targets[0]"),
    ],
)
def test_broken_config(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert info.value.key == key
    assert repr(key) in str(info.value)


def test_empty_config() -> None:
    config = config_from_dict({})
    assert config == Config()
    assert config.routes(INVITATION_CREATED, "anything") == []


def test_routes_by_network_and_event() -> None:
    config = config_from_dict(
        {
            "targets": [
                {**BASE, "name": "all"},
                {**BASE, "name": "net-a", "networks": ["a", "b*"]},
                {**BASE, "name": "accepted-a", "networks": "a", "events": ["invitation_accepted"]},
                {**BASE, "name": "created-any", "networks": ["zz", "*"], "events": ["invitation_created"]},
            ]
        }
    )

    def names(event: str, network: str) -> list[str]:
        return [t.name for t in config.routes(event, network)]

    assert names(INVITATION_CREATED, "a") == ["all", "net-a", "created-any"]
    assert names(INVITATION_ACCEPTED, "a") == ["all", "net-a", "accepted-a"]
    assert names(INVITATION_CREATED, "b*") == ["all", "net-a", "created-any"]
    # `*` is a wildcard only as a whole entry: "b*" matches network "b*" alone.
    assert names(INVITATION_CREATED, "b") == ["all", "created-any"]
    assert names(INVITATION_ACCEPTED, "c") == ["all"]
    assert names(INVITATION_ACCEPTED, "A") == ["all"]
    assert config.target("net-a") is config.targets[1]
    assert config.target("nope") is None


def test_alias_table_from_config() -> None:
    config = config_from_dict({"aliases": {"invitee": ["Phone"], "network_id": ["cloud"]}})
    table = config.alias_table()
    assert table["phone"] == "invitee"
    assert table["cloud"] == "network_id"
    assert table["net"] == "network_id"


def test_round_trip() -> None:
    config = config_from_dict(
        {
            "settings": {"allow_private_targets": True},
            "aliases": {"invitee": ["phone", "msisdn"], "invitor": []},
            "targets": [
                dict(BASE),
                {
                    **BASE,
                    "name": "full",
                    "networks": ["a", "b*"],
                    "events": ["invitation_accepted"],
                    "method": "patch",
                    "post_data": "<r><a x='%invitor%'>%invitee%</a><e>%email%</e></r>",
                    "content_type": "application/xml",
                    "headers": {"X-Key": "${KEY}", "Accept": "application/xml"},
                    "auth": {"username": "u", "password": "${PW}"},
                    "signing_secret": SECRET,
                    "success_codes": [200, 404],
                    "timeout": 3,
                    "retry": [1, 2, 3],
                    "vars": {"email": "x@example.com", "z": ""},
                },
            ],
        }
    )
    data = config.to_dict()
    again = config_from_dict(data)
    assert again == config
    assert config_from_dict(json.loads(json.dumps(data))) == config
    assert again.targets[1].method == "PATCH"
    assert again.targets[1].success_codes == (200, 404)


# -- TOML files ---------------------------------------------------------------------------------


CONFIG_TOML = """
[settings]
allow_private_targets = false

[aliases]
invitee = ["phone"]

[[targets]]
name = "slack"
networks = ["*"]
events = ["invitation_created"]
url = "https://hooks.slack.com/services/${SLACK_PATH}"
content_type = "application/json"
post_data = '{"text": "%invitor% invited %invitee% (%network_id%)"}'
retry = [1, 60]

[[targets]]
name = "audit"
networks = ["mynetwork", "mynetwork*"]
url = "https://audit.example.com/in?invitee=%invitee%&invitor=%invitor%&net=%network_id%"
"""


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG_TOML, encoding="utf-8")
    config = load_config(path, {"SLACK_PATH": "T000/B000/XXXX"})
    assert [t.name for t in config.targets] == ["slack", "audit"]
    assert config.aliases == {"invitee": ("phone",)}
    slack = config.targets[0]
    assert slack.method == "POST"
    assert slack.retry == (1, 60)
    assert [t.name for t in config.routes(INVITATION_ACCEPTED, "mynetwork*")] == ["audit"]
    assert load_config(str(path)) == config


def test_load_config_missing_env_names_file_target_and_variable(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG_TOML, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, {"SLACK": "not-this-value"})
    message = str(info.value)
    assert str(path) in message
    assert "'slack'" in message
    assert "SLACK_PATH" in message
    assert "not-this-value" not in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[[targets]]\nname = "t"\nnetworks = ["*"]\nurl = "https://h/"\npost_dta = "a=1"\n', "post_dta"),
        ('[[targets]]\nname = "t"\nurl = "https://h/"\n', "networks"),
        ('[[targets]]\nname = "t"\nnetworks = ["*"]\nurl = "https://h/%foo%"\n', "%foo%"),
        ("[[targets]\nname = 1\n", "not valid TOML"),
        ('[[targets]]\nname = "t"\nnetworks = ["*"]\nurl = "https://h/"\ntimeout = 0\n', "timeout"),
    ],
)
def test_load_config_errors_name_the_file(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert words in str(info.value)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


# -- the seed targets of CONTRACTS.md section 2 and 3 can be expressed --------------------------


SEED_TARGETS_TOML = """
[[targets]]
name = "openforce"
networks = ["*"]
url = "https://api.openforce.com/clients/%client_id%/invitations"
content_type = "application/json"
post_data = '''{"first_name": "%first_name%", "last_name": "%last_name%", "mobile_phone": "%invitee%",
  "email": "%email%", "activiation_code": "%event_id%"}'''
headers = { Authorization = "Bearer ${OPENFORCE_TOKEN}" }
vars = { client_id = "42", first_name = "Invited", last_name = "Friend", email = "invites@example.com" }

[[targets]]
name = "ramen"
networks = ["*"]
url = "https://ramen.is/api/v1/invitations"
content_type = "application/json"
post_data = '''{"recipient_email": "%email%", "invitation_type": "org_customer",
  "meta_data": {"name": "%invitor%", "title": "invitee %invitee%", "segment": "%network_id%"}}'''
headers = { RAMEN_API_KEY = "${RAMEN_KEY}" }
success_codes = [200, 404]
vars = { email = "invites@example.com" }

[[targets]]
name = "doselect"
networks = ["*"]
url = "https://api.doselect.com/platform/v1/test/%slug%/candidates/?suppress_email=True"
content_type = "application/json"
post_data = '{"email": "%email%", "start_time": "%received_at%"}'
headers = { DoSelect-Api-Key = "${DOSELECT_KEY}", DoSelect-Api-Secret = "${DOSELECT_SECRET}" }
vars = { slug = "backend-test", email = "candidate+%s@example.com" }

[[targets]]
name = "brillium"
networks = ["mynetwork"]
url = "https://acme.brillium.com/api/Invitations"
content_type = "application/json"
post_data = '''{"Invitations": [{"AssessId": "%assess_id%", "FirstName": "%invitor%", "LastName": "",
  "Email": "%email%", "Custom": ["%invitee%", "%network_id%"]}], "SendEmails": true}'''
headers = { Accept = "application/vnd.ingeniousgroup.testcraftapi-v1+json" }
auth = { username = "${BRILLIUM_KEY}", password = "x" }
vars = { assess_id = "A1", email = "ops@example.com" }

[[targets]]
name = "twilio"
networks = ["*"]
events = ["invitation_created"]
url = "https://api.twilio.com/2010-04-01/Accounts/${TWILIO_SID}/Messages.json"
post_data = "To=%invitee%&From=%from%&Body=%invitor% invited you to %network_id%"
auth = { username = "${TWILIO_SID}", password = "${TWILIO_TOKEN}" }
success_codes = [201]
vars = { from = "+15550000000" }

[[targets]]
name = "hubspot"
networks = ["*"]
url = "https://api.hubapi.com/crm/v3/objects/contacts"
content_type = "application/json"
post_data = '{"properties": {"phone": "%invitee%", "invited_by": "%invitor%"}}'
headers = { Authorization = "Bearer ${HUBSPOT_TOKEN}" }
success_codes = [201, 409]
signing_secret = "${SIGNING_SECRET}"
"""

SEED_ENV = {
    "OPENFORCE_TOKEN": "t",
    "RAMEN_KEY": "k",
    "DOSELECT_KEY": "k",
    "DOSELECT_SECRET": "s",
    "BRILLIUM_KEY": "b",
    "TWILIO_SID": "AC123",
    "TWILIO_TOKEN": "tok",
    "HUBSPOT_TOKEN": "h",
    "SIGNING_SECRET": SECRET,
}


@pytest.fixture
def seed_config(tmp_path: Path) -> Config:
    path = tmp_path / "seeds.toml"
    path.write_text(SEED_TARGETS_TOML, encoding="utf-8")
    return load_config(path, SEED_ENV)


def _render_body(target: Target) -> str:
    event = make_event(
        {"invitee": "+1 555 123 1234", "invitor": "john.snow@example.com", "network_id": "mynetwork*"},
        INVITATION_CREATED,
        "json",
        now=1_700_000_000.0,
    )
    values = {**event.placeholders(), "delivery_id": "d", **dict(target.vars)}
    return Template.parse(target.post_data or "").render(values, target.body_kind.escape, SEED_ENV)


def test_seed_targets_load(seed_config: Config) -> None:
    assert [t.name for t in seed_config.targets] == [
        "openforce",
        "ramen",
        "doselect",
        "brillium",
        "twilio",
        "hubspot",
    ]


def test_seed_ramen(seed_config: Config) -> None:
    ramen = seed_config.target("ramen")
    assert ramen is not None
    assert ramen.headers == (("RAMEN_API_KEY", "${RAMEN_KEY}"),)
    assert ramen.is_success(200)
    assert ramen.is_success(404)  # "already invited" is done, not failed
    assert not ramen.is_success(201)
    body = json.loads(_render_body(ramen))
    assert body["recipient_email"] == "invites@example.com"
    assert body["meta_data"] == {
        "name": "john.snow@example.com",
        "title": "invitee +15551231234",
        "segment": "mynetwork*",
    }


def test_seed_brillium_batch_envelope(seed_config: Config) -> None:
    brillium = seed_config.target("brillium")
    assert brillium is not None
    assert brillium.networks == ("mynetwork",)
    assert brillium.auth == ("${BRILLIUM_KEY}", "x")
    body = json.loads(_render_body(brillium))
    assert body == {
        "Invitations": [
            {
                "AssessId": "A1",
                "FirstName": "john.snow@example.com",
                "LastName": "",
                "Email": "ops@example.com",
                "Custom": ["+15551231234", "mynetwork*"],
            }
        ],
        "SendEmails": True,
    }


def test_seed_twilio_form(seed_config: Config) -> None:
    twilio = seed_config.target("twilio")
    assert twilio is not None
    assert twilio.method == "POST"
    assert twilio.content_type == "application/x-www-form-urlencoded"
    assert twilio.events == (INVITATION_CREATED,)
    form = dict(parse_qsl(_render_body(twilio), strict_parsing=True))
    assert form == {
        "To": "+15551231234",
        "From": "+15550000000",
        "Body": "john.snow@example.com invited you to mynetwork*",
    }


def test_seed_doselect_url_keeps_trailing_slash_and_query(seed_config: Config) -> None:
    doselect = seed_config.target("doselect")
    assert doselect is not None
    url = Template.parse(doselect.url).render(dict(doselect.vars), lambda v: v, {})
    parts = urlsplit(url)
    assert parts.path == "/platform/v1/test/backend-test/candidates/"
    assert parts.query == "suppress_email=True"
    assert dict(doselect.headers) == {
        "DoSelect-Api-Key": "${DOSELECT_KEY}",
        "DoSelect-Api-Secret": "${DOSELECT_SECRET}",
    }


def test_seed_config_round_trip(seed_config: Config) -> None:
    assert config_from_dict(seed_config.to_dict(), SEED_ENV) == seed_config


def _base(**extra: Any) -> dict[str, Any]:
    return {"name": "t", "networks": ["*"], "url": "https://api.example.com/hook", **extra}


def test_unknown_placeholder_in_auth_fails_at_load() -> None:
    with pytest.raises(ConfigError) as info:
        target_from_dict(_base(auth={"username": "%typo%", "password": "x"}))
    assert (info.value.target, info.value.key) == ("t", "auth")


def test_signing_secret_from_env_is_checked_at_load_without_quoting_it() -> None:
    env = {"S": "whsec_not-base64!"}
    with pytest.raises(ConfigError) as info:
        target_from_dict(_base(signing_secret="${S}"), env)
    assert info.value.key == "signing_secret"
    assert "not-base64" not in str(info.value)
    good = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert target_from_dict(_base(signing_secret="${S}"), {"S": good}).signing_secret == "${S}"


def test_percent_encoded_literal_text_survives_rendering() -> None:
    target = target_from_dict(_base(url="https://api.example.com/hook?n=Jos%C3%A9&i=%invitee%"))
    assert Template.parse(target.url).placeholders() == {"invitee"}


def test_the_example_targets_file_loads_and_renders() -> None:
    from gateway.config.load import load_config
    from gateway.delivery.request import build_request

    path = Path(__file__).resolve().parent.parent / "templates" / "targets.example.toml"
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    names = {n for t in load_config(path).targets for n in t.env_names()}
    env = {n: "value" for n in names} | {"CRM_WEBHOOK_SECRET": secret, "MYNETWORK_INGEST_TOKEN": "t"}
    config = load_config(path, env)
    assert [t.name for t in config.targets] == ["crm", "twilio-sms", "slack", "ramen", "brillium"]
    event = make_event(
        {"invitee": "+1 555 123 1234", "invitor": 'o\'brien "x" <a&b>', "network_id": "mynetwork"},
        INVITATION_CREATED,
        "json",
    )
    for target in config.targets:
        request = build_request(target, event, env)
        assert request.body is not None
        if target.content_type == "application/json":
            strings = json.dumps(json.loads(request.body))
            assert "+15551231234" in strings
            # Ramen's preset sends no name of the inviter (the callback has none of the invitee).
            assert "o'brien" in strings or target.name == "ramen"
        else:
            form = dict(parse_qsl(request.body.decode()))
            assert form["To"] == "+15551231234"
            assert form["Body"] == 'o\'brien "x" <a&b> invited you to our softphone'


# -- delivery policy: rate, concurrency, expiry, proxy, auto-pause ---------------------------------


def test_policy_defaults() -> None:
    target = target_from_dict(BASE)
    assert target.rate is None
    assert target.concurrency is None
    assert target.expire_after is None
    assert target.proxy is None
    assert (target.pause_failures, target.pause_seconds) == (10, 60)
    assert target.probe_interval == 30
    # Not written back when unset: an old file keeps the same dict (and stored digest).
    assert set(target.to_dict()) == {
        "name",
        "networks",
        "events",
        "url",
        "content_type",
        "method",
        "headers",
        "timeout",
        "retry",
        "vars",
    }


@pytest.mark.parametrize(
    ("text", "count", "per", "interval_ms", "canonical"),
    [
        ("1/s", 1, 1, 1000.0, "1/s"),
        ("200/s", 200, 1, 5.0, "200/s"),
        ("20/m", 20, 60, 3000.0, "20/m"),
        ("20/min", 20, 60, 3000.0, "20/m"),
        ("1000/h", 1000, 3600, 3600.0, "1000/h"),
        ("3/s", 3, 1, 1000 / 3, "3/s"),
    ],
)
def test_rate(text: str, count: int, per: int, interval_ms: float, canonical: str) -> None:
    target = target_from_dict(_target(rate=text))
    assert target.rate == Rate(count=count, per=per)
    assert target.rate.interval_ms == pytest.approx(interval_ms)
    assert str(target.rate) == canonical
    assert target.to_dict()["rate"] == canonical


@pytest.mark.parametrize(
    "rate",
    [
        "0/s",
        "-1/s",
        "1.5/s",
        "1/d",
        "1/sec",
        "1 / s",
        " 1/s",
        "1/S",
        "/s",
        "1",
        "s",
        "",
        "01/s",
        "1e3/s",
        5,
        1.0,
        True,
        ["1/s"],
        "1234567890/s",
    ],
)
def test_bad_rate(rate: object) -> None:
    error = _config_error(_target(rate=rate))
    assert (error.target, error.key) == ("t1", "rate")
    assert (
        str(error)
        == f'target \'t1\', key \'rate\': must be like "1/s", "200/s", "20/m" or "1000/h", got {rate!r}'
    )


@pytest.mark.parametrize("value", [1, 8, 1000])
def test_concurrency(value: int) -> None:
    target = target_from_dict(_target(concurrency=value))
    assert target.concurrency == value
    assert target.to_dict()["concurrency"] == value


@pytest.mark.parametrize("value", [0, -1, 1001, 2.0, "4", True, False, [1]])
def test_bad_concurrency(value: object) -> None:
    error = _config_error(_target(concurrency=value))
    assert (error.target, error.key) == ("t1", "concurrency")
    assert str(error).startswith("target 't1', key 'concurrency': must be a whole number from 1 to 1000")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(1, 1), (900, 900), ("90s", 90), ("5m", 300), ("1h", 3600), ("2d", 172800), ("365d", 365 * 86400)],
)
def test_expire_after(value: object, seconds: int) -> None:
    target = target_from_dict(_target(expire_after=value))
    assert target.expire_after == seconds
    assert target.to_dict()["expire_after"] == seconds


@pytest.mark.parametrize(
    "value",
    [0, -5, "0s", "90", "1.5h", "5 m", "5M", "1w", "", "m", 1.5, 60.0, True, [60], "366d", 365 * 86400 + 1],
)
def test_bad_expire_after(value: object) -> None:
    error = _config_error(_target(expire_after=value))
    assert (error.target, error.key) == ("t1", "expire_after")
    assert str(error).startswith("target 't1', key 'expire_after': must be whole seconds or a duration")
    assert repr(value) in str(error)


@pytest.mark.parametrize(
    "proxy",
    [
        "http://proxy.internal:3128",
        "https://proxy.example.com/",
        "http://user:p%40ss@10.0.0.1:8080",
        "http://user@[::1]:3128",
        "http://${PROXY_USER}:${PROXY_PASSWORD}@proxy.internal:3128",
        "${HTTPS_PROXY}",
    ],
)
def test_proxy(proxy: str) -> None:
    target = target_from_dict(_target(proxy=proxy))
    assert target.proxy == proxy
    assert target.to_dict()["proxy"] == proxy


@pytest.mark.parametrize(
    ("proxy", "words"),
    [
        ("socks5://proxy.internal:1080", "http:// or https://"),
        ("proxy.internal:3128", "http:// or https://"),
        ("http://", "http:// or https://"),
        ("http://:3128", "http:// or https://"),
        ("http://proxy.internal:99999", "http:// or https://"),
        ("http://proxy.internal:port", "http:// or https://"),
        ("http://proxy internal:3128", "spaces"),
        ("http://proxy.internal:3128\n", "control"),
        ("http://%invitee%.example.com:3128", "%invitee%"),
        ("http://u:%network_id%@proxy.internal", "%network_id%"),
        ("", "non-empty"),
        (3128, "non-empty"),
    ],
)
def test_bad_proxy(proxy: object, words: str) -> None:
    error = _config_error(_target(proxy=proxy))
    assert (error.target, error.key) == ("t1", "proxy")
    assert str(error).startswith("target 't1', key 'proxy': ")
    assert words in str(error)


def test_bad_proxy_error_hides_the_password() -> None:
    error = _config_error(_target(proxy="ftp://user:hunter2@proxy.internal"))
    assert error.key == "proxy"
    assert "hunter2" not in str(error)
    assert "user:***@proxy.internal" in str(error)


def test_proxy_env_is_checked_with_environ_without_quoting_it() -> None:
    data = _target(proxy="${HTTPS_PROXY}")
    assert target_from_dict(data).env_names() == {"HTTPS_PROXY"}
    error = _config_error(data, {"OTHER": "x"})
    assert (error.target, error.key) == ("t1", "proxy")
    assert "HTTPS_PROXY" in str(error)
    error = _config_error(data, {"HTTPS_PROXY": "socks5://u:hunter2@proxy.internal"})
    assert (error.target, error.key) == ("t1", "proxy")
    assert "hunter2" not in str(error)
    target = target_from_dict(data, {"HTTPS_PROXY": "http://u:hunter2@proxy.internal:3128"})
    assert target.proxy == "${HTTPS_PROXY}"
    assert "hunter2" not in repr(target)
    assert "hunter2" not in json.dumps(target.to_dict())


def test_proxy_password_from_env() -> None:
    data = _target(proxy="http://u:${PROXY_PASSWORD}@proxy.internal:3128")
    error = _config_error(data, {})
    assert (error.key, "PROXY_PASSWORD" in str(error)) == ("proxy", True)
    assert target_from_dict(data, {"PROXY_PASSWORD": "s3cret"}).env_names() == {"PROXY_PASSWORD"}


@pytest.mark.parametrize(
    ("pause_after", "failures", "seconds"),
    [
        ({"failures": 10, "seconds": 60}, 10, 60),
        ({"failures": 3}, 3, 60),
        ({"seconds": 600}, 10, 600),
        ({}, 10, 60),
        ({"failures": 0}, 0, 60),
        ({"failures": 1, "seconds": 0}, 1, 0),
    ],
)
def test_pause_after(pause_after: dict[str, int], failures: int, seconds: int) -> None:
    target = target_from_dict(_target(pause_after=pause_after))
    assert (target.pause_failures, target.pause_seconds) == (failures, seconds)
    again = target_from_dict(target.to_dict())
    assert again == target
    if (failures, seconds) == (10, 60):
        assert "pause_after" not in target.to_dict()
    else:
        assert target.to_dict()["pause_after"] == {"failures": failures, "seconds": seconds}


@pytest.mark.parametrize(
    ("pause_after", "key", "words"),
    [
        ({"failure": 3}, "pause_after.failure", "unknown key"),
        ({"failures": 3, "minutes": 1}, "pause_after.minutes", "unknown key"),
        ({"failures": -1}, "pause_after.failures", "from 0"),
        ({"failures": "10"}, "pause_after.failures", "from 0"),
        ({"failures": 1.5}, "pause_after.failures", "from 0"),
        ({"failures": True}, "pause_after.failures", "from 0"),
        ({"failures": 100_001}, "pause_after.failures", "from 0"),
        ({"seconds": -1}, "pause_after.seconds", "whole seconds"),
        ({"seconds": "60s"}, "pause_after.seconds", "whole seconds"),
        ({"seconds": 7 * 86400 + 1}, "pause_after.seconds", "whole seconds"),
        (10, "pause_after", "table"),
        ([10, 60], "pause_after", "table"),
        ("10 failures", "pause_after", "table"),
    ],
)
def test_bad_pause_after(pause_after: object, key: str, words: str) -> None:
    error = _config_error(_target(pause_after=pause_after))
    assert (error.target, error.key) == ("t1", key)
    assert str(error).startswith(f"target 't1', key {key!r}: ")
    assert words in str(error)


@pytest.mark.parametrize("value", [1, 30, 3600])
def test_probe_interval(value: int) -> None:
    target = target_from_dict(_target(probe_interval=value))
    assert target.probe_interval == value
    assert target_from_dict(target.to_dict()) == target


@pytest.mark.parametrize("value", [0, -1, 3601, 1.5, "30", "30s", True])
def test_bad_probe_interval(value: object) -> None:
    error = _config_error(_target(probe_interval=value))
    assert (error.target, error.key) == ("t1", "probe_interval")
    assert str(error).startswith("target 't1', key 'probe_interval': must be whole seconds from 1 to 3600")


def test_policies() -> None:
    config = config_from_dict(
        {
            "targets": [
                {**BASE, "name": "slack", "rate": "1/s"},
                {**BASE, "name": "doselect", "rate": "200/s", "concurrency": 4},
                {**BASE, "name": "crm", "rate": "20/m"},
                {**BASE, "name": "free", "events": ["invitation_created"]},
                {**BASE, "name": "narrow", "concurrency": 1, "accepted_waits_for_created": "6h"},
            ]
        }
    )
    policies = config.policies()
    # (the default ordering bound: the default retry schedule with +10% jitter, 10 timeouts of 10 s)
    order = {"order": 299_416_000, "order_label": "3d 11h"}
    assert policies == {
        "slack": {"interval": 1000.0, "concurrency": 0, **order},
        "doselect": {"interval": 5.0, "concurrency": 4, **order},
        "crm": {"interval": 3000.0, "concurrency": 0, **order},
        "free": {"interval": 0.0, "concurrency": 0},
        "narrow": {"interval": 0.0, "concurrency": 1, "order": 21_600_000, "order_label": "6h"},
    }
    assert json.loads(json.dumps(policies)) == policies
    assert Config().policies() == {}


def test_policy_round_trip() -> None:
    config = config_from_dict(
        {
            "settings": {"alert_target": "slack"},
            "targets": [
                {
                    **BASE,
                    "name": "slack",
                    "rate": "1/s",
                    "concurrency": 1,
                    "expire_after": "5m",
                    "pause_after": {"failures": 0},
                    "probe_interval": 120,
                },
                {
                    **BASE,
                    "name": "crm",
                    "rate": "20/min",
                    "expire_after": 86400,
                    "proxy": "http://u:${PROXY_PASSWORD}@proxy.internal:3128",
                    "pause_after": {"failures": 5, "seconds": 300},
                },
                dict(BASE),
            ],
        }
    )
    data = config.to_dict()
    assert data["settings"] == {"allow_private_targets": False, "alert_target": "slack"}
    slack, crm, plain = data["targets"]
    assert (slack["rate"], slack["concurrency"], slack["expire_after"]) == ("1/s", 1, 300)
    assert (slack["pause_after"], slack["probe_interval"]) == ({"failures": 0, "seconds": 60}, 120)
    assert (crm["rate"], crm["expire_after"], crm["pause_after"]) == (
        "20/m",
        86400,
        {"failures": 5, "seconds": 300},
    )
    assert crm["proxy"] == "http://u:${PROXY_PASSWORD}@proxy.internal:3128"
    assert not set(plain) & {"rate", "concurrency", "expire_after", "proxy", "pause_after", "probe_interval"}
    assert config_from_dict(data) == config
    assert config_from_dict(json.loads(json.dumps(data))) == config
    assert config_from_dict(data, {"PROXY_PASSWORD": "pw"}) == config


POLICY_TOML = """
[settings]
alert_target = "slack"

[[targets]]
name = "slack"
networks = ["*"]
url = "https://hooks.slack.com/services/${SLACK_PATH}"
content_type = "application/json"
post_data = '{"text": "%message%"}'
rate = "1/s"
concurrency = 1
expire_after = "1h"
pause_after = { failures = 0 }

[[targets]]
name = "crm"
networks = ["mynetwork"]
url = "https://crm.example.com/api/invitations"
content_type = "application/json"
post_data = '{"phone": "%invitee%"}'
rate = "20/m"
proxy = "${HTTPS_PROXY}"
pause_after = { failures = 5, seconds = 300 }
probe_interval = 60
"""


def test_policy_keys_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(POLICY_TOML, encoding="utf-8")
    config = load_config(path, {"SLACK_PATH": "T/B/X", "HTTPS_PROXY": "http://proxy.internal:3128"})
    slack, crm = config.targets
    assert config.alert_target == "slack"
    assert (slack.rate, slack.concurrency, slack.expire_after) == (Rate(1, 1), 1, 3600)
    assert (slack.pause_failures, slack.pause_seconds, slack.probe_interval) == (0, 60, 30)
    assert (crm.rate, crm.proxy) == (Rate(20, 60), "${HTTPS_PROXY}")
    assert (crm.pause_failures, crm.pause_seconds, crm.probe_interval) == (5, 300, 60)
    assert config.policies()["crm"] == {
        "interval": 3000.0,
        "concurrency": 0,
        "order": 299_416_000,
        "order_label": "3d 11h",
    }
    # expire_after is the default ordering bound
    assert config.policies()["slack"]["order"] == 3_600_000
    with pytest.raises(ConfigError) as info:
        load_config(path, {"SLACK_PATH": "T/B/X"})
    assert (
        str(info.value) == f"{path}: target 'crm', key 'proxy': environment variable HTTPS_PROXY is not set"
    )


# -- settings.alert_target ------------------------------------------------------------------------


def test_alert_target() -> None:
    config = config_from_dict({"settings": {"alert_target": "t1"}, "targets": [dict(BASE)]})
    assert config.alert_target == "t1"
    assert config.to_dict()["settings"] == {"allow_private_targets": False, "alert_target": "t1"}
    assert config_from_dict(config.to_dict()) == config


def test_no_alert_target_keeps_settings_unchanged() -> None:
    config = config_from_dict({"targets": [dict(BASE)]})
    assert config.alert_target is None
    assert config.to_dict()["settings"] == {"allow_private_targets": False}


@pytest.mark.parametrize(
    ("settings", "targets", "words"),
    [
        ({"alert_target": "slack"}, [dict(BASE)], "'slack' names no declared target"),
        ({"alert_target": "slack"}, [], "'slack' names no declared target"),
        ({"alert_target": "T1"}, [dict(BASE)], "'T1' names no declared target"),
        ({"alert_target": ""}, [dict(BASE)], "must be the name of a declared target"),
        ({"alert_target": 1}, [dict(BASE)], "must be the name of a declared target"),
        ({"alert_target": ["t1"]}, [dict(BASE)], "must be the name of a declared target"),
    ],
)
def test_bad_alert_target(settings: dict[str, Any], targets: list[dict[str, Any]], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"settings": settings, "targets": targets})
    assert (info.value.target, info.value.key) == (None, "settings.alert_target")
    assert str(info.value).startswith("key 'settings.alert_target': ")
    assert words in str(info.value)


# -- %message% ------------------------------------------------------------------------------------


def test_message_is_an_event_placeholder() -> None:
    assert "message" in EVENT_PLACEHOLDERS
    error = _config_error(_target(vars={"message": "x"}))
    assert (error.target, error.key) == ("t1", "vars")


@pytest.mark.parametrize(
    ("event_type", "sentence"),
    [
        (INVITATION_CREATED, "john.snow@example.com invited +15551231234 (network mynetwork)"),
        (
            INVITATION_ACCEPTED,
            "+15551231234 accepted the invitation from john.snow@example.com (network mynetwork)",
        ),
    ],
)
def test_message_renders_in_a_slack_body(event_type: str, sentence: str) -> None:
    target = target_from_dict(
        _target(
            url="https://hooks.slack.com/services/T/B/X",
            content_type="application/json",
            post_data='{"text": "%message%"}',
        )
    )
    event = make_event(
        {"invitee": "+1 555 123 1234", "invitor": "john.snow@example.com", "network_id": "mynetwork"},
        event_type,
        "json",
    )
    assert event.placeholders()["message"] == sentence
    body = Template.parse(target.post_data or "").render(event.placeholders(), target.body_kind.escape, {})
    assert json.loads(body) == {"text": sentence}


@pytest.mark.parametrize(
    ("content_type", "post_data"),
    [
        ("application/json", '{"text": "%message%"}'),
        ("application/x-www-form-urlencoded", "Body=%message%"),
        ("application/xml", "<m a='%message%'>%message%</m>"),
        ("text/plain", "%message%"),
    ],
)
def test_message_survives_hostile_values(content_type: str, post_data: str) -> None:
    target = target_from_dict(
        _target(url="https://h.example.com/%message%", content_type=content_type, post_data=post_data)
    )
    event = make_event(
        {"invitee": "+15551231234", "invitor": 'o\'brien "x" <a&b> %invitee% ${HOME}', "network_id": "n&e=t"},
        INVITATION_CREATED,
        "json",
    )
    values = event.placeholders()
    body = Template.parse(target.post_data or "").render(values, target.body_kind.escape, {})
    if target.body_kind is JSON_KIND:
        assert json.loads(body) == {"text": values["message"]}
    elif target.body_kind is FORM_KIND:
        assert dict(parse_qsl(body)) == {"Body": values["message"]}
    elif target.body_kind is TEXT_KIND:
        assert body == values["message"]
    else:
        assert parse_body(XML_KIND, body) == [values["message"], values["message"]]


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        # schemathesis found the first: a ValueError from urlsplit, answered 500 by the API.
        ({"url": "http://v[x/"}, "url"),
        ({"url": "http://a]/"}, "url"),
        ({"url": "http://a:99999/"}, "url"),
        ({"url": "http://a:port/"}, "url"),
        (
            {"oauth2": {"token_url": "https://[/t", "client_id": "a", "client_secret": "b"}},
            "oauth2.token_url",
        ),
    ],
)
def test_a_url_urlsplit_refuses_is_a_config_error(changes: dict[str, Any], key: str) -> None:
    assert _config_error(_target(**changes)).key == key


def test_a_status_code_in_other_digits_is_refused_not_a_crash() -> None:
    """ "²" is a digit to str.isdigit() but no int(): a 500 of POST /targets (schemathesis)."""
    from gateway.config.load import target_from_dict

    with pytest.raises(ConfigError) as caught:
        target_from_dict(
            {"name": "t", "networks": ["n"], "url": "https://example.com/x", "delivered_statuses": {"²": "x"}}
        )
    assert caught.value.key == "delivered_statuses"
