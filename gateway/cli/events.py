"""`gateway events ...`: what was received."""

from __future__ import annotations

import json
from typing import Any

import click

from gateway.admin.service import MAX_LIMIT, STATES
from gateway.cli.common import (
    _EVENT_CHOICES,
    OperatorCommand,
    When,
    _echo_json,
    _settings,
    _store,
    main,
)


@main.group()
def events() -> None:
    """Watch invitations and their deliveries."""


@events.command("list", cls=OperatorCommand)
@click.option("--network", default=None, help="Only this network id.")
@click.option(
    "--type", "event_type", type=click.Choice(_EVENT_CHOICES), default=None, help="Only this event type."
)
@click.option("--invitee", default=None, help="Only this invitee (as normalized or as sent).")
@click.option("--invitor", default=None, help="Only this invitor.")
@click.option("--state", type=click.Choice(STATES), default=None, help="With a delivery in this state.")
@click.option(
    "--since", type=When(), default=None, help="Received at or after WHEN (ISO 8601 or 30m, 2h, 7d)."
)
@click.option("--until", type=When(), default=None, help="Received at or before WHEN.")
@click.option("--cursor", default=None, help="Continue a list (the cursor a previous one printed).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, MAX_LIMIT))
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
    from gateway.admin.service import EventFilter, Service
    from gateway.cli.keys import CLI

    settings = _settings()
    service = Service(_store(settings), settings.queue_name)
    try:
        filters = EventFilter(network, event_type, invitee, invitor, state, since, until)
        page = service.list_events(CLI, filters, cursor, limit)
    except AdminError as exc:
        raise click.BadParameter(exc.detail, param_hint=f"'--{exc.field}'" if exc.field else None) from None
    if as_json:
        _echo_json({"items": page.items, "next_cursor": page.next_cursor})
        return
    for ev in page.items:
        states = " ".join(f"{name}={d['status']}/{d['attempts']}" for name, d in ev["deliveries"].items())
        where = f"{ev['type']:<19} {ev['network_id']:<16} {ev['invitee']:<16}"
        click.echo(f"{ev['id']} {ev['received_at']} {where} {states}")
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@events.command("show")
@click.argument("event_id")
def events_show(event_id: str) -> None:
    """One invitation: the event, each delivery's state, every attempt."""
    store = _store(_settings())
    ev = store.get_event(event_id)
    if ev is None:
        raise click.ClickException(f"no event {event_id} (unknown or past retention)")
    out: dict[str, Any] = {
        "event": ev.to_dict(),
        "deliveries": store.get_deliveries(event_id),
        "attempts": store.get_attempts(event_id),
    }
    click.echo(json.dumps(out, indent=2, ensure_ascii=False))


# -- the spool and ingest tokens ----------------------------------------------------------------------
