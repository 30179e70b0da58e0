"""Decoders for every body shape the Acrobits Contacts server can send (gateway/formats.py)."""

from __future__ import annotations

import codecs
import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.events import DEFAULT_ALIAS_TABLE, NOT_TEXT, make_event, pick_fields
from gateway.exceptions import InvalidCallback, UnsupportedBody
from gateway.ingest.formats import (
    _JSON,
    _json_decode,
    decode_body,
    decode_json,
    decode_multipart,
    decode_query,
    decode_urlencoded,
    decode_xml,
    parse_content_type,
)

SEED_XML = b"""<root>
    <invitee>15551231234</invitee>
    <invitor>johnsnow</invitor>
    <network_id>mynetwork</network_id>
</root>"""
SEED_JSON = b'{"invitee" : "15551231234", "invitor" : "johnsnow", "network_id" : "mynetwork"}'
SEED_QUERY = b"invitee=15551231234&invitor=johnsnow&network_id=mynetwork"
SEED_PAIRS = [("invitee", "15551231234"), ("invitor", "johnsnow"), ("network_id", "mynetwork")]


# -- query strings and form bodies --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (SEED_QUERY, SEED_PAIRS),
        # A literal `+` is what Acrobits sends unencoded: it must stay a `+`, never a space.
        (b"invitee=+15551231234", [("invitee", "+15551231234")]),
        (b"invitor=+420+777", [("invitor", "+420+777")]),
        (b"invitee=%2B15551231234", [("invitee", "+15551231234")]),
        (b"invitee=%2b15551231234", [("invitee", "+15551231234")]),
        (b"invitor=john%20snow", [("invitor", "john snow")]),
        (b"invitor=john%40example.com", [("invitor", "john@example.com")]),
        (b"invitor=john@example.com", [("invitor", "john@example.com")]),
        (b"net=abc%2A", [("net", "abc*")]),
        (b"net=abc*", [("net", "abc*")]),
        (b"invitor=%C3%BC%E2%82%AC", [("invitor", "ü€")]),
        (b"a=&b=1", [("a", ""), ("b", "1")]),
        (b"a&b=1", [("a", ""), ("b", "1")]),
        (b"a=1&&b=2&", [("a", "1"), ("b", "2")]),
        (b"a=x=y", [("a", "x=y")]),
        (b"%69nvitee=1", [("invitee", "1")]),
    ],
)
def test_decode_query(raw: bytes, expected: list[tuple[str, str]]) -> None:
    assert decode_query(raw) == expected


def test_decode_query_empty() -> None:
    assert decode_query(b"") == []


@pytest.mark.parametrize(
    ("raw", "charset", "expected"),
    [
        (b"invitor=jos%E9", "latin-1", "josé"),
        (b"invitor=jos\xe9", "iso-8859-1", "josé"),
        (b"invitor=jos%C3%A9", "utf-8", "josé"),
        (b"invitor=jos%C3%A9", None, "josé"),
        (b"invitor=jos\xc3\xa9", "UTF-8", "josé"),
        (b"invitor=jos%C3%A9", '"utf-8"', "josé"),
    ],
)
def test_decode_urlencoded_charsets(raw: bytes, charset: str | None, expected: str) -> None:
    assert decode_urlencoded(raw, charset) == [("invitor", expected)]


@pytest.mark.parametrize("raw", [b"invitor=jos%E9", b"invitor=jos\xe9", b"invitor=%FF%FE", b"%FF=1"])
def test_decode_urlencoded_invalid_utf8_names_the_field(raw: bytes) -> None:
    with pytest.raises(InvalidCallback) as info:
        decode_urlencoded(raw, "utf-8")
    assert info.value.field == "body"
    assert "utf-8" in info.value.detail


def test_decode_query_invalid_utf8_names_the_query_string() -> None:
    with pytest.raises(InvalidCallback) as info:
        decode_query(b"invitee=1&invitor=%C3")
    assert info.value.field == "query string"


def test_decode_urlencoded_unknown_charset() -> None:
    with pytest.raises(UnsupportedBody) as info:
        decode_urlencoded(b"a=1", "no-such-charset")
    assert info.value.field == "Content-Type"


# -- JSON ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (SEED_JSON, SEED_PAIRS),
        # The Acrobits template from the seed, with the `network` key.
        (
            b'{ "invitee" : "15551231234", "invitor" : "johnsnow", "network" : "mynetwork" }',
            [("invitee", "15551231234"), ("invitor", "johnsnow"), ("network", "mynetwork")],
        ),
        (b'{"invitee": 15551231234}', [("invitee", "15551231234")]),
        (b'{"invitee": 15551231234000000000000}', [("invitee", "15551231234000000000000")]),
        (b'{"invitee": 1.50}', [("invitee", "1.50")]),
        (b'{"invitee": 1e3}', [("invitee", "1e3")]),
        (b'{"invitee": -12}', [("invitee", "-12")]),
        (b'{"invitor": "a\\u0040b.c"}', [("invitor", "a@b.c")]),
        (b'{"invitor": "\\"q\\" <x> & \\u00fc"}', [("invitor", '"q" <x> & \u00fc')]),
        (b'{"invitor": ""}', [("invitor", "")]),
        (b"{}", []),
        (b' \r\n\t{"a": "1"} \n', [("a", "1")]),
    ],
)
def test_decode_json(raw: bytes, expected: list[tuple[str, str]]) -> None:
    assert decode_json(raw) == expected


@pytest.mark.parametrize(
    "value", ['{"x": 1}', "[1, 2]", "[]", "{}", "null", "true", "false", '["15551231234"]']
)
def test_decode_json_non_text_values_become_the_marker(value: str) -> None:
    pairs = decode_json(f'{{"invitee": {value}, "invitor": "john"}}'.encode())
    assert pairs == [("invitee", NOT_TEXT), ("invitor", "john")]


@pytest.mark.parametrize("raw", [b"[]", b'["invitee", "1"]', b'"invitee"', b"15551231234", b"null", b"true"])
def test_decode_json_not_an_object(raw: bytes) -> None:
    with pytest.raises(InvalidCallback, match="must be a JSON object"):
        decode_json(raw)


@pytest.mark.parametrize(
    "raw",
    [
        # The older rendering of the seed's template, copied with typographic quotes.
        (
            "{ \u201cinvitee\u201d : \u201c15551231234\u201d, \u201cinvitor\u201d : \u201cjohnsnow\u201d }"
        ).encode(),
        b'{"invitee": "1",}',
        b"{'invitee': '1'}",
        b'{"invitee": "1"',
        b'{"invitee": "1"} {"invitor": "2"}',
        b'{"invitee": 15551231234x}',
    ],
)
def test_decode_json_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidCallback, match="not valid JSON"):
        decode_json(raw)


def test_decode_json_invalid_utf8() -> None:
    with pytest.raises(InvalidCallback) as info:
        decode_json(b'{"invitor": "jos\xe9"}')
    assert info.value.field == "body"
    assert info.value.detail == "body is not valid utf-8"  # as _text words it for another charset
    with pytest.raises(InvalidCallback) as info:
        decode_json(b'{"invitor": "jos\xe9"}', "ascii")
    assert info.value.detail == "body is not valid ascii"


def test_decode_json_charset_latin1() -> None:
    assert decode_json(b'{"invitor": "jos\xe9"}', "latin-1") == [("invitor", "josé")]


def test_decode_json_bom_without_charset() -> None:
    assert decode_json(codecs.BOM_UTF8 + SEED_JSON) == SEED_PAIRS


def test_lone_surrogate_escape_in_json_is_refused() -> None:
    # `\ud800` is valid JSON syntax but no character: it cannot be encoded to UTF-8 (Redis, the
    # outbound request), so the callback must be refused as invalid, not accepted.
    body = b'{"invitee": "15551231234", "invitor": "john\\ud800", "network_id": "n"}'
    with pytest.raises(InvalidCallback):
        fields = pick_fields(decode_json(body), DEFAULT_ALIAS_TABLE)
        make_event(fields, "invitation_created", "json")


# -- XML ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (SEED_XML, SEED_PAIRS),
        (b'<?xml version="1.0" encoding="UTF-8"?>\n' + SEED_XML, SEED_PAIRS),
        (codecs.BOM_UTF8 + b"\n" + SEED_XML, SEED_PAIRS),
        (b"  \n" + SEED_XML, SEED_PAIRS),
        (b"<invitation><invitee>1</invitee></invitation>", [("invitee", "1")]),
        (b"<Anything><net>n</net></Anything>", [("net", "n")]),
        # Namespaces are ignored: fields go by local name.
        (
            b'<r xmlns="urn:a" xmlns:x="urn:x"><invitee>1</invitee><x:invitor>j</x:invitor></r>',
            [("invitee", "1"), ("invitor", "j")],
        ),
        (b"<r><invitee><![CDATA[+1&5<>]]></invitee></r>", [("invitee", "+1&5<>")]),
        (b"<r><invitor>&#43;1 &amp; &lt;&gt; &quot;&apos;</invitor></r>", [("invitor", "+1 & <> \"'")]),
        (b"<r><invitee/><invitor></invitor></r>", [("invitee", ""), ("invitor", "")]),
        (b"<r><!-- note --><invitee>1</invitee><?pi x?></r>", [("invitee", "1")]),
        # A comment inside the text does not cut the value short.
        (b"<r><invitee>+1555<!-- c -->1231234</invitee></r>", [("invitee", "+15551231234")]),
        (b"<r invitee='ignored'><invitor>j</invitor></r>", [("invitor", "j")]),
        (b"<r/>", []),
        ("<r><invitor>jos\u00e9 \u20ac</invitor></r>".encode(), [("invitor", "josé €")]),
        (
            b'<?xml version="1.0" encoding="ISO-8859-1"?><r><invitor>jos\xe9</invitor></r>',
            [("invitor", "josé")],
        ),
    ],
)
def test_decode_xml(raw: bytes, expected: list[tuple[str, str]]) -> None:
    assert decode_xml(raw) == expected


def test_decode_xml_charset_parameter_without_declaration() -> None:
    assert decode_xml(b"<r><invitor>jos\xe9</invitor></r>", "latin-1") == [("invitor", "josé")]


@pytest.mark.parametrize(
    "raw",
    [
        b"<r><network_id><a>1</a></network_id></r>",
        b"<r><network_id>x<b/>y</network_id></r>",
        b'<r><network_id><x:a xmlns:x="urn:x"/></network_id></r>',
    ],
)
def test_decode_xml_nested_element_is_not_text(raw: bytes) -> None:
    assert decode_xml(raw) == [("network_id", NOT_TEXT)]


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<root><invitee>&lol9;</invitee><invitor>j</invitor><network_id>n</network_id></root>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE root [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<root><invitee>1</invitee><invitor>&xxe;</invitor><network_id>n</network_id></root>"""
XXE_PARAMETER = b"""<?xml version="1.0"?>
<!DOCTYPE root [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>
<root><invitor>j</invitor></root>"""
XXE_UTF16 = (
    '<?xml version="1.0" encoding="UTF-16"?>'
    '<!DOCTYPE root [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    "<root><invitor>&xxe;</invitor></root>"
).encode("utf-16")
DOCTYPE_ONLY = b'<!DOCTYPE root SYSTEM "http://127.0.0.1:1/x.dtd"><root><invitor>j</invitor></root>'
DOCTYPE_LOWER = b"<!doctype root><root><invitor>j</invitor></root>"
DOCTYPE_AFTER_LONG_COMMENT = (
    b"<!--" + b"x" * 5000 + b'--><!DOCTYPE root SYSTEM "file:///etc/passwd"><root><invitor>j</invitor></root>'
)


@pytest.mark.parametrize(
    "raw",
    [BILLION_LAUGHS, XXE, XXE_PARAMETER, XXE_UTF16, DOCTYPE_ONLY, DOCTYPE_LOWER, DOCTYPE_AFTER_LONG_COMMENT],
    ids=["billion-laughs", "xxe", "xxe-parameter", "xxe-utf16", "doctype", "doctype-lower", "doctype-late"],
)
def test_decode_xml_refuses_doctype_and_entities(raw: bytes) -> None:
    with pytest.raises(InvalidCallback) as info:
        decode_xml(raw)
    assert "DOCTYPE" in info.value.detail
    assert "root:" not in info.value.detail  # nothing of /etc/passwd leaks into the error


@pytest.mark.parametrize(
    "content_type", [None, "application/xml", "text/xml", "application/x-www-form-urlencoded"]
)
@pytest.mark.parametrize("raw", [BILLION_LAUGHS, XXE], ids=["billion-laughs", "xxe"])
def test_decode_body_refuses_entities_whatever_the_label(raw: bytes, content_type: str | None) -> None:
    with pytest.raises(InvalidCallback, match="DOCTYPE"):
        decode_body(content_type, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"<r><invitee>1</r>",
        b"<r><invitee>1</invitee>",
        b"<r><invitee>1 & 2</invitee></r>",
        b"<r><invitee>&undefined;</invitee></r>",
        b"<r></r><r2/>",
        b"<",
        b"<r a=1/>",
    ],
)
def test_decode_xml_malformed(raw: bytes) -> None:
    with pytest.raises(InvalidCallback):
        decode_xml(raw)


def test_decode_xml_invalid_encoding_in_charset_parameter() -> None:
    with pytest.raises(InvalidCallback):
        decode_xml(b"<r><invitor>jos\xe9</invitor></r>", "utf-8")


# -- multipart ----------------------------------------------------------------------------------


def _multipart(boundary: str, parts: list[tuple[bytes, bytes]]) -> bytes:
    out = b""
    for headers, value in parts:
        out += b"--" + boundary.encode() + b"\r\n" + headers + b"\r\n\r\n" + value + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


def test_decode_multipart() -> None:
    boundary = "----AcrobitsBoundary7MA4YWxkTrZu0gW"
    body = _multipart(
        boundary,
        [
            (b'Content-Disposition: form-data; name="invitee"', b"+15551231234"),
            (
                b'Content-Disposition: form-data; name="invitor"\r\n'
                b"Content-Type: text/plain; charset=latin-1",
                b"jos\xe9",
            ),
            (b'Content-Disposition: form-data; name="net"', b"a&b=c\r\nd"),
            (b'Content-Disposition: form-data; name="empty"', b""),
            (b"Content-Type: text/plain", b"no name, skipped"),
        ],
    )
    assert decode_multipart(body, {"boundary": boundary}) == [
        ("invitee", "+15551231234"),
        ("invitor", "josé"),
        ("net", "a&b=c\r\nd"),
        ("empty", ""),
    ]


def test_decode_body_multipart() -> None:
    body = _multipart(
        "xYzZY",
        [
            (b'Content-Disposition: form-data; name="invitee"', b"15551231234"),
            (b'Content-Disposition: form-data; name="invitor"', b"johnsnow"),
            (b'Content-Disposition: form-data; name="network_id"', b"mynetwork"),
        ],
    )
    decoded = decode_body('multipart/form-data; boundary="xYzZY"', body)
    assert decoded.source_format == "multipart"
    assert decoded.pairs == SEED_PAIRS


def test_decode_multipart_without_boundary() -> None:
    with pytest.raises(InvalidCallback) as info:
        decode_multipart(b"--x\r\n\r\n", {})
    assert info.value.field == "Content-Type"


def test_decode_multipart_invalid_utf8_part() -> None:
    body = _multipart("b0", [(b'Content-Disposition: form-data; name="invitor"', b"jos\xe9")])
    with pytest.raises(InvalidCallback):
        decode_multipart(body, {"boundary": "b0"})


# -- decode_body: the label is a hint, the body decides ----------------------------------------


@pytest.mark.parametrize(
    ("content_type", "raw", "source"),
    [
        ("application/x-www-form-urlencoded", SEED_QUERY, "form"),
        ("application/x-www-form-urlencoded; charset=utf-8", SEED_QUERY, "form"),
        (None, SEED_QUERY, "form"),
        ("", SEED_QUERY, "form"),
        ("text/plain", SEED_QUERY, "form"),
        ("application/octet-stream", SEED_QUERY, "form"),
        # A form body labelled JSON or XML (the provider changed the type, not the template).
        ("application/json", SEED_QUERY, "form"),
        ("application/xml", SEED_QUERY, "form"),
        # JSON labelled as the Acrobits default, as XML, or not labelled at all.
        ("application/x-www-form-urlencoded", SEED_JSON, "json"),
        ("application/xml", SEED_JSON, "json"),
        (None, SEED_JSON, "json"),
        ("text/plain", SEED_JSON, "json"),
        ("application/json", SEED_JSON, "json"),
        ("Application/JSON; charset=UTF-8", SEED_JSON, "json"),
        (None, codecs.BOM_UTF8 + b" \r\n\t" + SEED_JSON, "json"),
        ("application/x-www-form-urlencoded", codecs.BOM_UTF8 + b"\n  " + SEED_JSON, "json"),
        # XML labelled JSON, form, or nothing.
        ("application/json", SEED_XML, "xml"),
        ("application/x-www-form-urlencoded", SEED_XML, "xml"),
        (None, SEED_XML, "xml"),
        ("text/xml", SEED_XML, "xml"),
        ("application/xml", b"\n\n" + SEED_XML, "xml"),
    ],
)
def test_decode_body_sniffs(content_type: str | None, raw: bytes, source: str) -> None:
    decoded = decode_body(content_type, raw)
    assert decoded.source_format == source
    assert decoded.pairs == SEED_PAIRS


def test_decode_body_bom_with_utf8_charset_label() -> None:
    # Sniffing accepts a BOM before `{` whatever the label; an explicit utf-8 charset must not
    # turn that same body into a 400.
    decoded = decode_body("application/json; charset=utf-8", codecs.BOM_UTF8 + SEED_JSON)
    assert decoded.source_format == "json"
    assert decoded.pairs == SEED_PAIRS


def test_decode_body_form_keeps_plus() -> None:
    decoded = decode_body(None, b"invitee=+15551231234&invitor=+420777&network_id=x*")
    assert decoded.pairs == [("invitee", "+15551231234"), ("invitor", "+420777"), ("network_id", "x*")]


def test_decode_body_charset_parameter() -> None:
    decoded = decode_body("application/x-www-form-urlencoded; charset=ISO-8859-1", b"invitor=jos%E9")
    assert decoded.pairs == [("invitor", "josé")]


@pytest.mark.parametrize("raw", [b"", b"   ", b"\r\n", b"\t \n"])
@pytest.mark.parametrize("content_type", [None, "application/json", "application/xml", "image/png"])
def test_decode_body_empty(raw: bytes, content_type: str | None) -> None:
    decoded = decode_body(content_type, raw)
    assert decoded.pairs == []


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("image/png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01"),
        ("application/octet-stream", b"\x00\x01\x02\x03\xff\xfe"),
        ("image/png", b"\x89PNG a=b \x00"),
        ("application/pdf", b"%PDF-1.4 binary"),
    ],
)
def test_decode_body_binary_junk(content_type: str, raw: bytes) -> None:
    with pytest.raises(UnsupportedBody) as info:
        decode_body(content_type, raw)
    assert info.value.field == "Content-Type"
    assert info.value.status_code == 415


@pytest.mark.parametrize(
    "raw",
    [
        "{ \u201cinvitee\u201d : \u201c%invitee%\u201d }".encode(),
        b'{"invitee": "1"',
    ],
)
@pytest.mark.parametrize("content_type", [None, "application/json", "application/x-www-form-urlencoded"])
def test_decode_body_broken_json_is_invalid(raw: bytes, content_type: str | None) -> None:
    with pytest.raises(InvalidCallback):
        decode_body(content_type, raw)


# -- Content-Type ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, ("", {})),
        ("", ("", {})),
        ("application/json", ("application/json", {})),
        ("Application/JSON", ("application/json", {})),
        ("application/json; charset=utf-8", ("application/json", {"charset": "utf-8"})),
        ('application/xml; Charset="ISO-8859-1"', ("application/xml", {"charset": "ISO-8859-1"})),
        (
            "multipart/form-data; boundary=----WebKitFormBoundary7MA4",
            ("multipart/form-data", {"boundary": "----WebKitFormBoundary7MA4"}),
        ),
        ("  text/xml  ;charset=utf-8", ("text/xml", {"charset": "utf-8"})),
    ],
)
def test_parse_content_type(header: str | None, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_content_type(header) == expected


def test_deeply_nested_json_is_a_400_not_a_crash() -> None:
    body = b'{"a":' + b"[" * 30000 + b"]" * 30000 + b"}"
    with pytest.raises(InvalidCallback, match="nested too deeply"):
        decode_json(body)


def test_duplicate_json_field_with_two_values_is_refused() -> None:
    pairs = decode_json(b'{"invitee": "1555", "invitee": "1666", "invitor": "j", "network_id": "n"}')
    with pytest.raises(InvalidCallback, match="conflicting values for invitee"):
        pick_fields(pairs, DEFAULT_ALIAS_TABLE)


@settings(max_examples=500)
@given(
    st.binary(max_size=80)
    | st.text(alphabet=st.characters(max_codepoint=127), max_size=80).map(str.encode)
    # escapes: the E.164 `%2B`, any hex pair (UTF-8 or not), cut ones, in names and values
    | st.lists(
        st.sampled_from(
            ["%2B", "%2b", "%", "%C3", "%A9", "%C3%A9", "%zz", "%4", "=", "&", " ", "\t", "+", "a", "7"]
        ),
        max_size=20,
    ).map(lambda parts: "".join(parts).encode())
)
@example(b"invitee=%2B447700900123 &invitor=j%20s&network_id=n")
@example(b"invitee=%2B%2B1&%2Bname=%2b1\t&x=%C3%A9&y=%2B%C3")
def test_decode_query_fast_path_decodes_as_the_general_one(raw: bytes) -> None:
    # ASCII takes a shortcut (decoded once, a part unquoted only with a `%`, a lone leading
    # `%2B` as a slice): it must give what decode_urlencoded gives, errors included.
    try:
        expected = decode_urlencoded(raw, "utf-8", what="query string")
    except InvalidCallback as exc:
        with pytest.raises(InvalidCallback) as caught:
            decode_query(raw)
        assert (caught.value.detail, caught.value.field) == (exc.detail, exc.field)
        return
    assert decode_query(raw) == expected


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(alphabet=st.sampled_from(' \t\r\n{}[]":,1.5e-tnulrfasx\\'), max_size=40),
        st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), st.integers())).map(json.dumps),
    )
)
def test_the_json_decode_is_the_decoders(text: str) -> None:
    """formats._json_decode calls the C scanner as JSONDecoder.decode does: the same value, or the
    same error at the same place."""
    try:
        want: object = _JSON.decode(text)
    except json.JSONDecodeError as exc:
        want = (exc.msg, exc.pos)
    except RecursionError:
        return
    try:
        got: object = _json_decode(text)
    except json.JSONDecodeError as exc:
        got = (exc.msg, exc.pos)
    assert got == want


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab+=& \t\x0b\x0c\x1c\x1f\r\n19"), max_size=30))
def test_the_usual_query_shortcut_decodes_as_the_form_decoder(text: str) -> None:
    """decode_query's shortcut (ASCII, nothing escaped) gives what decode_urlencoded gives."""
    query = text.encode("ascii")
    assert decode_query(query) == decode_urlencoded(query, "utf-8", what="query string")


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(
        [
            None,
            "",
            "application/json",
            "application/json; charset=latin-1",
            "text/plain; charset=utf-8; charset=latin-1",
            "multipart/form-data; boundary=x",
            "application/octet-stream",
            "image/png",
            "application/x-www-form-urlencoded",
        ]
    ),
    st.one_of(
        st.text(alphabet=st.sampled_from('{}[]":,1 \t\né\x00\\abtoken'), max_size=40).map(str.encode),
        st.binary(max_size=40),
    ),
)
def test_a_body_starting_with_a_brace_decodes_as_one_after_a_blank(
    content_type: str | None, rest: bytes
) -> None:
    # A body whose first byte is `{` is known to be JSON without sniffing it: the same pairs (or
    # the same refusal) as the same body after a blank, which takes the sniff. (JSON errors name
    # a column, one further on there.)
    data = b"{" + rest
    try:
        expected = decode_body(content_type, b" " + data)
    except (InvalidCallback, UnsupportedBody) as exc:
        with pytest.raises(type(exc)) as caught:
            decode_body(content_type, data)
        assert caught.value.field == exc.field
        return
    assert decode_body(content_type, data) == expected
