"""`gateway`: web | worker | standalone | check | targets | events | deliveries | replay.

Every option also reads an environment variable, so the Procfile, the shell and a platform's
settings share one set of names.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import FrameType
from typing import Any, TypeVar

import click
from redis import Redis
from redis.exceptions import RedisError

from gateway import __version__
from gateway.events import EVENT_TYPES, InvitationEvent, make_alert
from gateway.exceptions import ConfigError
from gateway.records import DEAD, Delivery, iso_ms, split_delivery_id
from gateway.settings import Settings
from gateway.store import DeliveryQueue, Store
from gateway.targets import Config, load_config

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _store(settings: Settings) -> Store:
    try:
        url = settings.require_redis_url()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return Store(Redis.from_url(url), prefix=settings.prefix, retention=settings.retention_days * 86400)


@click.group()
@click.version_option(__version__, prog_name="gateway")
@click.option("--log-level", envvar="GATEWAY_LOG_LEVEL", default="INFO", show_default=True)
def main(log_level: str) -> None:
    """invitation-gateway: Acrobits invitation callbacks in, deliveries to your targets out."""
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)


@main.command()
@click.option("--host", envvar="HOST", default="0.0.0.0", show_default=True)  # noqa: S104 - a server
@click.option("--port", envvar="PORT", default=8000, show_default=True, type=int)
@click.option("--workers", envvar="WEB_CONCURRENCY", default=1, show_default=True, type=int)
def web(host: str, port: int, workers: int) -> None:
    """Serve the callback endpoints (uvicorn). Needs REDIS_URL."""
    import uvicorn

    settings = _settings()
    try:
        settings.require_redis_url()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    config = _check_config_file(settings)
    if config is not None:
        for warning in ingest_warnings(config, settings):
            logging.getLogger("gateway.web").warning("%s", warning)
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # Named, not "auto": a missing wheel fails here instead of falling back to asyncio and h11.
        loop="uvloop",
        http="httptools",
        # Above the usual 60 s idle timeout of load balancers, so they never reuse a closed socket.
        timeout_keep_alive=65,
        timeout_graceful_shutdown=20,  # below the 30 s a Procfile host waits before SIGKILL
        access_log=False,  # accepted invitations are logged by gateway.ingest (no URLs: tokens)
        # X-Forwarded-For is read by the gateway, only from GATEWAY_TRUSTED_PROXIES.
        proxy_headers=False,
        log_config=None,
    )


@main.command()
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
@click.option("--max-jobs", type=int, default=None, help="Stop after this many jobs.")
@click.option("--name", default=None, help="Worker name (default: RQ's).")
@click.option(
    "--maintenance-interval",
    envvar="GATEWAY_MAINTENANCE_INTERVAL",
    default=60,
    show_default=True,
    type=int,
    help="Seconds between RQ's cleanup of jobs abandoned by dead workers.",
)
def worker(burst: bool, max_jobs: int | None, name: str | None, maintenance_interval: int) -> None:
    """Deliver invitations: an RQ worker with its scheduler. Needs REDIS_URL."""
    from gateway.worker import run_worker

    settings = _settings()
    try:
        settings.require_redis_url()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    run_worker(settings, burst=burst, max_jobs=max_jobs, maintenance_interval=maintenance_interval, name=name)


@main.command()
@click.option(
    "--host",
    envvar="HOST",
    default="127.0.0.1",
    show_default=True,
    help="0.0.0.0 to listen on every interface.",
)
@click.option("--port", envvar="PORT", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    "n_workers",
    envvar="GATEWAY_WORKERS",
    default=2,
    show_default=True,
    type=int,
    help="Delivery worker processes.",
)
def standalone(host: str, port: int, n_workers: int) -> None:
    """Web and workers in one command; starts an embedded Redis when REDIS_URL is not set."""
    from gateway.embedded import EmbeddedRedis

    settings = _settings()
    _check_config_file(settings)  # fail here, with the reason, rather than in every child
    log = logging.getLogger("gateway.standalone")
    env = dict(os.environ)
    server: EmbeddedRedis | None = None
    if not settings.redis_url:
        server = EmbeddedRedis(data_dir=settings.data_dir).start()
        env["REDIS_URL"] = server.url
        log.info("embedded Redis on %s, data in %s", server.url, os.path.abspath(settings.data_dir))
    exe = [sys.executable, "-m", "gateway"]
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        children.append(subprocess.Popen([*exe, "web", "--host", host, "--port", str(port)], env=env))
        for _ in range(n_workers):
            children.append(subprocess.Popen([*exe, "worker"], env=env))
        log.info("serving on http://%s:%d (pid %d, %d workers)", host, port, children[0].pid, n_workers)
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
        failed = [c for c in children if c.poll() is not None] if not stopping else []
        for c in failed:
            log.error("process %d exited with %s; stopping everything", c.pid, c.returncode)
    finally:
        _stop_all(children)
        if server is not None:
            server.stop()
    if failed:
        sys.exit(1)  # so that a process manager restarting on failure brings it back


def _check_config_file(settings: Settings) -> Config | None:
    if not settings.config_path:
        return None
    try:
        return load_config(settings.config_path, os.environ)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _stop_all(children: list[subprocess.Popen[bytes]], timeout: float = 25.0) -> None:
    for c in children:
        if c.poll() is None:
            os.kill(c.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for c in children:
        try:
            c.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.kill(c.pid, signal.SIGKILL)
            c.wait()


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
class DeadLetter:
    delivery_id: str
    failed_at_ms: int
    target: str
    event: InvitationEvent
    delivery: Delivery

    def to_dict(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "failed_at": iso_ms(self.failed_at_ms),
            "target": self.target,
            "network": self.event.network_id,
            "event": self.event.type,
            "event_id": self.event.id,
            "status": str(self.delivery.status),
            "attempts": self.delivery.attempts,
            "replays": self.delivery.replays,
            "last_status_code": self.delivery.last_status_code,
            "last_error": self.delivery.last_error,
        }


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


def _state_label(health: dict[str, Any]) -> str:
    state = str(health["state"])
    return "paused (by hand)" if state == "paused" and health["manual"] else state


def _health_json(health: dict[str, Any]) -> dict[str, Any]:
    return {**health, "since": iso_ms(health["since"]) if health["since"] is not None else None}


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


def _attempt_now_text(result: str, did: str, state: Delivery | None, health: dict[str, Any] | None) -> str:
    target = did.partition("-")[2]
    if result == "scheduled":
        was = (
            f" (its next retry was at {_iso(state.next_attempt_at)})"
            if state and state.next_attempt_at
            else ""
        )
        return f"scheduled: due now{was}"
    if result == "held":
        if health is not None and health["state"] in ("paused", "disabled"):
            why = f" ({health['reason']})" if health["reason"] else ""
            return f"held: target {health['state']}{why}; `gateway targets resume {target}` sends it"
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


@main.group()
def targets() -> None:
    """Manage the targets of a running deployment."""


@targets.command("apply")
@click.argument("path")
def targets_apply(path: str) -> None:
    """Validate FILE and load it into Redis; every process picks it up without a restart."""
    from gateway.app import apply_config_file

    try:
        version, changed, count = apply_config_file(_store(_settings()), path)
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
    health: dict[str, dict[str, Any]] = {}
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
            f"{name}: {_state_label(health)}" + (f" ({health['reason']})" if health["reason"] else ""),
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
def replay(delivery_ids: tuple[str, ...], failed: bool, force: bool, yes: bool, **filters: Any) -> None:
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


@main.group()
def events() -> None:
    """Watch invitations and their deliveries."""


@events.command("list")
@click.option("--network", default=None, help="Only this network id.")
@click.option("--limit", default=20, show_default=True, type=int)
def events_list(network: str | None, limit: int) -> None:
    """The latest invitations with the state of each delivery."""
    store = _store(_settings())
    for ev, deliveries in store.events_with_deliveries(store.recent_events(limit, network)):
        states = " ".join(f"{name}={d['status']}/{d['attempts']}" for name, d in sorted(deliveries.items()))
        click.echo(f"{ev.id} {ev.received_at} {ev.type:<19} {ev.network_id:<16} {ev.invitee:<16} {states}")


@events.command("show")
@click.argument("event_id")
def events_show(event_id: str) -> None:
    """One invitation: the event, each delivery's state, every attempt."""
    store = _store(_settings())
    ev = store.get_event(event_id)
    if ev is None:
        raise click.ClickException(f"no event {event_id} (unknown or past retention)")
    out: dict[str, Any] = {
        "event": ev.to_dict(),
        "deliveries": store.get_deliveries(event_id),
        "attempts": store.get_attempts(event_id),
    }
    click.echo(json.dumps(out, indent=2, ensure_ascii=False))


# -- the spool and ingest tokens ----------------------------------------------------------------------


@main.group()
def spool() -> None:
    """The web processes' spool (invitations accepted while Redis was unreachable)."""


@spool.command("status", cls=OperatorCommand)
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def spool_status(as_json: bool) -> None:
    """Depth and age of every spool file in GATEWAY_SPOOL_DIR (default DATA_DIR/spool)."""
    from gateway.ingest.spool import spool_files

    settings = _settings()
    files = spool_files(settings.spool_path)
    now = _now_ms()
    rows: list[dict[str, Any]] = [
        {
            "file": str(f.path),
            "invitations": f.lines,
            "bytes": f.bytes,
            "oldest": _iso(f.oldest_ms) if f.oldest_ms else None,
            "age_seconds": round((now - f.oldest_ms) / 1000) if f.oldest_ms else None,
        }
        for f in files
    ]
    if as_json:
        _echo_json({"directory": settings.spool_path, "files": rows})
        return
    if not rows:
        click.echo(f"{settings.spool_path}: no spooled invitations")
        return
    _table(
        ["FILE", "INVITATIONS", "BYTES", "OLDEST", "AGE"],
        [
            [r["file"], str(r["invitations"]), str(r["bytes"]), r["oldest"] or "-", f"{r['age_seconds']} s"]
            for r in rows
        ],
    )
    total = sum(r["invitations"] for r in rows)
    click.echo(f"{total} invitations spooled; `gateway spool drain` stores them once Redis answers")


@spool.command("drain", cls=OperatorCommand)
def spool_drain() -> None:
    """Store every spooled invitation no live web process is writing (needs REDIS_URL)."""
    import asyncio

    from gateway.app import ingest_parts
    from gateway.ingest.spool import Spool

    settings = _settings()
    try:
        settings.require_redis_url()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    spool = Spool(settings.spool_path, name=f"cli-{os.getpid()}")

    async def run() -> tuple[int, int]:
        parts = ingest_parts(settings, spool)
        try:
            await parts.refresh_config()
            return await parts.accepter.drain()
        finally:
            await parts.fast.aclose()
            await parts.aio.aclose()
            parts.redis.close()
            spool.close()

    stored, existing = asyncio.run(run())
    click.echo(f"{stored} invitations stored, {existing} were already stored")


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
