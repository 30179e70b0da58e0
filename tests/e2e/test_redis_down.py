"""Without Redis the gateway cannot keep an invitation, so it must not say 204 (the Contacts server
would take that as done and never send it again)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from e2e_support import SETTINGS, http_call, wait_until

from gateway.embedded import EmbeddedRedis, free_port

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer

CALLBACK = "/invitation_created/?invitee=15551231234&invitor=johnsnow&network_id=mynetwork"


def assert_503_problem(base: str, gateway: Gateway) -> None:
    resp = http_call(base, "GET", CALLBACK)
    assert resp.status == 503, (resp.status, resp.body, gateway.logs())
    assert resp.headers["content-type"].startswith("application/problem+json")
    problem = resp.json()
    assert problem["status"] == 503
    assert "retry-after" in resp.headers
    # The same for a POST body.
    resp = http_call(
        base,
        "POST",
        "/invitation_created/",
        b'{"invitee": "15551231234", "invitor": "johnsnow", "network_id": "mynetwork"}',
        {"Content-Type": "application/json"},
    )
    assert resp.status == 503, (resp.status, resp.body)
    assert resp.headers["content-type"].startswith("application/problem+json")


def test_no_redis_from_the_start_answers_503(gateway: Gateway) -> None:
    # Nothing listens on this port; no GATEWAY_CONFIG, so the web process can start at all.
    url = f"redis://127.0.0.1:{free_port()}/0"
    port = free_port()
    web = gateway.start_process(
        [sys.executable, "-m", "gateway", "web", "--host", "127.0.0.1", "--port", str(port)],
        "web-no-redis",
        gateway.environ(REDIS_URL=url),
    )
    base = f"http://127.0.0.1:{port}"

    def health_status() -> int | None:
        assert web.proc.poll() is None, web.output()
        try:
            return http_call(base, "GET", "/healthz", timeout=10).status
        except OSError:
            return None

    assert wait_until(health_status, "the web process to listen", timeout=20) == 503
    assert_503_problem(base, gateway)


def test_redis_gone_after_start_answers_503(gateway: Gateway, target_server: TargetServer) -> None:
    server = EmbeddedRedis().start()
    try:
        gateway.redis_url = server.url
        gateway.write_config(
            SETTINGS + f'[[targets]]\nname = "t"\nnetworks = ["mynetwork"]\nurl = "{target_server.url}/t"\n'
        )
        base = gateway.start_web()
        # While Redis is up, the callback is taken.
        assert http_call(base, "GET", CALLBACK).status == 204
    finally:
        server.stop()
    deadline = time.monotonic() + 10
    while http_call(base, "GET", "/healthz").status != 503:
        assert time.monotonic() < deadline, "healthz still reports Redis up"
        time.sleep(0.1)
    assert_503_problem(base, gateway)
