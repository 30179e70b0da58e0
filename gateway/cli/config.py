"""`gateway check` and `gateway targets ...`: the configuration and the targets' health."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from gateway.cli.common import (
    OperatorCommand,
    _delivery_queue,
    _echo_json,
    _health_json,
    _iso,
    _now_ms,
    _require_target,
    _settings,
    _state_label,
    _store,
    _table,
    _wake,
    main,
)
from gateway.events import make_alert
from gateway.exceptions import ConfigError
from gateway.settings import Settings
from gateway.store import Store
from gateway.targets import Config, load_config


@main.command()
@click.argument("path", required=False, envvar="GATEWAY_CONFIG")
@click.option("--no-env", is_flag=True, help="Do not require the ${VARS} the targets use to be set here.")
def check(path: str | None, no_env: bool) -> None:
    """Validate a configuration file (default: $GATEWAY_CONFIG). Exit status 1 with the reason."""
    if not path:
        raise click.UsageError("give a file, or set GATEWAY_CONFIG")
    try:
        config = load_config(path, None if no_env else os.environ)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for t in config.targets:
        what = f"{t.method} {t.content_type}" if t.post_data is not None else t.method
        click.echo(f"ok  {t.name:<20} {what:<45} networks={','.join(t.networks)} events={','.join(t.events)}")
    for warning in ingest_warnings(config, _settings()):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{path}: {len(config.targets)} targets, valid")


def ingest_warnings(config: Config, settings: Settings) -> list[str]:
    """What leaves the ingest open, or closed to every caller (`check` and `web` say it)."""
    tokened = {name for name, p in config.networks.items() if p.tokens}
    served = sorted({n for t in config.targets for n in t.networks} - {"*"})
    if settings.open_ingest:
        return ["GATEWAY_OPEN_INGEST is set: anyone who finds the URL can send invitations"]
    if not tokened:
        return [
            "no network declares ingest tokens: every callback will be refused (401); "
            "add [networks.<id>] tokens, or set GATEWAY_OPEN_INGEST=true to accept callbacks from anyone"
        ]
    if "*" in tokened:
        return []
    return [
        f"network {n} has no ingest tokens: its callbacks will be refused (401)"
        for n in served
        if n not in tokened
    ]


@main.group()
def targets() -> None:
    """Manage the targets of a running deployment."""


@targets.command("apply")
@click.argument("path")
@click.option(
    "--strict", is_flag=True, help="Refuse the file when a live worker lacks a variable the targets use."
)
def targets_apply(path: str, strict: bool) -> None:
    """Validate FILE and load it into Redis; every process picks it up without a restart.

    The targets' ${VARS} are checked where they are used: live workers report which of the
    names they have (never the values), and each one lacking a name is named here.
    """
    from gateway.app import apply_config_file
    from gateway.cli.common import workers_lacking

    store = _store(_settings())
    try:
        config = load_config(path, None)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    names: set[str] = set()
    for target in config.targets:
        names |= target.env_names()
    lacking, live = workers_lacking(store, names)
    for worker, missing in lacking.items():
        level = "error" if strict else "warning"
        click.echo(
            f"{level}: worker {worker} lacks {', '.join(missing)}: its deliveries using them fail", err=True
        )
    if names and not live:
        click.echo(
            f"warning: no live worker reported its environment; each needs {', '.join(sorted(names))}",
            err=True,
        )
    if strict and lacking:
        click.echo(
            "error: not applied (--strict): set the variables on those workers and restart them", err=True
        )
        sys.exit(1)
    try:
        version, changed, count = apply_config_file(store, path, None)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{count} targets {'applied' if changed else 'unchanged'} (version {version})")


@targets.command("list", cls=OperatorCommand)
@click.option("--json", "as_json", is_flag=True, help="The configuration and each target's health as JSON.")
def targets_list(as_json: bool) -> None:
    """Every target with its health: state, why, since when, failures, held and in-flight deliveries."""
    store = _store(_settings())
    dq = _delivery_queue(store)
    version, data = store.load_config()
    configured: list[dict[str, Any]] = list((data or {}).get("targets", []))
    names = {t["name"] for t in configured}
    # Targets removed from the configuration while paused, disabled or holding deliveries.
    others = sorted((set(dq.held_targets()) | set(dq.parked_targets())) - names)
    health = {name: dq.health(name) for name in [*names, *others]}
    if as_json:
        out = {
            "version": version,
            **(data or {"targets": []}),
            "targets": [{**t, "health": _health_json(health[t["name"]])} for t in configured],
            "unconfigured": [{"name": n, "health": _health_json(health[n])} for n in others],
        }
        _echo_json(out)
        return
    if not configured and not others:
        click.echo(f"no targets loaded (version {version}): `gateway targets apply FILE` loads some")
        return
    rows = []
    for t in configured:
        h = health[t["name"]]
        rows.append(
            [
                t["name"],
                _state_label(h),
                h["reason"] or "-",
                _iso(h["since"]),
                str(h["failures"]),
                str(h["held_deliveries"]),
                str(h["in_flight"]),
                str(t.get("rate") or "-"),
                str(t.get("concurrency") or "-"),
                ",".join(t.get("networks", [])),
            ]
        )
    for name in others:
        h = health[name]
        rows.append(
            [
                name,
                _state_label(h),
                h["reason"] or "-",
                _iso(h["since"]),
                str(h["failures"]),
                str(h["held_deliveries"]),
                str(h["in_flight"]),
                "-",
                "-",
                "(not configured)",
            ]
        )
    _table(
        [
            "NAME",
            "STATE",
            "REASON",
            "SINCE",
            "FAILURES",
            "HELD",
            "IN-FLIGHT",
            "RATE",
            "CONCURRENCY",
            "NETWORKS",
        ],
        rows,
    )
    click.echo(f"configuration version {version}, {len(configured)} targets")


@targets.command("pause", cls=OperatorCommand)
@click.argument("name")
@click.option("--reason", default=None, help="Why, shown by `gateway targets list`.")
def targets_pause(name: str, reason: str | None) -> None:
    """Hold every delivery to NAME until `gateway targets resume NAME` (no probes meanwhile)."""
    store = _store(_settings())
    _require_target(store, name, allow_unconfigured=False)
    before = _delivery_queue(store).pause(name, _now_ms(), reason or "paused by hand")
    was = "" if before == "active" else f" (was {before})"
    _alert(store, name, f"target {name} paused by hand: {reason or 'no reason given'}")
    click.echo(f"{name} paused{was}; its deliveries wait until `gateway targets resume {name}`")


@targets.command("resume", cls=OperatorCommand)
@click.argument("name")
def targets_resume(name: str) -> None:
    """Send NAME's held deliveries now; also re-enables a target disabled by 410 Gone."""
    settings = _settings()
    store = _store(settings)
    _require_target(store, name, allow_unconfigured=True)
    dq = _delivery_queue(store)
    health = dq.health(name)
    before = dq.resume(name, _now_ms())
    _wake(store, settings)
    held = health["held_deliveries"]
    due = f"{held} held {'delivery is' if held == 1 else 'deliveries are'} due now"
    if before == "active":
        click.echo(f"{name} was not paused; {due}" if held else f"{name} was not paused; nothing was held")
        return
    label = "paused by hand" if before == "paused" and health["manual"] else before
    why = f": {health['reason']}" if health["reason"] and health["reason"] != label else ""
    _alert(store, name, f"target {name} resumed by hand (was {label}{why})")
    click.echo(f"{name} resumed (was {label}{why}); {due}")


def _alert(store: Store, about: str, message: str) -> None:
    """Tell the alert target (if any, and not about itself) what an operator did."""
    _, data = store.load_config()
    name = ((data or {}).get("settings") or {}).get("alert_target")
    if name and name != about:
        _delivery_queue(store).write_alert(make_alert(message), name)


# -- dead letters, replay, one delivery ---------------------------------------------------------------
