"""The callbacks inspector's pure parts: the entry of a taken callback (valid JSON once the ingest
script closes it, no token in it), the network a rejected one is kept under, and the portal hints."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.admin.callbacks import callback_json, portal_hint
from gateway.events import build_aliases, make_event
from gateway.ingest.callback import Callback
from gateway.ingest.inspector import Inspector, network_of
from gateway.store.callbacks import Entry

TOKEN = "plain-lower-case-token-value"


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


def _callback(method: str, query: bytes = b"", token: str | None = None, **headers: str) -> Callback:
    scope = {
        "method": method,
        "query_string": query,
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
        "client": ("203.0.113.9", 5000),
    }
    return Callback(scope, _no_body, token)


def _closed(entry: str, outcome: str = ',"accepted"]') -> Entry:
    return Entry.parse(entry + outcome)  # what the ingest script appends


@pytest.mark.parametrize(
    ("callback", "body"),
    [
        (_callback("GET", b"invitee=%2B15551231234&invitor=bob&network_id=n", token=TOKEN), b""),
        (_callback("GET", f"invitee=15551231234&invitor=bob&network_id=n&token={TOKEN}".encode()), b""),
        (
            _callback("POST", authorization=f"Bearer {TOKEN}", content_type="application/json"),
            json.dumps(
                {"invitee": "+15551231234", "invitor": "bob", "network_id": "n", "auth": TOKEN}
            ).encode(),
        ),
    ],
)
def test_a_taken_entry_is_json_without_the_token(callback: Callback, body: bytes) -> None:
    event = make_event(
        {"invitee": "+15551231234", "invitor": "bob", "network_id": "n"}, "invitation_created", "query"
    )
    entry = Inspector.taken(callback, event, body, 204, None)
    assert TOKEN not in entry
    kept = _closed(entry)
    assert (kept.at, kept.id, kept.event, kept.outcome) == (
        event.received_at_ms,
        event.id,
        "invitation_created",
        "accepted",
    )
    assert kept.token in ("path", "query", "header") and kept.client == event.client and kept.extra == {}
    # The fields, read again from its path and body when shown.
    doc = callback_json(kept, "n", build_aliases())
    assert doc["fields"] == {"invitee": "+15551231234" if body or b"%2B" in callback.query else "15551231234",
                             "invitor": "bob", "network_id": "n"}  # fmt: skip
    assert (doc["event_id"], doc["network"], doc["status"]) == (event.id, "n", 204)
    limited = _closed(Inspector.taken(callback, event, body, 429, "t1"), ',"suppressed","over the limit"]')
    doc = callback_json(limited, "n", build_aliases())
    assert (doc["status"], doc["test_id"], doc["reason"]) == (429, "t1", "over the limit")


@pytest.mark.parametrize(
    ("opens", "claimed", "known", "kept"),
    [
        ({"a"}, "a", set(), ("a", True)),  # the token opened the network it names
        ({"*"}, "x", set(), ("x", True)),  # a token of every network
        ({"a"}, "b", {"b"}, ("a", True)),  # 403: the token's own network, whatever it names
        ({"a"}, None, set(), ("a", True)),  # no readable network_id: the token tells
        ({"a", "b"}, "c", {"c"}, ("c", False)),  # a token of several, another named: only claimed
        (None, "a", {"a"}, ("a", False)),  # no token (401, or an open ingest): claimed
        (None, "nosuch", {"a"}, (None, False)),  # a network nobody knows: unroutable
        (None, None, {"a"}, (None, False)),
        ({"*"}, None, {"a"}, (None, False)),
    ],
)
def test_the_network_a_rejected_callback_is_kept_under(
    opens: set[str] | None, claimed: str | None, known: set[str], kept: tuple[str | None, bool]
) -> None:
    assert network_of(opens, claimed, frozenset(known)) == kept


def _rejected(**extra: Any) -> dict[str, Any]:
    method = extra.pop("method", "POST")
    event = extra.pop("event", "invitation_created")
    body = extra.pop("body", "")
    token = extra.pop("token", None)
    extra.setdefault("fields", {})  # a rejected one's fields are kept as read
    entry = Entry(
        1,
        "x",
        method,
        f"/{event}",
        None,
        body,
        len(body),
        token,
        extra.pop("client", None),
        extra,
        "rejected",
    )
    return callback_json(entry, "n", build_aliases())


def test_what_to_change_in_the_portal() -> None:
    json_body = _rejected(
        status=400, field="invitee", reason="invitee is missing", body='{"phone": "1"}', names=["phone"]
    )
    assert json_body["hint"] == (
        "invitee is missing: your invitationCreatedPostData has no %invitee% (the callback had: phone): "
        'add "invitee": "%invitee%".'
    )
    get = _rejected(
        method="GET",
        event="invitation_accepted",
        status=400,
        field="network_id",
        reason="network_id is missing",
    )
    assert get["hint"] == (
        "network_id is missing: your invitationAcceptedUrl has no %network_id%: add network_id=%network_id% "
        "(or net, network)."
    )
    assert "carries no token" in str(portal_hint(_rejected(status=401, token=None)))
    assert "is not valid" in str(portal_hint(_rejected(status=401, token="path")))
    assert "allow_from" in str(portal_hint(_rejected(status=403, field="client", client="198.51.100.7")))
    assert "another network" in str(portal_hint(_rejected(status=403, field="token")))
    assert "not valid JSON" in str(
        portal_hint(_rejected(status=400, field="body", reason="body is not valid JSON"))
    )
    assert "application/json" in str(portal_hint(_rejected(status=415, reason="no recognisable shape")))
    accepted = Entry(1, "y", "GET", "/invitation_created?invitee=1", None, "", 0, None, None, {}, "accepted")
    assert callback_json(accepted, "n", {})["hint"] is None
    suppressed = Entry(
        1, "z", "GET", "/invitation_created", None, "", 0, None, None, {"ls": 429}, "suppressed", "r"
    )
    doc = callback_json(suppressed, "n", {})
    assert doc["status"] == 429 and "Nothing to change in the portal" in doc["hint"]
