"""Shared pieces of the commands: the group, settings and Store, the admin Service and the `CLI`
principal that acts on it, operator command errors, tables."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click
from redis.exceptions import RedisError

from gateway import __version__
from gateway.admin import AdminError, NotFound
from gateway.admin.keys import Principal
from gateway.admin.queries import EVENT_TYPE_CHOICES, FailedFilter
from gateway.admin.service import Service
from gateway.exceptions import ConfigError
from gateway.logs import setup_logging
from gateway.records import iso_ms
from gateway.settings import Settings
from gateway.store.events import Store
from gateway.store.queue import DeliveryQueue

# The commands run where REDIS_URL is known: they act as an operator key would, through the same
# Service as the admin API (so `--json` prints the API's document), and say "by hand" of what
# they change (a paused target's reason, an alert).
CLI = Principal("cli", "the gateway command", None, acting="by hand")


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
            "--event", type=click.Choice(EVENT_TYPE_CHOICES), default=None, help="Only this event type."
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


def failed_filter(
    target: tuple[str, ...],
    network: tuple[str, ...],
    event: str | None,
    since: int | None,
    until: int | None,
    error: str | None,
) -> FailedFilter:
    """The dead letters the options of `dead_letter_filters` select (as GET /deliveries/failed)."""
    try:
        return FailedFilter(frozenset(target), frozenset(network), event, since, until, error or None)
    except AdminError as exc:
        raise _bad_parameter(exc) from None


def _service() -> Service:
    """The admin API's Service on this environment's Redis (act on it as `CLI`)."""
    settings = _settings()
    return Service(_store(settings), settings.queue_name)


def _bad_parameter(exc: AdminError) -> click.BadParameter:
    """A value the Service refused, as the option that gave it (`--since`)."""
    return click.BadParameter(exc.detail, param_hint=f"'--{exc.field}'" if exc.field else None)


def _fail(exc: AdminError, not_found: str | None = None) -> NoReturn:
    """Exit 1 with the Service's reason on one line (`not_found`: the text for a NotFound)."""
    if isinstance(exc, NotFound) and not_found is not None:
        raise click.ClickException(not_found)
    where = f" ({exc.field})" if exc.field else ""
    raise click.ClickException(f"{exc.detail}{where}")


def _delivery_queue(store: Store) -> DeliveryQueue:
    return DeliveryQueue(store.redis, store.prefix, store.retention)


def _wake(store: Store, settings: Settings) -> None:
    """Queue a drain job unless one is queued: what was just made due goes now."""
    from gateway.queue import enqueue_drain, make_queue

    if _delivery_queue(store).set_wake():
        enqueue_drain(make_queue(store.redis, settings.queue_name))


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


def _state_label(health: Mapping[str, Any]) -> str:
    """A target's state, from its API health document (`documents.health_json`)."""
    return "paused (by hand)" if health["state"] == "paused" and health["manual"] else str(health["state"])


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
