"""`gateway web | worker | standalone`: the processes of the Procfile."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

import click

from gateway.cli.common import (
    _settings,
    main,
)
from gateway.cli.config import ingest_warnings
from gateway.exceptions import ConfigError
from gateway.settings import Settings
from gateway.targets import Config, load_config


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
