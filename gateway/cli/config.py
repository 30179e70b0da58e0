"""`gateway check` and `gateway targets ...`: the configuration and the targets' health."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
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
from gateway.delivery.netguard import AddressNotAllowed, AllowPrivate, check_address, host_refusal
from gateway.events import make_alert
from gateway.exceptions import ConfigError, ConfigErrors, config_problems
from gateway.settings import Settings
from gateway.store import Store
from gateway.targets import Config, address_policy, is_ip_literal, load_config, target_hosts


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
        _echo_problems(exc)
        sys.exit(1)
    for t in config.targets:
        what = f"{t.method} {t.content_type}" if t.post_data is not None else t.method
        click.echo(f"ok  {t.name:<20} {what:<45} networks={','.join(t.networks)} events={','.join(t.events)}")
    for warning in ingest_warnings(config, _settings()):
        click.echo(f"warning: {warning}", err=True)
    for warning in private_target_warnings(config, os.environ):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{path}: {len(config.targets)} targets, valid")


def private_target_warnings(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """Host names that resolve NOW to addresses the policy refuses (DNS can change: a warning).

    Every name is resolved at once, within a few seconds in all. (Literal addresses and
    localhost are errors of the configuration itself, found by load_config.)
    """
    allow = address_policy(config.allow_private_targets, environ)
    if allow is True:
        return []
    named = [
        (t, k, h)
        for t, k, h in target_hosts(config, environ)
        if not is_ip_literal(h) and not host_refusal(h, False)
    ]
    refusals = resolved_refusals([h for _, _, h in named], allow)
    return [
        f"target {target!r}, key {key!r}: {refusals[host]}; deliveries will be refused unless "
        "allow_private_targets allows it"
        for target, key, host in named
        if host in refusals
    ]


def resolved_refusals(
    hosts: Iterable[str], allow_private: AllowPrivate, timeout: float = 3.0
) -> dict[str, str]:
    """Resolve `hosts` now, at once: why each one's addresses would be refused (if they would).

    A name that does not resolve is left out (the connect-time check has the last word). Bounded
    by `timeout` in all (getaddrinfo has no timeout of its own): a resolver thread still waiting
    then is a daemon, and ends with its lookup.
    """
    found: dict[str, list[str]] = {}

    def resolve(host: str) -> None:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return
        found[host] = sorted({str(info[4][0]) for info in infos})

    threads = [
        threading.Thread(target=resolve, args=(h,), name="gateway-resolve", daemon=True)
        for h in sorted(set(hosts))
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    refusals = {}
    for host, addresses in list(found.items()):
        refused = []
        for address in addresses:
            try:
                check_address(address, allow_private)
            except AddressNotAllowed:
                refused.append(address)
        if refused:
            refusals[host] = f"{host} resolves now to {', '.join(refused)} (private, loopback or reserved)"
    return refusals


def _echo_problems(exc: ConfigError) -> None:
    """Every problem on its own line (each names its target and key), then how many."""
    problems = config_problems(exc)
    lines = exc.lines() if isinstance(exc, ConfigErrors) else [str(exc)]
    for line in lines:
        click.echo(f"error: {line}", err=True)
    if len(problems) > 1:
        click.echo(f"{len(problems)} problems", err=True)


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
        _echo_problems(exc)
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
        _echo_problems(exc)
        sys.exit(1)
    click.echo(f"{count} targets {'applied' if changed else 'unchanged'} (version {version})")
    for warning in private_target_warnings(config, os.environ):
        click.echo(f"warning: {warning}", err=True)
    _stay_up_under_honcho()


def _stay_up_under_honcho() -> None:
    """As the Procfile's release step under `honcho start`: stay up until honcho stops everything.

    honcho runs every line of a Procfile as a long-lived process and stops all of them when one
    exits, so a release step that exits would stop web and worker a second after their start.
    A platform's release phase (Heroku, Dokku) runs the same line on its own and needs it to
    exit, as it does everywhere but under honcho (which names each process in
    HONCHO_PROCESS_NAME). README: Deploying with the Procfile.
    """
    name = os.environ.get("HONCHO_PROCESS_NAME")
    if not name:
        return
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # from here a stop is waited for, not fatal
    click.echo(f"{name}: applied; staying up until honcho stops the processes (it stops all once one exits)")
    signal.sigwait(stops)


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
@click.option("--json", "as_json", is_flag=True, help="The state before and after, as JSON (as the API).")
def targets_pause(name: str, reason: str | None, as_json: bool) -> None:
    """Hold every delivery to NAME until `gateway targets resume NAME` (no probes meanwhile)."""
    store = _store(_settings())
    _require_target(store, name, allow_unconfigured=False)
    before = _delivery_queue(store).pause(name, _now_ms(), reason or "paused by hand")
    was = "" if before == "active" else f" (was {before})"
    _alert(store, name, f"target {name} paused by hand: {reason or 'no reason given'}")
    if as_json:
        held = _delivery_queue(store).health(name)["held_deliveries"]
        _echo_json({"target": name, "before": before, "state": "paused", "held_deliveries": held})
        return
    click.echo(f"{name} paused{was}; its deliveries wait until `gateway targets resume {name}`")


@targets.command("resume", cls=OperatorCommand)
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The state before and after, as JSON (as the API).")
def targets_resume(name: str, as_json: bool) -> None:
    """Send NAME's held deliveries now; also re-enables a target disabled by 410 Gone."""
    settings = _settings()
    store = _store(settings)
    _require_target(store, name, allow_unconfigured=True)
    dq = _delivery_queue(store)
    health = dq.health(name)
    before = dq.resume(name, _now_ms())
    _wake(store, settings)
    held = health["held_deliveries"]
    if as_json:
        if before != "active":
            _alert(store, name, f"target {name} resumed by hand (was {before})")
        _echo_json({"target": name, "before": before, "state": "active", "held_deliveries": held})
        return
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


# -- targets validate / test: the request a target sends, shown or sent by a worker ------------------


def _exchange_lines(request: dict[str, Any] | None, prefix: str = "") -> list[str]:
    if request is None:
        return []
    lines = [f"{prefix}{request['method']} {request['url']}"]
    lines += [f"{prefix}{name}: {value}" for name, value in request["headers"]]
    if request.get("proxy"):
        lines.append(f"{prefix}(through proxy {request['proxy']})")
    if request.get("body") is not None:
        lines += ["", *(f"{prefix}{line}" for line in request["body"].splitlines() or [""])]
    return lines


def _preview_config(path: str | None) -> Config:
    if path:
        try:
            return load_config(path, None)
        except ConfigError as exc:
            _echo_problems(exc)
            sys.exit(1)
    from gateway.targets import config_from_dict

    _, data = _store(_settings()).load_config()
    return config_from_dict(data or {})


@targets.command("validate", cls=OperatorCommand)
@click.argument("name")
@click.option("--file", "path", default=None, metavar="FILE", help="Read FILE instead of the loaded targets.")
@click.option("--json", "as_json", is_flag=True, help="The preview as JSON.")
def targets_validate(name: str, path: str | None, as_json: bool) -> None:
    """Show the exact request NAME sends for a sample invitation, secrets redacted (nothing is sent)."""
    from gateway.delivery.testsend import UnknownTarget, render_preview

    config = _preview_config(path)
    try:
        preview = render_preview(config, name, os.environ)
    except UnknownTarget as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    if as_json:
        _echo_json(preview)
        return
    event = preview["event"]
    click.echo(
        f"target {name}, for a sample {event['type']}: invitee {event['invitee']}, "
        f"invitor {event['invitor']}, network {event['network_id']}"
    )
    for lname, lookup in preview["lookups"].items():
        fields = ", ".join(f"%{lname}.{f}% <- {p}" for f, p in lookup["fields"].items())
        click.echo(f"\nlookup {lname} (first; {fields}; not found: {lookup['on_not_found']}):")
        for line in _exchange_lines(lookup["request"], "  "):
            click.echo(line)
    click.echo("\nrequest:")
    for line in _exchange_lines(preview["request"], "  "):
        click.echo(line)
    success = preview["success_codes"]
    click.echo(f"\nsuccess: {success if isinstance(success, str) else ', '.join(map(str, success))}")
    missing = [n for n, present in preview.get("env", {}).items() if not present]
    if preview.get("env"):
        click.echo(
            f"${{VARS}}: {', '.join(preview['env'])}"
            + (
                f" (not set here: {', '.join(missing)}; the workers need them)"
                if missing
                else " (all set here)"
            )
        )


@targets.command("test", cls=OperatorCommand)
@click.argument("name")
@click.option(
    "--wait", type=click.IntRange(1, 600), default=30, show_default=True, help="Seconds to wait for a worker."
)
@click.option("--invitee", default=None, help="The sample's invitee (default +15551231234).")
@click.option("--invitor", default=None, help="The sample's invitor (default johnsnow).")
@click.option("--network", default=None, help="The sample's network id (default: the target's first).")
@click.option("--json", "as_json", is_flag=True, help="The worker's result as JSON.")
def targets_test(
    name: str, wait: int, invitee: str | None, invitor: str | None, network: str | None, as_json: bool
) -> None:
    """Have a worker send a sample invitation to NAME now and show the exchange (secrets redacted).

    The worker's environment, DNS, network and address policy are what is tested. Exit status 0
    when the target answered with success, 1 otherwise (or when no worker answered in time).
    """
    from gateway.testsends import UnknownTarget, request_test, wait_test_result

    settings = _settings()
    store = _store(settings)
    fields = {k: v for k, v in (("invitee", invitee), ("invitor", invitor), ("network_id", network)) if v}
    try:
        test_id = request_test(store, name, settings.queue_name, wait, fields)
    except UnknownTarget as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    if not as_json:
        click.echo(
            f"test {test_id}: asked a worker to send a sample invitation to {name}; waiting up to {wait} s"
        )
    result = wait_test_result(store, test_id, wait)
    if result is None:
        message = (
            f"no worker answered within {wait} s: is a `gateway worker` running on queue "
            f"{settings.queue_name!r} with this REDIS_URL? (the test lapses unsent)"
        )
        if as_json:
            _echo_json({"test_id": test_id, "target": name, "outcome": "no-worker", "error": message})
        click.echo(f"error: {message}", err=True)
        sys.exit(1)
    if as_json:
        _echo_json(result)
    else:
        _echo_test_result(result)
    sys.exit(0 if result["outcome"] == "delivered" else 1)


def _echo_test_result(result: dict[str, Any]) -> None:
    click.echo(f"worker {result['worker']} at {result['at']}")
    for lname, lookup in result["lookups"].items():
        if "error" in lookup:
            click.echo(f"lookup {lname}: {lookup['error']}")
        else:
            found = ", ".join(f"%{k}% = {v}" for k, v in lookup["values"].items())
            click.echo(f"lookup {lname}: {found}")
    if result["request"] is not None:
        click.echo("\nrequest:")
        for line in _exchange_lines(result["request"], "  "):
            click.echo(line)
    response = result["response"]
    if response is not None:
        click.echo(f"\nresponse: HTTP {response['status']} in {result['latency_ms']:.0f} ms")
        for hname, value in response["headers"]:
            click.echo(f"  {hname}: {value}")
        if response["body"]:
            click.echo("")
            for line in response["body"].splitlines():
                click.echo(f"  {line}")
    elif result["latency_ms"] is not None:
        click.echo(f"\nno response after {result['latency_ms']:.0f} ms")
    verdict = result["outcome"] + (f": {result['error']}" if result["error"] else "")
    click.echo(f"\noutcome: {verdict}")
