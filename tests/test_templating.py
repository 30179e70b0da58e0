"""`%placeholder%` templates and the escapers for each place a value lands (gateway/templating.py)."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.exceptions import ConfigError
from gateway.templating import (
    FORM_KIND,
    HOSTILE,
    JSON_KIND,
    TEXT_KIND,
    XML_KIND,
    BodyKind,
    Template,
    body_kind,
    escape_header,
    escape_json,
    escape_none,
    escape_url,
    escape_xml,
    parse_body,
    url_strings,
)

# Any text a decoder can hand over: no surrogates (decoded bytes never hold one).
ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",)))
# XML 1.0 Char: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF].
_XML_FORBIDDEN = "".join(chr(c) for c in range(0x20) if chr(c) not in "\t\n\r") + "\ufffe\uffff"
XML_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters=_XML_FORBIDDEN))
PROPERTY = settings(max_examples=300, deadline=None)


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "parts"),
    [
        ("", ()),
        ("plain", (("text", "plain"),)),
        ("%invitee%", (("ph", "invitee"),)),
        ("a=%invitee%&b=%invitor%", (("text", "a="), ("ph", "invitee"), ("text", "&b="), ("ph", "invitor"))),
        ("%invitee%%invitor%", (("ph", "invitee"), ("ph", "invitor"))),
        ("${TOKEN}", (("env", "TOKEN"),)),
        ("Bearer ${API_TOKEN_2}", (("text", "Bearer "), ("env", "API_TOKEN_2"))),
        ("${A}%b%${C}", (("env", "A"), ("ph", "b"), ("env", "C"))),
        # Not tokens: a lone %, %%, names starting with a digit, dashes, $X without braces.
        ("100%", (("text", "100%"),)),
        ("%%", (("text", "%%"),)),
        ("%20%", (("text", "%20%"),)),
        ("%in-vitee%", (("text", "%in-vitee%"),)),
        ("$X ${1A}", (("text", "$X ${1A}"),)),
        ("50% off %invitee% 20%", (("text", "50% off "), ("ph", "invitee"), ("text", " 20%"))),
    ],
)
def test_parse(source: str, parts: tuple[tuple[str, str], ...]) -> None:
    template = Template.parse(source)
    assert template.parts == parts
    assert template.source == source


def test_placeholders_and_env_names() -> None:
    template = Template.parse("https://h/${PATH_SECRET}/%invitee%?n=%network_id%&i=%invitee%&k=${KEY}")
    assert template.placeholders() == {"invitee", "network_id"}
    assert template.env_names() == {"PATH_SECRET", "KEY"}


# -- rendering ----------------------------------------------------------------------------------


def test_render_escapes_placeholders_but_not_env() -> None:
    template = Template.parse("x=%invitee%&t=${TOKEN}&lit=a+b%2B")
    out = template.render({"invitee": "+1 555"}, escape_url, {"TOKEN": "s3cr+t/="})
    assert out == "x=%2B1%20555&t=s3cr+t/=&lit=a+b%2B"


def test_render_missing_env_names_the_variable_only() -> None:
    template = Template.parse("Bearer ${TOKEN}")
    with pytest.raises(ConfigError) as info:
        template.render({}, escape_none, {"OTHER": "do-not-show-me"})
    assert "TOKEN" in str(info.value)
    assert "do-not-show-me" not in str(info.value)


def test_render_missing_value_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        Template.parse("%nope%").render({}, escape_none, {})


def test_render_without_tokens_is_identity() -> None:
    source = '{"a": "100% sure", "b": "%%"}'
    assert Template.parse(source).render({}, escape_json, {}) == source


# -- escapers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("+15551231234", "%2B15551231234"),
        ("a b", "a%20b"),
        ("a/b?c=d&e#f", "a%2Fb%3Fc%3Dd%26e%23f"),
        ("john@example.com", "john%40example%2Ecom"),
        ("100%", "100%25"),
        ("é€", "%C3%A9%E2%82%AC"),
        ("az-_.~09", "az-_%2E~09"),
        # A dot segment must not reach the target's path as one.
        ("..", "%2E%2E"),
    ],
)
def test_escape_url(value: str, expected: str) -> None:
    assert escape_url(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('a"b', 'a\\"b'),
        ("a\\b", "a\\\\b"),
        ("a\nb\tc", "a\\nb\\tc"),
        ("\x00", "\\u0000"),
        ("é€😀", "é€😀"),
        ("</script>", "</script>"),
    ],
)
def test_escape_json(value: str, expected: str) -> None:
    assert escape_json(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a&b", "a&amp;b"),
        ("<b>", "&lt;b&gt;"),
        ("\"'", "&quot;&apos;"),
        ("]]>", "]]&gt;"),
        ("a\tb\nc\rd", "a&#9;b&#10;c&#13;d"),
        ("é", "é"),
    ],
)
def test_escape_xml(value: str, expected: str) -> None:
    assert escape_xml(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain value-1.0 (x)", "plain value-1.0 (x)"),
        ("a\r\nX-Injected: 1", "a%0D%0AX-Injected: 1"),
        ("\x00", "%00"),
        ("100%", "100%25"),
        ("é", "%C3%A9"),
        ("\x7f", "%7F"),
    ],
)
def test_escape_header(value: str, expected: str) -> None:
    assert escape_header(value) == expected


@given(ANY_TEXT)
@PROPERTY
def test_escape_header_is_always_printable_ascii(value: str) -> None:
    out = escape_header(value)
    assert all(" " <= c <= "~" for c in out)
    assert "\r" not in out and "\n" not in out
    assert unquote(out, errors="strict") == value


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("application/x-www-form-urlencoded", FORM_KIND),
        ("application/x-www-form-urlencoded; charset=utf-8", FORM_KIND),
        ("application/json", JSON_KIND),
        ("Application/JSON; charset=utf-8", JSON_KIND),
        ("text/json", JSON_KIND),
        ("application/vnd.ingeniousgroup.testcraftapi-v1+json", JSON_KIND),
        ("application/xml", XML_KIND),
        ("text/xml", XML_KIND),
        ("application/soap+xml", XML_KIND),
        ("text/plain", TEXT_KIND),
        ("image/png", None),
        ("multipart/form-data", None),
        ("", None),
    ],
)
def test_body_kind(content_type: str, kind: object) -> None:
    assert body_kind(content_type) is kind


def test_parse_body_and_url_strings() -> None:
    assert parse_body(JSON_KIND, '{"a": ["x", {"k": "y"}], "n": 1}') == ["a", "x", "k", "y", "n"]
    assert sorted(parse_body(XML_KIND, '<r><a>t</a><b x="v"/></r>')) == ["t", "v"]
    assert parse_body(FORM_KIND, "a=1&b=%2B") == ["a", "1", "b", "+"]
    assert parse_body(TEXT_KIND, "anything {") == ["anything {"]
    for kind, body in [(JSON_KIND, '{"n": x}'), (XML_KIND, "<r>"), (FORM_KIND, "a&&b")]:
        with pytest.raises(ValueError):
            parse_body(kind, body)
    assert url_strings("https://h/a%2Fb/c?q=%2B1&r=#fr%20ag") == ["", "a/b", "c", "q", "+1", "r", "", "fr ag"]


@pytest.mark.parametrize(
    ("kind", "source", "count"),
    [
        (JSON_KIND, '{"a": "%v%"}', 1),
        (XML_KIND, '<r><a>%v%</a><b x="%v%"/></r>', 2),
        (FORM_KIND, "a=%v%&b=1", 1),
    ],
)
def test_hostile_value_survives_each_body_kind(kind: BodyKind, source: str, count: int) -> None:
    body = Template.parse(source).render({"v": HOSTILE}, kind.escape, {})
    assert parse_body(kind, body).count(HOSTILE) == count


# -- properties: any value comes back equal from a real parser --------------------------------


@given(ANY_TEXT)
@PROPERTY
def test_json_round_trip(value: str) -> None:
    body = Template.parse('{"a": "%invitee%"}').render({"invitee": value}, escape_json, {})
    assert json.loads(body) == {"a": value}


@given(XML_TEXT, XML_TEXT)
@PROPERTY
def test_xml_round_trip_text_and_attribute(invitee: str, invitor: str) -> None:
    template = Template.parse('<r><a>%invitee%</a><b x="%invitor%"/></r>')
    body = template.render({"invitee": invitee, "invitor": invitor}, escape_xml, {})
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root = etree.fromstring(body.encode("utf-8"), parser=parser)
    assert (root.find("a").text or "") == invitee  # type: ignore[union-attr]
    assert root.find("b").get("x") == invitor  # type: ignore[union-attr]


@given(ANY_TEXT)
@PROPERTY
def test_form_round_trip(value: str) -> None:
    body = Template.parse("a=%invitee%&b=1").render({"invitee": value}, escape_url, {})
    assert parse_qsl(body, keep_blank_values=True, strict_parsing=True) == [("a", value), ("b", "1")]


@given(ANY_TEXT)
@PROPERTY
def test_url_round_trip_path_and_query(value: str) -> None:
    url = Template.parse("https://h/p/%invitee%?q=%invitee%").render({"invitee": value}, escape_url, {})
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", "h")
    segments = parts.path.split("/")
    assert segments[:2] == ["", "p"]
    assert len(segments) == 3
    assert unquote(segments[2], errors="strict") == value
    assert parse_qsl(parts.query, keep_blank_values=True) == [("q", value)]
    assert parts.fragment == ""
