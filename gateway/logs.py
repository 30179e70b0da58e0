"""Logging setup: one line per event, as text or JSON, with phone numbers masked.

Settings (environment, or `gateway --log-level/--log-format`):
  GATEWAY_LOG_LEVEL   INFO (default), DEBUG, WARNING, ...
  GATEWAY_LOG_FORMAT  text (default) or json: one JSON object per line
  GATEWAY_LOG_MASK    true (default): invitee and other phone numbers as +4477****1234

The hot paths log a batch per record (`accepted 34: ...`, `delivered 16: ...`): a LogRecord per
callback would cost as much CPU as the callback. The batch travels as an `EventBatch` or a
`DeliveryBatch` argument, and the formatter writes one line per event from it, with its event id,
network and targets as JSON fields in JSON mode. Other lines carry the event id, network and
target either as `extra=` fields or as found in the message (a ULID, `delivery ULID-target`,
`network NAME`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError

DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# A run of 7 to 15 digits (E.164 allows 15), alone or after `+` or `%2B`, not inside a word.
_NUMBER = re.compile(r"(?<![\w+%.:-])(\+|%2[Bb])?(\d{7,15})(?![\w])")
_ULID = r"[0-9A-HJKMNP-TV-Z]{26}"
_DELIVERY = re.compile(rf"\b(?:delivery|dead letter) ({_ULID})-([A-Za-z0-9_.-]+)")
_EVENT = re.compile(rf"\b({_ULID})\b")
_NETWORK = re.compile(r"\bnetwork '?([^\s,;:)'\"]+)")
_TARGET = re.compile(r"\btarget '?([A-Za-z0-9_.-]+)")


def mask_number(digits: str) -> str:
    """+447700901234 -> +4477****1234: enough to tell numbers apart, not to call one."""
    if len(digits) >= 10:
        return digits[:4] + "****" + digits[-4:]
    return digits[:2] + "****" + digits[-2:]


def _mask_match(m: re.Match[str]) -> str:
    sign, digits = m.group(1) or "", m.group(2)
    if not sign and len(digits) == 13 and digits[0] == "1":
        return m.group(0)  # milliseconds since 1970, not a phone number
    return sign + mask_number(digits)


def mask_numbers(text: str) -> str:
    return _NUMBER.sub(_mask_match, text)


def short_id() -> str:
    """12 random hex digits that the masking above never takes for a phone number: not all
    decimal digits (one in 280 would be, and an operator's log would show an erasure, a key or a
    token as `5812****6440`, matching nothing they can look up)."""
    while True:
        made = secrets.token_hex(6)
        if not made.isdigit():
            return made


# Ingest tokens, wherever a URL, a header or a JSON body might be logged (by this code or a
# library's). Bodies the gateway logs are masked field by field first (gateway/masking.py).
_TOKEN = re.compile(
    r"(?i)(\btoken=|\bbearer\s+|/invitation_(?:created|accepted)/|\"token\"\s*:\s*\")([^/?&#\s'\"]+)"
)


def mask_tokens(text: str) -> str:
    return _TOKEN.sub(lambda m: m.group(1) + "****", text)


class EventBatch:
    """Accepted events (event id, network, targets): a line each when formatted."""

    __slots__ = ("items", "verb")

    def __init__(self, verb: str, items: Sequence[tuple[str, str, Sequence[str]]]) -> None:
        self.verb = verb
        self.items = items

    def __str__(self) -> str:  # a plain %s in a handler that is not ours
        return " ".join(f"{eid} ({net}: {','.join(ts)})" for eid, net, ts in self.items)

    def texts(self) -> list[str]:
        """The lines' messages alone (the text format's: no fields to build)."""
        return [f"{self.verb} {eid} (network {net}: {','.join(ts)})" for eid, net, ts in self.items]

    def lines(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (
                f"{self.verb} {eid} (network {net}: {','.join(ts)})",
                {"event_id": eid, "network": net, "targets": list(ts)},
            )
            for eid, net, ts in self.items
        ]


class DeliveryBatch:
    """Delivery ids (EVENTID-TARGET) that share an outcome: a line each when formatted."""

    __slots__ = ("ids", "verb")

    def __init__(self, verb: str, ids: Sequence[str]) -> None:
        self.verb = verb
        self.ids = ids

    def __str__(self) -> str:
        return " ".join(self.ids)

    def texts(self) -> list[str]:
        """The lines' messages alone (the text format's: no fields to build)."""
        verb = self.verb
        return [f"{verb} {did}" for did in self.ids]

    def lines(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for did in self.ids:
            eid, _, target = did.partition("-")
            out.append((f"{self.verb} {did}", {"event_id": eid, "target": target, "delivery_id": did}))
        return out


def _batch(record: logging.LogRecord) -> EventBatch | DeliveryBatch | None:
    args = record.args
    if isinstance(args, tuple):
        for arg in args:
            if isinstance(arg, EventBatch | DeliveryBatch):
                return arg
    return None


def _context(record: logging.LogRecord, message: str) -> dict[str, Any]:
    """event_id, network, target: from `extra=`, else from the message."""
    found: dict[str, Any] = {}
    for name in ("event_id", "network", "target", "delivery_id"):
        value = record.__dict__.get(name)
        if value is not None:
            found[name] = value
    if "event_id" not in found:
        m = _DELIVERY.search(message)
        if m is not None:
            found["event_id"], found["target"] = m.group(1), m.group(2)
            found["delivery_id"] = f"{m.group(1)}-{m.group(2)}"
        else:
            m = _EVENT.search(message)
            if m is not None:
                found["event_id"] = m.group(1)
    if "network" not in found:
        m = _NETWORK.search(message)
        if m is not None:
            found["network"] = m.group(1)
    if "target" not in found:
        m = _TARGET.search(message)
        if m is not None:
            found["target"] = m.group(1)
    return found


class _Base(logging.Formatter):
    def __init__(self, mask: bool) -> None:
        super().__init__(TEXT_FORMAT, DATE_FORMAT)
        self.mask = mask

    def _message(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        lowered = message.lower()
        if "token" in lowered or "bearer" in lowered or "/invitation_" in lowered:
            message = mask_tokens(message)  # always: a secret, not personal data
        if self.mask and not record.__dict__.get("unmasked") and any(c.isdigit() for c in message):
            message = mask_numbers(message)
        return message

    _second: tuple[int, str] = (-1, "")  # the last second formatted, and its text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if self._second[0] != second:  # once per second, not per line
            stamp = datetime.fromtimestamp(second, UTC).strftime(DATE_FORMAT)
            self._second = (second, stamp)
        return f"{self._second[1]}.{int(record.msecs):03d}Z"


class TextFormatter(_Base):
    """`2026-11-26T04:02:02.123Z INFO gateway.ingest: accepted 01J... (network n: crm)`."""

    def format(self, record: logging.LogRecord) -> str:
        head = f"{self.formatTime(record)} {record.levelname} {record.name}: "
        batch = _batch(record)
        if batch is not None:
            text = "\n".join([head + line for line in batch.texts()])
        else:
            text = head + self._message(record)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JSONFormatter(_Base):
    """One JSON object per line: time, level, logger, message, and event_id/network/target."""

    def format(self, record: logging.LogRecord) -> str:
        base = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        batch = _batch(record)
        if batch is not None:
            return "\n".join(
                json.dumps({**base, "message": line, **fields}, ensure_ascii=False)
                for line, fields in batch.lines()
            )
        message = self._message(record)
        out: dict[str, Any] = {**base, "message": message, **_context(record, message)}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that a second setup replaces it instead of adding another."""


def setup_logging(level: str = "INFO", fmt: str = "text", mask: bool = True) -> None:
    """Install one stderr handler on the root logger with the chosen format."""
    if fmt not in ("text", "json"):
        raise ValueError(f"GATEWAY_LOG_FORMAT must be text or json, got {fmt!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Handler):
            root.removeHandler(handler)
    handler = _Handler(sys.stderr)
    handler.setFormatter(JSONFormatter(mask) if fmt == "json" else TextFormatter(mask))
    root.addHandler(handler)
    root.setLevel(level.upper())
    install_outage_filter()


def log_settings(environ: Mapping[str, str] | None = None) -> tuple[str, str, bool]:
    """(level, format, mask) from GATEWAY_LOG_LEVEL, GATEWAY_LOG_FORMAT, GATEWAY_LOG_MASK."""
    env = os.environ if environ is None else environ
    level = env.get("GATEWAY_LOG_LEVEL") or "INFO"
    fmt = (env.get("GATEWAY_LOG_FORMAT") or "text").strip().lower()
    raw = (env.get("GATEWAY_LOG_MASK") or "true").strip().lower()
    if raw not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(f"GATEWAY_LOG_MASK must be true or false, got {raw!r}")
    return level, fmt, raw in ("1", "true", "yes", "on")


def ensure_logging(environ: Mapping[str, str] | None = None) -> None:
    """Set up from the environment unless done already (uvicorn's worker processes start bare)."""
    if not any(isinstance(h, _Handler) for h in logging.getLogger().handlers):
        setup_logging(*log_settings(environ))


class OutageLines(logging.Filter):
    """A record whose exception is Redis (or the network) being away becomes one line.

    RQ, asyncio and uvicorn log such failures with a traceback; during an outage that is a
    screen of tracebacks per second. RQ also writes a failed job's traceback into the message
    itself: when its last line names such an error, the message becomes its first line and
    that one. The traceback stays when the level is DEBUG; other exceptions (bugs) keep theirs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _is_outage(exc):
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        elif exc is None and record.levelno >= logging.WARNING:
            # RQ writes a failed job's traceback into the message itself (handle_exception).
            message = record.getMessage()
            if _TRACEBACK in message:
                last = message.rstrip().rsplit("\n", 1)[-1].strip()
                if last.startswith(_OUTAGE_LINES):
                    first = message.split("\n", 1)[0]
                    record.msg = f"{first} ({last})"
                    record.args = None
        return True


_TRACEBACK = "Traceback (most recent call last):"
# How a traceback's last line names Redis or the network being away.
_OUTAGE_LINES = (
    "redis.exceptions.ConnectionError",
    "redis.exceptions.TimeoutError",
    "redis.exceptions.BusyLoadingError",
    "ConnectionError",
    "ConnectionResetError",
    "ConnectionRefusedError",
    "ConnectionAbortedError",
    "BrokenPipeError",
    "TimeoutError",
)


def _is_outage(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, RedisError | ConnectionError | TimeoutError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def install_outage_filter() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, OutageLines) for f in handler.filters):
            handler.addFilter(OutageLines())
