"""Shared pieces of the commands: the group, settings and Store, operator command errors, tables."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from redis.exceptions import RedisError

from gateway import __version__
from gateway.admin.service import DeadLetter  # the same record, and JSON, as the admin API
from gateway.events import EVENT_TYPES
from gateway.exceptions import ConfigError
from gateway.logs import setup_logging
from gateway.records import DEAD, Delivery, iso_ms
from gateway.settings import Settings
from gateway.store.events import Store
from gateway.store.queue import DeliveryQueue, TargetHealth, TargetState


def _settings() -> Settings:
    """The environment's settings; a bad one (say, REDIS_URL without a scheme) ends in one line."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise _UsageLine(str(exc)) from None


def _store(settings: Settings) -> Store:
    """The Store on REDIS_URL, or on the embedded Redis of a running standalone (gateway.wiring)."""
    from gateway import wiring

    try:
        return wiring.store(settings)
    except ConfigError as exc:
        raise _UsageLine(str(exc)) from None


class GatewayGroup(click.Group):
    """The `gateway` group: Redis failing under any command is one line, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RedisError as exc:
            logging.getLogger("gateway").debug("Redis failed", exc_info=True)
            raise click.ClickException(f"Redis: {type(exc).__name__}: {exc}") from None


@click.group(cls=GatewayGroup)
@click.version_option(__version__, prog_name="gateway")
@click.option("--log-level", envvar="GATEWAY_LOG_LEVEL", default="INFO", show_default=True)
@click.option(
    "--log-format",
    envvar="GATEWAY_LOG_FORMAT",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"], case_sensitive=False),
    help="json: one JSON object per line.",
)
@click.option(
    "--log-mask/--no-log-mask",
    envvar="GATEWAY_LOG_MASK",
    default=True,
    show_default=True,
    help="Mask phone numbers in logs (+4477****1234).",
)
def main(log_level: str, log_format: str, log_mask: bool) -> None:
    """invitation-gateway: Acrobits invitation callbacks in, deliveries to your targets out."""
    setup_logging(log_level, log_format.lower(), log_mask)
    # uvicorn's worker processes (WEB_CONCURRENCY > 1) start bare and read these again.
    os.environ["GATEWAY_LOG_LEVEL"] = log_level
    os.environ["GATEWAY_LOG_FORMAT"] = log_format.lower()
    os.environ["GATEWAY_LOG_MASK"] = "true" if log_mask else "false"


# -- operator commands: shared pieces ------------------------------------------------------------------


class _UsageLine(click.ClickException):
    """A usage error on one line (no usage text), with the usage errors' exit status."""

    exit_code = 2


class OperatorCommand(click.Command):
    """A command whose bad arguments and Redis failures end in one line, never a traceback."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _UsageLine(exc.format_message()) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _UsageLine(exc.format_message()) from None
        except RedisError as exc:
            raise click.ClickException(f"Redis: {type(exc).__name__}: {exc}") from None


_AGO = re.compile(r"([0-9]{1,9})\s*(s|m|h|d|w)")
_AGO_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Alerts (gateway.events.ALERT_EVENT) are events too, and can fail like any other.
_EVENT_CHOICES = (*EVENT_TYPES, "gateway_alert")
_LOAD_CHUNK = 500  # deliveries read per pipeline


class When(click.ParamType[int, Any]):
    """ISO 8601 (UTC when it names no offset) or a duration ago (30m, 2h, 7d): epoch ms."""

    name = "WHEN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        ago = _AGO.fullmatch(text)
        if ago:
            return _now_ms() - int(ago[1]) * _AGO_UNITS[ago[2]] * 1000
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{text!r} is neither ISO 8601 (2026-05-01T12:00:00Z) nor a duration ago (30m, 2h, 7d)",
                param,
                ctx,
            )
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp() * 1000)


F = TypeVar("F", bound=Callable[..., Any])


def dead_letter_filters(default_limit: int) -> Callable[[F], F]:
    """The options that select dead letters (`deliveries failed`, `replay --failed`)."""
    options = [
        click.option("--target", multiple=True, metavar="NAME", help="Only this target (repeatable)."),
        click.option("--network", multiple=True, metavar="ID", help="Only this network id (repeatable)."),
        click.option(
            "--event", type=click.Choice(_EVENT_CHOICES), default=None, help="Only this event type."
        ),
        click.option("--since", type=When(), default=None, help="Failed at or after WHEN."),
        click.option("--until", type=When(), default=None, help="Failed at or before WHEN."),
        click.option("--error", metavar="TEXT", default=None, help="Last error contains TEXT (any case)."),
        click.option(
            "--limit",
            type=click.IntRange(min=0),
            metavar="N",
            default=default_limit,
            show_default=True,
            help="At most N, the newest first; 0: all.",
        ),
    ]

    def wrap(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return wrap


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    targets: frozenset[str] = frozenset()
    networks: frozenset[str] = frozenset()
    event: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    error: str | None = None
    limit: int = 0  # 0: all

    @classmethod
    def from_options(
        cls,
        target: tuple[str, ...],
        network: tuple[str, ...],
        event: str | None,
        since: int | None,
        until: int | None,
        error: str | None,
        limit: int,
    ) -> DeadLetterFilter:
        if since is not None and until is not None and since > until:
            raise click.BadParameter(
                f"--since ({iso_ms(since)}) is after --until ({iso_ms(until)})", param_hint="'--since'"
            )
        return cls(frozenset(target), frozenset(network), event, since, until, error or None, limit)

    def narrows(self) -> bool:
        return self != DeadLetterFilter(limit=0)

    def but(self, **changes: Any) -> DeadLetterFilter:
        return replace(self, **changes)

    def matches(self, d: DeadLetter) -> bool:
        return (
            (not self.networks or d.event.network_id in self.networks)
            and (self.event is None or d.event.type == self.event)
            and (self.error is None or self.error.lower() in (d.delivery.last_error or "").lower())
        )


def select_dead_letters(store: Store, dq: DeliveryQueue, f: DeadLetterFilter) -> list[DeadLetter]:
    """The dead letters `f` selects, newest first; those whose event expired are left out.

    The time range is applied by Redis; the target from the id; the rest in Python, on events
    and states read a pipeline at a time (and no further than `f.limit` needs).
    """
    rows = [
        (did, ms)
        for did, ms in dq.dead_letters(f.since_ms, f.until_ms)
        if not f.targets or did.partition("-")[2] in f.targets
    ]
    found: list[DeadLetter] = []
    for start in range(0, len(rows), _LOAD_CHUNK):
        chunk = rows[start : start + _LOAD_CHUNK]
        loaded = store.get_many_deliveries([did for did, _ in chunk])
        for (did, ms), (event, state) in zip(chunk, loaded, strict=True):
            # A dead letter replayed meanwhile is no longer one.
            if event is None or state is None or state.status not in DEAD:
                continue
            letter = DeadLetter(did, ms, did.partition("-")[2], event, state)
            if f.matches(letter):
                found.append(letter)
                if f.limit and len(found) >= f.limit:
                    return found
    return found


def _delivery_queue(store: Store) -> DeliveryQueue:
    return DeliveryQueue(store.redis, store.prefix, store.retention)


def _wake(store: Store, settings: Settings) -> None:
    """Queue a drain job unless one is queued: what was just made due goes now."""
    from gateway.queue import enqueue_drain, make_queue

    if _delivery_queue(store).set_wake():
        enqueue_drain(make_queue(store.redis, settings.queue_name))


def _require_target(store: Store, name: str, allow_unconfigured: bool) -> None:
    _, data = store.load_config()
    names = sorted(t["name"] for t in (data or {}).get("targets", []))
    if name in names:
        return
    if allow_unconfigured:
        dq = _delivery_queue(store)
        if name in dq.held_targets() or name in dq.parked_targets():
            return
    known = ", ".join(names) if names else "none loaded"
    raise click.BadParameter(f"unknown target {name!r} (known: {known})", param_hint="NAME")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _iso(ms: float | None) -> str:
    return iso_ms(int(ms)) if ms is not None else "-"


def _clip(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Aligned columns under a header; the last column is not padded."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _state_label(health: TargetHealth) -> str:
    state = health.state
    return "paused (by hand)" if state is TargetState.PAUSED and health.manual else state.value


def _health_json(health: TargetHealth) -> dict[str, Any]:
    return {**health.to_dict(), "since": iso_ms(health.since) if health.since is not None else None}


def _delivery_json(state: Delivery) -> dict[str, Any]:
    data = state.to_dict()
    for key in ("updated_at", "next_attempt_at"):
        data[key] = iso_ms(data[key]) if data[key] else None
    return data


def _attempt_json(attempt: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in attempt.items() if k != "at_ms"}
    if "at" not in data and "at_ms" in attempt:
        data["at"] = iso_ms(attempt["at_ms"])
    return data


# What `attempt-now` found: these are waiting (or about to be sent); anything else is not.
_WAITING = frozenset({"scheduled", "due", "in-flight", "rate-limited", "held"})


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


# What `replay` answers, besides another status (a delivery neither waiting nor finished: refused).
_REPLAY_RESULTS = frozenset({"replayed", "pending", "held", "delivered", "unknown"})
_REPLAY_TEXT = {
    "unknown": "unknown (no such delivery, or past retention)",
    "delivered": "already delivered (--force sends it again)",
}


# -- the workers' environment (`targets apply`) ------------------------------------------------------

ENV_REPORT_WAIT = 6.0  # seconds `targets apply` waits for live workers to say which names they have


def workers_lacking(
    store: Store, names: set[str], wait: float = ENV_REPORT_WAIT
) -> tuple[dict[str, list[str]], int]:
    """({worker: [names it lacks]}, live workers that reported): asks the workers, waits for them.

    Workers report names only, never values (gateway.worker.Ticker.report_env). A worker that
    does not answer within `wait` is listed as lacking everything asked.
    """
    from gateway.worker import ENV_REPORT_TTL

    if not names:
        return {}, 0
    asked_at = _now_ms()
    store.ask_env_names(names)
    deadline = time.monotonic() + wait
    while True:
        reports = store.worker_env_reports(ENV_REPORT_TTL)
        fresh = {w: r for w, r in reports.items() if r["at"] >= asked_at and names <= r["asked"]}
        if len(fresh) == len(reports) or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    lacking = {}
    for worker, report in sorted(reports.items()):
        if worker not in fresh:
            lacking[worker] = sorted(names - report["have"]) if names <= report["asked"] else sorted(names)
        elif names - report["have"]:
            lacking[worker] = sorted(names - report["have"])
    return lacking, len(reports)
