"""`gateway events ...`: what was received, and what became of each delivery."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click

from gateway.cli.common import (
    OperatorCommand,
    _attempt_json,
    _clip,
    _echo_json,
    _iso,
    _settings,
    _store,
    _table,
    main,
)
from gateway.events import InvitationEvent
from gateway.store import Store

PAGE = 200  # events read per round trip while filtering
# --state: a delivery status, or `waiting` for any delivery not finished yet.
STATES = ("waiting", "pending", "retrying", "delivered", "failed", "expired", "skipped", "suppressed")
_WAITING = frozenset({"pending", "retrying"})


@main.group()
def events() -> None:
    """Watch invitations and their deliveries."""


def _matches(deliveries: dict[str, dict[str, Any]], state: str | None) -> bool:
    if state is None:
        return True
    statuses = {str(d.get("status")) for d in deliveries.values()}
    return bool(statuses & _WAITING) if state == "waiting" else state in statuses


def _select(
    store: Store, limit: int, network: str | None, state: str | None
) -> Iterator[tuple[InvitationEvent, dict[str, dict[str, Any]]]]:
    """The newest events first, `limit` of them that have a delivery in `state` (if given)."""
    if limit <= 0:
        return
    found = 0
    start = 0
    page = limit if state is None else max(limit, PAGE)
    while True:
        ids = store.recent_events(page, network, offset=start)
        if not ids:
            return
        start += len(ids)
        for ev, deliveries in store.events_with_deliveries(ids):
            if _matches(deliveries, state):
                yield ev, deliveries
                found += 1
                if found >= limit:
                    return
        if len(ids) < page:
            return


def _delivery_cell(name: str, d: dict[str, Any]) -> str:
    return f"{name}={d.get('status')}/{d.get('attempts', 0)}"


def _event_json(ev: InvitationEvent, deliveries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "event": ev.to_dict(),
        "deliveries": {name: _delivery_times(d) for name, d in sorted(deliveries.items())},
    }


def _delivery_times(d: dict[str, Any]) -> dict[str, Any]:
    out = dict(d)
    for key in ("updated_at", "next_attempt_at"):
        if out.get(key):
            out[key] = _iso(out[key])
        elif key in out:
            out[key] = None
    return out


@events.command("list", cls=OperatorCommand)
@click.option("--network", default=None, metavar="ID", help="Only this network id.")
@click.option(
    "--state",
    type=click.Choice(STATES),
    default=None,
    help="Only events with a delivery in this state (waiting: pending or retrying).",
)
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="At most this many events, newest first (0: none).",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON array, for scripts (times in ISO 8601).")
def events_list(network: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """The latest invitations with the state of each delivery."""
    store = _store(_settings())
    rows = list(_select(store, limit, network, state))
    if as_json:
        _echo_json([_event_json(ev, d) for ev, d in rows])
        return
    if not rows:
        if limit > 0:
            what = [f"network {network!r}"] if network else []
            what += [f"a delivery {state}"] if state else []
            click.echo("no events" + (f" matched ({', '.join(what)})" if what else " yet"), err=True)
        return
    _table(
        ["RECEIVED", "EVENT", "TYPE", "NETWORK", "INVITOR", "INVITEE", "DELIVERIES (target=state/attempts)"],
        [
            [
                ev.received_at,
                ev.id,
                ev.type,
                ev.network_id,
                _clip(ev.invitor, 24),
                ev.invitee,
                " ".join(_delivery_cell(n, d) for n, d in sorted(deliveries.items())) or "-",
            ]
            for ev, deliveries in rows
        ],
    )


@events.command("show", cls=OperatorCommand)
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="JSON, for scripts (times in ISO 8601).")
def events_show(event_id: str, as_json: bool) -> None:
    """One invitation: the event, each delivery's state, every attempt."""
    store = _store(_settings())
    ev = store.get_event(event_id)
    if ev is None:
        raise click.ClickException(f"no event {event_id} (unknown or past retention)")
    deliveries = store.get_deliveries(event_id)
    attempts = [_attempt_json(a) for a in store.get_attempts(event_id)]
    if as_json:
        _echo_json({**_event_json(ev, deliveries), "attempts": attempts})
        return
    click.echo(f"event      {ev.id}")
    click.echo(f"type       {ev.type}")
    click.echo(f"received   {ev.received_at} (as {ev.source_format}, from {ev.client or '?'})")
    click.echo(f"network    {ev.network_id}")
    click.echo(f"invitor    {ev.invitor}")
    click.echo(f"invitee    {ev.invitee} (sent as {ev.invitee_raw!r})")
    if ev.message:
        click.echo(f"message    {ev.message}")
    click.echo("")
    if deliveries:
        _table(
            ["TARGET", "STATE", "ATTEMPTS", "UPDATED", "NEXT ATTEMPT", "LAST"],
            [
                [
                    name,
                    str(d.get("status")) + (f" ({d['waiting']})" if d.get("waiting") else ""),
                    str(d.get("attempts", 0)),
                    _iso(d.get("updated_at") or None),
                    _iso(d.get("next_attempt_at") or None),
                    _clip(_last(d), 60),
                ]
                for name, d in sorted(deliveries.items())
            ],
        )
    else:
        click.echo("no deliveries (no target served this network and event)")
    if attempts:
        click.echo("")
        _table(
            ["AT", "TARGET", "#", "OUTCOME", "STATUS", "MS", "ERROR"],
            [
                [
                    str(a.get("at", "-")),
                    str(a.get("target", "-")),
                    str(a.get("attempt", "-")),
                    str(a.get("outcome", "-")),
                    str(a.get("status_code") or "-"),
                    f"{a['latency_ms']:.0f}" if a.get("latency_ms") is not None else "-",
                    _clip(str(a.get("error") or ""), 60),
                ]
                for a in attempts
            ],
        )


def _last(d: dict[str, Any]) -> str:
    code, error = d.get("last_status_code"), d.get("last_error")
    parts = [f"HTTP {code}" if code else "", str(error) if error else ""]
    return " ".join(p for p in parts if p) or "-"
