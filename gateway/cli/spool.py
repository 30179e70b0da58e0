"""`gateway spool ...`: the web processes' local spools."""

from __future__ import annotations

import os
from typing import Any

import click

from gateway.cli.common import (
    OperatorCommand,
    _echo_json,
    _iso,
    _now_ms,
    _settings,
    _table,
    main,
)
from gateway.exceptions import ConfigError, NotDurable


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
    from gateway.wiring import redis_url

    settings = _settings()
    try:
        redis_url(settings)
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

    try:
        stored, existing = asyncio.run(run())
    except NotDurable as exc:
        # Stored in Redis perhaps, but not confirmed at the level: the file stays for the next drain.
        raise click.ClickException(f"not drained: {exc}; the spool files stay") from None
    click.echo(f"{stored} invitations stored, {existing} were already stored")
