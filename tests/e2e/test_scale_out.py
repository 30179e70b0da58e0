"""Several web processes and `gateway worker --processes 2` on one Redis deliver everything once;
the supervisor restarts a dead worker and stops them all on SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import TYPE_CHECKING

import psutil
import pytest
from e2e_support import SETTINGS, http_call, wait_until

if TYPE_CHECKING:
    from conftest import Gateway, Process, TargetServer

CALLBACKS = 60


def _workers(supervisor: Process) -> list[psutil.Process]:
    """The supervisor's live worker processes (not zombies: those have exited)."""
    found = []
    for p in psutil.Process(supervisor.pid).children():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "worker" in p.cmdline():
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.mark.timeout(180)
def test_two_web_and_two_worker_processes_deliver_each_callback_once(
    gateway: Gateway, target_server: TargetServer
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
    first = gateway.start_web(WEB_CONCURRENCY="2")  # uvicorn's own worker processes
    second = gateway.start_web()
    supervisor = gateway.start_process(
        [sys.executable, "-m", "gateway", "worker", "--processes", "2", "--name", "scale"], "supervisor"
    )
    wait_until(lambda: len(_workers(supervisor)) == 2, "two worker processes", timeout=30)
    for i in range(CALLBACKS):
        base = first if i % 2 else second
        got = http_call(
            base,
            "GET",
            f"/invitation_created?invitee=%2B1555{i:07d}&invitor=%2B15559999&network_id=mynetwork",
        )
        assert got.status == 204, got
    target_server.wait_for("/t", CALLBACKS, timeout=90)
    time.sleep(3)  # anything sent twice would arrive by now
    received = target_server.requests_to("/t")
    invitees = [dict(r.query)["to"] for r in received]
    assert len(invitees) == CALLBACKS
    assert len(set(invitees)) == CALLBACKS
    # Both worker processes took part (names scale.0 and scale.1).
    logs = gateway.logs()
    assert "worker scale.0 on queue" in logs and "worker scale.1 on queue" in logs

    # A dead worker process is replaced.
    victim = _workers(supervisor)[0]
    victim.kill()

    def replaced() -> bool:
        # One look: two looks could see the victim still running, then gone, before any restart.
        pids = {p.pid for p in _workers(supervisor)}
        return len(pids) == 2 and victim.pid not in pids

    wait_until(replaced, "the dead worker replaced", timeout=30)
    assert "exited with status -9; restarting it" in supervisor.output()

    # SIGTERM stops every worker process within the 30 s a Procfile host gives.
    children = _workers(supervisor)
    started = time.monotonic()
    os.kill(supervisor.pid, signal.SIGTERM)
    assert supervisor.proc.wait(30) == 0
    assert time.monotonic() - started < 30
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert "all 2 worker processes stopped" in supervisor.output()
    assert "Traceback" not in supervisor.output()


def test_processes_refuses_burst(gateway: Gateway) -> None:
    proc = gateway.start_process(
        [sys.executable, "-m", "gateway", "worker", "--processes", "2", "--burst"], "burst"
    )
    assert proc.proc.wait(30) == 2
    assert "--processes runs long-lived workers" in proc.output()
