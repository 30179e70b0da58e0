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
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote_plus
from xml.sax.saxutils import escape

from gateway.logs import mask_numbers

MASK = "****"
BODY_LIMIT = 1024  # bytes kept of a body (logged or inspected)
# Bytes past the limit that are looked at too, so that a field cut by the limit is masked by its
# name (its value is masked to the end of the text when its end is not in sight).
_SLACK = 1024

# A name is secret when, lower-cased and with everything but letters and digits dropped, it
# contains one of these, or is one of _SECRET_NAMES, or ends in "key" (api_key, X-Api-Key).
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
_SECRET_NAMES = frozenset({"auth", "sig", "pass", "pin", "otp", "session", "sessionid", "sid", "jwt"})
# The same, as a regex over names as written (the last net, for text no structure was found in).
_C = r"[\w.\-]"  # a character of a name
_SECRET_NAME_RE = (
    rf"(?<!{_C})(?:"
    rf"{_C}*?(?:{'|'.join(_SECRET_PARTS)}|auth(?!or))[\w.\-]*"
    rf"|{_C}*?key[._\-]*"
    r"|sig|pass|pin|otp|session(?:[._\-]?id)?|sid|jwt"
    rf")(?!{_C})"
)
_QUOTES = "\"'\u201c\u201d\u2018\u2019"
# name, an optional closing quote, `:` or `=`, then the value: quoted (to its closing quote, or to
# the end when cut), or bare (with an auth scheme word before it: `Bearer abc`) to a delimiter.
_PAIR = re.compile(
    rf"(?P<name>{_SECRET_NAME_RE})(?P<sep>[{_QUOTES}]?\s*[:=]\s*)"
    r"(?P<value>"
    r'"(?:\\.|[^"\\])*"?'
    r"|'(?:\\.|[^'\\])*'?"
    "|[\u201c\u201d][^\u201c\u201d]*[\u201c\u201d]?"
    "|[\u2018\u2019][^\u2018\u2019]*[\u2018\u2019]?"
    r"|(?:(?:bearer|basic|digest|token)\s+)?[^\s&,;}\]<>" + _QUOTES + r"]*"
    r")",
    re.IGNORECASE | re.DOTALL,
)
_SCHEME = re.compile(r"(?i)(?:bearer|basic|digest|token)\s+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)([^\s&,;}\]<>\"']+)")
# What `gateway tokens new` makes (secrets.token_urlsafe(32): 43 characters), or any run of 32 or
# more URL-safe characters mixing cases and digits: a generated secret, not a word or an id
# (ULIDs are 26 characters, UUIDs and hex digests have no capitals).
_GENERATED = re.compile(r"(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]{32,}(?![A-Za-z0-9_\-])")


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
    text = body[: limit + _SLACK].decode("utf-8", "surrogateescape")
    text = mask_text(text, content_type, secrets, numbers, cut=len(body) > limit + _SLACK)
    kept = text.encode("utf-8", "surrogateescape")[:limit]
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
    text = _mask_known(text, [s for s in secrets if len(s) >= 4], cut)
    kind = (content_type or "").lower()
    start = text.lstrip(" \t\r\n\ufeff")[:1]
    if start in ("{", "[") or "json" in kind:
        text = _mask_json(text)
    if start == "<" or "xml" in kind:
        text = _mask_xml(text)
    if "multipart/" in kind or "content-disposition" in text[:4096].lower():
        text = _mask_multipart(text)
    if start not in ("{", "[", "<"):
        text = _mask_form(text)
    text = _PAIR.sub(_mask_pair, text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    text = _GENERATED.sub(_mask_generated, text)
    if numbers and any(c.isdigit() for c in text):
        text = mask_numbers(text)
    return text


# -- known values --------------------------------------------------------------------------------


def _variants(secret: str) -> set[str]:
    """How a value may be written in a body: as is, percent-encoded, JSON- and XML-escaped."""
    return {
        secret,
        quote_plus(secret),
        quote_plus(secret, safe=""),
        quote(secret),
        quote(secret, safe=""),
        json.dumps(secret)[1:-1],
        escape(secret, {'"': "&quot;"}),
    }


def _mask_known(text: str, secrets: list[str], cut: bool) -> str:
    for secret in secrets:
        for v in sorted(_variants(secret), key=len, reverse=True):
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
_COLON = re.compile(r"\s*:\s*")
_BARE = re.compile(r"[^,}\]\s]*")


def _mask_json(text: str) -> str:
    """Every value under a secret key masked, whether or not the text parses as JSON."""
    out: list[str] = []
    i = 0
    while True:
        j = text.find('"', i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        m = _STRING.match(text, j)
        assert m is not None  # the pattern matches any text from a quote
        colon = _COLON.match(text, m.end())
        if colon is None:  # a value, not a key
            out.append(text[i : m.end()])
            i = m.end()
            continue
        out.append(text[i : colon.end()])
        i = colon.end()
        if not is_secret_name(_json_string(m.group(0))):
            continue
        end = _value_end(text, i)
        if end > i:
            out.append(f'"{MASK}"')
        i = end


def _json_string(token: str) -> str:
    try:
        value = json.loads(token)
    except ValueError:
        return token.strip('"')
    return value if isinstance(value, str) else token


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

_OPEN_TAG = re.compile(r"<(?P<name>[A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?)(?P<rest>[^<>]*?)(?P<empty>/?)>")


def _mask_xml(text: str) -> str:
    """The content of every element with a secret name, up to its closing tag (or the end)."""
    out: list[str] = []
    i = 0
    while True:
        m = _OPEN_TAG.search(text, i)
        if m is None:
            out.append(text[i:])
            return "".join(out)
        name = m.group("name")
        local = name.rpartition(":")[2]
        if m.group("empty") or not is_secret_name(local):
            out.append(text[i : m.end()])
            i = m.end()
            continue
        close = re.compile(rf"</\s*{re.escape(name)}\s*>").search(text, m.end())
        out.append(text[i : m.end()])
        out.append(MASK)
        if close is None:
            return "".join(out)
        i = close.start()


# -- multipart -------------------------------------------------------------------------------------

_PART_HEAD = re.compile(
    r"content-disposition:[^\r\n]*?\bname=(?:\"(?P<q>[^\"]*)\"|(?P<bare>[^;\s]+))[^\r\n]*"
    r"(?:\r?\n[^\r\n]+)*\r?\n\r?\n",
    re.IGNORECASE,
)
_PART_END = re.compile(r"\r?\n--")


def _mask_multipart(text: str) -> str:
    out: list[str] = []
    i = 0
    while True:
        m = _PART_HEAD.search(text, i)
        if m is None:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : m.end()])
        i = m.end()
        name = m.group("q") if m.group("q") is not None else m.group("bare")
        if is_secret_name(name):
            end = _PART_END.search(text, i)
            out.append(MASK)
            i = end.start() if end else len(text)


# -- form ------------------------------------------------------------------------------------------

_FORM_PAIR = re.compile(r"([^&;=\s]+)(=)([^&;]*)")


def _mask_form(text: str) -> str:
    """`name=value` pairs whose name (percent-decoded) is secret."""
    if "=" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        return m.group(1) + "=" + MASK if is_secret_name(unquote_plus(m.group(1))) else m.group(0)

    return _FORM_PAIR.sub(one, text)


# -- the last net ----------------------------------------------------------------------------------


def _mask_pair(m: re.Match[str]) -> str:
    value = m.group("value")
    if not value or value.strip(_QUOTES) == MASK or not is_secret_name(m.group("name")):
        return m.group(0)
    head = m.group("name") + m.group("sep")
    if value[0] in _QUOTES:
        closed = len(value) > 1 and value[-1] in _QUOTES
        return head + value[0] + MASK + (value[-1] if closed else "")
    scheme = _SCHEME.match(value)  # Authorization: Basic ...: the scheme helps, and is no secret
    return head + (scheme.group(0) if scheme else "") + MASK


def _mask_generated(m: re.Match[str]) -> str:
    run = m.group(0)
    mixed = any(c.isupper() for c in run) and any(c.islower() for c in run) and any(c.isdigit() for c in run)
    return MASK if mixed else run
