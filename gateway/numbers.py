"""Invitee numbers in E.164: one number is one identity for the abuse limits, dedupe and erasure.

The Contacts server passes the number as the user typed it: `+15550100009`, `15550100009`,
`0015550100009` and `(555) 010-0009` may all be the same number. Google's libphonenumber
(`phonenumbers`) reads them, with the network's `default_region` completing national numbers:

- a number with `+` is international already (the region plays no part);
- with a default region, the number is read as dialled there: its international prefix (00,
  011, ...) or its national form (with or without the trunk prefix); a leading `00` that the
  region does not read as international (NANP dials 011) is read as international all the same,
  since no national number starts with 00;
- without one, only `00` is read as international; other numbers without `+` stay as they came.

A number that comes out impossible (too short or long for its country) or that cannot be read
has no E.164 form: the limits count it on its own digits (`identity`), and that is logged once
per network per hour in each process.

The parse costs about 15 µs of pure Python, the largest single cost of a callback, so its answers
are cached (bounded): a number seen again (the "accepted" after the "created", a retry of the
Contacts server, a bot hammering one number) costs a dictionary lookup.
"""

from __future__ import annotations

import logging
import re
import time
from functools import lru_cache
from typing import Any

import phonenumbers
from phonenumbers import NumberParseException, PhoneMetadata, PhoneNumber, PhoneNumberFormat

log = logging.getLogger("gateway.numbers")

REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)  # "US", "GB", ... (ISO 3166-1 alpha-2)
CACHE_SIZE = 8192  # numbers (with their region) whose E.164 form is kept
UNREADABLE_LOG_EVERY = 3600.0  # seconds between two "cannot be made E.164" lines per network
UNREADABLE_NETWORKS = 1024  # networks remembered for that (networks are the callers' choice)

_E164 = PhoneNumberFormat.E164
# Country calling codes as text ("1", "44", "882"): no code is the start of another.
_COUNTRY_CODES = frozenset(str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


_NO_METADATA: Any = object()
_UNSEEN: Any = object()  # not looked up yet
# Country calling code -> its national prefix pattern for parsing (None: the country has none), as
# phonenumbers' metadata gives it; filled as codes are met (the metadata loads lazily).
_national_prefixes: dict[int, Any] = {}


def _national_prefix(code: int) -> Any:
    found = _national_prefixes.get(code, _NO_METADATA)
    if found is _NO_METADATA:
        region = phonenumbers.region_code_for_country_code(code)
        meta = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        if meta is None:
            found = _NO_METADATA
        else:
            pattern = meta.national_prefix_for_parsing
            found = re.compile(pattern) if pattern else None
        _national_prefixes[code] = found
    return found


def _plain_split(digits: str) -> tuple[int, str] | None:
    """(country calling code, national digits) of `+digits` where phonenumbers.parse would only
    split them (`_plain_international`), else None. (`country_code` and `_national_prefix`
    inline: once per new international number.)"""
    codes = _COUNTRY_CODES
    if digits[:1] in codes:
        size = 1
    elif digits[:2] in codes:
        size = 2
    elif digits[:3] in codes:
        size = 3
    else:
        return None
    national = digits[size:]
    if not 2 <= len(national) <= 17:  # parse's bounds on a national number: its errors
        return None
    calling = int(digits[:size])
    prefix = _national_prefixes.get(calling, _UNSEEN)
    if prefix is _UNSEEN:
        prefix = _national_prefix(calling)
    if prefix is _NO_METADATA or (prefix is not None and prefix.match(national)):
        return None
    return calling, national


def _plain_international(digits: str) -> PhoneNumber | None:
    """`+digits` as phonenumbers.parse reads it, made without the parse (its regexes are most of
    a callback's cost), or None where the parse may do more than split the digits.

    For digits after `+`, parse takes the country calling code (no code is the start of another),
    strips a national prefix from the rest when the country's metadata says one is there (a
    user's `+44 07...`), and sets the leading zeros of an Italian-style number. Built here only
    when no national prefix is there by the same metadata; everything else goes to the parse.
    tests/test_numbers.py holds the two to the same answers over every calling code.
    """
    split = _plain_split(digits)
    if split is None:
        return None
    calling, national = split
    number = PhoneNumber(country_code=calling, national_number=int(national))
    if national[0] == "0":
        number.italian_leading_zero = True
        zeros = len(national) - len(national.lstrip("0"))
        zeros = min(zeros, len(national) - 1)
        if zeros != 1:
            number.number_of_leading_zeros = zeros
    return number


# (country calling code, length of the national number) -> whether phonenumbers calls such a
# `_plain_international` number possible: its answer depends on nothing else (the metadata's
# possible lengths for the code; `_test_number_length`), so it is asked once per pair (bounded:
# a few hundred codes, lengths 2 to 17).
_possible: dict[tuple[int, int], bool] = {}


def _plain_e164(digits: str) -> str | None:
    """`+digits` in E.164 (None: not a possible number) where `_plain_international` takes it,
    without building the number: its national significant number is the national digits as they
    came (leading zeros kept), so E.164 is `+digits` itself. "": not such a number (the parse's)."""
    split = _plain_split(digits)
    if split is None:
        return ""
    calling, national = split
    key = (calling, len(national))
    possible = _possible.get(key)
    if possible is None:
        plain = _plain_international(digits)
        possible = _possible[key] = plain is not None and phonenumbers.is_possible_number(plain)
    return "+" + digits if possible else None


def _read(number: str, region: str | None) -> str | None:
    if region is None and number[:1] == "+" and number[1:].isascii() and number[1:].isdigit():
        plain = _plain_e164(number[1:])
        if plain != "":
            return plain
    return _parse(number, region)


def _parse(number: str, region: str | None) -> str | None:
    """`number` in E.164 through phonenumbers.parse (None: it cannot be read, or is impossible)."""
    try:
        parsed = phonenumbers.parse(number, region)
    except NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, _E164)


@lru_cache(maxsize=CACHE_SIZE)
def e164(number: str, region: str | None = None) -> str | None:
    """`number` (digits, optionally after `+`, separators removed) in E.164, or None.

    `region`: where a number without `+` was dialled (the network's `default_region`).
    """
    if number[:1] == "+":
        digits = number[1:]  # `_read(number, None)`, its shortcut inline: the usual new number
        if digits.isascii() and digits.isdigit():
            plain = _plain_e164(digits)
            if plain != "":
                return plain
        return _parse(number, None)
    if region is not None:
        found = _read(number, region)
        if found is None and number[:2] == "00":
            found = _read("+" + number[2:], None)
        return found
    if number[:2] == "00":
        return _read("+" + number[2:], None)
    return None


def identity(invitee: str, invitee_e164: str | None) -> str:
    """What a number counts as for the limits, the guard and dedupe: the digits of its E.164
    form, or its own digits when it has none.

    Digits, not `+digits`: Acrobits' own examples send `15551231234` for `+15551231234`, and a
    network without a default region then counts the two as one.
    """
    return (invitee_e164 or invitee).lstrip("+")


def country_code(digits: str) -> str | None:
    """The country calling code a number's digits (its E.164 form without +) start with."""
    for size in (1, 2, 3):
        if digits[:size] in _COUNTRY_CODES:
            return digits[:size]
    return None


_told: dict[str, float] = {}  # network -> monotonic time of its last "cannot be made E.164" line


def canonical(invitee: str, region: str | None, network: str, event_id: str = "") -> str | None:
    """`e164(invitee, region)`, logging (once per network per hour) a number that has none."""
    found = e164(invitee, region)
    if found is None:
        now = time.monotonic()
        last = _told.get(network)
        if last is None or now - last >= UNREADABLE_LOG_EVERY:
            if len(_told) >= UNREADABLE_NETWORKS:
                _told.clear()  # bounded: at worst a network is told about again sooner
            _told[network] = now
            log.warning(
                "network %s: invitee %s%s cannot be made E.164 (%s); its limits count its digits "
                "(said once an hour per network)",
                network,
                invitee,
                f" of {event_id}" if event_id else "",
                f"not a possible number in region {region}"
                if region
                else "no + and no default_region for the network",
            )
    return found
