"""What an attempt becomes: the records the engine hands to the complete script.

A delivery's answer (or its lack of one) read as its target's rules say (`answered`, `unsent`),
then its attempt record and new state encoded (`finish`; `delivered_records` for the usual case,
a new delivery delivered at its first attempt, from format strings), and the event and state as
a claim hands them back decoded (`decode_event`, `is_new`). Pure but for the clock; the engine
(gateway/delivery/engine.py) decides, this module writes it down.
"""

from __future__ import annotations

import json
import json.scanner
import math
import time
from dataclasses import dataclass, replace
from json.encoder import encode_basestring as _json_string
from typing import Any, cast

from gateway import records
from gateway.config.targets import Target
from gateway.delivery.request import Response, classify
from gateway.delivery.sender import SendError
from gateway.events import InvitationEvent
from gateway.exceptions import PermanentDelivery, RetryableDelivery
from gateway.records import Attempt, Delivery, DeliveryStatus, Outcome, iso_ms
from gateway.store.queue import Completion

# One encoder for every record (json.dumps with options builds a new JSONEncoder per call).
dumps_record = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
loads = json.JSONDecoder().decode
# (value, end) from an index: the C scanner (typeshed types its argument oddly).
_scan = json.scanner.make_scanner(cast(Any, json.JSONDecoder()))
_PENDING = dumps_record(Delivery().to_dict())  # a new delivery's state, as stored at ingest
# ... or with its `updated_at` set (an alert's, DeliveryQueue.write_alert): the same state.
_PENDING_HEAD, _PENDING_TAIL = _PENDING.split('"updated_at":0')
_PENDING_HEAD += '"updated_at":'
NEW = Delivery()
# A new delivery delivered at its first attempt: the state and attempt record finish() would
# encode, as format strings (the usual case, worth not building and encoding two dicts).
_DELIVERED_STATE = (
    '{"status":"delivered","attempts":1,"retries":0,"throttles":0,"replays":0,'
    '"last_status_code":%d,"last_error":null,"updated_at":%d,"next_attempt_at":null,"waiting":null}'
)
_DELIVERED_ATTEMPT = (
    '{"target":%s,"attempt":1,"at_ms":%d,"outcome":"delivered","status_code":%d,'
    '"latency_ms":%s,"error":null,"response":%s,"at":"%s.%03dZ"}'
)
DELIVERED = Outcome.DELIVERED.value

_clock = time.time


def now_ms() -> int:
    return int(_clock() * 1000)


def due_after(seconds: float) -> int:
    """The first whole millisecond at least `seconds` from now.

    Rounded up, not down: a retry due at `now_ms() + 1000` could start 999.x ms after the answer
    that asked for "not before 1 s" (`now_ms()` drops the fraction of the current millisecond).
    """
    return math.ceil(time.time() * 1000 + seconds * 1000)


@dataclass(slots=True)
class Result:
    record: Completion  # for the complete script
    outcome: str | None = None
    target: str | None = None
    dead_reason: str | None = None
    line: str | None = None  # what the log says of it
    seconds: float | None = None  # the request's duration, for the metrics


# An attempt read: its record, its outcome, the Retry-After asked for, the status code.
Tried = tuple[Attempt, Outcome, float | None, int | None]


def unsent(target: Target, number: int, now: int, exc: SendError) -> Tried:
    """A request that got no answer: retried, or failed for good when the address is refused."""
    outcome = Outcome.FAILED if exc.blocked else Outcome.RETRYING
    attempt = Attempt(target.name, number, now, outcome, latency_ms=exc.latency_ms, error=exc.reason)
    return attempt, outcome, None, None


def answered(target: Target, number: int, now: int, response: Response) -> Tried:
    """An answer, read as the target's rules say (classify)."""
    status = response.status
    attempt = Attempt(
        target.name,
        number,
        now,
        Outcome.DELIVERED,
        status_code=status,
        latency_ms=response.latency_ms,
        response=response.body.decode("utf-8", "replace"),
    )
    if target.is_success(status):  # classify's first look, without the clock it needs for the rest
        return attempt, Outcome.DELIVERED, None, status
    try:
        classify(target, response, time.time())
    except RetryableDelivery as exc:
        return with_outcome(attempt, Outcome.RETRYING, exc.reason), Outcome.RETRYING, exc.retry_after, status
    except PermanentDelivery as exc:
        return with_outcome(attempt, Outcome.FAILED, exc.reason), Outcome.FAILED, None, status
    return attempt, Outcome.DELIVERED, None, status


def finish(
    record: Completion,
    state: Delivery,
    number: int,
    outcome: Outcome,
    status: DeliveryStatus,
    attempt: Attempt | None,
    due: int | None = None,
    **changes: Any,
) -> Result:
    """The records of a finished attempt (or of a decision not to make one), in `record`."""
    new = state.to_dict()  # a dict, not Delivery.but(): Delivery's fields and the changes
    new.update(changes)
    new["status"] = status
    new["updated_at"] = now_ms()
    new["next_attempt_at"] = due
    if attempt is not None:
        new["attempts"] = state.attempts + 1
        new["last_status_code"] = attempt.status_code
        new["last_error"] = attempt.error
        record.attempt = dumps_record(attempt.to_dict())
    record.state = dumps_record(new)
    record.due = due
    dead = status in (DeliveryStatus.FAILED, DeliveryStatus.EXPIRED)
    record.dead = dead
    name = record.target
    if outcome is Outcome.DELIVERED:
        # Logged a group per line (_complete).
        return Result(record, DELIVERED, name, seconds=request_seconds(attempt))
    error = attempt.error if attempt is not None else None
    return Result(
        record,
        outcome.value,
        name,
        (error or outcome.value) if dead and attempt is not None else None,
        f"delivery {record.delivery_id} attempt {number}: {outcome.value}" + (f" ({error})" if error else ""),
        request_seconds(attempt),
    )


def first_delivered(attempt: Attempt, updated_at: int) -> tuple[str, str] | None:
    """The attempt record and state of a new delivery delivered at its first attempt, encoded as
    finish() would encode them (None when a value is not of the usual type: finish() does it)."""
    if attempt.error is not None or attempt.note is not None or attempt.attempt != 1:
        return None
    return delivered_records(
        attempt.target, attempt.at_ms, attempt.status_code, attempt.latency_ms, attempt.response, updated_at
    )


def delivered_records(
    target: str, at_ms: int, status: Any, latency: Any, response: Any, updated_at: int
) -> tuple[str, str] | None:
    """first_delivered's records from the attempt's values (the first attempt, no error, no
    note); None when a value is not of the usual type."""
    if not (
        type(status) is int and type(latency) is float and math.isfinite(latency) and type(response) is str
    ):
        return None
    second, ms = divmod(at_ms, 1000)
    cached = records._second  # iso_ms' text of the current second, inline
    day_time = cached[1] if cached[0] == second else iso_ms(at_ms)[:-5]
    return (
        _DELIVERED_ATTEMPT
        % (_json_string(target), at_ms, status, repr(latency), _json_string(response), day_time, ms),
        _DELIVERED_STATE % (status, updated_at),
    )


def is_new(state_json: str) -> bool:
    """A delivery's state as ingest stores it: pending, never tried (`updated_at` aside)."""
    if not state_json or state_json == _PENDING:
        return True
    return (
        state_json.startswith(_PENDING_HEAD)
        and state_json.endswith(_PENDING_TAIL)
        and state_json[len(_PENDING_HEAD) : -len(_PENDING_TAIL)].isdigit()
    )


def decode_event(event_json: str) -> InvitationEvent:
    try:
        # The scanner straight: JSONDecoder.decode wraps it in two whitespace regexes and a frame
        # or two of Python; an event is stored without whitespace around it.
        data, end = _scan(event_json, 0)
    except (StopIteration, ValueError):
        end = -1
    if end != len(event_json):
        data = loads(event_json)  # its error, or whatever the scanner alone did not take
    try:
        return InvitationEvent(**data)  # as stored by to_dict: every key a field
    except TypeError:
        return InvitationEvent.from_dict(data)  # keys missing or unknown: from_dict copes


def with_outcome(attempt: Attempt, outcome: Outcome, error: str | None = None) -> Attempt:
    return replace(attempt, outcome=outcome, error=error if error is not None else attempt.error)


def attempts_text(n: int) -> str:
    return "1 attempt" if n == 1 else f"{n} attempts"


def request_seconds(attempt: Attempt | None) -> float | None:
    """An attempt's request duration in seconds, for the metrics (None: no request was made)."""
    return attempt.latency_ms / 1000 if attempt is not None and attempt.latency_ms is not None else None
