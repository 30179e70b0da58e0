"""The callbacks inspector, read: what GET /callbacks answers, the dashboard's Callbacks page
shows and `gateway callbacks list` prints (the entries: gateway/ingest/inspector.py).

A key sees the entries of its networks (an operator's: every network, and the unroutable ones,
whose network could not be told); anything else is absent, as everywhere on the admin side.
Numbers are as the ingest kept them: in full where a token proved the network (what the event
shows the same key), masked as the logs mask them where the network was only claimed.

Each item also says what to change in the Cloud Softphone portal (`hint`), from the outcome and
the reason: `invitee is missing: your invitationCreatedPostData has no %invitee%`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.admin import Invalid, NotFound
from gateway.admin.keys import Principal
from gateway.admin.queries import Page, check_range, decode_cursor, encode_cursor, page_limit
from gateway.events import build_aliases
from gateway.ingest.inspector import read_fields
from gateway.records import iso_ms
from gateway.store.callbacks import Entry, networks_with_lists, read_entries
from gateway.store.events import Store

OUTCOMES = ("accepted", "duplicate", "suppressed", "spooled", "rejected")
TAKEN = frozenset({"accepted", "duplicate", "suppressed", "spooled"})  # on the networks' own lists
SCAN_BUDGET = 5000  # entries one listing looks at before answering with a cursor
_CHUNK = 200


@dataclass(frozen=True, slots=True)
class CallbackFilter:
    network: str | None = None
    outcome: str | None = None  # one of OUTCOMES
    unroutable: bool = False  # only the callbacks whose network could not be told (an operator's)
    since_ms: int | None = None
    until_ms: int | None = None
    test_id: str | None = None  # only the callback of one "send test callback"

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise Invalid(f"unknown outcome {self.outcome!r} (known: {', '.join(OUTCOMES)})", "outcome")
        if self.unroutable and self.network is not None:
            raise Invalid("unroutable callbacks have no network: give one or the other", "unroutable")
        if self.unroutable and self.outcome not in (None, "rejected"):
            raise Invalid("unroutable callbacks were all rejected", "outcome")
        check_range(self.since_ms, self.until_ms)

    def matches(self, entry: Entry) -> bool:
        return (
            (self.outcome is None or entry.outcome == self.outcome)
            and (self.since_ms is None or entry.at >= self.since_ms)
            and (self.until_ms is None or entry.at <= self.until_ms)
            and (self.test_id is None or entry.extra.get("test_id") == self.test_id)
        )


# An entry with the network of the list it was read from (None: the unroutable list).
Kept = tuple[Entry, str | None]


def _key(kept: Kept) -> tuple[int, str]:
    return kept[0].at, kept[0].id


class Callbacks:
    """The reads of the inspector's lists, as one key sees them (`Service.callbacks`)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _lists(self, p: Principal, f: CallbackFilter) -> list[tuple[str, str | None]]:
        """(list key, its network) of every list the filter reads."""
        keys = self.store.keys
        rejected = f.outcome in (None, "rejected")
        taken = f.outcome is None or f.outcome in TAKEN
        if f.unroutable:
            if not p.is_operator:
                raise NotFound("unroutable callbacks are an operator key's")
            return [(keys.callbacks_unroutable, None)]
        if f.network is not None:
            networks = [f.network] if p.can_see(f.network) else []
        elif p.networks is not None:
            networks = sorted(p.networks)
        else:
            networks = networks_with_lists(self.store.redis, keys)
        lists: list[tuple[str, str | None]] = [(keys.callbacks(n), n) for n in networks if taken]
        lists += [(keys.callbacks_rejected(n), n) for n in networks if rejected]
        if p.is_operator and f.network is None and rejected:
            lists.append((keys.callbacks_unroutable, None))
        return lists

    def _entries(
        self, key: str, network: str | None, after: tuple[int, str] | None, since_ms: int | None
    ) -> Iterator[Kept]:
        """A list's entries newest first (each chunk sorted: web processes' clocks may differ by a
        millisecond), strictly after the cursor position."""
        start = 0
        while True:
            raw = read_entries(self.store.redis, key, start, _CHUNK)
            if not raw:
                return
            start += len(raw)
            chunk = sorted(((entry, network) for entry in _parsed(raw)), key=_key, reverse=True)
            if not chunk:
                continue
            for kept in chunk:
                if after is None or _key(kept) < after:
                    yield kept
            if since_ms is not None and chunk[-1][0].at < since_ms:
                return  # older from here on
            if len(raw) < _CHUNK:
                return

    def _aliases(self) -> dict[str, str]:
        """The field names of the configuration in use (a kept callback's fields are read again)."""
        _, data = self.store.load_config()
        return build_aliases((data or {}).get("aliases") or {})

    def list(
        self, p: Principal, filters: CallbackFilter | None = None, cursor: str | None = None, limit: int = 50
    ) -> Page:
        """Newest first; a page may be short and still have a cursor (SCAN_BUDGET entries looked at)."""
        f = filters or CallbackFilter()
        limit = page_limit(limit)
        after = decode_cursor(cursor)
        if f.until_ms is not None and (after is None or (f.until_ms + 1, "") < after):
            after = (f.until_ms + 1, "")
        scans = [self._entries(key, network, after, f.since_ms) for key, network in self._lists(p, f)]
        merged = heapq.merge(*scans, key=_key, reverse=True)
        aliases = self._aliases()
        items: list[dict[str, Any]] = []
        last: tuple[int, str] | None = None
        for looked, kept in enumerate(merged, 1):
            last = _key(kept)
            if f.since_ms is not None and last[0] < f.since_ms:
                return Page(items, None)
            if f.matches(kept[0]):
                items.append(callback_json(kept[0], kept[1], aliases))
                if len(items) == limit:
                    more = next(merged, None) is not None
                    return Page(items, encode_cursor(*last) if more else None)
            if looked >= SCAN_BUDGET:
                more = next(merged, None) is not None
                return Page(items, encode_cursor(*last) if more else None)
        return Page(items, None)

    def find_test(self, p: Principal, network: str, test_id: str) -> dict[str, Any] | None:
        """The entry of one "send test callback" (None: not there yet)."""
        found = self.list(p, CallbackFilter(network=network, test_id=test_id), None, 1).items
        return found[0] if found else None


def _parsed(raw: Sequence[bytes | str]) -> Iterator[Entry]:
    """The entries of a chunk; one that does not parse (written by another release) is skipped."""
    for item in raw:
        try:
            yield Entry.parse(item)
        except (ValueError, TypeError, IndexError):
            continue


def callback_json(entry: Entry, network: str | None, aliases: Mapping[str, str]) -> dict[str, Any]:
    """An item of GET /callbacks, from a kept entry and the network of its list."""
    extra = entry.extra
    outcome = entry.outcome
    if outcome == "rejected":
        status = int(extra.get("status") or 400)
    elif outcome == "suppressed":
        status = int(extra.get("ls") or 204)
    else:
        status = 204
    if "fields" in extra:  # read when it was rejected
        fields, names = dict(extra["fields"]), extra.get("names")
    else:  # taken: its fields are in its path and body
        query = entry.path.partition("?")[2].encode("latin-1", "replace")
        fields, _ = read_fields(query, entry.content_type, entry.body.encode(), aliases)
        names = None
    doc: dict[str, Any] = {
        "id": entry.id,
        "received_at": iso_ms(entry.at),
        "network": network,
        "event": entry.event,
        "method": entry.method,
        "path": entry.path,
        "content_type": entry.content_type,
        "body": entry.body,
        "body_bytes": entry.body_bytes,
        "fields": fields,
        "field_names": names,
        "client": entry.client,
        "token": entry.token,
        "outcome": outcome,
        "status": status,
        "event_id": entry.id if outcome in ("accepted", "suppressed", "spooled") else None,
        "duplicate_of": entry.detail if outcome == "duplicate" else None,
        "reason": entry.detail if outcome == "suppressed" else extra.get("reason"),
        "field": extra.get("field"),
        "test_id": extra.get("test_id"),
    }
    doc["hint"] = portal_hint(doc)
    return doc


# -- what to change in the portal ------------------------------------------------------------------

_FIELDS = ("invitee", "invitor", "network_id")


def _portal_keys(event: str | None) -> tuple[str, str, str]:
    which = "Accepted" if event == "invitation_accepted" else "Created"
    return f"invitation{which}Url", f"invitation{which}PostData", f"invitation{which}ContentType"


def portal_hint(doc: Mapping[str, Any]) -> str | None:
    """What to change in the Cloud Softphone portal (or why nothing), for one callback."""
    url, data, ctype = _portal_keys(doc.get("event"))
    outcome = doc.get("outcome")
    if outcome == "accepted":
        return None
    if outcome == "duplicate":
        return (
            "The same invitation again within the dedupe window (GATEWAY_DEDUPE_SECONDS): answered 204, "
            "not delivered again. Nothing to change in the portal."
        )
    if outcome == "suppressed":
        return (
            "Held back by the network's abuse limits (its [networks] table): kept, not delivered, "
            "releasable with `gateway replay`. Nothing to change in the portal."
        )
    if outcome == "spooled":
        return (
            "Redis did not answer: kept in the web process' spool, stored once Redis is back. "
            "Nothing to change in the portal."
        )
    status, field, reason = doc.get("status"), doc.get("field"), str(doc.get("reason") or "")
    names: Sequence[str] = doc.get("field_names") or []
    where = data if doc.get("method") == "POST" else url
    if status == 401:
        if doc.get("token") is None:
            return (
                f"401: {url} carries no token: end it with /<token> (Connect Acrobits gives the exact URL)."
            )
        return (
            f"401: the token in {url} is not valid (an old, removed or mistyped one): paste {url} "
            "from Connect Acrobits, with a token made there."
        )
    if status == 403:
        if field == "client":
            return (
                f"403: the caller's address ({doc.get('client') or '?'}) is not in the network's allow_from: "
                "nothing to change in the portal; add the Contacts server's address to allow_from."
            )
        sent = (doc.get("fields") or {}).get("network_id")
        return (
            f"403: the token in {url} is for another network than the network_id the callback names"
            + (f" ({sent})" if sent else "")
            + f": use this network's token in {url}, and check that %network_id% is this network."
        )
    if status == 400:
        return _hint_400(str(field or ""), reason, names, where, data, ctype, _shape(doc))
    if status == 413:
        return (
            f"413: the body is over the gateway's limit (GATEWAY_MAX_BODY): {data} should hold the "
            "three fields only."
        )
    if status == 415:
        return (
            f"415: {reason}: set {ctype} to application/json (or leave it empty for a form) and {data} "
            "to the value Connect Acrobits gives."
        )
    if status == 503:
        return (
            "503: the gateway could not store it (neither Redis nor its spool took it). Nothing to change in "
            "the portal; the Contacts server does not retry, so this invitation was not delivered."
        )
    return None


def _shape(doc: Mapping[str, Any]) -> str:
    """How the callback carried its fields: query (GET), form, json or xml (as the ingest reads it)."""
    if doc.get("method") != "POST":
        return "query"
    start = str(doc.get("body") or "").lstrip()[:1]
    return {"{": "json", "<": "xml"}.get(start, "form")


def _field_text(field: str, shape: str) -> str:
    """How a field is written in a template of that shape."""
    if shape == "json":
        return f'"{field}": "%{field}%"'
    if shape == "xml":
        return f"<{field}>%{field}%</{field}>"
    return f"{field}=%{field}%"


def _hint_400(
    field: str, reason: str, names: Sequence[str], where: str, data: str, ctype: str, shape: str
) -> str:
    had = f" (the callback had: {', '.join(names)})" if names else ""
    if field in _FIELDS and reason.endswith("is missing"):
        also = (
            " (or net, network)" if field == "network_id" else " (or inviter)" if field == "invitor" else ""
        )
        return (
            f"{field} is missing: your {where} has no %{field}%{had}: add {_field_text(field, shape)}{also}."
        )
    if field in _FIELDS and reason.startswith("conflicting"):
        return f"{reason}: your {where} names {field} twice; keep one."
    if field == "invitee":
        return f"{reason}: check that {where} puts %invitee% (the invited number) under invitee."
    if field in _FIELDS:
        return f"{reason}: check %{field}% in {where}."
    if field == "body" and "JSON" in reason:
        return (
            f"{reason}: {data} must be a JSON object with straight quotes and each placeholder inside "
            f"quotes (copy it from Connect Acrobits), and {ctype} application/json."
        )
    if field == "body" and "XML" in reason:
        return f"{reason}: {data} must be well-formed XML, <root><invitee>%invitee%</invitee>...</root>."
    return f"{reason}: check {where} and {ctype}."
