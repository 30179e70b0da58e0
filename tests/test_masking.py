"""mask_body: secrets out of a body whatever its format; everything else as it was, numbers masked.

Examples first, then properties (hypothesis): a secret placed in any field of a form, JSON, XML or
multipart body never survives, the body cut at 1 KiB or not; a body without secrets comes back
as it was, apart from the phone numbers the logs mask.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_plus, urlencode
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.logs import mask_numbers
from gateway.masking import (
    _FRAGMENT,
    _FRAGMENTS,
    _GENERATED,
    BODY_LIMIT,
    _generated,
    _has_fragment,
    _mask_fields,
    _may_name_secret,
    _pct_name,
    is_secret_name,
    mask_body,
    mask_text,
)

FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("content_type", "body", "masked"),
    [
        (FORM, b"invitee=15551231234&token=s3cr3t-val&x=1", "invitee=1555****1234&token=****&x=1"),
        (
            FORM,
            b"a=1&%74oken=abc&API-KEY=zz&passWord=p&b=2",
            "a=1&%74oken=****&API-KEY=****&passWord=****&b=2",
        ),
        (FORM, b"access_token=a&client_secret=b&pwd=c", "access_token=****&client_secret=****&pwd=****"),
        # JSON labelled as a form (the portal's default content type), at any depth.
        (FORM, b'{"token": "gwsecXYZ", "invitor": "bob"}', '{"token": "****", "invitor": "bob"}'),
        (
            None,
            b'{"a": {"b": [{"Access_Token": "xyz"}]}, "c": 1}',
            '{"a": {"b": [{"Access_Token": "****"}]}, "c": 1}',
        ),
        (None, b'{"token": {"value": "v", "x": [1, 2]}, "ok": true}', '{"token": "****", "ok": true}'),
        (None, b'{"\\u0074oken": "escaped name"}', '{"\\u0074oken": "****"}'),
        (None, b'{"token" : "a\\"b", "pin": 1234}', '{"token" : "****", "pin": "****"}'),
        # Not JSON: cut at the limit, or typed with typographic quotes.
        (None, b'{"invitor": "bob", "token": "cut-before-its-en', '{"invitor": "bob", "token": "****"'),
        (
            None,
            "{\u201ctoken\u201d: \u201cabc\u201d, \u201cinvitor\u201d: \u201cbob\u201d}".encode(),
            "{\u201ctoken\u201d: \u201c****\u201d, \u201cinvitor\u201d: \u201cbob\u201d}",
        ),
        (
            "application/xml",
            b'<r><ns:Token a="1">abc<b>def</b></ns:Token><x api_key="k1">v</x></r>',
            '<r><ns:Token a="1">****</ns:Token><x api_key="****">v</x></r>',
        ),
        ("text/xml", b"<r><password>cut before its en", "<r><password>****"),
        (
            "multipart/form-data; boundary=XX",
            b'--XX\r\nContent-Disposition: form-data; name="token"\r\n\r\nv\r\n--XX\r\n'
            b'Content-Disposition: form-data; name="invitor"\r\n\r\nbob\r\n--XX--\r\n',
            '--XX\r\nContent-Disposition: form-data; name="token"\r\n\r\n****\r\n--XX\r\n'
            'Content-Disposition: form-data; name="invitor"\r\n\r\nbob\r\n--XX--\r\n',
        ),
        ("text/plain", b"Authorization: Bearer abc.def", "Authorization: Bearer ****"),
        ("text/plain", b"Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic ****"),
        # What `gateway tokens new` makes, wherever it is.
        (FORM, b"note=Qm9vZ3aX-1kP_4l2Zx9yQm9vZ3aX1kP4l2Zx9yQAb", "note=****"),
        # Not secrets: ids, words, author, keyboard, a hex digest.
        (
            FORM,
            b"id=01M8B0HCY1K8QN66MEFJZ1JT1P&author=ann&keyboard=us",
            "id=01M8B0HCY1K8QN66MEFJZ1JT1P&author=ann&keyboard=us",
        ),
        (None, b'{"sha": "' + b"ab12" * 16 + b'"}', '{"sha": "' + "ab12" * 16 + '"}'),
        # Not UTF-8.
        (FORM, b"x=\xff\xfe&secret=s", "x=\\xff\\xfe&secret=****"),
    ],
)
def test_mask_body(content_type: str | None, body: bytes, masked: str) -> None:
    assert mask_body(content_type, body) == masked


def test_known_secrets_are_masked_wherever_they_are() -> None:
    token = "tok/+en=1"
    body = f'{{"note": "{token}", "url": "/x?t={quote_plus(token)}"}}'.encode()
    assert mask_body("application/json", body, secrets=[token]) == '{"note": "****", "url": "/x?t=****"}'
    # A text cut in the middle of one: the part in sight goes too.
    assert mask_text("a=xxabcdefgh", secrets=["abcdefghijklmnop"], cut=True) == "a=xx****"


def test_the_first_kib() -> None:
    body = b"a=" + b"b" * 5000
    assert mask_body(FORM, body) == "a=" + "b" * (BODY_LIMIT - 2)
    assert mask_body(FORM, body, limit=10) == "a=bbbbbbbb"


def test_numbers_are_left_to_the_formatter_when_asked() -> None:
    assert mask_body(FORM, b"invitee=15551231234&token=t", numbers=False) == "invitee=15551231234&token=****"


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "Token",
        "access_token",
        "api_key",
        "X-Api-Key",
        "apikey",
        "password",
        "PASSWD",
        "secret",
        "client_secret",
        "authorization",
        "auth",
        "session_id",
        "signature",
        "pin",
        "jwt",
        "cookie",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["invitee", "invitor", "network_id", "network", "author", "keyboard", "id", "name", "email", "type"],
)
def test_names_that_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


# -- properties --------------------------------------------------------------------------------

# Field names and values of bodies: lower-case words (no ':' or '='), phone numbers, empty.
_LOWER = "abcdefghijklmnopqrstuvwxyz"
NAMES = st.text(_LOWER + "_", min_size=1, max_size=12).filter(lambda n: not is_secret_name(n))
WORDS = st.text(_LOWER + " .,-@", max_size=30).filter(lambda v: "bearer" not in v)
VALUES = st.one_of(WORDS, st.from_regex(r"\+?[1-9][0-9]{9,13}", fullmatch=True))
# A secret: upper-case letters and characters that must be escaped in every format, so that no
# part of it can be found in what else the body holds (lower case, digits).
SECRETS = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_-~!\"&<>=\\#%' ", min_size=6, max_size=60).filter(
    lambda s: sum(c.isalpha() for c in s) >= 3
)
SECRET_NAMES = st.sampled_from(
    [
        "token",
        "Token",
        "TOKEN",
        "access_token",
        "api_key",
        "apiKey",
        "X-Api-Key",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "auth_token",
        "signing_secret",
        "authorization",
        "refresh-token",
        "pin",
    ]
)
FIELDS = st.lists(st.tuples(NAMES, VALUES), max_size=8)
# Enough filler to push a field past the 1 KiB limit now and then.
FILLER = st.one_of(st.just(""), st.text(_LOWER, min_size=900, max_size=1400))
PROPERTIES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _grams(text: str, n: int = 4) -> set[str]:
    return {text[i : i + n] for i in range(len(text) - n + 1)} if len(text) >= n else {text}


def _survivors(secret: str, written: str, out: str, name: str) -> set[str]:
    """Parts (4 characters) of the secret, as written in the body or raw, found in the output
    (but for the field's name, which stays, and may have capitals too)."""
    out = out.replace(name, "")
    return {g for g in _grams(secret) | _grams(written) if g in out and any(c.isupper() for c in g)}


def _form(fields: list[tuple[str, str]]) -> str:
    return urlencode(fields)


def _xml(fields: list[tuple[str, str]], attrs: list[tuple[str, str]]) -> str:
    attributes = "".join(f" {k}={quoteattr(v)}" for k, v in attrs)
    return (
        f"<invitation{attributes}>" + "".join(f"<{k}>{escape(v)}</{k}>" for k, v in fields) + "</invitation>"
    )


@st.composite
def nested_json(draw: st.DrawFn, leaf: Any) -> Any:
    """A JSON document of objects and arrays with `leaf` (a dict) somewhere in it."""
    doc: Any = leaf
    for _ in range(draw(st.integers(0, 4))):
        siblings = draw(st.lists(st.tuples(NAMES, VALUES), max_size=3))
        if draw(st.booleans()):
            doc = {**dict(siblings), draw(NAMES): doc}
        else:
            items: list[Any] = [v for _, v in siblings]
            items.insert(draw(st.integers(0, len(items))), doc)
            doc = items
    return doc


@PROPERTIES
@given(
    fields=FIELDS,
    at=st.integers(0, 8),
    name=SECRET_NAMES,
    secret=SECRETS,
    filler=FILLER,
    fmt=st.sampled_from(["form", "json", "json-indented", "xml", "xml-attribute"]),
    label=st.sampled_from([None, FORM, "application/json", "application/xml", "text/plain"]),
)
def test_a_secret_in_any_field_never_survives(
    fields: list[tuple[str, str]], at: int, name: str, secret: str, filler: str, fmt: str, label: str | None
) -> None:
    fields = list(fields)
    fields.insert(0, ("filler", filler))
    fields.insert(min(at, len(fields)), (name, secret))
    if fmt == "form":
        body = _form(fields)
        written = quote_plus(secret)
    elif fmt.startswith("json"):
        body = json.dumps(dict(fields), indent=2 if fmt == "json-indented" else None)
        written = json.dumps(secret)[1:-1]
    elif fmt == "xml":
        body = _xml(fields, [])
        written = escape(secret)
    else:
        body = _xml([f for f in fields if f[0] != name], [(name, secret)])
        written = quoteattr(secret)[1:-1]
    out = mask_body(label, body.encode())
    assert not _survivors(secret, written, out, name), (body, out)


@PROPERTIES
@given(leaf_fields=FIELDS, name=SECRET_NAMES, secret=SECRETS, data=st.data(), ensure_ascii=st.booleans())
def test_a_secret_at_any_depth_of_json_never_survives(
    leaf_fields: list[tuple[str, str]], name: str, secret: str, data: st.DataObject, ensure_ascii: bool
) -> None:
    leaf = dict(leaf_fields)
    # The secret as a string, or an object or array that holds it.
    leaf[name] = data.draw(st.sampled_from([secret, {"value": secret}, [secret], {"a": [{"b": secret}]}]))
    body = json.dumps(data.draw(nested_json(leaf)), ensure_ascii=ensure_ascii)
    out = mask_body("application/json", body.encode())
    assert not _survivors(secret, json.dumps(secret)[1:-1], out, name), (body, out)
    # Still JSON (no cut here: the documents are small).
    json.loads(out)


@PROPERTIES
@given(fields=FIELDS, at=st.integers(0, 8), name=SECRET_NAMES, secret=SECRETS, cut=st.integers(1, 400))
def test_a_secret_in_cut_or_broken_json_never_survives(
    fields: list[tuple[str, str]], at: int, name: str, secret: str, cut: int
) -> None:
    fields = list(fields)
    fields.insert(min(at, len(fields)), (name, secret))
    body = json.dumps(dict(fields))
    # Cut anywhere (as by the 1 KiB limit) and made invalid (a trailing comma, a missing brace).
    for broken in (body[:cut], body[:-1] + ",", "{" + body):
        out = mask_body(None, broken.encode())
        assert not _survivors(secret, json.dumps(secret)[1:-1], out, name), (broken, out)


@PROPERTIES
@given(fields=FIELDS, at=st.integers(0, 8), name=SECRET_NAMES, secret=SECRETS)
def test_a_secret_in_a_multipart_part_never_survives(
    fields: list[tuple[str, str]], at: int, name: str, secret: str
) -> None:
    fields = list(fields)
    fields.insert(min(at, len(fields)), (name, secret))
    parts = "".join(
        f'--b0undary\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields
    )
    body = parts + "--b0undary--\r\n"
    out = mask_body("multipart/form-data; boundary=b0undary", body.encode())
    assert not _survivors(secret, secret, out, name), (body, out)


@PROPERTIES
@given(fields=FIELDS, fmt=st.sampled_from(["form", "json", "xml"]), numbers=st.booleans())
def test_a_body_without_secrets_is_unchanged_but_for_numbers(
    fields: list[tuple[str, str]], fmt: str, numbers: bool
) -> None:
    body = _form(fields) if fmt == "form" else json.dumps(dict(fields)) if fmt == "json" else _xml(fields, [])
    out = mask_body(None, body.encode(), numbers=numbers)
    assert out == (mask_numbers(body) if numbers else body)


@PROPERTIES
@given(st.binary(max_size=3000), st.sampled_from([None, FORM, "application/json", "application/xml"]))
def test_any_bytes_give_text_within_the_limit(body: bytes, content_type: str | None) -> None:
    out = mask_body(content_type, body)
    assert len(out) <= 4 * BODY_LIMIT  # \xNN for each byte at most


# Names a secret may hide behind (what is_secret_name reads through: split by a separator, which
# may be percent- or JSON-escaped, or with a letter escaped), and names that are no secret.
def _disguised(name: str, at: int, sep: str, escape_letter: bool) -> str:
    at %= len(name) + 1
    head, tail = name[:at], name[at:]
    if escape_letter and tail:
        tail = f"%{ord(tail[0]):02X}" + tail[1:]
    return head + sep + tail


_NAME = st.builds(
    _disguised,
    st.sampled_from(["token", "password", "secret", "invitee"]),
    st.integers(1, 4),
    st.sampled_from(["-", "%2D", "_", "\\u002d", "%2B"]),
    st.booleans(),
)
_FIELD = st.tuples(
    st.sampled_from(["{}={}&", '"{}": "{}", ', "<{0}>{1}</{0}>", "{}: {}\n",
                     '--XX\r\nContent-Disposition: form-data; name="{}"\r\n\r\n{}\r\n']),
    _NAME,
    st.sampled_from(["v", "1", "%2B1555", "a b"]),
).map(lambda t: t[0].format(t[1], t[2]))  # fmt: skip
_PIECES = st.one_of(
    _FIELD,
    st.sampled_from(["&", "=", ";", ":", '"', "{", "}", "<", ">", " ", "\r\n", "%", "bearer ", "--XX--"]),
)


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(_PIECES, max_size=4).map("".join),
    st.sampled_from([None, FORM, "application/json", "application/xml", "multipart/form-data; boundary=XX"]),
)
def test_the_precheck_never_skips_what_the_field_maskers_would_mask(
    text: str, content_type: str | None
) -> None:
    """The maskers run only where a secret name may be (a cheap look first: every callback's body
    is kept by the inspector); where the look finds none, running them changes nothing."""
    kind = (content_type or "").lower()
    if not _may_name_secret(text, kind):
        assert _mask_fields(text, kind) == text


def test_the_fragment_look_tests_every_fragment_that_contains_no_other() -> None:
    """_has_fragment spells out the fragments by hand: the ones no other fragment is part of."""
    fragments = _FRAGMENTS.split("|")
    minimal = {f for f in fragments if not any(g != f and g in f for g in fragments)}
    for fragment in fragments:
        assert _has_fragment(f"x_{fragment}_y")
    for fragment in minimal:  # each is needed: nothing else in the list would find it
        assert not any(g in fragment for g in minimal - {fragment})
    assert not _has_fragment("invitee=15551231234&invitor=johnsnow&network_id=mynetwork")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("atokenseckypwigdjbrhuvl_=&x"), max_size=30))
def test_the_fragment_look_finds_what_the_alternation_finds(low: str) -> None:
    assert _has_fragment(low) == (_FRAGMENT.search(low) is not None)


_TOKENISH = st.text(alphabet=st.sampled_from("aZ9_-"), min_size=30, max_size=40).map(lambda t: "aZ9" + t)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(_TOKENISH, st.sampled_from(["&", "=", '"', " ", "é", "x", "invitee", ":"])), max_size=5
    )
)
def test_the_look_before_the_generated_token_regex_never_skips_one(pieces: list[str]) -> None:
    """mask_text runs _GENERATED only where a cheap look finds a run of 32 of its characters (or
    the text is not ASCII): what comes out has nothing left for it to mask."""
    masked = mask_text("".join(pieces), FORM, numbers=False)
    assert _GENERATED.sub(_generated, masked) == masked


@settings(max_examples=1000)
@given(st.text(alphabet=st.sampled_from("%==&; \t\nab2B"), max_size=30))
def test_a_percent_after_an_equals_sign_is_in_no_name(text: str) -> None:
    # The shortcut before the search (every `%` right after a `=`): the same answer as the search.
    from gateway.masking import _PCT_NAME

    assert _pct_name(text) == (_PCT_NAME.search(text) is not None)
