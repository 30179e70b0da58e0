"""GATEWAY_DURABILITY with real servers: a Redis whose fsync stalls, a replica stopped with SIGSTOP,
a server without an append-only file, and the memory level sending no wait at all.

The stalled fsync is real: a small shared library, compiled here with gcc and loaded into the
valkey-server process with LD_PRELOAD, holds every fsync/fdatasync while a control file exists
(Redis' own fsync of its append-only file, from its main thread with `appendfsync always` and from
its background thread with `everysec`). Every server and gateway process is started by this file
and stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from e2e_support import SETTINGS, http_call, run_gateway, store_for, wait_until
from redis import Redis

from gateway.embedded import find_server_binary, free_port

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer

STALL_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

/* Hold every fsync and fdatasync of the process while the file named by STALL_FSYNC_WHILE exists. */
static void hold(void) {
    const char *path = getenv("STALL_FSYNC_WHILE");
    if (path == NULL) return;
    while (access(path, F_OK) == 0) usleep(10000);
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    hold();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    hold();
    return real(fd);
}
"""


# -- servers --------------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Redis:
        return Redis.from_url(self.url, socket_timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process would not see the SIGTERM
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in reversed(started):
            server.stop()


def start_server(
    servers: list[Server], tmp_path: Path, name: str, *args: str, env: dict[str, str] | None = None
) -> Server:
    """A valkey-server in its own folder (its files stay in the test's), answering PING."""
    folder = tmp_path / name
    folder.mkdir()
    port = free_port()
    log = folder / "server.log"
    command = [find_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    command += ["--save", "", "--loglevel", "notice", "--logfile", str(log), *args]
    proc = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    server = Server(proc, port, log)
    servers.append(server)

    def answers() -> bool:
        assert proc.poll() is None, f"{name} exited: {log.read_text() if log.exists() else ''}"
        try:
            return bool(Redis(port=port, socket_timeout=1).ping())
        except OSError:
            return False
        except Exception:
            return False

    wait_until(answers, f"{name} to answer", timeout=20)
    return server


@pytest.fixture(scope="module")
def stall_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LD_PRELOAD library; skipped (with the reason) where it cannot work."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: the fsync-stalling library cannot be built")
    binary = find_server_binary()
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)
    if "libc.so" not in ldd.stdout:
        pytest.skip(f"{binary} is not dynamically linked against libc: LD_PRELOAD cannot hold its fsync")
    folder = tmp_path_factory.mktemp("stall")
    source = folder / "stall_fsync.c"
    source.write_text(STALL_C)
    library = folder / "stall_fsync.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"], check=True)
    return library


# -- the gateway ----------------------------------------------------------------------------------


def callback(n: int) -> str:
    return f"/invitation_created/?invitee=1555123{n:04d}&invitor=johnsnow&network_id=mynetwork"


def config(target_server: TargetServer) -> str:
    return SETTINGS + f'[[targets]]\nname = "t"\nnetworks = ["mynetwork"]\nurl = "{target_server.url}/t"\n'


def spool_lines(folder: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in folder.glob("*.jsonl")) if folder.is_dir() else 0


def spooled_ids(folder: Path) -> set[str]:
    ids = set()
    for path in folder.glob("*.jsonl"):
        for line in path.read_bytes().splitlines():
            ids.add(json.loads(line)["event"]["invitee"])
    return ids


def durability_gauge(base: str, level: str) -> str | None:
    text = http_call(base, "GET", "/metrics").body.decode()
    prefix = f'gateway_durability_ok{{level="{level}"}} '
    return next((line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)), None)


def serve(gateway: Gateway, target_server: TargetServer, server: Server, level: str | None) -> str:
    """`gateway web` at `level` (None: unset) and a worker, on `server`; the web's base URL."""
    gateway.redis_url = server.url
    gateway.write_config(config(target_server))
    base = gateway.start_web(**({"GATEWAY_DURABILITY": level} if level else {}))
    gateway.start_worker()
    return base


def stored_not_spooled(gateway: Gateway, target_server: TargetServer, base: str, level: str) -> None:
    """A first callback confirmed at `level`: answered, delivered, never spooled; /readyz and
    /metrics say the level is given."""
    assert http_call(base, "GET", callback(0)).status == 204
    target_server.wait_for("/t", 1, timeout=30)
    assert spool_lines(gateway.tmp_path / "data" / "spool") == 0, gateway.logs()
    wait_until(lambda: http_call(base, "GET", "/readyz").status == 200, "/readyz 200", timeout=20)
    assert http_call(base, "GET", "/readyz").json()["checks"]["durability"] == f"{level} (ok)"
    assert durability_gauge(base, level) == "1.0"


def spooled_one_by_one(gateway: Gateway, base: str, numbers: range) -> None:
    """Each callback is answered 204 only once it is in the spool (fsync'd by the gateway)."""
    spool = gateway.tmp_path / "data" / "spool"
    for count, n in enumerate(numbers, 1):
        resp = http_call(base, "GET", callback(n), timeout=30)
        assert resp.status == 204, (resp.status, resp.body, gateway.logs())
        assert spool_lines(spool) == count, gateway.logs()
    assert spooled_ids(spool) == {f"1555123{n:04d}" for n in numbers}


def delivered_once(target_server: TargetServer, redis: Redis, count: int) -> None:
    """`count` deliveries at the target, one per event, and nothing more due."""
    got = target_server.wait_for("/t", count, timeout=60)
    wait_until(lambda: redis.zcard("gw:due") == 0, "no delivery left due", timeout=30)
    keys = [r.headers["idempotency-key"] for r in target_server.requests_to("/t")]
    assert len(keys) == len(set(keys)) == count == len(got), f"delivered more than once: {keys}"
    assert len(store_for(redis).recent_events(1000)) == count


# -- the tests ------------------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_a_stalled_fsync_gets_callbacks_spooled_not_answered_from_an_unsynced_write(
    gateway: Gateway, target_server: TargetServer, tmp_path: Path, servers: list[Server], stall_library: Path
) -> None:
    """disk, on a Redis with `appendfsync always` (what the level needs): while Redis cannot
    fsync, each callback is answered 204 only once it is in the gateway's spool; once the fsync
    completes, the spool drains and each invitation is stored and delivered once.

    (With `everysec` this would also show that the wait, not the stall, is what spools, but
    valkey 8.1.8 confirms a WAITAOF before the fsync there, redis/redis#13793: found by this
    test; check_server names `everysec` as what the server lacks.)"""
    control = tmp_path / "hold-fsync"
    env = {"LD_PRELOAD": str(stall_library), "STALL_FSYNC_WHILE": str(control)}
    server = start_server(
        servers, tmp_path, "redis", "--appendonly", "yes", "--appendfsync", "always", env=env
    )
    redis = server.client()
    spool = tmp_path / "data" / "spool"
    base = serve(gateway, target_server, server, "disk")
    stored_not_spooled(gateway, target_server, base, "disk")  # confirmed by WAITAOF

    control.touch()
    sent = 5
    spooled_one_by_one(gateway, base, range(1, sent + 1))
    assert Path(f"/proc/{server.proc.pid}").exists()  # hung in its fsync, not gone
    assert spool_lines(spool) == sent, "drained while Redis could not confirm"

    control.unlink()
    wait_until(lambda: spool_lines(spool) == 0, "the spool to drain once the fsync completes", timeout=60)
    delivered_once(target_server, redis, 1 + sent)
    logs = gateway.logs()
    assert "Redis did not take a batch (TimeoutError)" in logs
    # The first batch reached Redis before its fsync hung: the drain found it there.
    assert "were already stored" in logs and ", 0 were already stored" not in logs, logs


@pytest.mark.timeout(120)
def test_a_stopped_replica_makes_callbacks_spool_within_the_bound_then_drain(
    gateway: Gateway, target_server: TargetServer, tmp_path: Path, servers: list[Server]
) -> None:
    primary = start_server(servers, tmp_path, "primary", "--appendonly", "no")
    replica = start_server(
        servers, tmp_path, "replica", "--appendonly", "no", "--replicaof", "127.0.0.1", str(primary.port)
    )
    redis = primary.client()

    def online() -> bool:
        slave = redis.info("replication").get("slave0")
        return isinstance(slave, dict) and slave.get("state") == "online"

    wait_until(online, "the replica's link to be up", timeout=30)
    spool = tmp_path / "data" / "spool"
    base = serve(gateway, target_server, primary, "replica")
    stored_not_spooled(gateway, target_server, base, "replica")  # acknowledged by the replica

    os.kill(replica.proc.pid, signal.SIGSTOP)  # still connected, acknowledging nothing
    sent = 5
    spooled_one_by_one(gateway, base, range(1, sent + 1))
    body = http_call(base, "GET", "/readyz").json()
    assert "durability" in body["failed"]
    assert body["checks"]["durability"] == "replica: 0 of 1 replica(s) acknowledged in time (WAIT)"
    assert durability_gauge(base, "replica") == "0.0"

    os.kill(replica.proc.pid, signal.SIGCONT)
    wait_until(
        lambda: spool_lines(spool) == 0, "the spool to drain once the replica acknowledges", timeout=60
    )
    delivered_once(target_server, redis, 1 + sent)
    assert "not confirmed: GATEWAY_DURABILITY=replica (GATEWAY_DURABILITY_REPLICAS=1)" in gateway.logs()


@pytest.mark.timeout(150)
def test_disk_on_a_server_without_an_append_only_file_is_named_and_every_callback_spooled(
    gateway: Gateway, target_server: TargetServer, tmp_path: Path, servers: list[Server]
) -> None:
    # (fsync'd on every write once the file is on: what disk needs)
    server = start_server(servers, tmp_path, "redis", "--appendonly", "no", "--appendfsync", "always")
    redis = server.client()
    spool = tmp_path / "data" / "spool"
    base = serve(gateway, target_server, server, "disk")
    problem = "its append-only file is off (appendonly no)"
    line = (
        f"GATEWAY_DURABILITY=disk cannot be given by Redis at {server.url}: {problem}; every callback is "
        "spooled (and answered 204) until it can"
    )
    wait_until(lambda: line in gateway.logs(), "the startup ERROR line", timeout=20)

    def unready() -> dict[str, Any] | None:
        resp = http_call(base, "GET", "/readyz")
        body: dict[str, Any] = resp.json()
        return body if resp.status == 503 and "workers" not in body["failed"] else None

    body = wait_until(unready, "/readyz with a worker alive", timeout=20)
    assert body["failed"] == ["durability"]
    assert body["checks"]["durability"] == f"disk: {problem}"
    assert durability_gauge(base, "disk") == "0.0"
    for n in range(3):
        assert http_call(base, "GET", callback(n)).status == 204
    assert spool_lines(spool) == 3
    logs = gateway.logs()
    assert logs.count("cannot be given by Redis") == 1, logs  # one line, not one per check
    assert " ERROR " in next(x for x in logs.splitlines() if line in x)

    # `gateway spool drain` waits the same way: a spool left by a web process that died is not
    # drained, and stays.
    other = tmp_path / "other-data"
    orphan_web = gateway.start_web(GATEWAY_DATA_DIR=str(other), GATEWAY_DURABILITY="disk")
    for n in range(3, 5):
        assert http_call(orphan_web, "GET", callback(n)).status == 204
    orphan = gateway.processes[-1]
    os.kill(orphan.pid, signal.SIGKILL)
    orphan.proc.wait(10)
    cli_env = gateway.environ(GATEWAY_DATA_DIR=str(other), GATEWAY_DURABILITY="disk")
    refused = run_gateway("spool", "drain", env=cli_env)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert "not drained: GATEWAY_DURABILITY=disk: the wait was refused" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert spool_lines(other / "spool") == 2

    # The operator turns the append-only file on: the level is given, every spool drains, and
    # what Redis had run already is found there, not stored twice.
    redis.config_set("appendonly", "yes")
    wait_until(lambda: spool_lines(spool) == 0, "the spool to drain once the file is on", timeout=60)
    drained = run_gateway("spool", "drain", env=cli_env)
    assert drained.returncode == 0, drained.stderr
    assert "0 invitations stored, 2 were already stored" in drained.stdout
    assert spool_lines(other / "spool") == 0
    delivered_once(target_server, redis, 5)
    wait_until(lambda: http_call(base, "GET", "/readyz").status == 200, "ready again", timeout=20)
    assert durability_gauge(base, "disk") == "1.0"
    wait_until(lambda: "GATEWAY_DURABILITY=disk: Redis at" in gateway.logs(), "the WARNING line", timeout=20)


@pytest.mark.timeout(90)
def test_memory_level_sends_no_wait(
    gateway: Gateway, target_server: TargetServer, tmp_path: Path, servers: list[Server]
) -> None:
    server = start_server(servers, tmp_path, "redis", "--appendonly", "yes", "--appendfsync", "everysec")
    redis = server.client()
    base = serve(gateway, target_server, server, None)  # GATEWAY_DURABILITY unset: memory
    stored_not_spooled(gateway, target_server, base, "memory")
    for n in range(1, 5):
        assert http_call(base, "GET", callback(n)).status == 204
    delivered_once(target_server, redis, 5)
    stats = redis.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] >= 1
    assert "cmdstat_wait" not in stats and "cmdstat_waitaof" not in stats, sorted(stats)
