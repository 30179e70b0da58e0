"""`gateway check` and `gateway targets ...`: the configuration and the targets' health."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

import click

from gateway.admin import AdminError, NotFound
from gateway.admin.service import Service, was
from gateway.cli.common import (
    CLI,
    OperatorCommand,
    _bad_parameter,
    _echo_json,
    _service,
    _settings,
    _state_label,
    _store,
    _table,
    main,
)
from gateway.config.addresses import address_policy, host_refusal, is_ip_literal
from gateway.config.checks import abuse_warnings, target_hosts
from gateway.config.load import load_config
from gateway.config.targets import Config
from gateway.delivery.netguard import resolved_refusals
from gateway.exceptions import ConfigError, ConfigErrors, config_problems
from gateway.settings import Settings


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
    for warning in ingest_warnings(config, _settings()) + abuse_warnings(config):
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
@click.option("--json", "as_json", is_flag=True, help="As JSON, as GET /api/v1/targets.")
def targets_list(as_json: bool) -> None:
    """Every target with its health: state, why, since when, failures, held and in-flight deliveries."""
    listed = _service().targets_page(CLI)
    if as_json:
        _echo_json(listed)
        return
    configured, others, version = listed["items"], listed["unconfigured"], listed["version"]
    if not configured and not others:
        click.echo(f"no targets loaded (version {version}): `gateway targets apply FILE` loads some")
        return
    rows = [
        [
            t["name"],
            *_health_cells(t["health"]),
            str(t.get("rate") or "-"),
            str(t.get("concurrency") or "-"),
            ",".join(t.get("networks", [])),
        ]
        for t in configured
    ]
    # Targets removed from the configuration while paused, disabled or holding deliveries.
    rows += [[t["name"], *_health_cells(t["health"]), "-", "-", "(not configured)"] for t in others]
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


def _health_cells(h: Mapping[str, Any]) -> list[str]:
    """The health columns of a target, from its API document (`health_json`)."""
    return [
        _state_label(h),
        h["reason"] or "-",
        h["since"] or "-",
        str(h["failures"]),
        str(h["held_deliveries"]),
        str(h["in_flight"]),
    ]


@targets.command("show", cls=OperatorCommand)
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="As JSON, as GET /api/v1/targets/{name}.")
def targets_show(name: str, as_json: bool) -> None:
    """One target: its health and its declaration (secrets redacted)."""
    service = _service()
    try:
        target = service.get_target(CLI, name)
    except NotFound:
        raise _unknown_target(service, name) from None
    if as_json:
        _echo_json(target)
        return
    h = target["health"]
    source = "the configuration file" if target["source"] == "file" else "made through the admin API"
    why = f" ({h['reason']})" if h["reason"] else ""
    since = f" since {h['since']}" if h["since"] else ""
    lines = [
        ("target", f"{name} ({source})"),
        ("state", f"{_state_label(h)}{why}{since}"),
        (
            "health",
            f"{h['failures']} consecutive failures, {h['held_deliveries']} held, {h['in_flight']} in flight",
        ),
    ]
    declared = [(k, v) for k, v in target.items() if k not in ("name", "source", "health")]
    width = max(len(k) for k, _ in [*lines, *declared])
    for key, value in lines:
        click.echo(f"{key:<{width}}  {value}")
    click.echo()
    for key, value in declared:
        click.echo(
            f"{key:<{width}}  {value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}"
        )


def _unknown_target(service: Service, name: str) -> click.BadParameter:
    names = sorted(t["name"] for t in service.list_targets(CLI))
    known = ", ".join(names) if names else "none loaded"
    return click.BadParameter(f"unknown target {name!r} (known: {known})", param_hint="NAME")


@targets.command("pause", cls=OperatorCommand)
@click.argument("name")
@click.option("--reason", default=None, help="Why, shown by `gateway targets list`.")
@click.option("--json", "as_json", is_flag=True, help="The state before and after, as JSON (as the API).")
def targets_pause(name: str, reason: str | None, as_json: bool) -> None:
    """Hold every delivery to NAME until `gateway targets resume NAME` (no probes meanwhile)."""
    service = _service()
    try:
        paused = service.pause_target(CLI, name, reason)
    except NotFound:
        raise _unknown_target(service, name) from None
    except AdminError as exc:
        raise _bad_parameter(exc) from None
    if as_json:
        _echo_json(paused)
        return
    was = "" if paused["before"] == "active" else f" (was {paused['before']})"
    click.echo(f"{name} paused{was}; its deliveries wait until `gateway targets resume {name}`")


@targets.command("resume", cls=OperatorCommand)
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The state before and after, as JSON (as the API).")
def targets_resume(name: str, as_json: bool) -> None:
    """Send NAME's held deliveries now; also re-enables a target disabled by 410 Gone."""
    service = _service()
    listed = service.targets_page(CLI)
    health = next(
        (t["health"] for t in [*listed["items"], *listed["unconfigured"]] if t["name"] == name), None
    )
    try:
        resumed = service.resume_target(CLI, name)
    except NotFound:
        raise _unknown_target(service, name) from None
    if as_json:
        _echo_json(resumed)
        return
    before, held = resumed["before"], resumed["held_deliveries"]
    due = f"{held} held {'delivery is' if held == 1 else 'deliveries are'} due now"
    if before == "active":
        click.echo(f"{name} was not paused; {due}" if held else f"{name} was not paused; nothing was held")
        return
    told = was(before, health["manual"], health["reason"]) if health else before
    click.echo(f"{name} resumed (was {told}); {due}")


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
    from gateway.config.load import config_from_dict

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
