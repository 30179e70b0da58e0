"""`gateway callbacks ...` and `gateway connect`: callbacks as received, and connecting Acrobits.

Through the admin API's Service as an operator key: `--json` prints the API's document
(GET /callbacks, POST /callbacks/test, GET /connect).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from gateway.admin import AdminError
from gateway.admin.callbacks import OUTCOMES, CallbackFilter
from gateway.admin.connect import SHAPES, TEST_INVITEE
from gateway.admin.queries import MAX_LIMIT, Page
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
from gateway.events import EVENT_TYPES, INVITATION_CREATED

# Where the portal reaches the ingest: the API takes it from GATEWAY_PUBLIC_URL or the request;
# a command has no request.
url_option = click.option(
    "--url",
    "base_url",
    envvar="GATEWAY_PUBLIC_URL",
    metavar="URL",
    help="The ingest's public base URL (default: GATEWAY_PUBLIC_URL).",
)


def base_of(base_url: str | None) -> tuple[str, str]:
    """(base URL, where it came from), as GET /connect says it."""
    if not base_url:
        raise click.UsageError("give the ingest's public base URL: --url https://... or GATEWAY_PUBLIC_URL")
    source = click.get_current_context().get_parameter_source("base_url")
    from_env = source is click.core.ParameterSource.ENVIRONMENT
    return base_url.rstrip("/"), "GATEWAY_PUBLIC_URL" if from_env else "--url"


@main.group()
def callbacks() -> None:
    """Callbacks as received: what each became, and why a rejected one was refused."""


@callbacks.command("list", cls=OperatorCommand)
@click.option("--network", default=None, metavar="ID", help="Only this network id.")
@click.option("--outcome", type=click.Choice(OUTCOMES), default=None, help="Only this outcome.")
@click.option("--unroutable", is_flag=True, help="Only those whose network could not be told.")
@click.option(
    "--since", type=When(), default=None, help="Received at or after WHEN (ISO 8601 or 30m, 2h, 7d)."
)
@click.option("--until", type=When(), default=None, help="Received at or before WHEN.")
@click.option("--cursor", default=None, help="Continue a list (the cursor a previous one printed).")
@click.option(
    "--limit", default=20, show_default=True, type=click.IntRange(0, MAX_LIMIT), help="At most this many."
)
@click.option("--json", "as_json", is_flag=True, help='{"items": [...], "next_cursor": ...}, as the API.')
def callbacks_list(
    network: str | None,
    outcome: str | None,
    unroutable: bool,
    since: int | None,
    until: int | None,
    cursor: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The latest callbacks, newest first (as GET /api/v1/callbacks), each with its outcome and,
    for a rejected one, the reason and what to change in the portal."""
    service = _service()
    try:
        filters = CallbackFilter(network, outcome, unroutable, since, until)
        page = service.callbacks.list(CLI, filters, cursor, limit) if limit else Page([], None)
    except AdminError as exc:
        raise _bad_parameter(exc) from None
    if as_json:
        _echo_json(page.to_dict())
        return
    if not page.items:
        if limit > 0:
            click.echo(
                "no callbacks" + (" matched" if network or outcome or unroutable or since or until else ""),
                err=True,
            )
        return
    _table(
        ["RECEIVED", "NETWORK", "EVENT", "REQUEST", "OUTCOME", "DETAIL"],
        [
            [
                c["received_at"],
                c["network"] or "(unroutable)",
                str(c["event"]).removeprefix("invitation_"),
                _clip(f"{c['method']} {c['path']}", 48),
                _outcome(c),
                _clip(c["hint"] or "", 100),
            ]
            for c in page.items
        ],
    )
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


def _outcome(c: dict[str, Any]) -> str:
    if c["outcome"] == "rejected":
        return f"rejected {c['status']}: {_clip(str(c['reason'] or ''), 60)}"
    if c["outcome"] == "duplicate":
        return f"duplicate of {c['duplicate_of'] or '?'}"
    if c["outcome"] == "suppressed":
        return f"suppressed: {_clip(str(c['reason'] or ''), 60)}"
    return f"{c['outcome']} {c['event_id'] or ''}".strip()


@callbacks.command("test", cls=OperatorCommand)
@click.argument("network")
@url_option
@click.option("--event", type=click.Choice(EVENT_TYPES), default=INVITATION_CREATED, show_default=True)
@click.option("--format", "shape", type=click.Choice(SHAPES), default="json", show_default=True)
@click.option(
    "--invitee", default=None, help=f"The number invited (default {TEST_INVITEE}, a fictional one)."
)
@click.option(
    "--yes", "-y", is_flag=True, help="Do not ask first (it is delivered to the network's targets)."
)
@click.option("--json", "as_json", is_flag=True, help="As JSON, as POST /api/v1/callbacks/test.")
def callbacks_test(
    network: str, base_url: str | None, event: str, shape: str, invitee: str | None, yes: bool, as_json: bool
) -> None:
    """Send one callback for NETWORK through the ingest at --url, as the Contacts server would (a
    one-time token): it is delivered to the network's real targets."""
    url, _ = base_of(base_url)
    if not yes:
        question = f"send a test {event} for {network} to {url}? It is delivered to the network's targets"
        if not sys.stdin.isatty():
            raise click.ClickException(f"{question}: add --yes to send it without a terminal")
        click.confirm(question[0].upper() + question[1:] + ".", abort=True)
    service = _service()
    try:
        result = service.connect.send_test(CLI, network, url, event, shape, invitee)
    except AdminError as exc:
        _fail(exc)
    if as_json:
        _echo_json(result)
    else:
        sent = result["sent"]
        click.echo(
            f"sent      {sent['method']} {sent['url']}"
            + (f"\n          {sent['body']}" if sent["body"] else "")
        )
        click.echo(
            f"answer    {result['status'] or '-'} {result['error'] or _clip(result['answer'], 80)}".rstrip()
        )
        c = result["callback"]
        click.echo(f"callback  {_outcome(c) if c else '(not in the inspector)'}")
        if c and c["hint"]:
            click.echo(f"          {c['hint']}")
        for d in (result["event"] or {}).get("deliveries", []):
            click.echo(f"delivery  {d['delivery_id']}: {d['status']}")
    if result["status"] not in (204,):
        sys.exit(1)


@main.command("connect", cls=OperatorCommand)
@click.argument("network")
@url_option
@click.option("--json", "as_json", is_flag=True, help="As JSON, as GET /api/v1/connect.")
def connect(network: str, base_url: str | None, as_json: bool) -> None:
    """What to paste into the Cloud Softphone portal for NETWORK (the token as <TOKEN>: `gateway
    tokens add NETWORK` makes one and prints the values with it)."""
    url, source = base_of(base_url)
    try:
        doc = _service().connect.settings(CLI, network, url, source)
    except AdminError as exc:
        _fail(exc)
    if as_json:
        _echo_json(doc)
        return
    print_settings(doc["settings"])
    tokens = ", ".join(t["id"] or t["ref"] for t in doc["tokens"]) or "none (`gateway tokens add` makes one)"
    click.echo(f"\ntokens of {network}: {tokens}")
    click.echo(f"targets: {', '.join(doc['targets']) or 'none serve this network yet'}")


def print_settings(settings: dict[str, dict[str, str]]) -> None:
    for shape, title in (("get", "GET"), ("json", "POST with JSON (recommended)")):
        click.echo(f"{title}:")
        for key, value in settings[shape].items():
            click.echo(f"  {key:<31} {value or '(empty)'}")
