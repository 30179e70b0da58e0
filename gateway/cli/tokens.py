"""`gateway tokens ...`: ingest tokens for the targets file (`new`, `hash`), and tokens the gateway
keeps itself, as the admin API makes them (`add`, `list`, `remove`)."""

from __future__ import annotations

import sys

import click

from gateway.admin import AdminError
from gateway.cli.callbacks import base_of, print_settings, url_option
from gateway.cli.common import CLI, OperatorCommand, _echo_json, _fail, _service, _table, main


@main.group()
def tokens() -> None:
    """Ingest tokens for [networks.<id>] tokens."""


@tokens.command("new")
def tokens_new() -> None:
    """A new random token, and the digest to put in the targets file instead of ${VAR}."""
    import secrets

    from gateway.networks import token_digest

    token = secrets.token_urlsafe(32)
    click.echo(f"token   {token}")
    click.echo(f"digest  {token_digest(token)}")
    click.echo("Give the token to the Acrobits portal (in the URL), keep the digest in the targets file.")


@tokens.command("hash")
@click.argument("token", required=False)
def tokens_hash(token: str | None) -> None:
    """The sha256: digest of TOKEN (read from standard input when not given)."""
    from gateway.networks import token_digest

    value = token if token is not None else sys.stdin.readline().strip()
    if not value:
        raise click.UsageError("give a token, as an argument or on standard input")
    click.echo(token_digest(value))


# -- tokens kept by the gateway (as the admin API's POST /tokens makes them) ------------------------


@tokens.command("add", cls=OperatorCommand)
@click.argument("network")
@url_option
@click.option("--json", "as_json", is_flag=True, help="As JSON, as POST /api/v1/tokens.")
def tokens_add(network: str, base_url: str | None, as_json: bool) -> None:
    """A new ingest token for NETWORK, kept (hashed) by the gateway: it opens the network from the
    next callback on, in every web process, beside the tokens it has. Shown once."""
    url, _ = base_of(base_url)
    try:
        made = _service().connect.create_token(CLI, network, url)
    except AdminError as exc:
        _fail(exc)
    if as_json:
        _echo_json(made)
        return
    click.echo(f"token {made['id']} for network {network} (shown once: the gateway keeps only its digest):\n")
    click.echo(f"  {made['token']}\n")
    print_settings(made["settings"])


@tokens.command("list", cls=OperatorCommand)
@click.option("--network", default=None, metavar="ID", help="Only this network's.")
@click.option("--json", "as_json", is_flag=True, help='{"items": [...]}, as GET /api/v1/tokens.')
def tokens_list(network: str | None, as_json: bool) -> None:
    """Ingest tokens: those the gateway made (by id) and those the targets file declares."""
    try:
        items = _service().connect.list_tokens(CLI, network)
    except AdminError as exc:
        _fail(exc)
    if as_json:
        _echo_json({"items": items})
        return
    if not items:
        click.echo("no ingest tokens", err=True)
        return
    _table(
        ["ID", "NETWORK", "SOURCE", "REF", "CREATED", "BY"],
        [
            [
                t["id"] or "-",
                t["network"],
                t["source"],
                t["ref"],
                t["created_at"] or "-",
                t["created_by"] or "-",
            ]
            for t in items
        ],
    )


@tokens.command("remove", cls=OperatorCommand)
@click.argument("token_id")
@click.option("--json", "as_json", is_flag=True, help="As JSON, as DELETE /api/v1/tokens/{id}.")
def tokens_remove(token_id: str, as_json: bool) -> None:
    """Remove a token the gateway made: refused (401) from the next callback on. (A token of the
    targets file is removed from the file, then `gateway targets apply`.)"""
    try:
        removed = _service().connect.remove_token(CLI, token_id)
    except AdminError as exc:
        _fail(exc, f"no token {token_id} (a token of the targets file is removed there)")
    if as_json:
        _echo_json(removed)
        return
    click.echo(f"token {removed['id']} of network {removed['network']} removed")


if __name__ == "__main__":
    main()
