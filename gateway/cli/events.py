"""`gateway events ...`: what was received, and what became of each delivery."""

from __future__ import annotations

from typing import Any

import click

from gateway.admin.service import MAX_LIMIT, STATE_FILTERS
from gateway.cli.common import (
    _EVENT_CHOICES,
    OperatorCommand,
    When,
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


@main.group()
def events() -> None:
    """Watch invitations and their deliveries."""


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
    "--type", "event_type", type=click.Choice(_EVENT_CHOICES), default=None, help="Only this event type."
)
@click.option("--invitee", default=None, help="Only this invitee (as normalized or as sent).")
@click.option("--invitor", default=None, help="Only this invitor.")
@click.option(
    "--state",
    type=click.Choice(STATE_FILTERS),
    default=None,
    help="Only events with a delivery in this state (waiting: pending or retrying).",
)
@click.option(
    "--since", type=When(), default=None, help="Received at or after WHEN (ISO 8601 or 30m, 2h, 7d)."
)
@click.option("--until", type=When(), default=None, help="Received at or before WHEN.")
@click.option("--cursor", default=None, help="Continue a list (the cursor a previous one printed).")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(0, MAX_LIMIT),
    help="At most this many events, newest first (0: none).",
)
@click.option("--json", "as_json", is_flag=True, help='{"items": [...], "next_cursor": ...}, as the API.')
def events_list(
    network: str | None,
    event_type: str | None,
    invitee: str | None,
    invitor: str | None,
    state: str | None,
    since: int | None,
    until: int | None,
    cursor: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The latest invitations with the state of each delivery, newest first (as GET /api/v1/events)."""
    from gateway.admin import AdminError
    from gateway.admin.service import EventFilter, Page, Service
    from gateway.cli.keys import CLI

    settings = _settings()
    service = Service(_store(settings), settings.queue_name)
    try:
        filters = EventFilter(network, event_type, invitee, invitor, state, since, until)
        page = service.list_events(CLI, filters, cursor, limit) if limit else Page([], None)
    except AdminError as exc:
        raise click.BadParameter(exc.detail, param_hint=f"'--{exc.field}'" if exc.field else None) from None
    if as_json:
        _echo_json({"items": page.items, "next_cursor": page.next_cursor})
        return
    if not page.items:
        if limit > 0:
            what = [f"network {network!r}"] if network else []
            what += [f"type {event_type}"] if event_type else []
            what += [f"invitee {invitee!r}"] if invitee else []
            what += [f"invitor {invitor!r}"] if invitor else []
            what += [f"a delivery {state}"] if state else []
            what += ["the time range"] if since is not None or until is not None else []
            click.echo("no events" + (f" matched ({', '.join(what)})" if what else " yet"), err=True)
        return
    _table(
        ["RECEIVED", "EVENT", "TYPE", "NETWORK", "INVITOR", "INVITEE", "DELIVERIES (target=state/attempts)"],
        [
            [
                ev["received_at"],
                ev["id"],
                ev["type"],
                ev["network_id"],
                _clip(str(ev["invitor"]), 24),
                ev["invitee"],
                " ".join(f"{n}={d['status']}/{d['attempts']}" for n, d in ev["deliveries"].items()) or "-",
            ]
            for ev in page.items
        ],
    )
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


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
