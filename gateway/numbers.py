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
import time
from functools import lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat

log = logging.getLogger("gateway.numbers")

REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)  # "US", "GB", ... (ISO 3166-1 alpha-2)
CACHE_SIZE = 8192  # numbers (with their region) whose E.164 form is kept
UNREADABLE_LOG_EVERY = 3600.0  # seconds between two "cannot be made E.164" lines per network
UNREADABLE_NETWORKS = 1024  # networks remembered for that (networks are the callers' choice)

_E164 = PhoneNumberFormat.E164
# Country calling codes as text ("1", "44", "882"): no code is the start of another.
_COUNTRY_CODES = frozenset(str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def _read(number: str, region: str | None) -> str | None:
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
        return _read(number, None)
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
