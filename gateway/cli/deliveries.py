"""`gateway deliveries ...` and `gateway replay`: dead letters, attempt-now, replay."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import click

from gateway.cli.common import (
    _REPLAY_RESULTS,
    _REPLAY_TEXT,
    _WAITING,
    DeadLetterFilter,
    OperatorCommand,
    _attempt_json,
    _attempt_now_text,
    _clip,
    _delivery_json,
    _delivery_queue,
    _echo_json,
    _health_json,
    _iso,
    _now_ms,
    _settings,
    _state_label,
    _store,
    _table,
    _wake,
    dead_letter_filters,
    main,
    select_dead_letters,
)
from gateway.records import iso_ms, split_delivery_id
from gateway.store.queue import TargetHealth


@main.group()
def deliveries() -> None:
    """Deliveries that failed for good (dead letters), one delivery's record, retry one now."""


@deliveries.command("failed", cls=OperatorCommand)
@dead_letter_filters(default_limit=50)
@click.option("--json", "as_json", is_flag=True, help="A JSON list, for scripts.")
def deliveries_failed(as_json: bool, **filters: Any) -> None:
    """The dead letters (failed or expired deliveries), newest first.

    WHEN is ISO 8601 (2026-05-01, 2026-05-01T12:00:00Z; UTC unless it says otherwise) or a
    duration ago: 30m, 2h, 7d. Replay them with `gateway replay --failed` and the same filters.
    """
    store = _store(_settings())
    selection = DeadLetterFilter.from_options(**filters)
    limit = selection.limit
    # One more than asked, to say whether there are more.
    found = select_dead_letters(store, _delivery_queue(store), selection.but(limit=limit + 1 if limit else 0))
    more = bool(limit) and len(found) > limit
    found = found[:limit] if limit else found
    if as_json:
        _echo_json([d.to_dict() for d in found])
        return
    if not found:
        click.echo("no dead letters match")
        return
    _table(
        ["DELIVERY ID", "FAILED AT", "TARGET", "NETWORK", "EVENT", "STATUS", "ATTEMPTS", "LAST ERROR"],
        [
            [
                d.delivery_id,
                iso_ms(d.failed_at_ms),
                d.target,
                d.event.network_id,
                d.event.type,
                str(d.delivery.status),
                str(d.delivery.attempts),
                _clip(d.delivery.last_error or "-", 70),
            ]
            for d in found
        ],
    )
    noun = "dead letter" if len(found) == 1 else "dead letters"
    tail = f" (the newest {limit}; --limit 0 shows all)" if more else ""
    click.echo(
        f"{len(found)} {noun}{tail}; `gateway replay ID` or `gateway replay --failed [filters]` re-sends"
    )


@deliveries.command("attempt-now", cls=OperatorCommand)
@click.argument("delivery_ids", nargs=-1, required=True, metavar="DELIVERY_ID...")
def deliveries_attempt_now(delivery_ids: tuple[str, ...]) -> None:
    """Bring deliveries waiting for their next retry forward to now.

    Exit status 1 if any id is unknown or not waiting (delivered, or failed for good: replay it).
    """
    settings = _settings()
    store = _store(settings)
    dq = _delivery_queue(store)
    states = dict(zip(delivery_ids, store.get_many_deliveries(delivery_ids), strict=True))
    health: dict[str, TargetHealth] = {}
    scheduled = bad = 0
    for did in dict.fromkeys(delivery_ids):
        try:
            result = dq.attempt_now(did, _now_ms())
        except ValueError:
            result = "unknown"
        target = did.partition("-")[2]
        if result == "held" and target not in health:
            health[target] = dq.health(target)
        scheduled += result == "scheduled"
        bad += result not in _WAITING
        click.echo(f"{did}: {_attempt_now_text(result, did, states[did][1], health.get(target))}")
    if scheduled:
        _wake(store, settings)
    if bad:
        sys.exit(1)


@deliveries.command("show", cls=OperatorCommand)
@click.argument("delivery_id")
@click.option("--json", "as_json", is_flag=True, help="As JSON, for scripts.")
def deliveries_show(delivery_id: str, as_json: bool) -> None:
    """One delivery: its state, its target's health and every attempt (times in UTC)."""
    store = _store(_settings())
    try:
        event_id, name = split_delivery_id(delivery_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="DELIVERY_ID") from None
    [(event, state)] = store.get_many_deliveries([delivery_id])
    if event is None or state is None:
        raise click.ClickException(f"no delivery {delivery_id} (unknown, or past retention)")
    _, config = store.load_config()
    configured = any(t["name"] == name for t in (config or {}).get("targets", []))
    health = _delivery_queue(store).health(name)
    attempts = [_attempt_json(a) for a in store.get_attempts(event_id) if a.get("target") == name]
    if as_json:
        _echo_json(
            {
                "delivery_id": delivery_id,
                "delivery": _delivery_json(state),
                "event": {k: v for k, v in event.to_dict().items() if k != "received_at_ms"},
                "target": {"name": name, "configured": configured, "health": _health_json(health)},
                "attempts": attempts,
            }
        )
        return
    counts = f"attempts {state.attempts}, retries {state.retries}, throttles {state.throttles}"
    lines = [
        ("delivery", delivery_id),
        ("status", f"{state.status}  ({counts}, replays {state.replays})"),
        ("event", f"{event.id}  {event.type}  network {event.network_id}  received {event.received_at}"),
        (
            "target",
            f"{name}: {_state_label(health)}" + (f" ({health.reason})" if health.reason else ""),
        ),
    ]
    if not configured:
        lines[-1] = ("target", f"{name}: not configured any more")
    if not state.is_final:
        lines.append(("next attempt", _iso(state.next_attempt_at) if state.next_attempt_at else "now"))
    if state.waiting:
        lines.append(("waiting for", state.waiting))
    if state.last_status_code:
        lines.append(("last answer", f"HTTP {state.last_status_code}"))
    if state.last_error:
        lines.append(("last error", state.last_error))
    lines.append(("updated", _iso(state.updated_at)))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {value}")
    click.echo()
    if not attempts:
        click.echo("no attempts yet")
        return
    _table(
        ["#", "AT", "OUTCOME", "STATUS", "LATENCY", "ERROR"],
        [
            [
                str(a.get("attempt", "")),
                str(a.get("at", "")),
                str(a.get("outcome", "")),
                str(a.get("status_code") or "-"),
                f"{a['latency_ms']:.0f} ms" if a.get("latency_ms") is not None else "-",
                _clip(a.get("error") or "-", 90),
            ]
            for a in attempts
        ],
    )


@main.command(cls=OperatorCommand)
@click.argument("delivery_ids", nargs=-1, metavar="[DELIVERY_ID]...")
@click.option("--failed", is_flag=True, help="Replay every dead letter the filters select.")
@dead_letter_filters(default_limit=0)
@click.option("--force", is_flag=True, help="Send a delivery again even if it was delivered.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before replaying more than one.")
@click.option(
    "--json", "as_json", is_flag=True, help='{"results": {id: result}, "counts": {...}} (as the API).'
)
def replay(
    delivery_ids: tuple[str, ...], failed: bool, force: bool, yes: bool, as_json: bool, **filters: Any
) -> None:
    """Send deliveries again: the ids given, or with --failed the dead letters the filters select.

    A replayed delivery starts afresh (its target's whole retry schedule) and keeps its id, so
    the target can recognise a repeat by its Idempotency-Key. Replaying one that is still
    waiting changes nothing. The filters are those of `gateway deliveries failed`, with no
    limit by default. Exit status 1 if any id is unknown or was refused.
    """
    selection = DeadLetterFilter.from_options(**filters)
    if delivery_ids and failed:
        raise click.UsageError("give delivery ids or --failed, not both")
    if not failed:
        if selection.narrows():
            raise click.UsageError("the filters select dead letters: add --failed")
        if not delivery_ids:
            raise click.UsageError("give delivery ids, or --failed (with filters) for dead letters")
    settings = _settings()
    store = _store(settings)
    dq = _delivery_queue(store)
    if not failed:
        ids = list(dict.fromkeys(delivery_ids))
    else:
        ids = [d.delivery_id for d in select_dead_letters(store, dq, selection)]
        if not ids:
            if as_json:
                _echo_json({"results": {}, "counts": {}})
                return
            click.echo("no dead letters match; nothing to replay")
            return
    if len(ids) > 1 and not yes:
        per_target = Counter(did.partition("-")[2] for did in ids)
        detail = ", ".join(f"{n} to {t}" for t, n in sorted(per_target.items()))
        question = f"replay {len(ids)} deliveries ({detail})?"
        if not sys.stdin.isatty():
            raise click.ClickException(f"{question[:-1]}: add --yes to confirm without a terminal")
        click.confirm(question[0].upper() + question[1:], abort=True)
    results: dict[str, str] = {}
    hidden = len(ids) < 2 or not sys.stderr.isatty()
    with click.progressbar(ids, label="replaying", file=sys.stderr, hidden=hidden) as bar:
        for did in bar:
            try:
                results[did] = dq.replay(did, _now_ms(), force=force)
            except ValueError:
                results[did] = "unknown"
    counts = Counter(results.values())
    if as_json:
        if counts["replayed"]:
            _wake(store, settings)
        _echo_json({"results": results, "counts": dict(counts)})
        bad = any(r == "unknown" or r == "delivered" or r not in _REPLAY_RESULTS for r in results.values())
        sys.exit(1 if bad else 0)
    odd = {did: r for did, r in results.items() if r not in _REPLAY_RESULTS}
    problems = [(did, r) for did, r in results.items() if r in ("unknown", "delivered") or did in odd]
    for did, r in problems[:20]:
        click.echo(f"{did}: {_REPLAY_TEXT.get(r, f'{r}, not waiting and not finished: refused')}", err=True)
    if len(problems) > 20:
        click.echo(f"... and {len(problems) - 20} more", err=True)
    summary = (
        f"{counts['replayed']} replayed, {counts['pending']} already waiting, "
        f"{counts['held']} held (target paused/disabled), "
        f"{counts['delivered']} delivered (use --force to send again), {counts['unknown']} unknown"
    )
    if odd:
        summary += f", {len(odd)} refused"
    click.echo(summary)
    replayed_to = {did.partition("-")[2] for did, r in results.items() if r == "replayed"}
    for name in sorted(replayed_to & set(dq.held_targets())):
        click.echo(
            f"note: {name} is paused or disabled: these wait until it recovers "
            f"or `gateway targets resume {name}`"
        )
    if counts["replayed"]:
        _wake(store, settings)
    if problems:
        sys.exit(1)
