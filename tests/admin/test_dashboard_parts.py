"""The dashboard's pure parts: the session cookie's signature, the target form, the SVG chart."""

from __future__ import annotations

import re
import time
from xml.etree import ElementTree

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.admin import Invalid
from gateway.admin.charts import Bucket, activity_chart
from gateway.admin.forms import declaration_from_form, form_from_declaration, validate
from gateway.admin.page_kit import parse_when as _when
from gateway.admin.sessions import Session, SessionCodec, session_secret
from gateway.config.load import target_from_dict
from gateway.exceptions import ConfigError

SECRET = b"k" * 40


def test_a_session_survives_its_codec_and_nothing_else() -> None:
    codec = SessionCodec(SECRET)
    session = Session.new("0123456789ab").with_flash("ok", "saved")
    value = codec.dumps(session)
    assert codec.loads(value) == session
    assert SessionCodec(SECRET).loads(value) == session  # another process with the same secret
    assert SessionCodec(b"x" * 40).loads(value) is None  # another secret
    payload, signature = value.split(".")
    assert codec.loads(payload + "." + signature[::-1]) is None
    assert codec.loads(payload[:-2] + "AA." + signature) is None
    for junk in (None, "", "abc", "a.b.c", "." * 2, "é.é"):
        assert codec.loads(junk) is None
    # Too old, or from the future beyond a little clock skew: refused.
    assert codec.loads(codec.dumps(Session.new(now=time.time() - 13 * 3600))) is None
    assert codec.loads(codec.dumps(Session.new(now=time.time() + 3600))) is None


def test_csrf_tokens_compare_exactly() -> None:
    session = Session.new()
    assert session.csrf_ok(session.csrf)
    for bad in (None, "", session.csrf[:-1], session.csrf + "x", session.csrf.upper() + "!"):
        assert not session.csrf_ok(bad)
    assert Session.new().csrf != session.csrf


def test_flashes_are_few_and_short() -> None:
    session = Session.new()
    for n in range(5):
        session = session.with_flash("ok", "x" * 1000 + str(n))
    assert len(session.flashes) == 3 and all(len(text) == 300 for _, text in session.flashes)
    assert session.without_flashes().flashes == ()


def test_the_session_secret_comes_from_the_environment() -> None:
    assert session_secret({"GATEWAY_SESSION_SECRET": "a" * 32}) == b"a" * 32
    with pytest.raises(ConfigError, match="GATEWAY_SESSION_SECRET"):
        session_secret({"GATEWAY_SESSION_SECRET": "short"})
    one, two = session_secret({}), session_secret({})
    assert len(one) == 32 and one != two  # random per process


def form(**fields: object) -> dict[str, object]:
    return {
        "name": "crm",
        "networks": "acme",
        "url": "https://crm.example.com/h?i=%invitee%",
        "events": ["invitation_created"],
        **fields,
    }


def test_the_form_round_trips_a_declaration() -> None:
    data, errors = declaration_from_form(
        form(
            headers="X-Source: softphone\nAuthorization: Bearer abc",
            vars="source = app",
            retry="5, 60",
            success_codes="200 201",
            timeout="2.5",
            pause_failures="3",
            rate="5/s",
            expire_after="1h",
            post_data='{"to": "%invitee%", "from": "%source%"}',
            content_type="application/json",
            auth_username="api",
            auth_password="pw",
        )
    )
    assert errors == {} and validate(data) == {}
    target = target_from_dict(data)
    assert target.retry == (5, 60) and target.success_codes == (200, 201) and target.timeout == 2.5
    assert (target.pause_failures, target.pause_seconds) == (3, 60) and target.auth == ("api", "pw")
    again, errors = declaration_from_form({**form_from_declaration(target.to_dict()), "auth_password": "pw"})
    assert errors == {} and target_from_dict(again) == target


def test_every_field_gets_its_own_message() -> None:
    data, errors = declaration_from_form(
        form(
            name="no spaces",
            url="ftp://x",
            rate="fast",
            timeout="soon",
            retry="5, later",
            headers="not a header line",
            events=[],
        )
    )
    errors = validate(data, errors)
    assert set(errors) == {"name", "url", "rate", "timeout", "retry", "headers", "events"}
    assert "http:// or https://" in errors["url"] and "later" in errors["retry"]


def test_an_edit_keeps_secrets_left_empty_and_keys_the_form_lacks() -> None:
    existing = {
        **target_from_dict(declaration_from_form(form(auth_username="u", auth_password="old"))[0]).to_dict(),
        "lookups": {"crm": {"url": "https://x"}},
    }
    data, errors = declaration_from_form(form(auth_username="u", auth_password=""), existing=existing)
    assert errors == {} and data["auth"] == {"username": "u", "password": "old"}
    assert data["lookups"] == existing["lookups"]


@given(st.lists(st.tuples(*[st.integers(0, 10_000)] * 4), min_size=1, max_size=48), st.text(max_size=40))
def test_the_chart_is_well_formed_svg_whatever_the_counts(counts: list[tuple[int, ...]], title: str) -> None:
    buckets = [Bucket(f"{i:02d}:00", *c) for i, c in enumerate(counts)]
    svg = activity_chart(buckets, title=title)
    root = ElementTree.fromstring(svg)  # escaped text: parses whatever the title holds
    assert root.tag.endswith("svg")
    heights = [
        float(h) for h in re.findall(r'class="(?:delivered|failed|waiting)"[^>]*height="([0-9.]+)"', svg)
    ]
    assert all(0 < h <= 48 for h in heights)
    assert "style=" not in svg and "<script" not in svg  # nothing the page's CSP would refuse


def test_time_filters_read_as_the_cli_reads_them() -> None:
    now = 1_800_000_000.0
    assert _when("", "since") is None
    assert _when("2h", "since", now) == int((now - 7200) * 1000)
    assert _when("7d", "since", now) == int((now - 7 * 86400) * 1000)
    assert _when("2026-11-26", "since") == 1795651200000  # UTC when no offset is given
    assert _when("2026-11-26T02:00:00+02:00", "since") == 1795651200000
    with pytest.raises(Invalid, match="neither a duration") as caught:
        _when("yesterday", "until")
    assert caught.value.field == "until"
