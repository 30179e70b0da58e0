"""`gateway keys ...`: admin API keys (create, list, revoke), and `gateway overview`.

Also what the admin API does that the other commands did not: `gateway targets set|delete`
(targets made through the API, beside the file's) and `gateway overview` (the last 24 hours per
target). Each acts as an operator key would, through the same Service as the API.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import click

from gateway.admin import AdminError
from gateway.cli.common import CLI, OperatorCommand, _echo_json, _fail, _service, _table, main
from gateway.cli.config import targets


@main.group()
def keys() -> None:
    """Admin API keys: an operator key sees every network, a provider key only its own."""


@keys.command("create", cls=OperatorCommand)
@click.argument("name")
@click.option(
    "--network", "networks", multiple=True, metavar="ID", help="A network of this provider key (repeatable)."
)
@click.option("--operator", is_flag=True, help="A key for every network (and for managing keys).")
@click.option("--json", "as_json", is_flag=True, help="The key as JSON (with its secret, shown once).")
def keys_create(name: str, networks: tuple[str, ...], operator: bool, as_json: bool) -> None:
    """Make a key named NAME; its secret is shown once, now, and only its sha256 is kept."""
    if operator == bool(networks):
        raise click.UsageError("give --network ID (a provider key, repeatable) or --operator, not both")
    try:
        made, secret = _service().create_key(CLI, name, None if operator else list(networks))
    except AdminError as exc:
        _fail(exc)
    if as_json:
        _echo_json({**made, "key": secret})
        return
    scope = "every network (operator)" if operator else "networks " + ", ".join(made["networks"])
    click.echo(f"key {made['id']} ({made['name']}) for {scope}:")
    click.echo(f"\n  {secret}\n")
    click.echo("Shown once: keep it now. Use it as `Authorization: Bearer <key>`.", err=True)


@keys.command("list", cls=OperatorCommand)
@click.option("--json", "as_json", is_flag=True, help="A JSON list, for scripts.")
def keys_list(as_json: bool) -> None:
    """Every key (never its secret), revoked ones included."""
    items = _service().list_keys(CLI)
    if as_json:
        _echo_json(items)
        return
    if not items:
        click.echo("no keys: `gateway keys create NAME --network ID` makes one")
        return
    _table(
        ["ID", "NAME", "NETWORKS", "CREATED", "LAST USED", "REVOKED"],
        [
            [
                k["id"],
                k["name"],
                "* (operator)" if k["networks"] is None else ",".join(k["networks"]),
                k["created_at"],
                k["last_used_at"] or "-",
                k["revoked_at"] or "-",
            ]
            for k in items
        ],
    )


@keys.command("revoke", cls=OperatorCommand)
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="The revoked key as JSON.")
def keys_revoke(key_id: str, as_json: bool) -> None:
    """Revoke key KEY_ID (its id, as `keys list` shows): refused from the next request on."""
    try:
        key = _service().revoke_key(CLI, key_id)
    except AdminError as exc:
        _fail(exc)
    if as_json:
        _echo_json(key)
        return
    click.echo(f"key {key['id']} ({key['name']}) revoked at {key['revoked_at']}")


# -- targets made through the API: the same from a shell ------------------------------------------


def _read_declaration(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    if path.endswith(".toml"):
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise click.BadParameter(f"not valid TOML: {exc}", param_hint="FILE") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="FILE") from None


@targets.command("set", cls=OperatorCommand)
@click.argument("name")
@click.argument("path", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="The stored target as JSON (secrets redacted).")
def targets_set(name: str, path: str, as_json: bool) -> None:
    """Create or replace the API-made target NAME from FILE (JSON, or TOML for a .toml name; - : stdin).

    FILE holds one target's keys, as the admin API takes them (no ${ENV} references). Every
    process uses it at once; a target the configuration file declares is changed there instead.
    """
    service = _service()
    data = _read_declaration(path)
    if isinstance(data, dict):
        data.setdefault("name", name)
    try:
        _, config = service.store.load_config()
        exists = any(t.get("name") == name for t in (config or {}).get("targets", []))
        stored = service.update_target(CLI, name, data) if exists else service.create_target(CLI, data)
    except AdminError as exc:
        _fail(exc)
    if as_json:
        _echo_json(stored)
        return
    click.echo(f"target {name} {'replaced' if exists else 'created'}; every process uses it now")


@targets.command("delete", cls=OperatorCommand)
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help='{"deleted": NAME} as JSON.')
def targets_delete(name: str, as_json: bool) -> None:
    """Delete the API-made target NAME (deliveries still waiting for it are skipped)."""
    try:
        _service().delete_target(CLI, name)
    except AdminError as exc:
        _fail(exc)
    if as_json:
        _echo_json({"deleted": name})
        return
    click.echo(f"target {name} deleted")


@main.command("overview", cls=OperatorCommand)
@click.option("--json", "as_json", is_flag=True, help="With the per-hour counts, as JSON.")
def overview(as_json: bool) -> None:
    """Per target over the last 24 hours: received, delivered, failed, waiting, suppressed."""
    view = _service().overview(CLI)
    if as_json:
        _echo_json(view)
        return
    _table(
        ["TARGET", "STATE", "RECEIVED", "DELIVERED", "FAILED", "WAITING", "SUPPRESSED"],
        [
            [
                t["target"] + ("" if t["configured"] else " (not configured)"),
                t["state"],
                *(str(t[k]) for k in ("received", "delivered", "failed", "waiting", "suppressed")),
            ]
            for t in view["targets"]
        ],
    )
    more = " (counting stopped at its bound)" if view["truncated"] else ""
    click.echo(f"{view['events']} events from {view['since']} to {view['until']}{more}")
