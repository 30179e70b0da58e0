"""`gateway events ...`: what was received."""

from __future__ import annotations

import json
from typing import Any

import click

from gateway.cli.common import (
    _settings,
    _store,
    main,
)


@main.group()
def events() -> None:
    """Watch invitations and their deliveries."""


@events.command("list")
@click.option("--network", default=None, help="Only this network id.")
@click.option("--limit", default=20, show_default=True, type=int)
def events_list(network: str | None, limit: int) -> None:
    """The latest invitations with the state of each delivery."""
    store = _store(_settings())
    for ev, deliveries in store.events_with_deliveries(store.recent_events(limit, network)):
        states = " ".join(f"{name}={d['status']}/{d['attempts']}" for name, d in sorted(deliveries.items()))
        click.echo(f"{ev.id} {ev.received_at} {ev.type:<19} {ev.network_id:<16} {ev.invitee:<16} {states}")


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
