"""`gateway standalone` as an operator meets it: its embedded Redis dying, a second standalone on
the same data directory, and the CLI finding the embedded Redis without REDIS_URL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
from e2e_support import SETTINGS, http_call, wait_until

from gateway.embedded import free_port

if TYPE_CHECKING:
    from conftest import Gateway, Process, TargetServer


def _config(gateway: Gateway, target_server: TargetServer) -> None:
    gateway.write_config(
        SETTINGS
        + f"""
[[targets]]
name = "t"
networks = ["mynetwork"]
url = "{target_server.url}/t?to=%invitee%"
retry = [1]
"""
    )


def _env(gateway: Gateway, data_dir: Path) -> dict[str, str]:
    env = gateway.environ(GATEWAY_DATA_DIR=str(data_dir))
    del env["REDIS_URL"]
    return env


def _start(gateway: Gateway, data_dir: Path, name: str = "standalone") -> tuple[Process, int]:
    port = free_port()
    proc = gateway.start_process(
        [sys.executable, "-m", "gateway", "standalone", "--port", str(port)], name, _env(gateway, data_dir)
    )

    def healthy() -> bool:
        assert proc.proc.poll() is None, proc.output()
        try:
            return http_call(f"http://127.0.0.1:{port}", "GET", "/healthz", timeout=5).status == 200
        except OSError:
            return False

    wait_until(healthy, "standalone /healthz", timeout=40, interval=0.1)
    return proc, port


def _server_pid(proc: Process) -> int:
    servers = [
        p
        for p in psutil.Process(proc.pid).children()
        if any(s in " ".join(p.cmdline()) for s in ("valkey-server", "redis-server"))
    ]
    assert len(servers) == 1, servers
    return servers[0].pid


def _cli(gateway: Gateway, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=_env(gateway, data_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(240)
def test_a_dead_embedded_redis_is_restarted_with_its_data_then_given_up_on(
    gateway: Gateway, target_server: TargetServer, tmp_path: Path
) -> None:
    _config(gateway, target_server)
    data_dir = tmp_path / "data"
    proc, port = _start(gateway, data_dir)
    base = f"http://127.0.0.1:{port}"
    url = (data_dir / "redis.url").read_text().strip()
    assert url.startswith("redis://127.0.0.1:")
    assert f"URL in {data_dir / 'redis.url'}" in proc.output()

    first = _server_pid(proc)
    os.kill(first, signal.SIGKILL)

    def back() -> bool:
        try:
            return http_call(base, "GET", "/healthz", timeout=5).status == 200 and _server_pid(proc) != first
        except (OSError, AssertionError, psutil.Error):
            return False

    wait_until(back, "the embedded Redis restarted", timeout=30, interval=0.2)
    assert (data_dir / "redis.url").read_text().strip() == url  # same port
    # Its data came back with it (the applied configuration), and callbacks are delivered.
    listed = _cli(gateway, data_dir, "targets", "list")
    assert listed.returncode == 0, listed.stderr
    assert "t " in listed.stdout
    assert (
        http_call(
            base, "GET", "/invitation_created?invitee=%2B15550001&invitor=%2B15550009&network_id=mynetwork"
        ).status
        == 204
    )
    target_server.wait_for("/t", 1, timeout=30)

    # Three restarts within ten minutes, then it stops everything with exit status 1.
    for _ in range(3):
        pid = _server_pid(proc)
        os.kill(pid, signal.SIGKILL)
        if len(proc.output().split("exited with status -9")) > 4:
            break
        wait_until(
            lambda pid=pid: proc.proc.poll() is not None or (_pid_changed(proc, pid) and _healthy(base)),  # type: ignore[misc]
            "the embedded Redis restarted or given up",
            timeout=30,
            interval=0.1,
        )
    code = proc.proc.wait(40)
    assert code == 1, proc.output()
    last = proc.output().strip().splitlines()[-1]
    assert last.startswith("gateway standalone: the embedded Redis"), proc.output()
    assert "4 times within 10 minutes" in last and "exit status 1" in last
    assert "Traceback" not in proc.output()
    assert not (data_dir / "redis.url").exists()


def _healthy(base: str) -> bool:
    try:
        return http_call(base, "GET", "/healthz", timeout=5).status == 200
    except OSError:
        return False


def _pid_changed(proc: Process, pid: int) -> bool:
    try:
        return _server_pid(proc) != pid
    except (AssertionError, psutil.Error):
        return False


@pytest.mark.timeout(120)
def test_a_second_standalone_on_the_same_data_directory_exits_at_once(
    gateway: Gateway, target_server: TargetServer, tmp_path: Path
) -> None:
    _config(gateway, target_server)
    data_dir = tmp_path / "data"
    first, _ = _start(gateway, data_dir)
    second = subprocess.run(
        [sys.executable, "-m", "gateway", "standalone", "--port", str(free_port())],
        env=_env(gateway, data_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    assert second.stdout == ""
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert str(data_dir.resolve()) in lines[0]
    assert f"pid {first.pid}" in lines[0]
    assert first.proc.poll() is None  # the first one is untouched
    # (Its web listens on 127.0.0.1 only: the default of a local trial.)
    webs = [p.cmdline() for p in psutil.Process(first.pid).children() if "web" in p.cmdline()]
    assert len(webs) == 1 and webs[0][webs[0].index("--host") + 1] == "127.0.0.1"
    # Once the first stops, the directory is free again.
    assert first.stop() == 0
    again, _ = _start(gateway, data_dir, "standalone-again")
    assert again.proc.poll() is None


@pytest.mark.timeout(120)
def test_commands_without_redis_url_find_the_running_standalone(
    gateway: Gateway, target_server: TargetServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    none = _cli(gateway, data_dir, "events", "list")
    assert none.returncode == 2
    assert none.stderr.strip().count("\n") == 0
    assert "no `gateway standalone` is running on" in none.stderr and str(data_dir) in none.stderr
    assert "set REDIS_URL" in none.stderr and "start `gateway standalone`" in none.stderr

    _config(gateway, target_server)
    proc, port = _start(gateway, data_dir)
    assert (
        http_call(
            f"http://127.0.0.1:{port}",
            "GET",
            "/invitation_created?invitee=%2B15550002&invitor=%2B15550009&network_id=mynetwork",
        ).status
        == 204
    )
    target_server.wait_for("/t", 1, timeout=30)
    listed = _cli(gateway, data_dir, "events", "list")
    assert listed.returncode == 0, listed.stderr
    assert "mynetwork" in listed.stdout
    targets = _cli(gateway, data_dir, "targets", "list")
    assert targets.returncode == 0 and "t " in targets.stdout

    # A standalone killed outright leaves its URL file; commands do not take it for a running one.
    proc.stop()
    (data_dir / "redis.url").write_text("redis://127.0.0.1:1/0\n")
    stale = _cli(gateway, data_dir, "events", "list")
    assert stale.returncode == 2 and "no `gateway standalone` is running" in stale.stderr
