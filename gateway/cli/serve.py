"""`gateway web | worker | standalone`: the processes of the Procfile."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING

import click

from gateway.cli.common import (
    _settings,
    _UsageLine,
    main,
)
from gateway.cli.config import ingest_warnings
from gateway.config.checks import abuse_warnings
from gateway.config.load import load_config
from gateway.config.targets import Config
from gateway.exceptions import ConfigError
from gateway.settings import Durability, Settings

if TYPE_CHECKING:
    from gateway.embedded import EmbeddedRedis


@main.command()
@click.option("--host", envvar="HOST", default="0.0.0.0", show_default=True)  # noqa: S104 - a server
@click.option("--port", envvar="PORT", default=8000, show_default=True, type=int)
@click.option("--workers", envvar="WEB_CONCURRENCY", default=1, show_default=True, type=int)
def web(host: str, port: int, workers: int) -> None:
    """Serve the callback endpoints (uvicorn). Needs REDIS_URL.

    With GATEWAY_CONFIG, only the variables the ingest uses (the networks' token variables)
    must be set here; the targets' ${VARS} are the workers' (`gateway targets apply` reports
    which live workers lack which).
    """
    import uvicorn

    settings = _settings()
    _require_url(settings)
    config = _check_config_file(settings, web_only=True)
    if config is not None:
        for warning in ingest_warnings(config, settings) + abuse_warnings(config):
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
@click.option(
    "--processes",
    envvar="GATEWAY_WORKER_PROCESSES",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Run this many worker processes under one supervisor (restarts a dead one).",
)
def worker(
    burst: bool, max_jobs: int | None, name: str | None, maintenance_interval: int, processes: int
) -> None:
    """Deliver invitations: drain jobs and a ticker. Needs REDIS_URL.

    While Redis does not answer, the worker waits and says so in one line per try (1 s, then
    doubling up to 30 s); it never exits for an outage, so a process manager has nothing to do.
    """
    settings = _settings()
    _require_url(settings)
    if processes > 1:
        if burst or max_jobs is not None:
            raise _UsageLine("--processes runs long-lived workers: not with --burst or --max-jobs")
        from gateway.worker import supervise_workers

        sys.exit(supervise_workers(processes, name, maintenance_interval))
    from gateway.worker import run_worker

    run_worker(settings, burst=burst, max_jobs=max_jobs, maintenance_interval=maintenance_interval, name=name)


def _require_url(settings: Settings) -> None:
    """REDIS_URL, or a running standalone's Redis (gateway.wiring), or one line saying what to do."""
    from gateway.wiring import redis_url

    try:
        redis_url(settings)
    except ConfigError as exc:
        raise _UsageLine(str(exc)) from None


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
    """Web and workers in one command; starts an embedded Redis when REDIS_URL is not set.

    One standalone per data directory (a lock file); the embedded Redis' URL is written to
    `redis.url` there, where every `gateway` command without REDIS_URL finds it. If the embedded
    Redis dies it is restarted in place (same port, same data) up to 3 times in 10 minutes;
    past that, everything stops with exit status 1, for systemd or Docker to restart.
    """
    from gateway.embedded import DataDirBusy, DataDirLock, EmbeddedRedis, remove_url_file, write_url_file

    settings = _settings()
    _check_config_file(settings, web_only=False)  # fail here, with the reason, rather than in every child
    log = logging.getLogger("gateway.standalone")
    try:
        lock = DataDirLock(settings.data_dir).acquire()
    except DataDirBusy as exc:
        raise click.ClickException(str(exc)) from None
    env = dict(os.environ)
    server: EmbeddedRedis | None = None
    failed: list[str] = []
    children: list[subprocess.Popen[bytes]] = []
    try:
        if not settings.redis_url:
            assert lock.fd is not None
            level = settings.durability or STANDALONE_DURABILITY
            fsync = settings.embedded_appendfsync or embedded_appendfsync(level)
            server = EmbeddedRedis(data_dir=settings.data_dir, keep_fds=(lock.fd,), appendfsync=fsync)
            try:
                server.start()
            except RuntimeError as exc:
                raise click.ClickException(f"embedded Redis: {exc}") from None
            env["REDIS_URL"] = server.url
            env["GATEWAY_DURABILITY"] = level.value  # the web process' default is memory
            url_file = write_url_file(settings.data_dir, server.url)
            log.info(
                "embedded Redis on %s, data in %s (URL in %s), appendfsync %s, GATEWAY_DURABILITY=%s",
                server.url,
                lock.data_dir,
                url_file,
                fsync,
                level.value,
            )
        failed = _supervise_standalone(host, port, n_workers, env, server, children, log)
    finally:
        _stop_all(children)
        if server is not None:
            server.stop()
            remove_url_file(settings.data_dir)
        lock.release()
    if failed:
        # One line for whoever reads the journal; exit status 1 so that a process manager
        # restarting on failure brings it back.
        click.echo(f"gateway standalone: {failed[0]}; stopped everything (exit status 1)", err=True)
        sys.exit(1)


# What a 204 of `standalone` promises with its embedded Redis, unless GATEWAY_DURABILITY says
# otherwise: fsync'd (README, "What a 204 promises": measured to cost little, with the fsync of
# Redis' event loop shared by every batch of its turn).
STANDALONE_DURABILITY = Durability.DISK


def embedded_appendfsync(level: Durability) -> str:
    """The embedded Redis' fsync policy for `level` (GATEWAY_EMBEDDED_APPENDFSYNC overrides it).

    disk needs `always`: with `everysec` each WAITAOF waits for the next once-a-second fsync.
    """
    return "everysec" if level is Durability.MEMORY else "always"


RESTARTS = 3  # of the embedded Redis, within RESTART_WINDOW seconds, before giving up
RESTART_WINDOW = 600.0


def _supervise_standalone(
    host: str,
    port: int,
    n_workers: int,
    env: dict[str, str],
    server: EmbeddedRedis | None,
    children: list[subprocess.Popen[bytes]],
    log: logging.Logger,
) -> list[str]:
    """Run web and workers until a signal (returns []) or a failure (returns why)."""
    exe = [sys.executable, "-m", "gateway"]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    roles: dict[int, str] = {}
    children.append(subprocess.Popen([*exe, "web", "--host", host, "--port", str(port)], env=env))
    roles[children[-1].pid] = "web"
    for _ in range(n_workers):
        children.append(subprocess.Popen([*exe, "worker"], env=env))
        roles[children[-1].pid] = "worker"
    log.info("serving on http://%s:%d (pid %d, %d workers)", host, port, children[0].pid, n_workers)
    restarts: list[float] = []
    while not stopping:
        for c in children:
            if c.poll() is not None:
                return [f"the {roles[c.pid]} process {c.pid} exited with status {c.returncode}"]
        if server is not None and (code := server.exited()) is not None:
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW]
            if len(restarts) >= RESTARTS:
                return [
                    f"the embedded Redis (port {server.port}) exited with status {code}, "
                    f"{len(restarts) + 1} times within {RESTART_WINDOW / 60:g} minutes"
                ]
            restarts.append(now)
            log.error(
                "the embedded Redis (pid %s) exited with status %s; restarting it on port %d with its data "
                "(restart %d of at most %d within %g minutes)",
                server.pid,
                code,
                server.port,
                len(restarts),
                RESTARTS,
                RESTART_WINDOW / 60,
            )
            try:
                server.start()
            except RuntimeError as exc:  # counted as another exit on the next turn
                log.error("the embedded Redis could not be restarted on port %d: %s", server.port, exc)
            else:
                log.warning("the embedded Redis is back on port %d (pid %s)", server.port, server.pid)
        time.sleep(0.2)
    return []


def _check_config_file(settings: Settings, web_only: bool) -> Config | None:
    """The file, validated; `web_only`: of the ${VARS}, only the ingest's must be set here."""
    if not settings.config_path:
        return None
    try:
        config = load_config(settings.config_path, None if web_only else os.environ)
        if web_only:
            missing = [
                (network, ref[2:-1])
                for network, policy in config.networks.items()
                for ref in policy.tokens
                if ref.startswith("${") and not os.environ.get(ref[2:-1])
            ]
            if missing:
                network, var = missing[0]
                raise ConfigError(
                    f"{settings.config_path}: network {network!r}, key 'tokens': "
                    f"environment variable {var} is not set (or is empty)"
                )
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return config


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
