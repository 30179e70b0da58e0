"""Turning decoded callback fields into an invitation event (gateway/events.py)."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from ulid import ULID

from gateway.events import (
    _PHONE,
    _PHONE_SEPARATORS,
    DEFAULT_ALIAS_TABLE,
    EVENT_TYPES,
    INVITATION_ACCEPTED,
    INVITATION_CREATED,
    MAX_FIELD_LENGTH,
    NOT_TEXT,
    InvitationEvent,
    _check_text,
    build_aliases,
    make_event,
    merge_fields,
    normalize_invitee,
    pick_fields,
)
from gateway.exceptions import InvalidCallback

SEED = {"invitee": "15551231234", "invitor": "johnsnow", "network_id": "mynetwork"}
NOW = 1_700_000_000.123


def _event(**fields: str) -> InvitationEvent:
    return make_event({**SEED, **fields}, INVITATION_CREATED, "query", now=NOW)


# -- picking fields by alias --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (list(SEED.items()), SEED),
        (
            [("invitee", "1"), ("invitor", "j"), ("net", "n")],
            {"invitee": "1", "invitor": "j", "network_id": "n"},
        ),
        ([("network", "n")], {"network_id": "n"}),
        ([("inviter", "j")], {"invitor": "j"}),
        (
            [("INVITEE", "1"), ("Invitor", "j"), ("NeT", "n")],
            {"invitee": "1", "invitor": "j", "network_id": "n"},
        ),
        ([("Network_ID", "n")], {"network_id": "n"}),
        ([("other", "x"), ("invitee", "1"), ("invitees", "2"), ("", "3")], {"invitee": "1"}),
        ([], {}),
        # The same value under two names (or twice) is not a conflict, even padded.
        ([("net", "n"), ("network_id", "n")], {"network_id": "n"}),
        ([("invitee", "1"), ("invitee", " 1 ")], {"invitee": " 1 "}),
        # A nested value under an unknown name is ignored.
        ([("extra", NOT_TEXT), ("invitee", "1")], {"invitee": "1"}),
    ],
)
def test_pick_fields(pairs: list[tuple[str, str]], expected: dict[str, str]) -> None:
    assert pick_fields(pairs, DEFAULT_ALIAS_TABLE) == expected


@pytest.mark.parametrize(
    ("pairs", "field"),
    [
        ([("net", "a"), ("network_id", "b")], "network_id"),
        ([("network", "a"), ("NET", "b")], "network_id"),
        ([("invitor", "a"), ("inviter", "b")], "invitor"),
        ([("invitee", "1"), ("invitee", "2")], "invitee"),
        ([("Invitee", "+1555"), ("invitee", "1555")], "invitee"),
    ],
)
def test_pick_fields_conflict_names_the_field(pairs: list[tuple[str, str]], field: str) -> None:
    with pytest.raises(InvalidCallback) as info:
        pick_fields(pairs, DEFAULT_ALIAS_TABLE)
    assert info.value.field == field
    assert "conflicting" in info.value.detail
    assert all(repr(name) in info.value.detail for name, _ in pairs)


@pytest.mark.parametrize(
    ("name", "field"), [("invitee", "invitee"), ("network", "network_id"), ("inviter", "invitor")]
)
def test_pick_fields_nested_value_names_the_field(name: str, field: str) -> None:
    with pytest.raises(InvalidCallback) as info:
        pick_fields([(name, NOT_TEXT)], DEFAULT_ALIAS_TABLE)
    assert info.value.field == field
    assert repr(name) in info.value.detail


def test_merge_fields_body_wins_over_query() -> None:
    query = [("invitee", "111"), ("invitor", "q"), ("net", "from-query")]
    body = [("invitee", "222"), ("network", "from-body")]
    assert merge_fields(query, body, DEFAULT_ALIAS_TABLE) == {
        "invitee": "222",
        "invitor": "q",
        "network_id": "from-body",
    }


def test_merge_fields_query_only_and_body_only() -> None:
    assert merge_fields([("net", "n")], [("invitee", "1")], DEFAULT_ALIAS_TABLE) == {
        "network_id": "n",
        "invitee": "1",
    }
    assert merge_fields([], [], DEFAULT_ALIAS_TABLE) == {}


def test_merge_fields_conflict_inside_the_body_is_refused() -> None:
    with pytest.raises(InvalidCallback) as info:
        merge_fields([("net", "a")], [("net", "b"), ("network_id", "c")], DEFAULT_ALIAS_TABLE)
    assert info.value.field == "network_id"


# -- aliases ------------------------------------------------------------------------------------


def test_build_aliases_defaults() -> None:
    table = build_aliases()
    assert table == {
        "invitee": "invitee",
        "invitor": "invitor",
        "inviter": "invitor",
        "network_id": "network_id",
        "net": "network_id",
        "network": "network_id",
    }
    assert table == DEFAULT_ALIAS_TABLE


def test_build_aliases_extras_add_to_defaults() -> None:
    table = build_aliases({"invitee": ["Phone", "msisdn"], "network_id": ["cloud_id"]})
    assert table["phone"] == "invitee"
    assert table["msisdn"] == "invitee"
    assert table["cloud_id"] == "network_id"
    assert table["net"] == "network_id"
    assert table["invitee"] == "invitee"
    pairs = [("PHONE", "+1555"), ("Cloud_ID", "c"), ("inviter", "j")]
    assert pick_fields(pairs, table) == {"invitee": "+1555", "network_id": "c", "invitor": "j"}


def test_build_aliases_extras_do_not_leak_into_defaults() -> None:
    build_aliases({"invitee": ["phone"]})
    assert "phone" not in build_aliases()
    assert "phone" not in DEFAULT_ALIAS_TABLE


# -- make_event -----------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["invitee", "invitor", "network_id"])
def test_make_event_missing_field_is_named(missing: str) -> None:
    fields = {k: v for k, v in SEED.items() if k != missing}
    with pytest.raises(InvalidCallback) as info:
        make_event(fields, INVITATION_CREATED, "query")
    assert info.value.field == missing
    assert missing in info.value.detail


@pytest.mark.parametrize("field", ["invitee", "invitor", "network_id"])
@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_make_event_empty_field_is_named(field: str, value: str) -> None:
    with pytest.raises(InvalidCallback) as info:
        _event(**{field: value})
    assert info.value.field == field


def test_make_event_seed() -> None:
    event = make_event(SEED, INVITATION_CREATED, "json", client="198.51.100.7", now=NOW)
    assert event.type == INVITATION_CREATED
    assert event.invitee == "15551231234"
    assert event.invitee_raw == "15551231234"
    assert event.invitor == "johnsnow"
    assert event.network_id == "mynetwork"
    assert event.source_format == "json"
    assert event.client == "198.51.100.7"
    assert event.received_at == "2023-11-14T22:13:20.123Z"
    assert event.received_at_ms == 1_700_000_000_123


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_make_event_types(event_type: str) -> None:
    assert make_event(SEED, event_type, "query").type == event_type


@pytest.mark.parametrize("event_type", ["invitation", "Invitation_Created", "", "created"])
def test_make_event_unknown_type(event_type: str) -> None:
    with pytest.raises(ValueError, match="event_type"):
        make_event(SEED, event_type, "query")


@pytest.mark.parametrize(
    ("raw", "normalized", "kept"),
    [
        ("15551231234", "15551231234", "15551231234"),
        ("+15551231234", "+15551231234", "+15551231234"),
        ("+1 (555) 123-1234", "+15551231234", "+1 (555) 123-1234"),
        ("+1.555.123.1234", "+15551231234", "+1.555.123.1234"),
        ("00420 777 123 456", "00420777123456", "00420 777 123 456"),
        ("  +15551231234  ", "+15551231234", "+15551231234"),
        # An unencoded `+` that a decoder turned into a space is restored.
        (" 15551231234", "+15551231234", "+15551231234"),
        (" 1 555 123 1234", "+15551231234", "+1 555 123 1234"),
        ("123", "123", "123"),
        ("1" * 20, "1" * 20, "1" * 20),
    ],
)
def test_make_event_invitee_normalization(raw: str, normalized: str, kept: str) -> None:
    event = _event(invitee=raw)
    assert event.invitee == normalized
    assert event.invitee_raw == kept


@pytest.mark.parametrize(
    "raw",
    [
        "555-CALL-NOW",
        "johnsnow",
        "+1555abc1234",
        "12",
        "1" * 21,
        "++15551231234",
        "1555+1231234",
        "+",
        "\u0661\u0662\u0663\u0664",  # Arabic-Indic digits are not ASCII digits
        "\uff11\uff15\uff15\uff15\uff11\uff12\uff13",  # fullwidth digits
        "1555/1231234",
        "1" * (MAX_FIELD_LENGTH + 1),
        "1555\n1231234",
        "1555\x001231234",
    ],
)
def test_make_event_invitee_rejected(raw: str) -> None:
    with pytest.raises(InvalidCallback) as info:
        _event(invitee=raw)
    assert info.value.field == "invitee"


@pytest.mark.parametrize(
    "invitor",
    [
        "+15551231234",
        "john.snow@example.com",
        "john-snow",
        "john_snow",
        '"john" <snow>',
        "a&b",
        "o'brien",
        "josé",
        "日本語ユーザー",
        "😀",
        "sip:john@example.com;transport=tls",
        "%41",
        "a" * MAX_FIELD_LENGTH,
    ],
)
def test_make_event_invitor_kept_verbatim(invitor: str) -> None:
    assert _event(invitor=invitor).invitor == invitor


def test_make_event_invitor_surrounding_whitespace_is_trimmed() -> None:
    assert _event(invitor="  john snow \n").invitor == "john snow"


@pytest.mark.parametrize("field", ["invitee", "invitor", "network_id"])
def test_make_event_too_long(field: str) -> None:
    value = "1" * (MAX_FIELD_LENGTH + 1)
    with pytest.raises(InvalidCallback) as info:
        _event(**{field: value})
    assert info.value.field == field
    assert str(MAX_FIELD_LENGTH) in info.value.detail


@pytest.mark.parametrize("field", ["invitor", "network_id"])
@pytest.mark.parametrize("char", ["\x00", "\x01", "\x07", "\x1b", "\t", "\n", "\r", "\x7f", "\x85", "\x9f"])
def test_make_event_control_characters_refused(field: str, char: str) -> None:
    with pytest.raises(InvalidCallback) as info:
        _event(**{field: f"ab{char}cd"})
    assert info.value.field == field
    assert "control character" in info.value.detail


def test_make_event_nested_marker_never_passes() -> None:
    with pytest.raises(InvalidCallback):
        _event(invitor=NOT_TEXT)


@pytest.mark.parametrize(
    "network_id",
    ["mynetwork", "MyNetwork123*", "abc*", "*", "tenant/eu-1", "a b", "ü", "%network_id%", "x" * 128],
)
def test_make_event_network_id_is_opaque(network_id: str) -> None:
    assert _event(network_id=network_id).network_id == network_id


# -- ids, serialisation ---------------------------------------------------------------------------


def test_ids_are_ulids_that_sort_by_time() -> None:
    times = [NOW + i * 0.5 for i in range(40)]
    shuffled = times[:]
    random.Random(7).shuffle(shuffled)
    events = [make_event(SEED, INVITATION_CREATED, "query", now=t) for t in shuffled]
    by_id = sorted(events, key=lambda e: e.id)
    assert [e.received_at_ms for e in by_id] == sorted(e.received_at_ms for e in events)
    for event in events:
        ulid = ULID.from_str(event.id)
        assert ulid.milliseconds == event.received_at_ms
        assert len(event.id) == 26


def test_ids_are_unique_within_one_millisecond() -> None:
    ids = {make_event(SEED, INVITATION_CREATED, "query", now=NOW).id for _ in range(200)}
    assert len(ids) == 200


def test_to_dict_from_dict_round_trip() -> None:
    event = make_event(
        {"invitee": "+1 (555) 123-1234", "invitor": '"jo" <sé>&', "network_id": "net*"},
        INVITATION_ACCEPTED,
        "xml",
        client="2001:db8::1",
        now=NOW,
    )
    data = event.to_dict()
    assert data["invitee"] == "+15551231234"
    assert data["invitee_raw"] == "+1 (555) 123-1234"
    assert data["type"] == INVITATION_ACCEPTED
    assert InvitationEvent.from_dict(data) == event
    # Through JSON too, as the store keeps it.
    assert InvitationEvent.from_dict(json.loads(json.dumps(data))) == event


def test_an_event_stored_before_invitee_e164_existed_still_loads() -> None:
    event = _event()
    old = {k: v for k, v in event.to_dict().items() if k != "invitee_e164"}
    loaded = InvitationEvent.from_dict(old)
    assert loaded.invitee_e164 is None and loaded.invitee == event.invitee
    assert InvitationEvent(**old).invitee_e164 is None  # the engine's fast path (every key a field)
    assert loaded.placeholders()["invitee_e164"] == ""


def test_the_event_keeps_the_number_as_sent_and_gains_its_e164_form() -> None:
    fields = {"invitee": "(555) 010-0009", "invitor": "johnsnow", "network_id": "us"}
    event = make_event(fields, INVITATION_CREATED, "query", now=NOW, region_of={"us": "US"}.get)
    assert (event.invitee_raw, event.invitee, event.invitee_e164) == (
        "(555) 010-0009",
        "5550100009",  # as today: targets' templates depend on it
        "+15550100009",
    )
    # Without a default region, a national number has no E.164 form.
    other = make_event({**fields, "network_id": "xx"}, INVITATION_CREATED, "query", now=NOW)
    assert other.invitee_e164 is None and other.invitee == "5550100009"


def test_from_dict_ignores_unknown_keys() -> None:
    event = _event()
    assert InvitationEvent.from_dict({**event.to_dict(), "future_field": 1}) == event


def test_placeholders() -> None:
    event = _event(invitee="+1 555 123 1234")
    assert event.placeholders() == {
        "invitee": "+15551231234",
        "invitee_raw": "+1 555 123 1234",
        "invitee_e164": "+15551231234",
        "invitor": "johnsnow",
        "network_id": "mynetwork",
        "event": INVITATION_CREATED,
        "event_id": event.id,
        "received_at": "2023-11-14T22:13:20.123Z",
        "message": "johnsnow invited +15551231234 (network mynetwork)",
    }


@given(st.integers(min_value=0, max_value=2**48 - 1))
def test_new_ulid_is_a_ulid_of_that_millisecond(ms: int) -> None:
    from ulid import ULID

    from gateway.events import new_ulid

    value = new_ulid(ms)
    parsed = ULID.from_str(value)  # python-ulid, the reference
    assert str(parsed) == value and len(value) == 26
    assert parsed.milliseconds == ms


def test_new_ulids_differ_and_sort_by_time() -> None:
    from gateway.events import new_ulid

    ids = [new_ulid(1_700_000_000_000 + n // 10) for n in range(1000)]
    assert len(set(ids)) == 1000
    assert [i[:10] for i in ids] == sorted(i[:10] for i in ids)


def test_new_ulids_of_one_millisecond_sort_in_the_order_made() -> None:
    """Event indexes are scored by the millisecond and break ties by the id: ids made in the same
    millisecond must sort as they were made (a list shows the callbacks of one moment in order)."""
    from ulid import ULID

    from gateway.events import new_ulid

    ids = [new_ulid(1_700_000_000_000 + n // 100) for n in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == 1000
    for a, b in itertools.pairwise(ids):
        if a[:10] == b[:10]:
            assert int(ULID.from_str(b)) == int(ULID.from_str(a)) + 1
    # A new millisecond starts from fresh random bits, not from the last id's.
    assert int(ULID.from_str(ids[100])) - int(ULID.from_str(ids[99])) != 1


@given(
    st.text(min_size=1, max_size=40),
    st.text(max_size=40),
    st.one_of(st.none(), st.text(max_size=20)),
    st.one_of(st.none(), st.text(max_size=60)),
    st.one_of(st.none(), st.text(max_size=20)),
)
@example("j", "n", None, None, "+15551231234")
@example("j", "n", None, None, '+1"\\')
def test_to_json_is_the_compact_json_of_to_dict(
    invitor: str, network: str, client: str | None, message: str | None, e164: str | None
) -> None:
    # Built by hand (once per callback, on the hot path): the text json.dumps would make; the
    # invitee's forms encoded once when they are the same text (the usual number).
    invitee = e164 if e164 else "+15551231234"
    event = InvitationEvent(
        "01HF0000000000000000000000",
        INVITATION_CREATED,
        invitee,
        invitee if len(invitee) % 2 else "+1 555 123 1234",
        invitor,
        network,
        "2023-11-14T22:13:20.123Z",
        1_700_000_000_123,
        "json",
        client=client,
        message=message,
        invitee_e164=e164,
    )
    expected = json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False)
    assert event.to_json() == expected
    assert InvitationEvent.from_dict(json.loads(event.to_json())) == event


def test_ulid_random_bits_are_not_shared_with_a_forked_child() -> None:
    import os

    from gateway.events import new_ulid

    new_ulid(1_700_000_000_000)  # the pool read ahead in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.close(read)
        os.write(write, new_ulid(1_700_000_000_000).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child != new_ulid(1_700_000_000_000)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=st.sampled_from("+0123456789٣² .-()a"), max_size=24))
def test_the_digits_only_shortcut_answers_as_the_regexes(value: str) -> None:
    """normalize_invitee's shortcut for a number of digits alone (with an optional +) gives what
    the separator and number regexes give, and refuses nothing they take."""
    try:
        got: object = normalize_invitee(value)
    except InvalidCallback as exc:
        got = str(exc)
    try:
        raw = _check_text(
            "invitee", "+" + value.lstrip() if value[:1] == " " and value.lstrip()[:1].isdigit() else value
        )
        digits = _PHONE_SEPARATORS.sub("", raw)
        want: object = (digits, raw) if _PHONE.fullmatch(digits) else "x"
    except InvalidCallback as exc:
        want = str(exc)
    if want == "x":
        assert isinstance(got, str) and "phone number" in got
    else:
        assert got == want


_FIELD_TEXT = st.one_of(
    st.text(alphabet=st.sampled_from("+0123456789٣² .-()a\t\x00\x1f\u00e9\ufdd0"), max_size=24),
    st.text(max_size=140),
    st.sampled_from(
        [
            "",
            " ",
            "+",
            "  +447700900123",
            " 447700900123",
            "x" * 128,
            "x" * 129,
            " x" * 70,
            "a\x00b",
            "a\x7fb",
        ]
    ),
)
_NUMBER = st.from_regex(r"\A\+?[0-9]{1,22}\Z")


@settings(max_examples=1000, deadline=None)
@given(_NUMBER | _FIELD_TEXT, _FIELD_TEXT, _FIELD_TEXT)
@example("1" * 21, "j", "n")
@example("+" + "1" * 21, "j", "n")
@example("+12", "j", "n")
@example("1" * 20, "j\x00", "n")
def test_make_event_checks_fields_as_normalize_invitee_and_check_text(
    invitee: str, invitor: str, network_id: str
) -> None:
    # make_event takes the usual fields inline: the same answer and the same first error as the
    # functions it stands in for, in their order.
    try:
        expected = (
            *normalize_invitee(invitee),
            _check_text("invitor", invitor),
            _check_text("network_id", network_id),
        )
    except InvalidCallback as exc:
        with pytest.raises(InvalidCallback) as caught:
            make_event(
                {"invitee": invitee, "invitor": invitor, "network_id": network_id},
                INVITATION_CREATED,
                "query",
            )
        assert (caught.value.detail, caught.value.field) == (exc.detail, exc.field)
        return
    event = make_event(
        {"invitee": invitee, "invitor": invitor, "network_id": network_id}, INVITATION_CREATED, "query"
    )
    assert (event.invitee, event.invitee_raw, event.invitor, event.network_id) == expected


@given(st.integers(min_value=0, max_value=253_402_300_799_999))  # to 9999-12-31T23:59:59.999Z
def test_iso_ms_is_the_isoformat_in_milliseconds(ms: int) -> None:
    from datetime import UTC, datetime, timedelta

    from gateway.records import iso_ms

    expected = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).isoformat(
        timespec="milliseconds"
    )
    assert iso_ms(ms) == expected.replace("+00:00", "Z")
