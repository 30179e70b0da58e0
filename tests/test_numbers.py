"""Invitee numbers in E.164 (gateway/numbers.py): pure, but for one rate-limited log line."""

from __future__ import annotations

import logging

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumber

from gateway import numbers
from gateway.numbers import canonical, country_code, e164, identity


@pytest.mark.parametrize(
    ("number", "region", "expected"),
    [
        ("+15550100009", None, "+15550100009"),
        ("+15550100009", "DE", "+15550100009"),  # with +, the region plays no part
        ("15550100009", "US", "+15550100009"),  # the trunk prefix 1
        ("5550100009", "US", "+15550100009"),  # national
        ("01115550100009", "US", "+15550100009"),  # NANP's international prefix
        ("0015550100009", "US", "+15550100009"),  # 00: international, even where 011 is
        ("0015550100009", "GB", "+15550100009"),
        ("0015550100009", "DE", "+15550100009"),
        ("0015550100009", None, "+15550100009"),  # 00 without a region: international
        ("07700900123", "GB", "+447700900123"),  # national with the trunk 0
        ("+4407700900123", None, "+447700900123"),  # "+44 (0)7700 ...", the (0) dropped
        ("15550100009", "DE", "+4915550100009"),  # a German number, dialled in Germany
        ("15550100009", None, None),  # no + and no region: no E.164 form
        ("5550100009", None, None),
        ("+999123456", None, None),  # no such country code
        ("+1555", None, None),  # too short for its country
        ("123", "US", None),
        ("+15550100009123456", None, None),  # too long
    ],
)
def test_e164(number: str, region: str | None, expected: str | None) -> None:
    assert e164(number, region) == expected


def test_identity_is_the_digits_of_the_e164_form_or_of_the_number() -> None:
    assert identity("5550100009", "+15550100009") == "15550100009"
    assert identity("15550100009", None) == "15550100009"  # Acrobits' bare example: the same one
    assert identity("+1555", None) == "1555"


def test_a_number_without_e164_form_is_logged_once_per_network(caplog: pytest.LogCaptureFixture) -> None:
    numbers._told.clear()
    with caplog.at_level(logging.WARNING, logger="gateway.numbers"):
        assert canonical("5550100009", None, "net-a", "01HF0000000000000000000000") is None
        assert canonical("5550100008", None, "net-a") is None
        assert canonical("+15550100009", None, "net-a") == "+15550100009"
        assert canonical("5550100009", None, "net-b") is None
        assert canonical("123", "US", "net-b") is None  # net-b was told already
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "network net-a" in lines[0] and "no default_region" in lines[0]
    assert "01HF0000000000000000000000" in lines[0]
    assert "network net-b" in lines[1]
    # An hour later, told again.
    numbers._told["net-a"] -= numbers.UNREADABLE_LOG_EVERY
    with caplog.at_level(logging.WARNING, logger="gateway.numbers"):
        canonical("5550100009", None, "net-a")
    assert len(caplog.records) == 3


def test_the_networks_told_about_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    numbers._told.clear()
    monkeypatch.setattr(numbers, "UNREADABLE_NETWORKS", 10)
    for n in range(25):
        canonical("5550100009", None, f"net-{n}")
        assert len(numbers._told) <= 10


def test_country_code() -> None:
    assert country_code("15550100009") == "1"
    assert country_code("447700900123") == "44"
    assert country_code("882161234567") == "882"
    assert country_code("0123") is None


# -- +digits made without the parse (numbers._plain_international) --------------------------------

_CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def _parsed(digits: str) -> tuple[PhoneNumber | None, str | None]:
    """What phonenumbers.parse makes of `+digits`, and its E.164 form when it is possible."""
    try:
        parsed = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return None, None
    if not phonenumbers.is_possible_number(parsed):
        return parsed, None
    return parsed, phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _same_as_the_parse(digits: str) -> bool:
    # The E.164 answer of the path a callback takes (without building the number) is the parse's.
    expected = _parsed(digits)[1]
    assert numbers._read("+" + digits, None) == expected, digits
    assert numbers.e164.__wrapped__("+" + digits) == expected, digits  # its own copy, uncached
    return _plain_is_the_parses(digits)


def _plain_is_the_parses(digits: str) -> bool:
    """The shortcut's number is the parse's, field for field, with the same E.164 answer (or it
    leaves the number to the parse). True when the shortcut took it."""
    plain = numbers._plain_international(digits)
    if plain is None:
        return False
    parsed, expected = _parsed(digits)
    assert parsed == plain, digits
    possible = phonenumbers.is_possible_number(plain)
    assert (
        phonenumbers.format_number(plain, phonenumbers.PhoneNumberFormat.E164) if possible else None
    ) == expected
    return True


def test_international_numbers_made_without_the_parse_are_the_parses_for_every_calling_code() -> None:
    taken = 0
    for code in _CODES:
        for national in (
            "5",
            "12",
            "0",
            "00",
            "01",
            "001",
            "0123456789",
            "1234567",
            "7700900123",
            "15550100",
            "9" * 12,
            "0" * 5,
            "3" * 17,
            "2" * 18,
            "0612345678",
            "5550100009",
        ):
            taken += _same_as_the_parse(f"{code}{national}")
    assert taken > len(_CODES) * 5  # the shortcut takes most of them (else it saves nothing)
    assert e164("+447700900123") == "+447700900123" and e164("+4407700900123") == "+447700900123"


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(_CODES), st.text("0123456789", max_size=18), st.sampled_from(["", "0", "00"]))
def test_any_international_number_made_without_the_parse_is_the_parses(
    code: int, rest: str, zeros: str
) -> None:
    _same_as_the_parse(f"{code}{zeros}{rest}")
