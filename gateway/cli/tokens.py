"""`gateway tokens ...`: ingest tokens for the targets file."""

from __future__ import annotations

import sys

import click

from gateway.cli.common import (
    main,
)


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


if __name__ == "__main__":
    main()
