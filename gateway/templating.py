"""`%placeholder%` templates, rendered with escaping for where each value lands (pure).

Targets use the syntax of the Acrobits portal: `%invitee%`, `%invitor%`, `%network_id%`, and
more. Two kinds of substitution:

- `%name%`: an event value or a per-target variable. Untrusted (it came from a phone), so it is
  escaped for its context: percent-encoding in URLs, form bodies and headers, JSON string
  escaping in JSON bodies, entity escaping in XML bodies.
- `${NAME}`: an environment variable of the worker (a token, a secret path). Trusted, inserted
  as it is, never logged or stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from lxml import etree

from gateway.exceptions import ConfigError

Escape = Callable[[str], str]

# `%C3%A9` in a URL is percent-encoding, not a placeholder named C3: a name of two hex digits
# followed by `%` is never read as one.
# A lookup's values are `%lookupname.field%`: one dot at most.
_TOKEN = re.compile(
    r"%(?![0-9A-Fa-f]{2}%)([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)%"
    r"|\$\{([A-Za-z_][A-Za-z0-9_]*)\}"
)

# Rendered into every template at load time: if a template survives these, it survives a phone.
HOSTILE = '"quo\'te" & <b>x</b> +1 555/../12?a=1&b=2#h;%41 \\ ]]> ü€😀'


def escape_form(value: str) -> str:
    return quote(value, safe="")


def escape_url(value: str) -> str:
    """Percent-encoding, dots included: a value of `..` must not climb the target's path."""
    return quote(value, safe="").replace(".", "%2E")


def escape_json(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)[1:-1]


_XML_ESCAPES = {
    ord("&"): "&amp;",
    ord("<"): "&lt;",
    ord(">"): "&gt;",
    ord('"'): "&quot;",
    ord("'"): "&apos;",
    # Character references keep these through attribute-value normalization.
    ord("\t"): "&#9;",
    ord("\n"): "&#10;",
    ord("\r"): "&#13;",
}


def escape_xml(value: str) -> str:
    return value.translate(_XML_ESCAPES)


def escape_header(value: str) -> str:
    """Printable ASCII passes; anything else (and `%`) is percent-encoded: no header injection."""
    return "".join(c if " " <= c <= "~" and c != "%" else quote(c, safe="") for c in value)


def escape_none(value: str) -> str:
    return value


@dataclass(frozen=True, slots=True)
class BodyKind:
    name: str
    escape: Escape


FORM_KIND = BodyKind("form", escape_form)
JSON_KIND = BodyKind("json", escape_json)
XML_KIND = BodyKind("xml", escape_xml)
TEXT_KIND = BodyKind("text", escape_none)


def body_kind(content_type: str) -> BodyKind | None:
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        return FORM_KIND
    if media in ("application/json", "text/json") or media.endswith("+json"):
        return JSON_KIND
    if media in ("application/xml", "text/xml") or media.endswith("+xml"):
        return XML_KIND
    if media == "text/plain":
        return TEXT_KIND
    return None


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal text, `%placeholders%` and `${ENV}` references."""

    source: str
    parts: tuple[tuple[str, str], ...]  # ("text" | "ph" | "env", value)

    @classmethod
    def parse(cls, source: str) -> Template:
        parts: list[tuple[str, str]] = []
        pos = 0
        for match in _TOKEN.finditer(source):
            if match.start() > pos:
                parts.append(("text", source[pos : match.start()]))
            if match.group(1) is not None:
                parts.append(("ph", match.group(1)))
            else:
                parts.append(("env", match.group(2)))
            pos = match.end()
        if pos < len(source):
            parts.append(("text", source[pos:]))
        return cls(source, tuple(parts))

    def placeholders(self) -> set[str]:
        return {value for kind, value in self.parts if kind == "ph"}

    def env_names(self) -> set[str]:
        return {value for kind, value in self.parts if kind == "env"}

    def render(self, values: Mapping[str, str], escape: Escape, environ: Mapping[str, str]) -> str:
        out: list[str] = []
        for kind, value in self.parts:
            if kind == "text":
                out.append(value)
            elif kind == "ph":
                out.append(escape(values[value]))
            else:
                try:
                    out.append(environ[value])
                except KeyError:
                    raise ConfigError(f"environment variable {value} is not set") from None
        return "".join(out)


def _strings(obj: object) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield key
            yield from _strings(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _strings(item)


def parse_body(kind: BodyKind, body: str) -> list[str]:
    """Parse a rendered body as a receiver would and return every string it holds.

    Raises ValueError with the parser's reason when the body does not parse.
    """
    if kind is JSON_KIND:
        try:
            return list(_strings(json.loads(body)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if kind is XML_KIND:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        try:
            root = etree.fromstring(body.encode("utf-8"), parser=parser)
        except etree.XMLSyntaxError as exc:
            raise ValueError(f"not well-formed XML ({exc})") from None
        found: list[str] = [str(t) for t in root.itertext()]
        for element in root.iter():
            found.extend(str(v) for v in element.attrib.values())
        return found
    if kind is FORM_KIND:
        try:
            pairs = parse_qsl(body, keep_blank_values=True, strict_parsing=True)
        except ValueError as exc:
            raise ValueError(f"not a valid form body ({exc})") from None
        return [s for pair in pairs for s in pair]
    return [body]


def url_strings(url: str) -> list[str]:
    """Every decoded piece of a URL where a value can land: path segments and query pairs."""
    parts = urlsplit(url)
    pieces = [unquote(seg) for seg in parts.path.split("/")]
    pieces += [s for pair in parse_qsl(parts.query, keep_blank_values=True) for s in pair]
    pieces.append(unquote(parts.fragment))
    return pieces
