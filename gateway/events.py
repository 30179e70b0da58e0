"""The invitation event and the rules that turn decoded callback fields into one (pure)."""

from __future__ import annotations

import os
import re
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring as _enc
from typing import Any

from gateway.exceptions import InvalidCallback
from gateway.numbers import canonical
from gateway.records import iso_ms

INVITATION_CREATED = "invitation_created"
INVITATION_ACCEPTED = "invitation_accepted"
EVENT_TYPES = (INVITATION_CREATED, INVITATION_ACCEPTED)

FIELDS = ("invitee", "invitor", "network_id")
MAX_FIELD_LENGTH = 128

# What a decoder puts in place of a nested JSON value or XML element (never valid text).
NOT_TEXT = "\x00nested"

# The names on the wire are the provider's choice (they come from its templates in the Acrobits
# portal). The seed itself uses `net` (URL example), `network` (JSON template) and `network_id`.
DEFAULT_ALIASES: dict[str, tuple[str, ...]] = {
    "invitee": ("invitee",),
    "invitor": ("invitor", "inviter"),
    "network_id": ("network_id", "net", "network"),
}

_PHONE_SEPARATORS = re.compile(r"[\s.\-()]")
_PHONE = re.compile(r"\+?[0-9]{3,20}")


@dataclass(slots=True, init=False, unsafe_hash=True)
class InvitationEvent:
    """One accepted callback. `invitee` is normalized (separators dropped, a lost `+` restored);
    `invitee_raw` is what was sent; `invitee_e164` the number in E.164 (gateway/numbers.py), None
    when it has none (and in events stored before it existed).

    Treat it as immutable. It is not a frozen dataclass only because one is built per callback:
    a frozen dataclass' `__init__` sets each field through `object.__setattr__`, about ten times
    the cost of the plain `__init__` below.
    """

    id: str
    type: str
    invitee: str
    invitee_raw: str
    invitor: str
    network_id: str
    received_at: str
    received_at_ms: int
    source_format: str
    client: str | None
    message: str | None  # set on the gateway's own alerts
    invitee_e164: str | None
    # On an invitation_accepted: the id of the same invitation's invitation_created event, found
    # by the ingest script when a target orders the two (scripts/ingest.lua writes it last).
    created_id: str | None

    def __init__(
        self,
        id: str,
        type: str,
        invitee: str,
        invitee_raw: str,
        invitor: str,
        network_id: str,
        received_at: str,
        received_at_ms: int,
        source_format: str,
        client: str | None = None,
        message: str | None = None,
        invitee_e164: str | None = None,
        created_id: str | None = None,
    ) -> None:
        self.id = id
        self.type = type
        self.invitee = invitee
        self.invitee_raw = invitee_raw
        self.invitor = invitor
        self.network_id = network_id
        self.received_at = received_at
        self.received_at_ms = received_at_ms
        self.source_format = source_format
        self.client = client
        self.message = message
        self.invitee_e164 = invitee_e164
        self.created_id = created_id

    def to_json(self) -> str:
        """`to_dict()` as compact JSON (non-ASCII kept), written directly: once per callback.

        The same text as `json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)`
        (a test checks it), in a tenth of the time.
        """
        client, message, e164, created_id = self.client, self.message, self.invitee_e164, self.created_id
        # The invitee's three forms are the same text for the usual number: encoded once.
        invitee = self.invitee
        number = _enc(invitee)
        raw = number if self.invitee_raw == invitee else _enc(self.invitee_raw)
        text = (
            f'{{"id":{_enc(self.id)},"type":{_enc(self.type)},"invitee":{number},"invitee_raw":{raw},'
            f'"invitee_e164":{"null" if e164 is None else number if e164 == invitee else _enc(e164)},'
            f'"invitor":{_enc(self.invitor)},'
            f'"network_id":{_enc(self.network_id)},"received_at":{_enc(self.received_at)},'
            f'"received_at_ms":{int(self.received_at_ms)},"source_format":{_enc(self.source_format)},'
            f'"client":{"null" if client is None else _enc(client)}'
        )
        if message is not None:
            text += f',"message":{_enc(message)}'
        return text + ("}" if created_id is None else f',"created_id":{_enc(created_id)}}}')

    def to_dict(self) -> dict[str, Any]:
        # Spelt out rather than dataclasses.asdict, which deep-copies: this is on the hot path.
        data = {
            "id": self.id,
            "type": self.type,
            "invitee": self.invitee,
            "invitee_raw": self.invitee_raw,
            "invitee_e164": self.invitee_e164,
            "invitor": self.invitor,
            "network_id": self.network_id,
            "received_at": self.received_at,
            "received_at_ms": self.received_at_ms,
            "source_format": self.source_format,
            "client": self.client,
        }
        if self.message is not None:
            data["message"] = self.message
        if self.created_id is not None:
            data["created_id"] = self.created_id
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InvitationEvent:
        fields: dict[str, Any] = {name: data.get(name) for name in cls.__dataclass_fields__}
        return cls(**fields)

    def placeholders(self) -> dict[str, str]:
        """The values a target template can use, by placeholder name."""
        where = f"(network {self.network_id})"
        if self.message is not None:
            message = self.message
        elif self.type == INVITATION_ACCEPTED:
            message = f"{self.invitee} accepted the invitation from {self.invitor} {where}"
        else:
            message = f"{self.invitor} invited {self.invitee} {where}"
        return {
            "invitee": self.invitee,
            "invitee_raw": self.invitee_raw,
            "invitee_e164": self.invitee_e164 or "",
            "invitor": self.invitor,
            "network_id": self.network_id,
            "event": self.type,
            "event_id": self.id,
            "received_at": self.received_at,
            "message": message,  # one human sentence, for chat targets and alerts alike
        }


def build_aliases(extra: Mapping[str, Sequence[str]] | None = None) -> dict[str, str]:
    """Map every accepted wire name (lower case) to its field; `extra` adds to the defaults."""
    table: dict[str, str] = {}
    merged = {field: list(names) for field, names in DEFAULT_ALIASES.items()}
    for field, names in (extra or {}).items():
        merged[field].extend(names)
    for field, names in merged.items():
        for name in names:
            table[name.lower()] = field
    return table


DEFAULT_ALIAS_TABLE = build_aliases()


def pick_fields(raw: Sequence[tuple[str, str]], aliases: Mapping[str, str]) -> dict[str, str]:
    """Collect the three fields from decoded (name, value) pairs, by alias, case-insensitively.

    Two different values for one field (say `net=a&network_id=b`) are refused rather than
    guessed at; the same value sent twice is fine.
    """
    found: dict[str, str] = {}  # field -> value
    names: dict[str, str] = {}  # field -> the name it came by (for the conflict's message)
    for name, value in raw:
        field = aliases.get(name.lower())
        if field is None:
            continue
        if value == NOT_TEXT:
            raise InvalidCallback(f"{field} ({name!r}) must be a string or a number", field=field)
        if field in found and found[field].strip() != value.strip():
            other = names[field]
            raise InvalidCallback(f"conflicting values for {field} in {other!r} and {name!r}", field=field)
        found[field] = value
        names[field] = name
    return found


def merge_fields(
    query: Sequence[tuple[str, str]], body: Sequence[tuple[str, str]], aliases: Mapping[str, str]
) -> dict[str, str]:
    """Query parameters on a POST are merged with the body's fields, the body winning."""
    return {**pick_fields(query, aliases), **pick_fields(body, aliases)}


def _check_text(field: str, value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidCallback(f"{field} is empty", field=field)
    if len(value) > MAX_FIELD_LENGTH:
        raise InvalidCallback(f"{field} is longer than {MAX_FIELD_LENGTH} characters", field=field)
    if value.isascii() and value.isprintable():
        return value  # the common case: no control character, surrogate or noncharacter possible
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cc":
            raise InvalidCallback(f"{field} contains a control character ({ord(ch):#04x})", field=field)
        # A lone surrogate (JSON "\ud800") or a noncharacter is not text: no target body
        # (UTF-8, XML) could carry it.
        if category == "Cs" or _is_noncharacter(ch):
            raise InvalidCallback(f"{field} contains an invalid character (U+{ord(ch):04X})", field=field)
    return value


def _is_noncharacter(ch: str) -> bool:
    code = ord(ch)
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def normalize_invitee(value: str) -> tuple[str, str]:
    """Return (normalized, raw) for a phone number.

    A leading space before the digits is an unencoded `+` that some decoder on the way turned
    into a space (`invitee=+15551231234` read as `" 15551231234"`): restore it.
    """
    restored = value
    if value[:1] == " " and value.lstrip()[:1].isdigit():
        restored = "+" + value.lstrip()
    raw = _check_text("invitee", restored)
    number = raw[1:] if raw[:1] == "+" else raw
    if 3 <= len(number) <= 20 and number.isascii() and number.isdigit():
        return raw, raw  # the usual number, digits alone: what the two regexes below would say
    digits = _PHONE_SEPARATORS.sub("", raw)
    if not _PHONE.fullmatch(digits):
        raise InvalidCallback(
            "invitee must be a phone number: 3 to 20 digits with an optional leading +; "
            "spaces, dots, dashes and parentheses are allowed",
            field="invitee",
        )
    return digits, raw


def make_event(
    fields: Mapping[str, str],
    event_type: str,
    source_format: str,
    client: str | None = None,
    now: float | None = None,
    region_of: Callable[[str], str | None] | None = None,
) -> InvitationEvent:
    """Validate the picked fields and build the event with a new sortable id (ULID).

    `region_of(network_id)`: the network's default region, for the number's E.164 form.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"event_type must be one of {EVENT_TYPES}, got {event_type!r}")
    for field in FIELDS:
        if field not in fields:
            raise InvalidCallback(f"{field} is missing", field=field)
    # The usual fields inline (what normalize_invitee and _check_text answer for them: a number
    # of digits alone, printable ASCII text); anything else through them, in the same order.
    value = fields["invitee"]
    raw = value.strip()
    number = raw[1:] if raw[:1] == "+" else raw
    if value[:1] != " " and 3 <= len(number) <= 20 and number.isascii() and number.isdigit():
        invitee = invitee_raw = raw
    else:
        invitee, invitee_raw = normalize_invitee(value)
    invitor = fields["invitor"].strip()
    if not (0 < len(invitor) <= MAX_FIELD_LENGTH and invitor.isascii() and invitor.isprintable()):
        invitor = _check_text("invitor", fields["invitor"])
    network_id = fields["network_id"].strip()
    if not (0 < len(network_id) <= MAX_FIELD_LENGTH and network_id.isascii() and network_id.isprintable()):
        network_id = _check_text("network_id", fields["network_id"])
    ts = time.time() if now is None else now
    ms = int(ts * 1000)
    event_id = new_ulid(ms)
    region = region_of(network_id) if region_of is not None else None
    return InvitationEvent(
        id=event_id,
        type=event_type,
        invitee=invitee,
        invitee_raw=invitee_raw,
        invitor=invitor,
        network_id=network_id,
        received_at=iso_ms(ms),
        received_at_ms=ms,
        source_format=source_format,
        client=client,
        invitee_e164=canonical(invitee, region, network_id, event_id),
    )


ALERT_EVENT = "gateway_alert"


def make_alert(message: str, now: float | None = None) -> InvitationEvent:
    """An alert of the gateway's own (a target paused, ...), delivered to the alert target."""
    ts = time.time() if now is None else now
    return InvitationEvent(
        id=new_ulid(int(ts * 1000)),
        type=ALERT_EVENT,
        invitee="",
        invitee_raw="",
        invitor="gateway",
        network_id="gateway",
        received_at=datetime.fromtimestamp(ts, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        received_at_ms=int(ts * 1000),
        source_format="alert",
        message=message,
    )


# Two Crockford base32 characters for each 10-bit value.
_PAIRS = tuple(a + b for a in "0123456789ABCDEFGHJKMNPQRSTVWXYZ" for b in "0123456789ABCDEFGHJKMNPQRSTVWXYZ")
_time_part: tuple[int, str] = (-1, "")  # the last millisecond and its 10 characters
_random_pool = b""  # os.urandom read ahead, 10 bytes per ULID
_random_used = 0
_last_random = -1  # the random bits of the last id made, for the next one in the same millisecond
_RANDOM_LIMIT = 1 << 80


def _forget_random_pool() -> None:
    global _random_pool, _random_used, _time_part
    _random_pool, _random_used = b"", 0  # a forked child must not reuse its parent's bytes
    _time_part = (-1, "")  # nor continue its parent's sequence within a millisecond


os.register_at_fork(after_in_child=_forget_random_pool)


def new_ulid(ms: int) -> str:
    """A ULID: 48 bits of milliseconds and 80 random bits, as 26 Crockford base32 characters.

    What python-ulid's `ULID.from_timestamp` makes (a test checks it), several times faster:
    one is made per callback. The first 10 characters are the time (50 bits, the top 2 zero),
    made once per millisecond; the last 16 the random bits, from os.urandom read 4 KiB at a time.

    Monotonic within a process, as the ULID spec's monotonic generator: a second id in the same
    millisecond is the previous one's random bits plus one. Event indexes are sorted sets scored
    by the millisecond, whose ties sort by the id: the callbacks of one millisecond then list in
    the order they came, not at random.
    """
    global _time_part, _random_pool, _random_used, _last_random
    pairs = _PAIRS
    if _time_part[0] != ms:
        t = ms & 0xFFFFFFFFFFFF  # (spelt out, no comprehension: once per millisecond, a third of the time)
        _time_part = (
            ms,
            f"{pairs[t >> 40]}{pairs[(t >> 30) & 0x3FF]}{pairs[(t >> 20) & 0x3FF]}"
            f"{pairs[(t >> 10) & 0x3FF]}{pairs[t & 0x3FF]}",
        )
        r = -1
    else:
        r = _last_random + 1
    if not 0 <= r < _RANDOM_LIMIT:  # a new millisecond (or, once in 2**80, an overflow)
        used = _random_used
        if used >= len(_random_pool):
            _random_pool, used = os.urandom(4000), 0
        r = int.from_bytes(_random_pool[used : used + 10], "big")
        _random_used = used + 10
    _last_random = r
    # One f-string: one new string, not eight concatenations.
    return (
        f"{_time_part[1]}{pairs[r >> 70]}{pairs[(r >> 60) & 0x3FF]}{pairs[(r >> 50) & 0x3FF]}"
        f"{pairs[(r >> 40) & 0x3FF]}{pairs[(r >> 30) & 0x3FF]}{pairs[(r >> 20) & 0x3FF]}"
        f"{pairs[(r >> 10) & 0x3FF]}{pairs[r & 0x3FF]}"
    )
