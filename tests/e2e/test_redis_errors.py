"""Each common REDIS_URL mistake, through real `gateway` processes: one line, never a traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from e2e_support import SETTINGS, http_call, run_gateway, wait_until

from gateway.embedded import EmbeddedRedis, free_port

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer

PASSWORD = "hunter2-secret"


def _run(gateway: Gateway, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return run_gateway(*args, env=gateway.environ(**env))


@pytest.mark.parametrize(
    "command", [["worker"], ["web", "--port", "0"], ["events", "list"], ["targets", "list"]]
)
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("localhost:6379", "'localhost:6379' has no scheme: expected redis://"),
        (f"redis:{PASSWORD}@localhost:6379", "has no scheme"),
        ("http://localhost:6379", "scheme 'http' is not supported"),
    ],
)
def test_a_malformed_redis_url_is_one_line(gateway: Gateway, command: list[str], url: str, says: str) -> None:
    done = _run(gateway, command, REDIS_URL=url)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: key 'REDIS_URL': ")
    assert says in lines[0]
    assert PASSWORD not in done.stderr + done.stdout


def test_an_unreachable_redis_for_a_command_is_one_line(gateway: Gateway) -> None:
    done = _run(gateway, ["events", "list"], REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0")
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Redis: ConnectionError" in done.stderr
    assert PASSWORD not in done.stderr


@pytest.mark.timeout(90)
def test_a_worker_waits_for_an_unreachable_redis_in_one_line_per_try(
    gateway: Gateway, target_server: TargetServer
) -> None:
    port = free_port()
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    worker = gateway.start_worker(REDIS_URL=url)
    wait_until(lambda: worker.output().count("does not answer") >= 3, "three tries", timeout=30, interval=0.2)
    out = worker.output()
    assert worker.proc.poll() is None
    assert "trying again in 1 s" in out and "trying again in 2 s" in out and "trying again in 4 s" in out
    assert f"redis://:***@127.0.0.1:{port}/0" in out
    assert PASSWORD not in out
    assert "Traceback" not in out
    # A stop while waiting is a clean exit.
    assert worker.stop() == 0
    assert "Traceback" not in worker.output()


@pytest.mark.timeout(120)
def test_web_with_gateway_config_starts_while_redis_is_down_and_applies_it_when_back(
    gateway: Gateway, target_server: TargetServer, tmp_path: Path
) -> None:
    gateway.write_config(
        SETTINGS
        + f"""
[[targets]]
name = "t"
networks = ["mynetwork"]
url = "{target_server.url}/t?to=%invitee%"
"""
    )
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    web_port = free_port()
    web = gateway.start_process(
        [sys.executable, "-m", "gateway", "web", "--host", "127.0.0.1", "--port", str(web_port)],
        "web-down",
        gateway.environ(REDIS_URL=redis_url),
    )
    base = f"http://127.0.0.1:{web_port}"

    def answers() -> bool:
        assert web.proc.poll() is None, web.output()
        try:
            return http_call(base, "GET", "/healthz", timeout=5).status in (200, 503)
        except OSError:
            return False

    wait_until(answers, "web answers", timeout=30, interval=0.1)
    # Up (/healthz) but not ready (/readyz) while Redis is away.
    assert http_call(base, "GET", "/healthz").json()["redis"].startswith("unreachable")
    assert http_call(base, "GET", "/readyz").status == 503
    # A callback while Redis is down is spooled, not refused.
    spooled = http_call(
        base, "GET", "/invitation_created?invitee=%2B15550001&invitor=%2B15550002&network_id=mynetwork"
    )
    assert spooled.status in (202, 204), spooled
    with EmbeddedRedis(port=port) as server:
        assert server.url == redis_url
        wait_until(
            lambda: (
                http_call(base, "GET", "/healthz").json().get("redis") == "ok"
                and http_call(base, "GET", "/healthz").json().get("config_version") == 1
            ),
            "configuration applied once Redis is back",
            timeout=40,
            interval=0.3,
        )
        gateway.start_worker(REDIS_URL=redis_url)
        target_server.wait_for("/t", 1, timeout=40)
        web.stop()
    out = web.output()
    assert "Redis does not answer" in out and "applying the file once Redis is back" in out
    assert "configuration loaded: 1 targets, version 1" in out
    assert "Application startup failed" not in out
    assert "Traceback" not in out, out


@pytest.mark.timeout(120)
def test_an_outage_is_logged_in_lines_not_tracebacks(
    gateway: Gateway, target_server: TargetServer, tmp_path: Path
) -> None:
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    server = EmbeddedRedis(data_dir=tmp_path / "redis", port=port).start()  # persistent: keeps its data
    try:
        gateway.env["REDIS_URL"] = redis_url
        gateway.write_config(
            SETTINGS
            + f"""
[[targets]]
name = "t"
networks = ["mynetwork"]
url = "{target_server.url}/t?to=%invitee%"
"""
        )
        base = gateway.start_web()
        worker = gateway.start_worker()
        wait_until(lambda: "Listening on" in worker.output(), "worker listening", timeout=30)
        server.stop()
        for i in range(3):
            http_call(
                base,
                "GET",
                f"/invitation_created?invitee=%2B1555000{i}&invitor=%2B15559999&network_id=mynetwork",
            )
        time.sleep(8)  # long enough for every periodic look at Redis to fail a few times
        server.start()
        target_server.wait_for("/t", 3, timeout=60)
    finally:
        server.stop()
    logs = gateway.logs()
    assert "Traceback" not in logs, logs
    assert "came back EMPTY" not in logs
