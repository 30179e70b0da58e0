"""The OpenAPI document's TargetDeclaration and the validation behind it (gateway/targets.py) agree:
no value the document calls invalid is taken by the code (pure; schemathesis checks the live API).

schemathesis found two such places in a long run: `"networks": "f"` (the file's shorthand for one
network) and a lower-case method. The document now says what the code takes; this keeps it so
for every key, with values of every JSON type and the usual near misses.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.admin.openapi import _TARGET_DECLARATION
from gateway.config.load import target_from_dict
from gateway.exceptions import ConfigError

jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="comes with schemathesis (the dev extra)")

BASE = {"name": "t", "networks": ["n"], "url": "https://example.com/x"}
SAMPLES: list[Any] = [
    *("x", "", "5", "-5", "90x", "GET", "get", "Get", "gat", "1/s", "0/s", "1/d"),
    *("application/json", "invitation_created", "https://p.example.com", "2026-01-01T00:00:00Z"),
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    *(0, 1, 5, 61, -1, 100000, 1.5, 0.0, 1e9, True, False, None),
    *([], ["x"], [""], [1], [5], [200], [700], [409], [1.5], [-5], ["invitation_created"]),
    ["invitation_created", "nope"],
    *({}, {"a": "b"}, {"a": 1}, {"404": "x"}, {"crm": {}}, {"failures": 1}, {"failures": "1"}),
    *({"username": "a", "password": "b"}, {"username": "a"}, {"username": 1, "password": "b"}),
    {"token_url": "https://t.example.com", "client_id": "a", "client_secret": "b"},
]
KEYS = sorted(set(_TARGET_DECLARATION["properties"]) - {"name", "source", "health"})


@pytest.mark.parametrize("key", KEYS)
def test_what_the_document_refuses_the_code_refuses(key: str) -> None:
    document = jsonschema_rs.validator_for(_TARGET_DECLARATION, validate_formats=True)
    taken = []
    for value in SAMPLES:
        declaration = {**BASE, key: value}
        if document.is_valid(declaration):
            continue
        try:
            target_from_dict(declaration)
        except ConfigError:
            continue
        taken.append(value)
    assert not taken, f"{key}: the document refuses what the code takes: {taken!r}"
