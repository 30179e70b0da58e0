"""`gateway`: web | worker | standalone | check | targets | events.

Every option also reads an environment variable, so the Procfile, the shell and a platform's
settings share one set of names.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Any

import click
from redis import Redis

from gateway import __version__
from gateway.exceptions import ConfigError
from gateway.settings import Settings
from gateway.store import Store
from gateway.targets import load_config

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
    _check_config_file(settings)
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # Above the usual 60 s idle timeout of load balancers, so they never reuse a closed socket.
        timeout_keep_alive=65,
        timeout_graceful_shutdown=20,  # below the 30 s a Procfile host waits before SIGKILL
        access_log=False,  # one line per accepted invitation comes from gateway.ingest
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
@click.option("--host", envvar="HOST", default="0.0.0.0", show_default=True)  # noqa: S104 - a server
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


def _check_config_file(settings: Settings) -> None:
    if settings.config_path:
        try:
            load_config(settings.config_path, os.environ)
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
    click.echo(f"{path}: {len(config.targets)} targets, valid")


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


@targets.command("list")
def targets_list() -> None:
    """Show the targets every process is using now (secrets stay as ${VAR})."""
    version, data = _store(_settings()).load_config()
    click.echo(json.dumps({"version": version, **(data or {"targets": []})}, indent=2))


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


if __name__ == "__main__":
    main()
