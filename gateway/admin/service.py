"""What the admin API, the dashboard and the `gateway` command read and change, always as one
key (a `Principal`) sees it (the command as an operator key).

Build one `Service(store, queue_name)` per process; every method takes the Principal first and
filters by its networks. Anything outside them answers exactly as if it did not exist
(`NotFound`, an empty page, "unknown"), never with another provider's data. Errors:
`gateway.admin.NotFound` (404), `Conflict` (409), `Invalid` (422: `field`, and `problems`,
every (field, reason) found at once). All
methods are synchronous (redis-py): call them from a thread (`run_in_threadpool`) in async code.
Times are ISO 8601 UTC strings (`...Z`), with `_ms` twins where a chart needs numbers. The
filters, pages and cursors are in queries.py, the JSON documents in documents.py, the hiding of
secrets in redaction.py.

Events
    list_events(p, EventFilter(...), cursor=None, limit=50) -> Page(items, next_cursor)
        newest first; an item is an event summary with `deliveries` {target: {status, attempts,
        last_status_code}}. Filters: network, type, invitee, invitor, state (a delivery state
        any of its deliveries is in), since_ms, until_ms. `next_cursor` (opaque) continues the
        list; None at the end. A page may hold fewer than `limit` items and still have a cursor
        (the search looked at SCAN_BUDGET events).
    get_event(p, event_id) -> dict: the event and `deliveries`, a list with each delivery's state
        (`attempt_count`, ...), its target's health and its `attempts` (a list), oldest first.
    get_delivery(p, delivery_id) -> dict: one delivery with its event, its target's health,
        whether the target is still configured (`target_configured`) and its attempts.
Targets (each with `source` "file" | "api", `health`, secrets shown as REDACTED)
    list_targets(p) -> list[dict]; get_target(p, name) -> dict
    targets_page(p) -> dict: GET /targets ({"version", "items", "unconfigured"})
    create_target(p, data) -> dict; update_target(p, name, data) -> dict (API-made ones only;
        a secret given as REDACTED keeps the stored one); delete_target(p, name) -> None
    pause_target(p, name, reason=None) -> dict; resume_target(p, name) -> dict
        ({"target", "before", "state", "held_deliveries"}); the reason and the alert say how
        (`Principal.acting`: "through the API by NAME", or the CLI's "by hand")
    validate_target(p, name, declaration=None) -> dict: the exact request for a sample event
        (gateway.delivery.testsend.render_preview), secrets redacted, nothing sent; with a
        declaration, that one (validated, not saved)
    test_target(p, name, wait=30, fields=None) -> dict: a worker sends a sample event now
        ({"test_id", "target", "completed", "result" (the exchange) | None, "detail"})
Deliveries
    failed_deliveries(p, FailedFilter(...), cursor=None, limit=50) -> Page: dead letters, newest
        first (delivery_id, failed_at, target, network, event, event_id, status, attempts,
        replays, last_status_code, last_error); limit None: all of them
    replay(p, delivery_ids, force=False) -> dict[delivery_id, result]: the machinery of
        `gateway replay`; result replayed | pending | held | delivered | unknown | <status>
    replay_failed(p, FailedFilter(...), force=False) -> dict[delivery_id, result]
Holds and suppressed deliveries (suppression.py, mixed in)
    list_holds(p, network=None); lift_hold(p, hold_id); suppressed(p, SuppressedFilter(...),
    cursor=None, limit=50) -> Page; release_suppressed(p, SuppressedFilter(...)) -> results
Overview
    overview(p, now_ms=None) -> dict: per target over the last 24 hours, received, delivered,
        failed, waiting, suppressed, and the same per hour (`hours`, oldest first, 24 buckets)
        for a chart; `paused` flags a paused or disabled target; `truncated` says the count
        stopped at OVERVIEW_BUDGET events.
Erasure
    forget(p, number, networks=None) -> dict: every record of the number removed in the key's
        networks (erasures.py): {erasure_id, number_digest, networks, events,
        deliveries_cancelled, dead_letters, keys, holders: {name: counts}}; Invalid for a bad
        number or a network not the key's
Keys (operator only; NotFound for a provider key)
    list_keys(p) -> list[dict]; create_key(p, name, networks|None) -> (dict, secret);
    revoke_key(p, key_id) -> dict
Callbacks as received, and connecting Acrobits (callbacks.py, connect.py)
    callbacks.list(p, CallbackFilter(...), cursor=None, limit=50) -> Page: the inspector's entries
    connect.settings(p, network, base_url, source) -> dict: the portal's values;
        connect.list_tokens / create_token / remove_token; connect.send_test(p, network, send_to, ...)
"""

from __future__ import annotations

import heapq
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from gateway.admin import Conflict, Invalid, NotFound, erasures, keys
from gateway.admin.callbacks import Callbacks
from gateway.admin.connect import Connect
from gateway.admin.documents import (
    DeadLetter,
    attempt_json,
    delivery_json,
    event_json,
    event_summary,
    health_json,
)
from gateway.admin.keys import Principal
from gateway.admin.queries import (
    EventFilter,
    FailedFilter,
    Page,
    decode_cursor,
    encode_cursor,
    page_limit,
)
from gateway.admin.redaction import redact, scrub, secret_values, unredact
from gateway.admin.suppression import REPLAY_MAX, SuppressionQueries
from gateway.config.load import config_from_dict, target_from_dict
from gateway.events import ALERT_EVENT, InvitationEvent, make_alert
from gateway.exceptions import ConfigError, config_problems
from gateway.records import DEAD, Delivery, iso_ms, split_delivery_id
from gateway.store.events import Store
from gateway.store.queue import DeliveryQueue

READ_ONLY = frozenset({"source", "health"})  # in a target's JSON, not in its declaration
SCAN_BUDGET = 5000  # events one list_events call looks at before answering with a cursor
OVERVIEW_BUDGET = 50_000  # events the 24-hour overview counts at most
_CHUNK = 500
# What ids look like (ULIDs; target names): anything else is not looked up, so that no id can
# name another Redis key (`EVENT:deliveries` would).
_EVENT_ID = re.compile(r"[0-9A-Za-z]{1,64}")
_DELIVERY_ID = re.compile(r"[0-9A-Za-z]{1,64}-[A-Za-z0-9_-]{1,64}")
_STATUS = re.compile(rb'"status":\s*"([a-z]+)"')
_COUNTED = ("received", "delivered", "failed", "waiting", "suppressed")
_KINDS = {
    b"delivered": "delivered",
    b"failed": "failed",
    b"expired": "failed",
    b"suppressed": "suppressed",
    b"pending": "waiting",
    b"retrying": "waiting",
}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Service(SuppressionQueries):
    def __init__(self, store: Store, queue_name: str = "gateway-deliveries") -> None:
        self.store = store
        self.queue_name = queue_name
        self.dq = DeliveryQueue(store.redis, store.prefix, store.retention)
        self.callbacks = Callbacks(store)
        self.connect = Connect(store, self.callbacks, self.get_event)

    # -- visibility -------------------------------------------------------------------------------
    @staticmethod
    def _sees_event(p: Principal, event: InvitationEvent) -> bool:
        # The gateway's own alerts name every provider's targets: the operator's only.
        if event.type == ALERT_EVENT:
            return p.is_operator
        return p.can_see(event.network_id)

    def _event(self, p: Principal, event_id: str) -> InvitationEvent:
        event = self.store.get_event(event_id) if _EVENT_ID.fullmatch(event_id) else None
        if event is None or not self._sees_event(p, event):
            raise NotFound(f"no event {event_id}")
        return event

    # -- events -----------------------------------------------------------------------------------
    def _index_scan(
        self, index: str, after: tuple[int, str] | None, min_ms: float
    ) -> Iterator[tuple[int, str]]:
        """(ms, id) of an index, newest first, strictly after the cursor position."""
        r = self.store.redis
        top: float | str = after[0] if after else "+inf"
        offset = 0
        while True:
            rows: list[tuple[bytes, float]] = r.zrevrangebyscore(  # type: ignore[assignment]
                index, top, min_ms, start=offset, num=_CHUNK, withscores=True
            )
            if not rows:
                return
            for member, score in rows:
                item = (int(score), _text(member))
                if after is None or item < after:
                    yield item
            last = rows[-1][1]
            if top != "+inf" and last == float(top):
                offset += len(rows)
            else:
                top = last
                offset = sum(1 for row in rows if row[1] == last)

    def _event_ids(
        self, p: Principal, network: str | None, after: tuple[int, str] | None, min_ms: float
    ) -> Iterator[tuple[int, str]]:
        if network is not None:
            if not p.can_see(network):
                return iter(())
            indexes = [self.store.keys.network_events(network)]
        elif p.networks is None:
            indexes = [self.store.keys.events]
        else:
            indexes = [self.store.keys.network_events(n) for n in sorted(p.networks)]
        scans = [self._index_scan(i, after, min_ms) for i in indexes]
        return iter(scans[0]) if len(scans) == 1 else heapq.merge(*scans, reverse=True)

    def _load_events(
        self, ids: Sequence[str]
    ) -> list[tuple[InvitationEvent | None, dict[str, dict[str, Any]]]]:
        with self.store.redis.pipeline(transaction=False) as pipe:
            for eid in ids:
                pipe.get(self.store.keys.event(eid))
                pipe.hgetall(self.store.keys.deliveries(eid))
            raw = pipe.execute()
        out = []
        for i in range(0, len(raw), 2):
            blob, states = raw[i], raw[i + 1]
            event = InvitationEvent.from_dict(json.loads(blob)) if blob else None
            out.append((event, {_text(k): json.loads(v) for k, v in states.items()}))
        return out

    def list_events(
        self, p: Principal, filters: EventFilter | None = None, cursor: str | None = None, limit: int = 50
    ) -> Page:
        f = filters or EventFilter()
        limit = page_limit(limit)
        after = decode_cursor(cursor)
        if f.until_ms is not None and (after is None or (f.until_ms + 1, "") < after):
            after = (f.until_ms + 1, "")  # everything received at or before until_ms
        min_ms: float = f.since_ms if f.since_ms is not None else float("-inf")
        ids = self._event_ids(p, f.network, after, min_ms)
        items: list[dict[str, Any]] = []
        looked = 0
        last: tuple[int, str] | None = None
        while looked < SCAN_BUDGET:
            chunk = [item for _, item in zip(range(min(_CHUNK, SCAN_BUDGET - looked)), ids, strict=False)]
            if not chunk:
                return Page(items, None)
            looked += len(chunk)
            for (ms, eid), (event, deliveries) in zip(
                chunk, self._load_events([e for _, e in chunk]), strict=True
            ):
                last = (ms, eid)
                if event is None or not self._sees_event(p, event) or not f.matches(event, deliveries):
                    continue
                items.append(event_summary(event, deliveries))
                if len(items) == limit:
                    more = next(ids, None) is not None or chunk[-1] != (ms, eid)
                    return Page(items, encode_cursor(ms, eid) if more else None)
        assert last is not None
        more = next(ids, None) is not None
        return Page(items, encode_cursor(*last) if more else None)

    def get_event(self, p: Principal, event_id: str) -> dict[str, Any]:
        event = self._event(p, event_id)
        states = self.store.get_deliveries(event_id)
        attempts = self.store.get_attempts(event_id)
        by_target: dict[str, list[dict[str, Any]]] = {}
        for a in attempts:
            by_target.setdefault(str(a.get("target")), []).append(attempt_json(a))
        deliveries = [
            {
                "delivery_id": f"{event_id}-{name}",
                "target": name,
                **delivery_json(Delivery.from_dict(state)),
                "target_health": health_json(self.dq.health(name)),
                "attempts": by_target.get(name, []),
            }
            for name, state in sorted(states.items())
        ]
        return {"event": event_json(event), "deliveries": deliveries}

    def get_delivery(self, p: Principal, delivery_id: str) -> dict[str, Any]:
        if not _DELIVERY_ID.fullmatch(delivery_id):
            raise NotFound(f"no delivery {delivery_id}")
        event_id, name = split_delivery_id(delivery_id)
        [(event, state)] = self.store.get_many_deliveries([delivery_id])
        if event is None or state is None or not self._sees_event(p, event):
            raise NotFound(f"no delivery {delivery_id}")
        attempts = [attempt_json(a) for a in self.store.get_attempts(event_id) if a.get("target") == name]
        targets, _, _ = self._config()
        return {
            "delivery_id": delivery_id,
            "target": name,
            **delivery_json(state),
            "event": event_json(event),
            "target_health": health_json(self.dq.health(name)),
            "target_configured": any(t.get("name") == name for t in targets),
            "attempts": attempts,
        }

    # -- targets ----------------------------------------------------------------------------------
    def _config(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
        """(the targets every process uses, the API-made ones by name, the whole configuration)."""
        _, data = self.store.load_config()
        return list((data or {}).get("targets", [])), self.store.api_targets(), data or {}

    def _target(self, p: Principal, name: str) -> tuple[dict[str, Any], str]:
        targets, api, _ = self._config()
        for t in targets:
            if t.get("name") == name and p.can_see_target(t.get("networks", [])):
                return t, "api" if name in api else "file"
        raise NotFound(f"no target {name}")

    def _target_json(self, t: dict[str, Any], source: str) -> dict[str, Any]:
        return {**redact(t), "source": source, "health": health_json(self.dq.health(t["name"]))}

    def list_targets(self, p: Principal) -> list[dict[str, Any]]:
        targets, api, _ = self._config()
        return [
            self._target_json(t, "api" if t["name"] in api else "file")
            for t in targets
            if p.can_see_target(t.get("networks", []))
        ]

    def targets_page(self, p: Principal) -> dict[str, Any]:
        """GET /targets: the configuration's `version`, the targets (`items`, as list_targets), and
        (an operator's only) the `unconfigured` ones: removed from the configuration while paused,
        disabled or holding deliveries, each a name and its health."""
        version, _ = self.store.load_config()
        return {
            "version": version,
            "items": self.list_targets(p),
            "unconfigured": [
                {"name": name, "health": health_json(self.dq.health(name))} for name in self._unconfigured(p)
            ],
        }

    def _unconfigured(self, p: Principal) -> list[str]:
        """Targets gone from the configuration that still have health (no networks: an operator's)."""
        if not p.is_operator:
            return []
        names = {t.get("name") for t in self._config()[0]}
        return sorted((set(self.dq.held_targets()) | set(self.dq.parked_targets())) - names)

    def get_target(self, p: Principal, name: str) -> dict[str, Any]:
        return self._target_json(*self._target(p, name))

    def _validated(self, p: Principal, data: Any, config: dict[str, Any]) -> dict[str, Any]:
        """The stored form of an API-made target, or Invalid naming the field."""
        if not isinstance(data, dict):
            raise Invalid("a target is a JSON object", None)
        # What a read adds (`source`, `health`) may come back with an update: not declarations.
        data = {k: v for k, v in data.items() if k not in READ_ONLY}
        try:
            target = target_from_dict(data)
        except ConfigError as exc:
            raise _invalid(exc) from None
        refs = sorted(target.env_names())
        if refs:
            # The web process's environment holds the operator's secrets: a target made through
            # the API could send them anywhere. Secrets go in literally (stored in Redis).
            raise Invalid(
                f"${{{refs[0]}}}: environment references are for the configuration file; "
                "give the value itself",
                _env_field(data, refs[0]),
            )
        if not p.can_see_target(target.networks):
            raise Invalid(
                "a provider key's target serves only that key's networks: "
                + ", ".join(sorted(p.networks or ())),
                "networks",
            )
        span = sum(target.retry) + target.timeout * (len(target.retry) + 1)
        if span * 1.1 >= self.store.retention:
            raise Invalid(
                f"the retry schedule spans {span / 86400:.1f} days with jitter, past the "
                f"{self.store.retention / 86400:g}-day retention",
                "retry",
            )
        stored = target.to_dict()
        # The whole configuration must still load in every process.
        others = [t for t in config.get("targets", []) if t.get("name") != target.name]
        try:
            config_from_dict({**config, "targets": [*others, stored]})
        except ConfigError as exc:
            raise _invalid(exc) from None
        return stored

    def create_target(self, p: Principal, data: Any) -> dict[str, Any]:
        targets, _, config = self._config()
        name = data.get("name") if isinstance(data, dict) else None
        if isinstance(name, str) and any(t.get("name") == name for t in targets):
            # Whether it is another provider's is not told: a name is all it gives away.
            raise Conflict(f"a target named {name!r} exists: choose another name", "name")
        stored = self._validated(p, data, config)
        self.store.save_api_target(stored)
        return self._target_json(stored, "api")

    def update_target(self, p: Principal, name: str, data: Any) -> dict[str, Any]:
        current, source = self._target(p, name)
        if source == "file":
            raise Conflict(f"target {name} is declared in the configuration file: change it there", "name")
        if not isinstance(data, dict):
            raise Invalid("a target is a JSON object", None)
        data = {**data}
        data.setdefault("name", name)
        if data["name"] != name:
            raise Invalid(f"the name cannot change (delete {name} and create the new one)", "name")
        _, _, config = self._config()
        stored = self._validated(p, unredact(data, current), config)
        self.store.save_api_target(stored)
        return self._target_json(stored, "api")

    def delete_target(self, p: Principal, name: str) -> None:
        _, source = self._target(p, name)
        if source == "file":
            raise Conflict(f"target {name} is declared in the configuration file: remove it there", "name")
        # Deliveries still waiting for it are recorded as skipped (the target was removed).
        self.store.delete_api_target(name)

    def pause_target(self, p: Principal, name: str, reason: str | None = None) -> dict[str, Any]:
        self._target(p, name)
        if reason is not None and len(reason) > 500:
            raise Invalid("at most 500 characters", "reason")
        before = self.dq.pause(name, _now_ms(), reason or f"paused {p.acting}")
        self._alert(name, f"target {name} paused {p.acting}: {reason or 'no reason given'}")
        health = self.dq.health(name)
        return {
            "target": name,
            "before": before,
            "state": health.state.value,
            "held_deliveries": health.held_deliveries,
        }

    def resume_target(self, p: Principal, name: str) -> dict[str, Any]:
        """Resume a paused or disabled target (an operator's also one gone from the configuration,
        whose held deliveries the workers then record as skipped)."""
        if name not in self._unconfigured(p):
            self._target(p, name)
        health = self.dq.health(name)
        before = self.dq.resume(name, _now_ms())
        self._wake()
        if before != "active":
            self._alert(
                name, f"target {name} resumed {p.acting} (was {was(before, health.manual, health.reason)})"
            )
        return {
            "target": name,
            "before": before,
            "state": "active",
            "held_deliveries": health.held_deliveries,
        }

    def _alert(self, about: str, message: str) -> None:
        """Tell the alert target (if any, and not about itself) what was done, as the CLI does."""
        _, data = self.store.load_config()
        name = ((data or {}).get("settings") or {}).get("alert_target")
        if name and name != about:
            self.dq.write_alert(make_alert(message), name)
            self._wake()

    def _wake(self) -> None:
        from gateway.queue import enqueue_drain, make_queue

        if self.dq.set_wake():
            enqueue_drain(make_queue(self.store.redis, self.queue_name))

    def validate_target(self, p: Principal, name: str, declaration: Any = None) -> dict[str, Any]:
        """The exact request the target sends for a sample invitation, secrets redacted; nothing sent.

        With `declaration`, that declaration (validated as create/update would, not saved) in
        place of the stored target of that name (which need not exist yet).
        """
        from gateway.delivery.testsend import UnknownTarget, render_preview

        targets, _, config = self._config()
        if declaration is None:
            current, _ = self._target(p, name)
        else:
            if not isinstance(declaration, dict):
                raise Invalid("a target is a JSON object", None)
            declaration = {**declaration}
            declaration.setdefault("name", name)
            if declaration["name"] != name:
                raise Invalid(f"the declaration's name is not {name!r}", "name")
            existing = next((t for t in targets if t.get("name") == name), None)
            if existing is not None:
                existing, _ = self._target(p, name)  # NotFound unless the key may see it
                declaration = unredact(declaration, existing)
            current = self._validated(p, declaration, config)
            others = [t for t in config.get("targets", []) if t.get("name") != name]
            config = {**config, "targets": [*others, current]}
        try:
            preview = render_preview(config_from_dict(config), name)
        except UnknownTarget:
            raise NotFound(f"no target {name}") from None
        except ConfigError as exc:
            raise _invalid(exc) from None
        return dict(scrub(preview, secret_values(current)))

    def test_target(
        self, p: Principal, name: str, wait: float = 30, fields: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Have a worker send a sample invitation to the target now; the exchange, secrets redacted.

        Waits up to `wait` seconds: `completed` False (and `result` None) when no worker answered
        (the request then lapses unsent). `fields` may set invitee, invitor, network_id, event.
        """
        from gateway.testsends import UnknownTarget, request_test, wait_test_result

        current, _ = self._target(p, name)
        fields = dict(fields or {})
        network = fields.get("network_id")
        if network is not None and not p.can_see(network):
            raise Invalid(f"network {network!r} is not one of this key's", "network_id")
        try:
            test_id = request_test(self.store, name, self.queue_name, max(1, int(wait)), fields)
        except UnknownTarget:
            raise NotFound(f"no target {name}") from None
        result = wait_test_result(self.store, test_id, wait)
        return {
            "test_id": test_id,
            "target": name,
            "completed": result is not None,
            "result": scrub(result, secret_values(current)) if result is not None else None,
            "detail": None
            if result is not None
            else f"no worker answered within {wait:g} s (the request lapses unsent): is a worker running?",
        }

    # -- deliveries -------------------------------------------------------------------------------
    def _dead_letters(
        self, p: Principal, f: FailedFilter, after: tuple[int, str] | None
    ) -> Iterator[DeadLetter]:
        nets = self._scope(p, f.networks)
        if nets is None:
            return
        until = f.until_ms if after is None else min(after[0], f.until_ms or after[0])
        rows = [
            (did, ms)
            for did, ms in self.dq.dead_letters(f.since_ms, until)
            if not f.targets or did.partition("-")[2] in f.targets
        ]
        for did, ms, event, state in self._visible(p, rows, after, DEAD):
            if (
                (not nets or event.network_id in nets)
                and (f.event is None or event.type == f.event)
                and (f.error is None or f.error.lower() in (state.last_error or "").lower())
            ):
                yield DeadLetter(did, ms, did.partition("-")[2], event, state)

    def failed_deliveries(
        self,
        p: Principal,
        filters: FailedFilter | None = None,
        cursor: str | None = None,
        limit: int | None = 50,
    ) -> Page:
        """Dead letters, newest first; `limit` None: all of them (`gateway deliveries failed --limit 0`)."""
        letters = self._dead_letters(p, filters or FailedFilter(), decode_cursor(cursor))
        if limit is None:
            return Page([d.to_dict() for d in letters], None)
        limit = page_limit(limit)
        items = [d for _, d in zip(range(limit), letters, strict=False)]
        more = len(items) == limit and next(letters, None) is not None
        return Page(
            [d.to_dict() for d in items],
            encode_cursor(items[-1].failed_at_ms, items[-1].delivery_id) if more else None,
        )

    def replay(self, p: Principal, delivery_ids: Iterable[str], force: bool = False) -> dict[str, str]:
        """Replay deliveries, as `gateway replay`; one the key may not see is "unknown".

        The results are in the order of the ids (each once).
        """
        asked = list(dict.fromkeys(delivery_ids))
        if len(asked) > REPLAY_MAX:
            raise Invalid(f"at most {REPLAY_MAX} at once", "delivery_ids")
        results = {did: "unknown" for did in asked if not _DELIVERY_ID.fullmatch(did)}
        ids = [did for did in asked if did not in results]
        loaded = self.store.get_many_deliveries(ids)
        for did, (event, state) in zip(ids, loaded, strict=True):
            if event is None or state is None or not self._sees_event(p, event):
                results[did] = "unknown"
                continue
            try:
                results[did] = self.dq.replay(did, _now_ms(), force=force)
            except ValueError:
                results[did] = "unknown"
        if "replayed" in results.values():
            self._wake()
        return {did: results[did] for did in asked}

    def replay_failed(
        self, p: Principal, filters: FailedFilter | None = None, force: bool = False
    ) -> dict[str, str]:
        letters = self._dead_letters(p, filters or FailedFilter(), None)
        ids = [d.delivery_id for _, d in zip(range(REPLAY_MAX), letters, strict=False)]
        return self.replay(p, ids, force=force)

    # -- overview ---------------------------------------------------------------------------------
    def overview(self, p: Principal, now_ms: int | None = None) -> dict[str, Any]:
        now = _now_ms() if now_ms is None else now_ms
        hour = 3_600_000
        end = (now // hour + 1) * hour  # the buckets end with the current hour
        start = end - 24 * hour
        visible = {t["name"]: t for t in self.list_targets(p)}
        # (target, hour, kind) -> deliveries. The indexes already hold only what the key may see
        # (a provider's are its networks'; alerts are in the global one only), so only the
        # deliveries are read, and only their status out of each JSON value: this is the
        # dashboard's front page, over every event of a day.
        tally: Counter[tuple[bytes, int, str]] = Counter()
        ids = self._event_ids(p, None, None, start)
        looked = 0
        truncated = False
        r = self.store.redis
        while True:
            chunk = [item for _, item in zip(range(_CHUNK), ids, strict=False)]
            if not chunk:
                break
            if looked + len(chunk) > OVERVIEW_BUDGET:
                truncated = True
                break
            looked += len(chunk)
            with r.pipeline(transaction=False) as pipe:
                for _, eid in chunk:
                    pipe.hgetall(self.store.keys.deliveries(eid))
                states = pipe.execute()
            for (ms, _), deliveries in zip(chunk, states, strict=True):
                bucket = min(23, max(0, (ms - start) // hour))
                for name, raw in deliveries.items():
                    tally[(name, bucket, "received")] += 1
                    found = _STATUS.search(raw)
                    kind = _KINDS.get(found[1]) if found else None
                    if kind is not None:
                        tally[(name, bucket, kind)] += 1
        counts: dict[str, list[Counter[str]]] = {name: [Counter() for _ in range(24)] for name in visible}
        for (name, bucket, kind), n in tally.items():
            counts.setdefault(_text(name), [Counter() for _ in range(24)])[bucket][kind] += n
        targets = []
        for name in sorted(counts):
            hours = counts[name]
            t = visible.get(name)
            health = t["health"] if t else health_json(self.dq.health(name))
            targets.append(
                {
                    "target": name,
                    "configured": t is not None,
                    "state": health["state"],
                    "paused": health["state"] in ("paused", "disabled"),
                    **{k: sum(h[k] for h in hours) for k in _COUNTED},
                    "hours": [
                        {
                            "start": iso_ms(start + i * hour),
                            "start_ms": start + i * hour,
                            **{k: h[k] for k in _COUNTED},
                        }
                        for i, h in enumerate(hours)
                    ],
                }
            )
        return {
            "since": iso_ms(start),
            "until": iso_ms(end),
            "events": looked,
            "truncated": truncated,
            "targets": targets,
        }

    # -- erasure ----------------------------------------------------------------------------------
    def forget(self, p: Principal, number: str, networks: Iterable[str] | None = None) -> dict[str, Any]:
        return erasures.forget(self.store, p, number, networks)

    # -- keys -------------------------------------------------------------------------------------
    @staticmethod
    def _operator(p: Principal) -> None:
        if not p.is_operator:
            raise NotFound("keys are managed with an operator key")

    def list_keys(self, p: Principal) -> list[dict[str, Any]]:
        self._operator(p)
        return [k.to_dict() for k in keys.list_keys(self.store)]

    def create_key(
        self, p: Principal, name: str, networks: Iterable[str] | None
    ) -> tuple[dict[str, Any], str]:
        self._operator(p)
        key, secret = keys.create_key(self.store, name, networks)
        return key.to_dict(), secret

    def revoke_key(self, p: Principal, key_id: str) -> dict[str, Any]:
        self._operator(p)
        key = keys.revoke_key(self.store, key_id)
        if key is None:
            raise NotFound(f"no key {key_id}")
        return key.to_dict()


def was(before: str, manual: bool, reason: str | None) -> str:
    """A target's state before a resume, told: `paused by hand: CRM maintenance`, `disabled: 410 Gone`."""
    label = "paused by hand" if before == "paused" and manual else before
    why = f": {reason}" if reason and reason != label else ""
    return label + why


def _invalid(exc: ConfigError) -> Invalid:
    """Every problem of a target's validation, each naming its key."""
    problems: list[tuple[str | None, str]] = [(e.key or "name", e.reason) for e in config_problems(exc)]
    return Invalid(exc.reason, exc.key or "name", problems)


def _env_field(data: Mapping[str, Any], var: str) -> str:
    ref = "${" + var + "}"
    for key, value in data.items():
        if ref in json.dumps(value):
            return str(key)
    return "name"
