"""`gateway holds ...` and `gateway suppressed ...`: what the abuse limits held back.

Through the admin API's Service as an operator key, so `--json` prints the API's document:
`holds list` GET /holds, `holds lift` DELETE /holds/{id}, `suppressed list` GET /suppressed,
`suppressed release` the answer of POST /suppressed/release.
"""

from __future__ import annotations

import shlex
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import click

from gateway.admin import AdminError
from gateway.admin.documents import replay_json
from gateway.admin.queries import MAX_LIMIT, SUPPRESSION_KINDS, SuppressedFilter
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

F = TypeVar("F", bound=Callable[..., Any])
RELEASE_CHUNK = 100  # ids per Service.replay call: the progress bar moves between them


@main.group()
def holds() -> None:
    """Destination prefixes the guard holds: list them, lift one."""


@holds.command("list", cls=OperatorCommand)
@click.option("--network", default=None, metavar="ID", help="Only this network id.")
@click.option("--json", "as_json", is_flag=True, help='{"items": [...]}, as GET /api/v1/holds.')
def holds_list(network: str | None, as_json: bool) -> None:
    """The prefixes held now, oldest first: their invitations are kept, suppressed, until the
    hold ends or is lifted."""
    items = _service().list_holds(CLI, network)
    if as_json:
        _echo_json({"items": items})
        return
    if not items:
        click.echo("no prefix is held" + (f" for network {network!r}" if network else ""), err=True)
        return
    _table(
        ["ID", "NETWORK", "PREFIX", "SINCE", "UNTIL", "REASON"],
        [[h["id"], h["network"], h["prefix"], h["since"], h["until"], h["reason"]] for h in items],
    )


@holds.command("lift", cls=OperatorCommand)
@click.argument("hold_id")
@click.option("--json", "as_json", is_flag=True, help="As DELETE /api/v1/holds/{id} answers.")
def holds_lift(hold_id: str, as_json: bool) -> None:
    """Lift a hold now (HOLD_ID: from `gateway holds list`). The alert target is told; what the
    hold kept back stays suppressed until `gateway suppressed release`."""
    try:
        lifted = _service().lift_hold(CLI, hold_id)
    except AdminError as exc:
        _fail(exc, f"no hold {hold_id} (unknown, ended, or lifted already): see `gateway holds list`")
    if as_json:
        _echo_json(lifted)
        return
    click.echo(
        f"lifted the hold on {lifted['prefix']} (network {lifted['network']}); what it kept back: "
        f"`gateway suppressed list --network {shlex.quote(lifted['network'])} --reason guard`"
    )


@main.group()
def suppressed() -> None:
    """Invitations held back by an abuse limit: list them, release them in bulk."""


def suppressed_filters(f: F) -> F:
    for option in reversed(
        [
            click.option(
                "--network", "networks", multiple=True, metavar="ID", help="Only this network (repeat)."
            ),
            click.option(
                "--reason",
                "reasons",
                multiple=True,
                type=click.Choice(SUPPRESSION_KINDS),
                help="Only those held back by this rule (repeat).",
            ),
            click.option(
                "--since",
                type=When(),
                default=None,
                help="Received at or after WHEN (ISO 8601 or 30m, 2h, 7d).",
            ),
            click.option("--until", type=When(), default=None, help="Received at or before WHEN."),
        ]
    ):
        f = option(f)
    return f


def _filter(
    networks: tuple[str, ...], reasons: tuple[str, ...], since: int | None, until: int | None
) -> SuppressedFilter:
    try:
        return SuppressedFilter(frozenset(networks), frozenset(reasons), since, until)
    except AdminError as exc:
        raise _bad_parameter(exc) from None


@suppressed.command("list", cls=OperatorCommand)
@suppressed_filters
@click.option("--cursor", default=None, help="Continue a list (the cursor a previous one printed).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, MAX_LIMIT))
@click.option("--json", "as_json", is_flag=True, help='{"items": [...], "next_cursor": ...}, as the API.')
def suppressed_list(
    networks: tuple[str, ...],
    reasons: tuple[str, ...],
    since: int | None,
    until: int | None,
    cursor: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Suppressed deliveries, newest first, with the reason each was held back."""
    try:
        page = _service().suppressed(CLI, _filter(networks, reasons, since, until), cursor, limit)
    except AdminError as exc:
        raise _bad_parameter(exc) from None
    if as_json:
        _echo_json(page.to_dict())
        return
    if not page.items:
        click.echo("nothing suppressed matches", err=True)
        return
    _table(
        ["RECEIVED", "DELIVERY", "NETWORK", "KIND", "REASON"],
        [
            [s["received_at"], s["delivery_id"], s["network"], s["kind"] or "?", _clip(s["reason"] or "", 80)]
            for s in page.items
        ],
    )
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


@suppressed.command("release", cls=OperatorCommand)
@suppressed_filters
@click.option("--yes", "-y", is_flag=True, help="Do not ask before releasing.")
@click.option(
    "--json", "as_json", is_flag=True, help='{"results": {id: result}, "counts": {...}} (as the API).'
)
def suppressed_release(
    networks: tuple[str, ...],
    reasons: tuple[str, ...],
    since: int | None,
    until: int | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Send every suppressed delivery the filters select (10,000 at most per run), each once.

    Asks first, with the count, unless --yes. A released delivery still obeys its target's
    expire_after, counted from the callback.
    """
    service = _service()
    selection = _filter(networks, reasons, since, until)
    try:
        ids = service.suppressed_ids(CLI, selection)
    except AdminError as exc:
        raise _bad_parameter(exc) from None
    if not ids:
        if as_json:
            _echo_json(replay_json({}))
            return
        click.echo("nothing suppressed matches; nothing to release")
        return
    if not yes:
        per_target = Counter(did.partition("-")[2] for did in ids)
        detail = ", ".join(f"{n} to {t}" for t, n in sorted(per_target.items()))
        question = f"release {len(ids)} suppressed deliveries ({detail})?"
        if not sys.stdin.isatty():
            raise click.ClickException(f"{question[:-1]}: add --yes to confirm without a terminal")
        click.confirm(question[0].upper() + question[1:], abort=True)
    results: dict[str, str] = {}
    hidden = len(ids) < 2 or not sys.stderr.isatty()
    with click.progressbar(length=len(ids), label="releasing", file=sys.stderr, hidden=hidden) as bar:
        for start in range(0, len(ids), RELEASE_CHUNK):
            chunk = ids[start : start + RELEASE_CHUNK]
            results.update(service.replay(CLI, chunk))
            bar.update(len(chunk))
    if as_json:
        _echo_json(replay_json(results))
        return
    counts = Counter(results.values())
    others = {r: n for r, n in counts.items() if r != "replayed"}
    click.echo(
        f"{counts['replayed']} released"
        + (", " + ", ".join(f"{n} {r}" for r, n in sorted(others.items())) if others else "")
    )
