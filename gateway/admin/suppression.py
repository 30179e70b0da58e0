"""What the abuse limits held back, as a key sees it: the guard's holds (listed, lifted) and the
suppressed deliveries (listed, released in bulk). A part of `Service` (service.py), kept apart.

Holds
    list_holds(p, network=None) -> list[dict]: the holds in force (id, network, prefix, reason,
        since, until), oldest first
    lift_hold(p, hold_id) -> dict: the hold, lifted; a worker's ticker tells the alert target
Suppressed deliveries
    suppressed(p, SuppressedFilter(...), cursor=None, limit=50) -> Page: newest first
        (delivery_id, received_at, target, network, event, event_id, reason, kind, replays)
    release_suppressed(p, SuppressedFilter(...)) -> dict[delivery_id, result]: each one due now,
        as `replay` does (REPLAY_MAX at most per call)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from gateway.admin import NotFound
from gateway.admin.documents import Suppressed
from gateway.admin.keys import Principal
from gateway.admin.queries import Page, SuppressedFilter, decode_cursor, encode_cursor, page_limit
from gateway.events import InvitationEvent
from gateway.records import Delivery, DeliveryStatus
from gateway.store.codec import now_ms, text
from gateway.store.events import Store
from gateway.store.holds import Holds

_CHUNK = 500
REPLAY_MAX = 10_000  # deliveries one replay or release call sends at most
_SUPPRESSED = frozenset({DeliveryStatus.SUPPRESSED})


class SuppressionQueries:
    """Holds and suppressed deliveries; mixed into `Service`, whose store, visibility and replay
    it uses."""

    store: Store

    def _sees_event(self, p: Principal, event: InvitationEvent) -> bool:
        raise NotImplementedError

    def replay(self, p: Principal, delivery_ids: Iterable[str], force: bool = False) -> dict[str, str]:
        raise NotImplementedError

    def _holds(self) -> Holds:
        return Holds(self.store.redis, self.store.prefix)

    # -- holds ------------------------------------------------------------------------------------
    def list_holds(self, p: Principal, network: str | None = None) -> list[dict[str, Any]]:
        return [
            h.to_dict()
            for h in self._holds().active(now_ms())
            if p.can_see(h.network) and (network is None or h.network == network)
        ]

    def lift_hold(self, p: Principal, hold_id: str) -> dict[str, Any]:
        holds = self._holds()
        now = now_ms()
        hold = holds.get(hold_id, now)
        if hold is None or not p.can_see(hold.network):
            raise NotFound(f"no hold {hold_id} (unknown, ended, or lifted already)")
        lifted = holds.lift(hold_id, now, p.acting)
        if lifted is None:  # ended meanwhile
            raise NotFound(f"no hold {hold_id} (unknown, ended, or lifted already)")
        return {**lifted.to_dict(), "lifted": p.acting}

    # -- suppressed deliveries --------------------------------------------------------------------
    def _scope(self, p: Principal, networks: frozenset[str]) -> frozenset[str] | None:
        """The networks a filter may reach for the key (empty: any it sees); None: none at all."""
        nets = networks if p.networks is None else (networks or p.networks) & p.networks
        return None if p.networks is not None and not nets else nets

    def _visible(
        self,
        p: Principal,
        rows: Iterable[tuple[str, int]],
        after: tuple[int, str] | None,
        statuses: frozenset[DeliveryStatus],
    ) -> Iterator[tuple[str, int, InvitationEvent, Delivery]]:
        """(delivery id, ms, event, state) of an index's rows the key may see, in one of
        `statuses`: newest first, strictly after the cursor, in a stable order within a
        millisecond (the cursor relies on it); loaded _CHUNK at a time."""
        ordered = sorted(
            ((did, ms) for did, ms in rows if after is None or (ms, did) < after),
            key=lambda row: (row[1], row[0]),
            reverse=True,
        )
        for start in range(0, len(ordered), _CHUNK):
            chunk = ordered[start : start + _CHUNK]
            for (did, ms), (event, state) in zip(
                chunk, self.store.get_many_deliveries([d for d, _ in chunk]), strict=True
            ):
                if event is None or state is None or state.status not in statuses:
                    continue
                if self._sees_event(p, event):
                    yield did, ms, event, state

    def _suppressed(
        self, p: Principal, f: SuppressedFilter, after: tuple[int, str] | None
    ) -> Iterator[Suppressed]:
        nets = self._scope(p, f.networks)
        if nets is None:
            return
        until = f.until_ms if after is None else min(after[0], f.until_ms or after[0])
        raw: list[tuple[bytes, float]] = self.store.redis.zrevrangebyscore(  # type: ignore[assignment]
            self.store.keys.suppressed,
            until if until is not None else "+inf",
            f.since_ms if f.since_ms is not None else "-inf",
            withscores=True,
        )
        rows = [(text(did), int(ms)) for did, ms in raw]
        for did, ms, event, state in self._visible(p, rows, after, _SUPPRESSED):
            if (not nets or event.network_id in nets) and (
                not f.reasons or (state.suppressed_by or "") in f.reasons
            ):
                yield Suppressed(did, ms, did.partition("-")[2], event, state)

    def suppressed(
        self,
        p: Principal,
        filters: SuppressedFilter | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        found = self._suppressed(p, filters or SuppressedFilter(), decode_cursor(cursor))
        limit = page_limit(limit)
        items = [s for _, s in zip(range(limit), found, strict=False)]
        more = len(items) == limit and next(found, None) is not None
        return Page(
            [s.to_dict() for s in items],
            encode_cursor(items[-1].received_ms, items[-1].delivery_id) if more else None,
        )

    def suppressed_ids(self, p: Principal, filters: SuppressedFilter | None = None) -> list[str]:
        """Every suppressed delivery the filters select (REPLAY_MAX at most), newest first."""
        found = self._suppressed(p, filters or SuppressedFilter(), None)
        return [s.delivery_id for _, s in zip(range(REPLAY_MAX), found, strict=False)]

    def release_suppressed(self, p: Principal, filters: SuppressedFilter | None = None) -> dict[str, str]:
        """Release what the filters select: each delivery due now, delivered once (replay.lua)."""
        return self.replay(p, self.suppressed_ids(p, filters))
