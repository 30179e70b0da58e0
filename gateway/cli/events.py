"""`gateway events ...`: what was received, and what became of each delivery.

Read through the admin API's Service as an operator key: `--json` prints the API's document
(GET /events, GET /events/{id}).
"""

from __future__ import annotations

from typing import Any

import click

from gateway.admin import AdminError
from gateway.admin.queries import EVENT_TYPE_CHOICES, MAX_LIMIT, STATE_FILTERS, EventFilter, Page
from gateway.cli.common import (
    CLI,
    OperatorCommand,
    When,
    _bad_parameter,
    _clip,
    _echo_json,
    _fail,
    _service,
    _table,
    main,
)


@main.group()
def events() -> None:
    """Watch invitations and their deliveries."""


@events.command("list", cls=OperatorCommand)
@click.option("--network", default=None, metavar="ID", help="Only this network id.")
@click.option(
    "--type", "event_type", type=click.Choice(EVENT_TYPE_CHOICES), default=None, help="Only this event type."
)
@click.option("--invitee", default=None, help="Only this invitee (as normalized, as sent or in E.164).")
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
    service = _service()
    try:
        filters = EventFilter(network, event_type, invitee, invitor, state, since, until)
        page = service.list_events(CLI, filters, cursor, limit) if limit else Page([], None)
    except AdminError as exc:
        raise _bad_parameter(exc) from None
    if as_json:
        _echo_json(page.to_dict())
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
        [
            "RECEIVED",
            "EVENT",
            "TYPE",
            "NETWORK",
            "INVITOR",
            "INVITEE",
            "DELIVERIES (target=state/attempts)",
            "SUPPRESSED BECAUSE",
        ],
        [
            [
                ev["received_at"],
                ev["id"],
                ev["type"],
                ev["network_id"],
                _clip(str(ev["invitor"]), 24),
                ev["invitee"],
                " ".join(f"{n}={d['status']}/{d['attempts']}" for n, d in ev["deliveries"].items()) or "-",
                _suppressed_because(ev["deliveries"]),
            ]
            for ev in page.items
        ],
    )
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


def _suppressed_because(deliveries: dict[str, Any]) -> str:
    """The reason an event's deliveries were held back (one for all: they share it), or -."""
    for d in deliveries.values():
        if d.get("status") == "suppressed" and d.get("waiting"):
            return f"[{d.get('suppressed_by') or '?'}] {d['waiting']}"
    return "-"


@events.command("show", cls=OperatorCommand)
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="As JSON, as GET /api/v1/events/{id}.")
def events_show(event_id: str, as_json: bool) -> None:
    """One invitation: the event, each delivery's state, every attempt."""
    try:
        shown = _service().get_event(CLI, event_id)
    except AdminError as exc:
        _fail(exc, f"no event {event_id} (unknown or past retention)")
    if as_json:
        _echo_json(shown)
        return
    ev, deliveries = shown["event"], shown["deliveries"]
    click.echo(f"event      {ev['id']}")
    click.echo(f"type       {ev['type']}")
    click.echo(f"received   {ev['received_at']} (as {ev['source_format']}, from {ev.get('client') or '?'})")
    click.echo(f"network    {ev['network_id']}")
    click.echo(f"invitor    {ev['invitor']}")
    e164 = ev.get("invitee_e164")
    click.echo(
        f"invitee    {ev['invitee']} (sent as {ev['invitee_raw']!r}; "
        + (f"E.164 {e164})" if e164 else "no E.164 form)")
    )
    if ev.get("message"):
        click.echo(f"message    {ev['message']}")
    if ev.get("created_id"):
        click.echo(f"created    {ev['created_id']} (its invitation_created event)")
    click.echo("")
    if deliveries:
        _table(
            ["TARGET", "STATE", "ATTEMPTS", "UPDATED", "NEXT ATTEMPT", "LAST"],
            [
                [
                    d["target"],
                    str(d["status"]) + (f" ({d['waiting']})" if d.get("waiting") else ""),
                    str(d["attempt_count"]),
                    d["updated_at"] or "-",
                    d["next_attempt_at"] or "-",
                    _clip(_last(d), 60),
                ]
                for d in deliveries
            ],
        )
    else:
        click.echo("no deliveries (no target served this network and event)")
    # Every attempt in the order made (each delivery's are oldest first).
    attempts = sorted((a for d in deliveries for a in d["attempts"]), key=lambda a: str(a.get("at", "")))
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
                    _clip("; ".join(str(a[k]) for k in ("error", "note") if a.get(k)), 60),
                ]
                for a in attempts
            ],
        )


def _last(d: dict[str, Any]) -> str:
    code, error = d.get("last_status_code"), d.get("last_error")
    parts = [f"HTTP {code}" if code else "", str(error) if error else ""]
    return " ".join(p for p in parts if p) or "-"


@main.command(cls=OperatorCommand)
@click.argument("number")
@click.option("--network", "networks", multiple=True, metavar="ID", help="Only this network id (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer (POST /api/v1/erasures).")
def forget(number: str, networks: tuple[str, ...], as_json: bool) -> None:
    """Erase a phone number: every event, delivery, attempt, dead letter, dedupe and limit key,
    cached lookup and test send that holds it, in any spelling it arrived in.

    Deliveries still waiting are cancelled and never sent. The log gets one audit line without
    the number. Quote a number with spaces: gateway forget "+1 555 123 1234".
    """
    try:
        done = _service().forget(CLI, number, networks or None)
    except AdminError as exc:
        if exc.field == "number":
            raise click.BadParameter(exc.detail, param_hint="'NUMBER'") from None
        _fail(exc)
    if as_json:
        _echo_json(done)
        return
    where = "every network" if done["networks"] is None else "networks " + ", ".join(done["networks"])
    click.echo(f"erasure {done['erasure_id']} (number {done['number_digest']}, {where}):")
    click.echo(
        f"  {done['events']} events, {done['deliveries_cancelled']} deliveries cancelled, "
        f"{done['dead_letters']} dead letters, {done['keys']} keys removed"
    )
    for name, counts in done["holders"].items():
        shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"
        click.echo(f"  {name}: {shown}")
