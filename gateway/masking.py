"""Secrets out of a body before it is logged or kept: `mask_body(content_type, body) -> str`.

A rejected callback's body is logged for the provider to debug (gateway/ingest/endpoint.py), and
the callbacks inspector keeps the first KiB of each. Either may hold what must not be written
down: an ingest token the provider put in the post data, a password, an API key. Whatever the
format (the Contacts server labels JSON and XML as a form when the portal's content type is left
empty, and a template copied with typographic quotes is not even JSON), the value of every field
whose name looks secret becomes `****`:

- form: `token=...&api_key=...` (names percent-decoded, any case);
- JSON: any key at any depth; an object or array under such a key is masked whole; a body that is
  not valid JSON or is cut short is scanned all the same;
- XML: `<token>...</token>` (whatever it contains, any prefix) and `token="..."` attributes;
- multipart: a part named so;
- anywhere, as a last net: `"token": "..."`, `token: ...`, `Authorization: Bearer ...`.

And wherever they appear: the secret values the caller knows (the ingest token presented), and
anything shaped like a generated token (`gateway tokens new`: 43 URL-safe characters). Phone
numbers are masked as the logs mask them (`numbers=False` leaves that to the log formatter, which
does it only when GATEWAY_LOG_MASK is on). Pure functions: no I/O, no state.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from urllib.parse import quote, quote_plus, unquote_plus
from xml.sax.saxutils import escape

from gateway.logs import mask_numbers

MASK = "****"
BODY_LIMIT = 1024  # bytes kept of a body (logged or inspected)
# Bytes past the limit that are looked at too, so that a generated token the limit cuts is still
# seen whole (a field the limit cuts is masked by its name, to the end of the text).
_SLACK = 64

# A name is secret when, lower-cased and with everything but letters and digits dropped, it
# contains one of _SECRET_PARTS, or is one of _SECRET_NAMES, or ends in "key" (api_key, X-Api-Key),
# or has "auth" in it but is no "author".
_SECRET_PARTS = (
    "token",
    "secret",
    "passw",
    "passphrase",
    "pwd",
    "credential",
    "cookie",
    "signature",
    "bearer",
    "privatekey",
    "authoriz",
)
_SECRET_NAMES = frozenset({"auth", "sig", "pass", "pw", "pin", "otp", "session", "sessionid", "sid", "jwt"})

# Every regex below runs over the text with A-Z lowered (same length, so its spans are the
# text's): sre's IGNORECASE costs about 50 times as much, a case fold per character it looks at.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Where a secret name may be at all; no field is looked at in a text without one.
_FRAGMENTS = "|".join(sorted({*_SECRET_PARTS, "auth", "key", *_SECRET_NAMES}, key=len, reverse=True))
_FRAGMENT = re.compile(_FRAGMENTS)


def _has_fragment(low: str) -> bool:
    """`_FRAGMENT.search(low)`, as substring tests of the fragments that contain no other one
    (tests/test_masking.py checks the list): under half the instructions of the alternation,
    whose every position of the text is a possible start. Every kept body and query pays it."""
    return (
        "auth" in low
        or "key" in low
        or "pass" in low
        or "pw" in low
        or "token" in low
        or "secret" in low
        or "sig" in low
        or "pin" in low
        or "otp" in low
        or "sid" in low
        or "session" in low
        or "jwt" in low
        or "cookie" in low
        or "bearer" in low
        or "credential" in low
    )


_DIGITS = re.compile(r"\d{7}")  # the shortest run mask_numbers masks

# The last net, for text no structure was found in: a secret name, an optional closing quote,
# `:` or `=`, then the value: quoted (to its closing quote, or to the end when cut), or bare (with
# an auth scheme word before it: `Bearer abc`) to a delimiter. Names are bounded (48 characters
# either side of the secret part) so that a long run of name characters costs linear time.
_C = r"[\w.\-]"  # a character of a name
_SCHEMES = "bearer|basic|digest|token"
_QUOTES = "\"'\u201c\u201d\u2018\u2019"
_PAIR = re.compile(
    rf"(?<!{_C})(?P<name>"
    rf"{_C}{{0,48}}?(?:{'|'.join(_SECRET_PARTS)}|auth(?!or)){_C}{{0,48}}"
    rf"|{_C}{{0,48}}?key[._\-]{{0,4}}"
    rf"|session[._\-]?id|{'|'.join(sorted(_SECRET_NAMES, key=len, reverse=True))}"
    rf")(?!{_C})(?P<sep>[{_QUOTES}]?\s*[:=]\s*)"
    r"(?P<value>"
    r'"(?:\\.|[^"\\])*"?'
    r"|'(?:\\.|[^'\\])*'?"
    "|[\u201c\u201d][^\u201c\u201d]*[\u201c\u201d]?"
    "|[\u2018\u2019][^\u2018\u2019]*[\u2018\u2019]?"
    rf"|(?:(?:{_SCHEMES})\s+)?[^\s&,;}}\]<>{_QUOTES}]*"
    r")",
    re.DOTALL,
)
_SCHEME = re.compile(rf"(?:{_SCHEMES})\s+")
_BEARER = re.compile(r"\b(bearer\s+)[^\s&,;}\]<>\"']+")
# What `gateway tokens new` makes (secrets.token_urlsafe(32): 43 characters), or any run of 32 or
# more URL-safe characters mixing cases and digits: a generated secret, not a word or an id
# (ULIDs are 26 characters, UUIDs and hex digests have no capitals). Over the text as it is.
_GENERATED = re.compile(r"(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]{32,}(?![A-Za-z0-9_\-])")
_UPPER, _LOWER, _DIGIT = re.compile("[A-Z]"), re.compile("[a-z]"), re.compile("[0-9]")
# The look before it, on ASCII text: _GENERATED's characters as "a", every other byte a space,
# so that a run it could match is 32 a's in a row; a C translation and a substring test, 6.2k
# instructions against the regex's 9.8k over the usual query (which has no such run).
_RUN_BYTES = bytes(
    97 if chr(c) in "-_" or (chr(c).isascii() and chr(c).isalnum()) else 32 for c in range(256)
)
_RUN = b"a" * 32


def is_secret_name(name: str) -> bool:
    """Whether a field called `name` holds a secret (token, password, api_key, X-Api-Key, ...)."""
    n = "".join(c for c in name.lower() if c.isalnum())
    if not n:
        return False
    if n in _SECRET_NAMES or n.endswith("key"):
        return True
    if "auth" in n and "author" not in n:
        return True
    return any(part in n for part in _SECRET_PARTS)


def mask_body(
    content_type: str | None,
    body: bytes,
    *,
    secrets: Iterable[str] = (),
    numbers: bool = True,
    limit: int = BODY_LIMIT,
) -> str:
    """The first `limit` bytes of `body` as text, secrets masked (module docstring).

    `secrets`: values to mask wherever they appear (the ingest token the request presented).
    `numbers`: mask phone numbers as the logs do. Bytes that are not UTF-8 show as \\xNN.
    """
    head = body[: limit + _SLACK]
    text = head.decode("utf-8", "surrogateescape")
    masked = mask_text(text, content_type, secrets, numbers, cut=len(body) > limit + _SLACK)
    if masked is text and len(head) <= limit and head.isascii():
        return text  # the usual small body, nothing masked: as it came
    kept = masked.encode("utf-8", "surrogateescape")[:limit]
    return kept.decode("utf-8", "backslashreplace")


def mask_text(
    text: str,
    content_type: str | None = None,
    secrets: Iterable[str] = (),
    numbers: bool = True,
    cut: bool = False,
) -> str:
    """`text` with secrets masked (mask_body without the decoding and the limit).

    `cut`: the text is the start of a longer one (a known secret at its very end may be cut too).
    """
    if secrets:  # (the usual callback presents none: no list, no call)
        text = _mask_known(text, [s for s in secrets if len(s) >= 4], cut)
    kind = (content_type or "").lower()
    # No secret part of a name anywhere, nor an escape that could spell one: no field to mask.
    if _may_name_secret(text, kind):
        text = _mask_fields(text, kind)
    if len(text) >= 32 and (not text.isascii() or _RUN in text.encode("ascii").translate(_RUN_BYTES)):
        text = _GENERATED.sub(_generated, text)
    if numbers and _DIGITS.search(text):
        text = mask_numbers(text)
    return text


def _mask_fields(text: str, kind: str) -> str:
    """The value of every field whose name is secret, whatever the format (`kind`: the content
    type in lower case)."""
    start = text.lstrip(" \t\r\n\ufeff")[:1]
    if start in ("{", "[") or "json" in kind:
        text = _mask_json(text)
    if start == "<" or "xml" in kind:
        text = _mask_xml(text)
    if "multipart/" in kind or "content-disposition" in text.translate(_ASCII_LOWER):
        text = _mask_multipart(text)
    if start not in ("{", "[", "<"):
        text = _sub(_FORM_PAIR, text, _form_pair)
    text = _sub(_PAIR, text, _pair)
    return _sub(_BEARER, text, lambda m, t: t[m.start(1) : m.end(1)] + MASK)


def _may_name_secret(text: str, kind: str) -> bool:
    """Whether a field masker could find a secret name in `text` (when False, none would: tested).

    The callbacks inspector keeps the start of every callback's body, so the common body (the
    three fields, no secret) must cost little: the maskers run only on a secret part of a name, a
    backslash (a JSON escape may spell one), a form name with a percent escape, or multipart.
    """
    if "\\" in text:
        return True
    # str.lower is A-Z only on ASCII text, and twenty times faster than the translation.
    low = text.lower() if text.isascii() else text.translate(_ASCII_LOWER)
    if _has_fragment(low):
        return True
    if "multipart/" in kind or "content-disposition" in low:
        return True  # a part named `to-ken` is secret with no fragment in sight
    return "%" in text and _pct_name(text)


def _pct_name(text: str) -> bool:
    """`_PCT_NAME.search(text) is not None`; without the search (1.4 µs over the usual query) when
    every `%` follows a `=` (the E.164 `+` as `%2B` in a value): the regex's name starts after a
    separator (`&`, `;`, a blank) or at the start and holds no `=`, so such a `%` is in none."""
    if text.count("%") == text.count("=%"):
        return False
    return _PCT_NAME.search(text) is not None


def _sub(pattern: re.Pattern[str], text: str, fn: Callable[[re.Match[str], str], str | None]) -> str:
    """`pattern.sub` over the lowered text; `fn(match, text)` gives the replacement (None: keep)."""
    out: list[str] = []
    i = 0
    for m in pattern.finditer(text.translate(_ASCII_LOWER)):
        replacement = fn(m, text)
        if replacement is not None:
            out.append(text[i : m.start()])
            out.append(replacement)
            i = m.end()
    out.append(text[i:])
    return "".join(out)


# -- known values --------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _variants(secret: str) -> tuple[str, ...]:
    """How a value may be written in a body: as is, percent-encoded, JSON- and XML-escaped;
    longest first. Cached: the same ingest token comes with callback after callback."""
    return tuple(
        sorted(
            {
                secret,
                quote_plus(secret),
                quote_plus(secret, safe=""),
                quote(secret),
                quote(secret, safe=""),
                json.dumps(secret)[1:-1],
                escape(secret, {'"': "&quot;"}),
            },
            key=len,
            reverse=True,
        )
    )


def _mask_known(text: str, secrets: list[str], cut: bool) -> str:
    for secret in secrets:
        for v in _variants(secret):
            if v in text:
                text = text.replace(v, MASK)
            if cut:  # the text ends inside the secret: mask the part in sight
                for k in range(min(len(v) - 1, len(text)), 3, -1):
                    if text.endswith(v[:k]):
                        text = text[:-k] + MASK
                        break
    return text


# -- JSON: a lenient scanner ---------------------------------------------------------------------

# A string (to its closing quote, or to the end when cut short).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)
_BARE = re.compile(r"[^,}\]\s]*")
# A key that may be secret, its colon and the blanks after it: a string with a secret part in its
# name (bounded, so that long strings cost linear time), or with an escape that may spell one.
_KEY = re.compile(
    rf'"(?P<key>[^"\\]{{0,64}}?(?:{_FRAGMENTS})[^"\\]{{0,64}}|[^"\\]*(?:\\.[^"\\]*)+)"\s*:\s*',
    re.DOTALL,
)


def _mask_json(text: str) -> str:
    """Every value under a secret key masked, whether or not the text parses as JSON.

    Only keys that may be secret come back from the regex engine: a body of many keys or quotes
    costs no Python per key. A match that starts inside a string (the engine does not know where
    strings start) finds a key that is no key: it can only mask more, never hide a real key.
    """
    low = text.translate(_ASCII_LOWER)
    out: list[str] = []
    i = 0
    for m in _KEY.finditer(low):
        if m.start() < i or not is_secret_name(_json_string(m.group("key"))):
            continue  # inside the value just masked, or not a secret
        out.append(text[i : m.end()])
        i = m.end()
        end = _value_end(text, i)
        if end > i:
            out.append(f'"{MASK}"')
        i = end
    out.append(text[i:])
    return "".join(out)


def _json_string(inner: str) -> str:
    """A key's text between its quotes, unescaped (`\\u0074oken` is `token`)."""
    if "\\" not in inner:
        return inner
    try:
        value = json.loads(f'"{inner}"')
    except ValueError:
        return inner
    return value if isinstance(value, str) else inner


def _value_end(text: str, i: int) -> int:
    """Where the JSON value starting at `i` ends (the text's end when it is cut short)."""
    if i >= len(text):
        return i
    c = text[i]
    if c == '"':
        m = _STRING.match(text, i)
        return m.end() if m else len(text)
    if c in "{[":
        depth = 0
        j = i
        while j < len(text):
            c = text[j]
            if c == '"':
                m = _STRING.match(text, j)
                j = m.end() if m else len(text)
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return len(text)
    m = _BARE.match(text, i)
    return m.end() if m else i


# -- XML -------------------------------------------------------------------------------------------

# An opening tag whose (local) name has a secret part; empty ones (`<token/>`) hold nothing.
_OPEN_TAG = re.compile(
    rf"<(?P<name>(?:[a-z_][\w.\-]*:)?[\w.\-]{{0,64}}?(?:{_FRAGMENTS})[\w.\-]{{0,64}})"
    r"(?P<rest>\s[^<>]*?)?(?P<empty>/?)>"
)


def _mask_xml(text: str) -> str:
    """The content of every element with a secret name, up to its closing tag (or the end)."""
    low = text.translate(_ASCII_LOWER)
    out: list[str] = []
    i = 0
    for m in _OPEN_TAG.finditer(low):
        name = m.group("name")
        if m.start() < i or m.group("empty") or not is_secret_name(name.rpartition(":")[2]):
            continue
        out.append(text[i : m.end()])
        out.append(MASK)
        close = re.compile(rf"</\s*{re.escape(name)}\s*>").search(low, m.end())
        if close is None:
            return "".join(out)
        i = close.start()
    out.append(text[i:])
    return "".join(out)


# -- multipart -------------------------------------------------------------------------------------

_PART_HEAD = re.compile(
    r"content-disposition:[^\r\n]*?\bname=(?:\"(?P<q>[^\"]*)\"|(?P<bare>[^;\s]+))[^\r\n]*"
    r"(?:\r?\n[^\r\n]+)*\r?\n\r?\n"
)
_PART_END = re.compile(r"\r?\n--")


def _mask_multipart(text: str) -> str:
    """The content of every part whose name is secret, up to the next boundary (or the end)."""
    low = text.translate(_ASCII_LOWER)
    out: list[str] = []
    i = 0
    for m in _PART_HEAD.finditer(low):
        name = m.group("q") if m.group("q") is not None else m.group("bare")
        if m.start() < i or not is_secret_name(name):
            continue
        out.append(text[i : m.end()])
        out.append(MASK)
        end = _PART_END.search(text, m.end())
        i = end.start() if end else len(text)
    out.append(text[i:])
    return "".join(out)


# -- form and the last net -------------------------------------------------------------------------

# A pair whose name may be secret: a secret part in it, or percent-encoded (%74oken).
_FORM_PAIR = re.compile(rf"(?<![^&;\s])([^&;=\s]{{0,64}}?(?:{_FRAGMENTS}|%)[^&;=\s]{{0,64}})=([^&;]*)")
# The same with a percent escape in the name and no secret part in sight (_may_name_secret).
_PCT_NAME = re.compile(r"(?<![^&;\s])[^&;=\s]{0,64}?%[^&;=\s]{0,64}=")


def _form_pair(m: re.Match[str], text: str) -> str | None:
    name = text[m.start(1) : m.end(1)]
    if "%" in name or "+" in name:
        name = unquote_plus(name)
    return text[m.start(1) : m.end(1)] + "=" + MASK if is_secret_name(name) else None


def _pair(m: re.Match[str], text: str) -> str | None:
    value = text[m.start("value") : m.end("value")]
    if not value or value.strip(_QUOTES) == MASK or not is_secret_name(m.group("name")):
        return None
    head = text[m.start() : m.start("value")]
    if value[0] in _QUOTES:
        closed = len(value) > 1 and value[-1] in _QUOTES
        return head + value[0] + MASK + (value[-1] if closed else "")
    scheme = _SCHEME.match(value.translate(_ASCII_LOWER))  # Authorization: Basic ...: no secret
    return head + (value[: scheme.end()] if scheme else "") + MASK


def _generated(m: re.Match[str]) -> str:
    run = m.group(0)
    return MASK if _UPPER.search(run) and _LOWER.search(run) and _DIGIT.search(run) else run
