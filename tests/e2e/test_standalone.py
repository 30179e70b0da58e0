"""`python -m gateway standalone` with no REDIS_URL: embedded server, web and workers in one
command, and nothing left running after it stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
from e2e_support import SETTINGS, http_call, wait_until
from redis import Redis

from gateway.embedded import free_port

if TYPE_CHECKING:
    from conftest import Gateway, Process, TargetServer

STOP_WITHIN = 30.0


def alive(p: psutil.Process) -> bool:
    """Running, and not a zombie (a zombie has exited; only its exit status is left)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Standalone:
    process: Process
    port: int
    data_dir: Path
    family: list[psutil.Process] = field(default_factory=list)  # every descendant, once found
    cmdlines: dict[int, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def find_children(self) -> dict[str, list[int]]:
        """The processes it started (by `ps --ppid`), by role; records all descendants too."""
        ps = subprocess.run(
            ["ps", "--ppid", str(self.process.pid), "-o", "pid="], capture_output=True, text=True, check=False
        )
        direct = {int(pid) for pid in ps.stdout.split()}
        self.family = psutil.Process(self.process.pid).children(recursive=True)
        assert direct <= {p.pid for p in self.family}
        self.cmdlines = {p.pid: " ".join(p.cmdline()) for p in self.family if alive(p)}
        children = {pid: cmd for pid, cmd in self.cmdlines.items() if pid in direct}
        web_cmd = f"gateway web --host 127.0.0.1 --port {self.port}"
        servers = ("valkey-server", "redis-server")
        return {
            "server": [pid for pid, cmd in children.items() if any(s in cmd for s in servers)],
            "web": [pid for pid, cmd in children.items() if cmd.endswith(web_cmd)],
            # (Each worker's RQ scheduler is a fork with the same command line: a grandchild.)
            "worker": [pid for pid, cmd in children.items() if cmd.endswith("gateway worker")],
        }

    def wait_all_gone(self) -> int:
        """Wait for the command and every descendant to exit; return the command's exit status."""
        deadline = time.monotonic() + STOP_WITHIN
        try:
            code = self.process.proc.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"standalone still running after {STOP_WITHIN:g} s") from None
        while any(alive(p) for p in self.family) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {p.pid: self.cmdlines.get(p.pid, "?") for p in self.family if alive(p)}
        assert left == {}, f"still running after standalone exited: {left}"
        return code


@pytest.fixture
def standalone(gateway: Gateway, target_server: TargetServer, tmp_path: Path) -> Iterator[Standalone]:
    gateway.write_config(
        SETTINGS
        + f"""
[[targets]]
name = "t"
networks = ["mynetwork"]
url = "{target_server.url}/t?to=%invitee%&from=%invitor%&net=%network_id%"
retry = [1]
"""
    )
    data_dir = tmp_path / "data"
    env = gateway.environ(GATEWAY_DATA_DIR=str(data_dir))
    del env["REDIS_URL"]
    port = free_port()
    proc = gateway.start_process(
        [sys.executable, "-m", "gateway", "standalone", "--host", "127.0.0.1", "--port", str(port)],
        "standalone",
        env,
    )
    sa = Standalone(proc, port, data_dir)
    try:

        def healthy() -> bool:
            assert proc.proc.poll() is None, proc.output()
            try:
                return http_call(sa.base, "GET", "/healthz", timeout=5).status == 200
            except OSError:
                return False

        wait_until(healthy, "standalone /healthz", timeout=30, interval=0.1)
        yield sa
    finally:
        proc.stop()
        for p in sa.family:  # only what this test started, by PID
            if alive(p):
                p.kill()


def test_standalone_serves_and_stops_everything_on_sigterm(
    standalone: Standalone, target_server: TargetServer
) -> None:
    callback = "/invitation_created/?invitee=15551231234&invitor=johnsnow&net=mynetwork"
    resp = http_call(standalone.base, "GET", callback)
    assert resp.status == 204, (resp.body, standalone.process.output())
    [received] = target_server.wait_for("/t", 1, timeout=30)
    assert received.query == [("to", "15551231234"), ("from", "johnsnow"), ("net", "mynetwork")]

    roles = standalone.find_children()
    assert len(roles["server"]) == 1, standalone.cmdlines
    assert len(roles["web"]) == 1, standalone.cmdlines
    assert len(roles["worker"]) == 2, standalone.cmdlines  # GATEWAY_WORKERS defaults to 2
    data_dir = standalone.data_dir
    assert data_dir.is_dir() and any(data_dir.iterdir()), "the embedded server keeps its data there"
    # A 204 here means fsync'd (GATEWAY_DURABILITY=disk by default, appendfsync always), and this
    # one was confirmed by Redis, not spooled.
    embedded = Redis.from_url((data_dir / "redis.url").read_text().strip())
    assert embedded.config_get("appendfsync") == {"appendfsync": "always"}
    embedded.close()
    assert http_call(standalone.base, "GET", "/readyz").json()["checks"]["durability"] == "disk (ok)"
    spool = data_dir / "spool"
    assert not spool.is_dir() or not any(p.stat().st_size for p in spool.glob("*.jsonl"))
    assert "appendfsync always, GATEWAY_DURABILITY=disk" in standalone.process.output()

    os.kill(standalone.process.pid, signal.SIGTERM)
    code = standalone.wait_all_gone()
    assert code == 0, standalone.process.output()


def test_standalone_stops_everything_and_fails_when_a_child_dies(standalone: Standalone) -> None:
    """A child that dies takes the whole command down, with a failure status, so that the
    process manager running it notices and restarts it."""
    roles = standalone.find_children()
    [web] = roles["web"]
    os.kill(web, signal.SIGKILL)  # a process this test started (through standalone)
    code = standalone.wait_all_gone()
    output = standalone.process.output()
    assert f"process {web} exited" in output
    assert code != 0, f"standalone exited with status {code} after its web process died:\n{output}"
