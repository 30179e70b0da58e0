"""Decoders for every body shape the Acrobits Contacts server can send (pure functions).

Each decoder turns bytes into (name, value) pairs; picking the three fields out of them is
`gateway.events`' job. The Content-Type header is a hint, not a fact: Acrobits labels a body
`application/x-www-form-urlencoded` whenever the provider left the content type empty, even if
the post-data template is JSON or XML, so a body that does not match its label is recognised
from its first non-blank byte.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_to_bytes

from lxml import etree
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.events import NOT_TEXT
from gateway.exceptions import InvalidCallback, UnsupportedBody

Pairs = list[tuple[str, str]]

FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
JSON_TYPES = frozenset({"application/json", "text/json"})
# Bodies no Contacts server sends and no decoder here reads: refused with 415, not guessed at.
BINARY_TYPES = frozenset({"application/octet-stream", "application/gzip", "application/zip"})
BINARY_FAMILIES = ("image/", "audio/", "video/", "font/")
GZIP_MAGIC = b"\x1f\x8b"
XML_TYPES = frozenset({"application/xml", "text/xml"})


@dataclass(slots=True)
class DecodedBody:
    """Treat it as immutable: not frozen only because one is made per POST (a frozen dataclass'
    `__init__` sets each field through `object.__setattr__`)."""

    pairs: Pairs
    source_format: str


def parse_content_type(header: str | None) -> tuple[str, dict[str, str]]:
    """Split a Content-Type header into a lower-case media type and its parameters."""
    if not header:
        return "", {}
    media, params = _content_type(header)
    return media, dict(params)


@lru_cache(maxsize=256)
def _content_type(header: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    # A provider's callbacks all carry the same header: parse it once.
    media, options = parse_options_header(header)
    params = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in options.items())
    return media.decode("latin-1").strip().lower(), params


@lru_cache(maxsize=256)
def _media(header: str) -> tuple[str, str | None]:
    """(media type, charset parameter or None) of a Content-Type header (`parse_content_type`'s,
    without a dictionary per callback)."""
    media, params = _content_type(header)
    return media, dict(params).get("charset")


@lru_cache(maxsize=64)
def _codec(charset: str | None) -> str:
    name = (charset or "utf-8").strip().strip('"') or "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise UnsupportedBody(f"unknown charset {name!r}", field="Content-Type") from None


def _text(data: bytes, charset: str | None, what: str) -> str:
    codec = _codec(charset)
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        raise InvalidCallback(f"{what} is not valid {codec}", field=what) from None


def decode_urlencoded(data: bytes, charset: str | None = None, what: str = "body") -> Pairs:
    """Decode `a=1&b=2` keeping a literal `+` as `+`.

    Acrobits does not document how it escapes substituted values, and in practice it sends them
    raw, so `invitee=+15551231234` must stay `+15551231234` (a standard decoder turns it into a
    space). No invitation field legitimately holds a space, and `%20` still decodes to one.
    """
    pairs: Pairs = []
    for chunk in data.split(b"&"):
        if not chunk.strip():
            continue
        name, _, value = chunk.partition(b"=")
        pairs.append(
            (
                _text(unquote_to_bytes(name.strip()), charset, what),
                _text(unquote_to_bytes(value), charset, what),
            )
        )
    return pairs


class _JSONObject(list[tuple[str, object]]):
    """A JSON object kept as its (name, value) pairs, duplicates included."""


# What a top-level JSON value that is not an object is (numbers are str: parse_int=str).
_JSON_KINDS = {list: "an array", str: "a string or a number", bool: "true or false", type(None): "null"}
# Built once: json.loads with any option builds a new decoder per call.
_JSON = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=str, object_pairs_hook=_JSONObject)
_SCAN: Callable[[str, int], tuple[object, int]] = _JSON.scan_once  # type: ignore[attr-defined]
_BLANK = re.compile(r"[ \t\n\r]*").match  # json.decoder.WHITESPACE (always a match)
_BOM = codecs.BOM_UTF8


def _json_decode(text: str) -> object:
    """`_JSON.decode(text)`, the same result and errors, without its two Python frames (decode,
    raw_decode) around the C scanner: once per JSON callback."""
    # (No blanks to skip before a `{` at the start, nor after a value that ends the text.)
    start = 0 if text[:1] == "{" else _BLANK(text, 0).end()  # type: ignore[union-attr]
    try:
        obj, end = _SCAN(text, start)
    except StopIteration as err:
        raise json.JSONDecodeError("Expecting value", text, err.value) from None
    if end != len(text):
        end = _BLANK(text, end).end()  # type: ignore[union-attr]
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    return obj


def decode_json(data: bytes, charset: str | None = None) -> Pairs:
    """A flat JSON object; numbers keep their decimal text (15551231234 stays "15551231234").

    The object is read as pairs, so a name given twice with two values is refused by
    pick_fields instead of the last one silently winning.
    """
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    if charset is None:  # _text(data, None, "body") inline: the usual body
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidCallback("body is not valid utf-8", field="body") from None
    else:
        text = _text(data, charset, "body")
    try:
        obj = _json_decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidCallback(
            f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", field="body"
        ) from None
    except RecursionError:
        raise InvalidCallback("JSON body is nested too deeply", field="body") from None
    if not isinstance(obj, _JSONObject):
        kind = _JSON_KINDS.get(type(obj), type(obj).__name__)
        raise InvalidCallback(f"body must be a JSON object, got {kind}", field="body")
    # parse_int/parse_float made every number a str already; anything else is kept as a
    # marker so that a known field holding it gets a precise error from pick_fields.
    return [(name, value if isinstance(value, str) else NOT_TEXT) for name, value in obj]


def _xml_parser() -> etree.XMLParser:
    # A parser per call: lxml parsers are not thread-safe, and ingest runs in a thread pool.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        attribute_defaults=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def decode_xml(data: bytes, charset: str | None = None) -> Pairs:
    """Any root element; the fields are its child elements, by local name (namespaces ignored)."""
    body = data.lstrip()
    if body.startswith(codecs.BOM_UTF8):
        body = body[len(codecs.BOM_UTF8) :].lstrip()
    if b"<!DOCTYPE" in body.upper()[:4096] or b"<!ENTITY" in body.upper():
        raise InvalidCallback("XML body must not contain a DOCTYPE or entity declarations", field="body")
    if charset and not body.startswith(b"<?xml"):
        # No declaration: the charset parameter is the only word on the encoding.
        body = _text(body, charset, "body").encode("utf-8")
    try:
        root = etree.fromstring(body, parser=_xml_parser())
    except etree.XMLSyntaxError as exc:
        raise InvalidCallback(f"body is not well-formed XML: {exc}", field="body") from None
    if root.getroottree().docinfo.doctype:  # type: ignore[union-attr]
        raise InvalidCallback("XML body must not contain a DOCTYPE or entity declarations", field="body")
    pairs: Pairs = []
    for child in root:
        if not isinstance(child.tag, str):
            continue  # comments, processing instructions, entity references
        name = etree.QName(child).localname
        if len(child):
            pairs.append((name, NOT_TEXT))
        else:
            pairs.append((name, child.text or ""))
    return pairs


def decode_multipart(data: bytes, params: dict[str, str]) -> Pairs:
    boundary = params.get("boundary")
    if not boundary:
        raise InvalidCallback("multipart/form-data body has no boundary parameter", field="Content-Type")
    pairs: Pairs = []
    state: dict[str, object] = {}
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        state.clear()
        state["data"] = bytearray()
        state["headers"] = {}

    def on_header_field(buf: bytes, start: int, end: int) -> None:
        header_field.extend(buf[start:end])

    def on_header_value(buf: bytes, start: int, end: int) -> None:
        header_value.extend(buf[start:end])

    def on_header_end() -> None:
        headers = state["headers"]
        assert isinstance(headers, dict)
        headers[bytes(header_field).decode("latin-1").lower()] = bytes(header_value).decode("latin-1")
        header_field.clear()
        header_value.clear()

    def on_part_data(buf: bytes, start: int, end: int) -> None:
        chunk = state["data"]
        assert isinstance(chunk, bytearray)
        chunk.extend(buf[start:end])

    def on_part_end() -> None:
        headers = state["headers"]
        assert isinstance(headers, dict)
        _, disposition = parse_options_header(headers.get("content-disposition", ""))
        name = disposition.get(b"name")
        if name is None:
            return
        _, part_params = parse_content_type(headers.get("content-type"))
        value = bytes(state["data"])  # type: ignore[call-overload]
        pairs.append((name.decode("utf-8", "replace"), _text(value, part_params.get("charset"), "body")))

    callbacks: dict[str, Callable[..., None]] = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(data)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidCallback(f"body is not valid multipart/form-data: {exc}", field="body") from None
    return pairs


def sniff(data: bytes) -> str | None:
    """Recognise a body by its first non-blank byte: `{` JSON, `<` XML, else None."""
    head = data[:4096].lstrip()
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :].lstrip()
    if head.startswith((b"{", b"[")):
        return "json"
    if head.startswith(b"<"):
        return "xml"
    return None


def _is_text(data: bytes) -> bool:
    """UTF-8 text without control characters other than tab and line breaks."""
    if data.translate(None, _TEXT_BYTES):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# Bytes text may hold: tab, CR, LF, printable ASCII and everything from 0x80 (UTF-8 checked apart).
_TEXT_BYTES = bytes([9, 10, 13, *range(32, 127), *range(128, 256)])


def _looks_like_form(data: bytes) -> bool:
    return b"=" in data and all(32 <= b < 127 or b in (9, 10, 13) for b in data[:4096])


def decode_body(content_type: str | None, data: bytes) -> DecodedBody:
    """Decode a POST body whatever its label says; an empty body yields no pairs."""
    first = data[:1]  # b"{": the usual JSON body, not blank, and sniffed as JSON below
    if first != b"{" and not data.strip():
        return DecodedBody([], "query")
    media, charset = _media(content_type) if content_type else ("", None)
    if data.startswith(GZIP_MAGIC):
        raise UnsupportedBody(
            "body is gzip-compressed: Content-Encoding is not supported, send the body uncompressed",
            field="Content-Encoding",
        )
    if (media in BINARY_TYPES or media.startswith(BINARY_FAMILIES)) and not _is_text(data):
        # (A form, JSON or XML body under a binary label is read: the label is a hint.)
        raise UnsupportedBody(
            f"cannot read a binary {media} body: send application/x-www-form-urlencoded, "
            "multipart/form-data, application/json or application/xml",
            field="Content-Type",
        )
    sniffed = "json" if first == b"{" else sniff(data)
    if media == MULTIPART and sniffed is None:
        return DecodedBody(decode_multipart(data, parse_content_type(content_type)[1]), "multipart")
    if sniffed == "json":
        return DecodedBody(decode_json(data, charset), "json")
    if sniffed == "xml":
        return DecodedBody(decode_xml(data, charset), "xml")
    known = media in JSON_TYPES or media in XML_TYPES or media in (FORM, MULTIPART, "")
    if known or media.endswith(("+json", "+xml")) or _looks_like_form(data):
        return DecodedBody(decode_urlencoded(data, charset), "form")
    raise UnsupportedBody(
        f"cannot read a {media or 'body'} body: send application/x-www-form-urlencoded, "
        "multipart/form-data, application/json or application/xml",
        field="Content-Type",
    )


_BYTES_BLANK = " \t\n\r\x0b\x0c"  # what bytes.strip() strips


def decode_query(query: bytes) -> Pairs:
    """The query string, decoded like a form body (a literal `+` stays `+`)."""
    if not query:
        return []
    if query.isascii():
        # The usual callback: ASCII, valid UTF-8 as it is, so decoded once and split as text (the
        # blanks bytes.strip strips, not str.strip's \x1c-\x1f); only a part with a `%` is
        # unquoted (the `+` of an E.164 invitee, `%2B...`, as a slice).
        pairs: Pairs = []
        for chunk in query.decode("ascii").split("&"):
            if chunk.strip(_BYTES_BLANK):
                name, _, value = chunk.partition("=")
                name = name.strip(_BYTES_BLANK)
                if "%" in name:
                    name = _unquote_query(name)
                if "%" in value:
                    if value[:3] == "%2B" and "%" not in value[3:]:
                        value = "+" + value[3:]
                    else:
                        value = _unquote_query(value)
                pairs.append((name, value))
        return pairs
    return decode_urlencoded(query, "utf-8", what="query string")


def _unquote_query(part: str) -> str:
    """An ASCII part of a query string with a `%`, as decode_urlencoded decodes it."""
    try:
        return unquote_to_bytes(part).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidCallback("query string is not valid utf-8", field="query string") from None
