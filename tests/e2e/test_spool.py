"""Redis down: callbacks are spooled (fsync'd) and answered 204, then drained into Redis once it
is back, and delivered once. Real valkey servers stopped and started by PID, real web processes."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from e2e_support import SETTINGS, http_call, run_gateway, store_for, wait_until
from redis import Redis

from gateway.embedded import EmbeddedRedis, free_port

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer


def callback(n: int) -> str:
    return f"/invitation_created/?invitee=1555123{n:04d}&invitor=johnsnow&network_id=mynetwork"


def config(target_server: TargetServer) -> str:
    return SETTINGS + f'[[targets]]\nname = "t"\nnetworks = ["mynetwork"]\nurl = "{target_server.url}/t"\n'


def spool_lines(gateway: Gateway) -> int:
    folder = gateway.tmp_path / "data" / "spool"
    return sum(len(p.read_bytes().splitlines()) for p in folder.glob("*.jsonl")) if folder.is_dir() else 0


def start_web_on(gateway: Gateway, url: str, name: str, **env: str) -> tuple[str, int]:
    port = free_port()
    proc = gateway.start_process(
        [sys.executable, "-m", "gateway", "web", "--host", "127.0.0.1", "--port", str(port)],
        name,
        gateway.environ(REDIS_URL=url, **env),
    )
    base = f"http://127.0.0.1:{port}"

    def listening() -> bool:
        assert proc.proc.poll() is None, proc.output()
        try:
            http_call(base, "GET", "/healthz", timeout=5)
        except OSError:
            return False
        return True

    wait_until(listening, "the web process to listen", timeout=20)
    return base, proc.pid


@pytest.mark.timeout(90)
def test_redis_gone_after_start_spools_then_drains_and_delivers_once(
    gateway: Gateway, target_server: TargetServer, tmp_path: Path
) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    port = server.port
    try:
        gateway.redis_url = server.url
        gateway.write_config(config(target_server))
        base = gateway.start_web()
        gateway.start_worker()
        assert http_call(base, "GET", callback(0)).status == 204
        target_server.wait_for("/t", 1)
    finally:
        server.stop()
    # Redis is gone: every callback is still answered 204, from the spool.
    for n in range(1, 21):
        resp = http_call(base, "GET", callback(n))
        assert resp.status == 204, (resp.status, resp.body, gateway.logs())
    assert spool_lines(gateway) == 20
    assert http_call(base, "GET", "/readyz").status == 503
    # Redis comes back (same port, same data): the spool drains by itself and all is delivered.
    server = EmbeddedRedis(data_dir=tmp_path / "redis", port=port).start()
    try:
        got = target_server.wait_for("/t", 21, timeout=40)
        wait_until(lambda: spool_lines(gateway) == 0, "the spool to be drained", timeout=20)
        store = store_for(Redis.from_url(server.url))
        assert len(store.recent_events(100)) == 21
        keys = [r.headers["idempotency-key"] for r in got]
        assert len(keys) == len(set(keys)) == 21, "a spooled invitation was delivered twice"
        assert "spooling to" in gateway.logs()
    finally:
        gateway.stop()
        server.stop()


@pytest.mark.timeout(90)
def test_no_redis_at_startup_spools_and_drains_when_it_appears(gateway: Gateway, tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    base, _ = start_web_on(gateway, url, "web-no-redis")
    assert http_call(base, "GET", "/readyz").status == 503
    for n in range(5):
        assert http_call(base, "GET", callback(n)).status == 204, gateway.logs()
    # The POST shapes too.
    body = b'{"invitee": "15551239999", "invitor": "johnsnow", "network_id": "mynetwork"}'
    resp = http_call(base, "POST", "/invitation_created/", body, {"Content-Type": "application/json"})
    assert resp.status == 204
    assert spool_lines(gateway) == 6
    server = EmbeddedRedis(port=port).start()
    try:
        client = Redis.from_url(url)
        wait_until(lambda: len(store_for(client).recent_events(100)) == 6, "the spool to drain", timeout=30)
        # The file goes once the drain's last batch is stored (and its drain job queued): after.
        wait_until(lambda: spool_lines(gateway) == 0, "the spool file to go", timeout=10)
        client.close()
    finally:
        gateway.stop()
        server.stop()


@pytest.mark.timeout(90)
def test_web_killed_after_spooling_drains_at_the_next_start(gateway: Gateway, tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    base, pid = start_web_on(gateway, url, "web-killed")
    for n in range(7):
        assert http_call(base, "GET", callback(n)).status == 204
    os.kill(pid, signal.SIGKILL)  # no chance to drain: the spool file stays behind
    assert spool_lines(gateway) == 7
    server = EmbeddedRedis(port=port).start()
    try:
        start_web_on(gateway, url, "web-restarted")
        client = Redis.from_url(url)
        wait_until(lambda: len(store_for(client).recent_events(100)) == 7, "the orphaned spool to drain", 30)
        wait_until(lambda: spool_lines(gateway) == 0, "the spool file to go", timeout=10)
        client.close()
    finally:
        gateway.stop()
        server.stop()


@pytest.mark.timeout(60)
def test_a_full_spool_answers_503_and_logs_the_invitation(gateway: Gateway) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    base, _ = start_web_on(gateway, url, "web-full", GATEWAY_SPOOL_MAX_BYTES="600")
    statuses = [http_call(base, "GET", callback(n)).status for n in range(6)]
    assert statuses[0] == 204
    assert 503 in statuses, statuses
    refused = statuses.index(503)
    resp = http_call(base, "GET", callback(99))
    assert resp.status == 503
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert "retry-after" in resp.headers
    log = gateway.logs()
    # The refused invitation is in the log in full, so that an operator can still recover it.
    line = next(x for x in log.splitlines() if "NOT STORED" in x and "15551230099" in x)
    assert json.loads(line[line.index("{") :])["event"]["invitee"] == "15551230099"
    assert spool_lines(gateway) == refused


@pytest.mark.timeout(90)
def test_spool_status_and_drain_from_the_cli(gateway: Gateway) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    base, pid = start_web_on(gateway, url, "web-for-cli")
    for n in range(4):
        assert http_call(base, "GET", callback(n)).status == 204
    os.kill(pid, signal.SIGKILL)
    env = gateway.environ(REDIS_URL=url)
    status = run_gateway("spool", "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    [entry] = json.loads(status.stdout)["files"]
    assert entry["invitations"] == 4 and entry["age_seconds"] >= 0
    # Redis still down: the drain fails with one line, and keeps the spool.
    failed = run_gateway("spool", "drain", env=env)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert spool_lines(gateway) == 4
    server = EmbeddedRedis(port=port).start()
    try:
        drained = run_gateway("spool", "drain", env=env)
        assert drained.returncode == 0, drained.stderr
        assert "4 invitations stored, 0 were already stored" in drained.stdout
        assert spool_lines(gateway) == 0
        assert len(store_for(Redis.from_url(url)).recent_events(100)) == 4
    finally:
        server.stop()
