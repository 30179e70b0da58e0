"""The log formatters: masking, a line per event, the fields of a JSON line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from gateway.logs import DeliveryBatch, EventBatch, JSONFormatter, TextFormatter, log_settings, mask_numbers

EID = "01M8B0HCY1K8QN66MEFJZ1JT1P"
EID2 = "01M8B0HCZ07XD9TSV2ZK63Z4D1"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("+447700901234", "+4477****1234"),
        ("invitee=%2B447700901234&x=1", "invitee=%2B4477****1234&x=1"),
        ('{"invitee": "15551231234"}', '{"invitee": "1555****1234"}'),
        ("<invitee>5551234</invitee>", "<invitee>55****34</invitee>"),
        # Not phone numbers: event ids, ISO times, epoch milliseconds, short counts.
        (f"accepted {EID}", f"accepted {EID}"),
        ("2026-11-26T04:02:02.123Z", "2026-11-26T04:02:02.123Z"),
        ("at 1764129722123 ms", "at 1764129722123 ms"),
        ("delivered 16 in 250 ms", "delivered 16 in 250 ms"),
        ("v1.2.3456789", "v1.2.3456789"),
    ],
)
def test_mask_numbers(text: str, masked: str) -> None:
    assert mask_numbers(text) == masked


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("gateway.ingest", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_event_network_and_target() -> None:
    batch = EventBatch("accepted", [(EID, "mynetwork", ["crm", "sms"]), (EID2, "other", ["crm"])])
    out = JSONFormatter(mask=True).format(record("accepted %d: %s", 2, batch))
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["event_id"], x["network"], x["targets"]) for x in lines] == [
        (EID, "mynetwork", ["crm", "sms"]),
        (EID2, "other", ["crm"]),
    ]
    assert lines[0]["message"] == f"accepted {EID} (network mynetwork: crm,sms)"
    assert lines[0]["level"] == "WARNING" and lines[0]["logger"] == "gateway.ingest"
    assert lines[0]["time"].endswith("Z")

    out = JSONFormatter(mask=True).format(
        record("delivered %d: %s", 2, DeliveryBatch("delivered", [f"{EID}-crm"]))
    )
    line = json.loads(out)
    assert (line["event_id"], line["target"], line["delivery_id"]) == (EID, "crm", f"{EID}-crm")

    line = json.loads(
        JSONFormatter(mask=True).format(record(f"delivery {EID}-sms-eu attempt 2: retrying (HTTP 503)"))
    )
    assert (line["event_id"], line["target"]) == (EID, "sms-eu")
    line = json.loads(
        JSONFormatter(mask=True).format(
            record("suppressed %s %s (network %s): %s", "x", EID, "mynet", "limit")
        )
    )
    assert (line["event_id"], line["network"]) == (EID, "mynet")
    line = json.loads(JSONFormatter(mask=True).format(record("x", event_id=EID, network="n", target="t")))
    assert (line["event_id"], line["network"], line["target"]) == (EID, "n", "t")


def test_text_lines_a_line_per_event_and_masking() -> None:
    batch = EventBatch("accepted", [(EID, "mynetwork", ["crm"]), (EID2, "other", ["crm"])])
    out = TextFormatter(mask=True).format(record("accepted %d: %s", 2, batch)).splitlines()
    assert len(out) == 2
    assert out[0].endswith(f"WARNING gateway.ingest: accepted {EID} (network mynetwork: crm)")
    rejected = record("rejected %s: body=%r", "invitation_created", b"invitee=%2B447700901234")
    assert "%2B4477****1234" in TextFormatter(mask=True).format(rejected)
    assert "%2B447700901234" in TextFormatter(mask=False).format(rejected)
    # The line an invitation that could not be stored is logged on stays whole: it is its only copy.
    kept = record("NOT STORED: %s", '{"invitee": "+447700901234"}', unmasked=True)
    assert "+447700901234" in TextFormatter(mask=True).format(kept)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("GET /invitation_created/s3cr3t?invitee=1", "GET /invitation_created/****?invitee=1"),
        ("GET /invitation_accepted/s3cr3t/ HTTP/1.1", "GET /invitation_accepted/****/ HTTP/1.1"),
        ("url /x?token=abc&b=1", "url /x?token=****&b=1"),
        ("authorization: Bearer abc.def", "authorization: Bearer ****"),
        # A line not masked field by field first (gateway/masking.py does the gateway's bodies).
        ('body={"token": "gwsecabc", "x": 1}', 'body={"token": "****", "x": 1}'),
    ],
)
def test_tokens_are_always_masked(text: str, masked: str) -> None:
    for mask in (True, False):
        assert TextFormatter(mask=mask).format(record("%s", text)).endswith(masked)


def test_log_settings() -> None:
    assert log_settings({}) == ("INFO", "text", True)
    assert log_settings({"GATEWAY_LOG_FORMAT": "JSON", "GATEWAY_LOG_MASK": "off"}) == ("INFO", "json", False)
    with pytest.raises(ValueError, match="GATEWAY_LOG_MASK"):
        log_settings({"GATEWAY_LOG_MASK": "maybe"})


@pytest.fixture
def info_root() -> Iterator[None]:
    """The root logger at INFO (OutageLines keeps tracebacks at DEBUG), as it was afterwards."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.setLevel(level)


def _rq_style_record(last_line: str) -> logging.LogRecord:
    """As RQ's handle_exception logs a failed job: the traceback inside the message."""
    trace = (
        "Traceback (most recent call last):\n"
        '  File "rq/worker/base.py", line 1674, in perform_job\n'
        "    self._finalize_success(job, queue, execution, return_value)\n"
        f"{last_line}\n"
    )
    return logging.LogRecord(
        "rq.worker",
        logging.ERROR,
        __file__,
        1,
        "Worker %s: job %s: exception raised while executing (%s)\n%s",
        ("w1", "j1", "gateway.jobs.drain", trace),
        None,
    )


@pytest.mark.parametrize(
    "last_line",
    [
        "redis.exceptions.ConnectionError: Error while reading from 127.0.0.1:6379 : (104, 'reset')",
        "ConnectionResetError: [Errno 104] Connection reset by peer",
    ],
)
@pytest.mark.usefixtures("info_root")
def test_an_outage_traceback_inside_a_message_becomes_one_line(last_line: str) -> None:
    from gateway.logs import OutageLines

    record = _rq_style_record(last_line)
    assert OutageLines().filter(record)
    text = TextFormatter(mask=False).format(record)
    assert "Traceback" not in text and "\n" not in text
    assert "job j1: exception raised while executing (gateway.jobs.drain)" in text
    assert last_line in text


@pytest.mark.usefixtures("info_root")
def test_a_bug_keeps_its_traceback_inside_a_message() -> None:
    from gateway.logs import OutageLines

    record = _rq_style_record("ValueError: not an outage")
    assert OutageLines().filter(record)
    text = TextFormatter(mask=False).format(record)
    assert "Traceback (most recent call last):" in text and "ValueError: not an outage" in text


def test_short_ids_are_never_masked_as_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """An erasure, key or token id in a log line reads as it was made: an all-digit draw (one in
    280) is drawn again rather than shown as `5812****6440`."""
    from gateway import logs

    draws = iter(["581296196440", "5812961964a0"])
    monkeypatch.setattr(logs.secrets, "token_hex", lambda n: next(draws))
    assert logs.short_id() == "5812961964a0"
    assert logs.mask_numbers("erasure 581296196440 of number") != "erasure 581296196440 of number"
    monkeypatch.undo()
    for _ in range(2000):
        made = logs.short_id()
        assert len(made) == 12 and int(made, 16) >= 0
        assert logs.mask_numbers(f"erasure {made} of number") == f"erasure {made} of number"
