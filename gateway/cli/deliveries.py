"""`gateway deliveries ...` and `gateway replay`: dead letters, one delivery, attempt-now, replay.

They read and act through the admin API's Service as an operator key, so `--json` prints the
API's document: `deliveries failed` GET /deliveries/failed, `deliveries show` GET
/deliveries/{id}, `replay` the answer of POST /deliveries/replay. `attempt-now` has no API
counterpart: it asks the delivery queue itself.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import click

from gateway.admin import AdminError
from gateway.admin.documents import replay_json
from gateway.admin.queries import MAX_LIMIT, FailedFilter, Page
from gateway.admin.service import Service
from gateway.cli.common import (
    CLI,
    OperatorCommand,
    _bad_parameter,
    _clip,
    _delivery_queue,
    _echo_json,
    _fail,
    _iso,
    _now_ms,
    _service,
    _settings,
    _state_label,
    _store,
    _table,
    _wake,
    dead_letter_filters,
    failed_filter,
    main,
)
from gateway.records import FINAL, Delivery, DeliveryStatus, split_delivery_id
from gateway.store.queue import TargetHealth, TargetState

REPLAY_CHUNK = 100  # ids per Service.replay call: the progress bar moves between them
# What `attempt-now` found: these are waiting (or about to be sent); anything else is not.
_WAITING = frozenset({"scheduled", "due", "in-flight", "rate-limited", "held"})
# What `replay` answers, besides another status (a delivery neither waiting nor finished: refused).
_REPLAY_RESULTS = frozenset({"replayed", "pending", "held", "delivered", "unknown"})
_REPLAY_TEXT = {
    "unknown": "unknown (no such delivery, or past retention)",
    "delivered": "already delivered (--force sends it again)",
}


@main.group()
def deliveries() -> None:
    """Deliveries that failed for good (dead letters), one delivery's record, retry one now."""


def dead_letters(service: Service, filters: FailedFilter, cursor: str | None, limit: int) -> Page:
    """The dead letters the filters select, newest first: `limit` of them (0: all), in pages of
    the API's size when more are asked; the cursor continues after the last one."""
    try:
        if not limit:
            return service.failed_deliveries(CLI, filters, cursor, None)
        items: list[dict[str, Any]] = []
        while True:
            page = service.failed_deliveries(CLI, filters, cursor, min(limit - len(items), MAX_LIMIT))
            items += page.items
            cursor = page.next_cursor
            if cursor is None or len(items) >= limit:
                return Page(items, cursor)
    except AdminError as exc:
        raise _bad_parameter(exc) from None


@deliveries.command("failed", cls=OperatorCommand)
@dead_letter_filters(default_limit=50)
@click.option("--cursor", default=None, help="Continue a list (the cursor a previous one printed).")
@click.option("--json", "as_json", is_flag=True, help='{"items": [...], "next_cursor": ...}, as the API.')
def deliveries_failed(as_json: bool, cursor: str | None, limit: int, **filters: Any) -> None:
    """The dead letters (failed or expired deliveries), newest first (as GET /api/v1/deliveries/failed).

    WHEN is ISO 8601 (2026-05-01, 2026-05-01T12:00:00Z; UTC unless it says otherwise) or a
    duration ago: 30m, 2h, 7d. Replay them with `gateway replay --failed` and the same filters.
    """
    page = dead_letters(_service(), failed_filter(**filters), cursor, limit)
    if as_json:
        _echo_json(page.to_dict())
        return
    if not page.items:
        click.echo("no dead letters match")
        return
    _table(
        ["DELIVERY ID", "FAILED AT", "TARGET", "NETWORK", "EVENT", "STATUS", "ATTEMPTS", "LAST ERROR"],
        [
            [
                d["delivery_id"],
                d["failed_at"],
                d["target"],
                d["network"],
                d["event"],
                d["status"],
                str(d["attempts"]),
                _clip(d["last_error"] or "-", 70),
            ]
            for d in page.items
        ],
    )
    noun = "dead letter" if len(page.items) == 1 else "dead letters"
    tail = f" (the newest {limit}; --limit 0 shows all)" if page.next_cursor else ""
    click.echo(
        f"{len(page.items)} {noun}{tail}; `gateway replay ID` or `gateway replay --failed [filters]` re-sends"
    )
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}", err=True)


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


def _attempt_now_text(result: str, did: str, state: Delivery | None, health: TargetHealth | None) -> str:
    target = did.partition("-")[2]
    if result == "scheduled":
        was = (
            f" (its next retry was at {_iso(state.next_attempt_at)})"
            if state and state.next_attempt_at
            else ""
        )
        return f"scheduled: due now{was}"
    if result == "held":
        if health is not None and health.state is not TargetState.ACTIVE:
            why = f" ({health.reason})" if health.reason else ""
            return f"held: target {health.state.value}{why}; `gateway targets resume {target}` sends it"
        return "held: the target is at its concurrency cap; it goes when a request to it finishes"
    if result in ("failed", "expired"):
        return f"{result} for good (a dead letter): `gateway replay {did}` sends it again"
    texts = {
        "due": "already due: a worker takes it within seconds",
        "in-flight": "in flight: a worker is sending it now",
        "rate-limited": "waiting for its turn under the target's rate limit",
        "unknown": "unknown (no such delivery, or past retention)",
        "delivered": "already delivered",
        "skipped": "skipped: its target was removed",
    }
    return texts.get(result, f"{result}, but not waiting")


@deliveries.command("show", cls=OperatorCommand)
@click.argument("delivery_id")
@click.option("--json", "as_json", is_flag=True, help="As JSON, as GET /api/v1/deliveries/{id}.")
def deliveries_show(delivery_id: str, as_json: bool) -> None:
    """One delivery: its state, its target's health and every attempt (times in UTC)."""
    try:
        split_delivery_id(delivery_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="DELIVERY_ID") from None
    try:
        d = _service().get_delivery(CLI, delivery_id)
    except AdminError as exc:
        _fail(exc, f"no delivery {delivery_id} (unknown, or past retention)")
    if as_json:
        _echo_json(d)
        return
    _echo_delivery(d)


def _echo_delivery(d: dict[str, Any]) -> None:
    event, health, name = d["event"], d["target_health"], d["target"]
    counts = f"attempts {d['attempt_count']}, retries {d['retries']}, throttles {d['throttles']}"
    lines = [
        ("delivery", d["delivery_id"]),
        ("status", f"{d['status']}  ({counts}, replays {d['replays']})"),
        (
            "event",
            f"{event['id']}  {event['type']}  network {event['network_id']}  received {event['received_at']}",
        ),
        (
            "target",
            f"{name}: {_state_label(health)}" + (f" ({health['reason']})" if health["reason"] else ""),
        ),
    ]
    if not d["target_configured"]:
        lines[-1] = ("target", f"{name}: not configured any more")
    if DeliveryStatus(d["status"]) not in FINAL:
        lines.append(("next attempt", d["next_attempt_at"] or "now"))
    if d["waiting"]:
        lines.append(("waiting for", d["waiting"]))
    if d["last_status_code"]:
        lines.append(("last answer", f"HTTP {d['last_status_code']}"))
    if d["last_error"]:
        lines.append(("last error", d["last_error"]))
    lines.append(("updated", d["updated_at"] or "-"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {value}")
    click.echo()
    if not d["attempts"]:
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
                _clip("; ".join(str(a[k]) for k in ("error", "note") if a.get(k)) or "-", 90),
            ]
            for a in d["attempts"]
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
    delivery_ids: tuple[str, ...],
    failed: bool,
    force: bool,
    yes: bool,
    as_json: bool,
    limit: int,
    **filters: Any,
) -> None:
    """Send deliveries again: the ids given, or with --failed the dead letters the filters select.

    A replayed delivery starts afresh (its target's whole retry schedule) and keeps its id, so
    the target can recognise a repeat by its Idempotency-Key. Replaying one that is still
    waiting changes nothing. The filters are those of `gateway deliveries failed`, with no
    limit by default. Exit status 1 if any id is unknown or was refused.
    """
    selection = failed_filter(**filters)
    if delivery_ids and failed:
        raise click.UsageError("give delivery ids or --failed, not both")
    if not failed:
        if selection != FailedFilter() or limit:
            raise click.UsageError("the filters select dead letters: add --failed")
        if not delivery_ids:
            raise click.UsageError("give delivery ids, or --failed (with filters) for dead letters")
    service = _service()
    if not failed:
        ids = list(dict.fromkeys(delivery_ids))
    else:
        ids = [d["delivery_id"] for d in dead_letters(service, selection, None, limit).items]
        if not ids:
            if as_json:
                _echo_json(replay_json({}))
                return
            click.echo("no dead letters match; nothing to replay")
            return
    if len(ids) > 1 and not yes:
        _confirm(ids)
    results = _replay(service, ids, force)
    if as_json:
        _echo_json(replay_json(results))
        bad = any(r == "unknown" or r == "delivered" or r not in _REPLAY_RESULTS for r in results.values())
        sys.exit(1 if bad else 0)
    _echo_replayed(service, results)


def _confirm(ids: list[str]) -> None:
    per_target = Counter(did.partition("-")[2] for did in ids)
    detail = ", ".join(f"{n} to {t}" for t, n in sorted(per_target.items()))
    question = f"replay {len(ids)} deliveries ({detail})?"
    if not sys.stdin.isatty():
        raise click.ClickException(f"{question[:-1]}: add --yes to confirm without a terminal")
    click.confirm(question[0].upper() + question[1:], abort=True)


def _replay(service: Service, ids: list[str], force: bool) -> dict[str, str]:
    results: dict[str, str] = {}
    hidden = len(ids) < 2 or not sys.stderr.isatty()
    with click.progressbar(length=len(ids), label="replaying", file=sys.stderr, hidden=hidden) as bar:
        for start in range(0, len(ids), REPLAY_CHUNK):
            chunk = ids[start : start + REPLAY_CHUNK]
            results.update(service.replay(CLI, chunk, force=force))
            bar.update(len(chunk))
    return results


def _echo_replayed(service: Service, results: dict[str, str]) -> None:
    counts = Counter(results.values())
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
    if replayed_to:
        listed = service.targets_page(CLI)
        held = {
            t["name"]
            for t in [*listed["items"], *listed["unconfigured"]]
            if t["health"]["state"] in ("paused", "disabled")
        }
        for name in sorted(replayed_to & held):
            click.echo(
                f"note: {name} is paused or disabled: these wait until it recovers "
                f"or `gateway targets resume {name}`"
            )
    if problems:
        sys.exit(1)
