"""Who may call the ingest: per-network tokens (path, query, Bearer), the open ingest, CIDR
allowlists and X-Forwarded-For from trusted proxies. Real `gateway web` and `gateway worker`
processes, a real Redis and a real target server; `gateway targets apply` as an operator runs it."""

from __future__ import annotations

import json
import secrets
import sys
import time
from typing import TYPE_CHECKING

from e2e_support import (
    SETTINGS,
    build_request,
    http_call,
    raw_exchange,
    run_gateway,
    store_for,
    wait_until,
    waiting_count,
)

from gateway.embedded import free_port
from gateway.networks import token_digest

if TYPE_CHECKING:
    from conftest import Gateway, Process, TargetServer
    from e2e_support import HttpResponse
    from redis import Redis

PROBLEM = "application/problem+json"
# The test's target server listens with a backlog of 5: a burst of connections beyond that may be
# accepted only after the worker's 10 s timeout, and the delivery is then (rightly) made again.
# Tests that count requests at the target keep the worker to a few connections at once.
WORKER = {"GATEWAY_WORKER_CONCURRENCY": "4"}


def new_token(name: str) -> str:
    return f"{name}-{secrets.token_hex(16)}"


# Fresh per test run, so that a grep of the logs can only find them if the gateway wrote them.
ALPHA = new_token("alpha")
ALPHA_NEXT = new_token("alpha-next")
BETA = new_token("beta")
STAR = new_token("star")
HASHED = new_token("hashed")  # only its digest is in the file
TOKEN_ENV = {"E2E_ALPHA_TOKEN": ALPHA, "E2E_ALPHA_TOKEN_NEXT": ALPHA_NEXT, "E2E_BETA_TOKEN": BETA}


def target(target_server: TargetServer) -> str:
    return (
        SETTINGS
        + '[[targets]]\nname = "t"\nnetworks = ["*"]\n'
        + f'url = "{target_server.url}/t?n=%network_id%&i=%invitee%&e=%event%"\n'
    )


NETWORKS = f"""
[networks.alpha]
tokens = ["${{E2E_ALPHA_TOKEN}}", "${{E2E_ALPHA_TOKEN_NEXT}}", "{token_digest(HASHED)}"]

[networks.beta]
tokens = ["${{E2E_BETA_TOKEN}}"]
"""


def query(network: str, invitee: str = "+15551230000") -> str:
    return f"invitee={invitee.replace('+', '%2B')}&invitor=johnsnow&network_id={network}"


def created(
    base: str, network: str, invitee: str = "+15551230000", how: str = "path", token: str | None = None
) -> HttpResponse:
    """A GET callback presenting `token` the way `how` says (path, query, bearer)."""
    q = query(network, invitee)
    headers: dict[str, str] = {}
    if token is None:
        path = f"/invitation_created?{q}"
    elif how == "path":
        path = f"/invitation_created/{token}?{q}"
    elif how == "query":
        path = f"/invitation_created?{q}&token={token}"
    else:
        path = f"/invitation_created/?{q}"
        headers["Authorization"] = f"Bearer {token}"
    return http_call(base, "GET", path, headers=headers)


def start_web_with(gateway: Gateway, env: dict[str, str], name: str) -> tuple[str, Process]:
    """`gateway web` with exactly `env` (say, without GATEWAY_OPEN_INGEST at all)."""
    port = free_port()
    proc = gateway.start_process(
        [sys.executable, "-m", "gateway", "web", "--host", "127.0.0.1", "--port", str(port)], name, env
    )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.proc.poll() is None, proc.output()
        try:
            return http_call(base, "GET", "/healthz", timeout=5).status == 200
        except OSError:
            return False

    wait_until(healthy, "the web process to answer", timeout=20)
    return base, proc


def apply(gateway: Gateway, text: str, **env: str) -> None:
    path = gateway.tmp_path / f"applied-{time.monotonic_ns()}.toml"
    path.write_text(text)
    result = run_gateway("targets", "apply", str(path), env=gateway.environ(**env))
    assert result.returncode == 0, result.stdout + result.stderr


def assert_problem(resp: HttpResponse, status: int, field: str) -> dict[str, object]:
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status
    assert body["field"] == field
    assert body["title"] and body["detail"]
    return dict(body)


def nothing_stored(redis: Redis) -> None:
    assert store_for(redis).recent_events(10) == []
    assert waiting_count(redis) == 0


def start_closed(gateway: Gateway, target_server: TargetServer, networks: str = NETWORKS, **env: str) -> str:
    """Config with tokens, web without the open ingest, one worker."""
    gateway.write_config(target(target_server) + networks)
    base = gateway.start_web(GATEWAY_OPEN_INGEST="false", **TOKEN_ENV, **env)
    gateway.start_worker(**TOKEN_ENV, **WORKER)
    return base


# -- tokens ---------------------------------------------------------------------------------------


def test_each_token_each_way_is_accepted(gateway: Gateway, target_server: TargetServer, redis: Redis) -> None:
    base = start_closed(gateway, target_server)
    n = 0
    # Two variables at once (rotation) and a digest in the file; path, query and Bearer.
    for token in (ALPHA, ALPHA_NEXT, HASHED):
        for how in ("path", "query", "bearer"):
            resp = created(base, "alpha", f"+1555123{n:04d}", how, token)
            assert resp.status == 204, (token[:10], how, resp.status, resp.body)
            n += 1
    # The path form with a trailing slash, and POST bodies.
    assert (
        http_call(base, "GET", f"/invitation_created/{ALPHA}/?{query('alpha', '+15559990001')}").status == 204
    )
    body = json.dumps({"invitee": "+15559990002", "invitor": "johnsnow", "network_id": "beta"}).encode()
    resp = http_call(
        base,
        "POST",
        "/invitation_accepted",
        body,
        {"Content-Type": "application/json", "Authorization": f"Bearer {BETA}"},
    )
    assert resp.status == 204, resp.body
    form = b"invitee=%2B15559990003&invitor=johnsnow&network_id=beta"
    resp = http_call(
        base,
        "POST",
        f"/invitation_created/{BETA}",
        form,
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 204, resp.body
    store = store_for(redis)
    ids = store.recent_events(50)
    assert len(ids) == n + 3
    events = [store.get_event(i) for i in ids]
    assert sorted(e.network_id for e in events if e) == ["alpha"] * (n + 1) + ["beta"] * 2
    got = target_server.wait_for("/t", n + 3)
    assert sorted(dict(r.query)["i"] for r in got) == sorted(e.invitee for e in events if e)
    assert {dict(r.query)["e"] for r in got} == {"invitation_created", "invitation_accepted"}


def test_missing_wrong_and_foreign_tokens_are_refused_alike_for_every_network(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    base = start_closed(gateway, target_server)
    bodies: dict[tuple[str, str], dict[str, object]] = {}
    for network in ("alpha", "nosuchnetwork"):
        bodies[network, "missing"] = assert_problem(created(base, network), 401, "token")
        for how in ("path", "query", "bearer"):
            bodies[network, f"wrong-{how}"] = assert_problem(
                created(base, network, how=how, token="not-a-token"), 401, "token"
            )
        # A valid token of another network.
        bodies[network, "foreign"] = assert_problem(created(base, network, token=BETA), 403, "token")
    # The answers do not tell whether a network exists.
    for what in ("missing", "wrong-path", "wrong-query", "wrong-bearer", "foreign"):
        assert bodies["alpha", what] == bodies["nosuchnetwork", what], what
    assert bodies["alpha", "wrong-path"] == bodies["alpha", "wrong-bearer"]
    # A digest is not a token, and an unauthenticated caller learns nothing about the payload.
    assert_problem(created(base, "alpha", token=token_digest(HASHED)), 401, "token")
    assert_problem(http_call(base, "GET", "/invitation_created?network_id=alpha"), 401, "token")
    assert_problem(
        http_call(base, "POST", "/invitation_created", b"\x00garbage", {"Content-Type": "text/plain"}),
        401,
        "token",
    )
    nothing_stored(redis)
    # The same callbacks with the right token go through (nothing above was a stale state).
    assert created(base, "alpha", token=ALPHA).status == 204
    assert created(base, "beta", token=BETA).status == 204
    target_server.wait_for("/t", 2)
    time.sleep(0.5)
    assert len(target_server.requests_to("/t")) == 2


def test_a_star_token_opens_every_network(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    networks = NETWORKS + '\n[networks."*"]\ntokens = ["${E2E_STAR_TOKEN}"]\n'
    base = start_closed(gateway, target_server, networks, E2E_STAR_TOKEN=STAR)
    for i, network in enumerate(("alpha", "beta", "anything", "mynetwork")):
        resp = created(base, network, f"+1555000{i:04d}", "bearer", STAR)
        assert resp.status == 204, (network, resp.body)
    # A network's own token still opens only that network.
    assert_problem(created(base, "anything", token=ALPHA), 403, "token")
    assert_problem(created(base, "anything"), 401, "token")
    assert len(store_for(redis).recent_events(50)) == 4
    target_server.wait_for("/t", 4)


def test_without_the_open_ingest_and_without_tokens_every_callback_is_refused(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    gateway.write_config(target(target_server))
    env = gateway.environ()
    del env["GATEWAY_OPEN_INGEST"]  # unset, not false: the default is closed
    base, proc = start_web_with(gateway, env, "web-closed")
    assert_problem(created(base, "mynetwork"), 401, "token")
    assert_problem(created(base, "mynetwork", token="anything"), 401, "token")
    assert_problem(created(base, "mynetwork", how="bearer", token=ALPHA), 401, "token")
    nothing_stored(redis)
    output = proc.output()
    assert "callbacks without a token are accepted" not in output
    # The operator is told at startup why everything will be refused.
    assert "every callback will be refused (401)" in output, output


def test_the_open_ingest_accepts_callbacks_without_a_token_and_says_so(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    gateway.write_config(target(target_server) + NETWORKS)
    base = gateway.start_web(GATEWAY_OPEN_INGEST="true", **TOKEN_ENV)
    gateway.start_worker(**WORKER)
    assert created(base, "mynetwork", "+15551230001").status == 204
    assert created(base, "alpha", "+15551230002").status == 204  # its tokens are optional now
    assert created(base, "alpha", "+15551230003", token="unknown").status == 204
    assert created(base, "alpha", "+15551230004", token=ALPHA).status == 204
    # A token that is known but for another network is still refused.
    assert_problem(created(base, "alpha", "+15551230005", token=BETA), 403, "token")
    target_server.wait_for("/t", 4)
    assert len(store_for(redis).recent_events(50)) == 4
    warning = [line for line in gateway.logs().splitlines() if "GATEWAY_OPEN_INGEST" in line]
    assert warning and " WARNING " in warning[0], gateway.logs()


def test_a_token_is_never_written_to_a_log_or_to_redis(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    base = start_closed(gateway, target_server, GATEWAY_LOG_LEVEL="DEBUG")
    statuses = []
    for token in (ALPHA, ALPHA_NEXT, HASHED, BETA, "wrong-" + ALPHA):
        for how in ("path", "query", "bearer"):
            statuses.append(created(base, "alpha", "+15551231234", how, token).status)  # 204, 403 or 401
            statuses.append(created(base, "nosuchnetwork", "+15551231234", how, token).status)
            # Rejected after the token was read: the log line about it must not carry it.
            statuses.append(http_call(base, "GET", f"/invitation_created/{token}?network_id=alpha").status)
            statuses.append(
                http_call(
                    base,
                    "POST",
                    f"/invitation_created/{token}?token={token}",
                    b"<not-xml",
                    {"Content-Type": "application/xml", "Authorization": f"Bearer {token}"},
                ).status
            )
    assert {204, 400, 401, 403} <= set(statuses), statuses
    wait_until(lambda: waiting_count(redis) == 0, "every delivery to be made")
    gateway.stop()  # shutdown lines too
    logs = gateway.logs()
    assert "rejected" in logs and "accepted" in logs, logs  # the lines are there...
    for token in (ALPHA, ALPHA_NEXT, HASHED, BETA):
        assert token not in logs, f"token {token[:8]}... in the logs"  # ...without the token
        assert token not in json.dumps([r.__dict__ for r in target_server.received], default=repr)
    # Nor in anything kept in Redis (events, deliveries, attempts, configuration).
    dumped = []
    for key in redis.scan_iter(count=1000):
        kind = redis.type(key).decode()
        if kind == "string":
            dumped.append(redis.get(key))
        elif kind == "hash":
            dumped.extend(v for kv in redis.hgetall(key).items() for v in kv)
        elif kind == "list":
            dumped.extend(redis.lrange(key, 0, -1))
        elif kind == "zset":
            dumped.extend(redis.zrange(key, 0, -1))
        elif kind == "set":
            dumped.extend(redis.smembers(key))
        dumped.append(key)
    blob = b"\n".join(d for d in dumped if isinstance(d, bytes))
    for token in (ALPHA, ALPHA_NEXT, HASHED, BETA):
        assert token.encode() not in blob


def test_a_token_applied_at_run_time_works_on_the_very_next_callback(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    gamma, delta = new_token("gamma"), new_token("delta")
    base = start_closed(gateway, target_server, E2E_DELTA_TOKEN=delta)
    assert_problem(created(base, "gamma", token=gamma), 401, "token")
    assert_problem(created(base, "delta", token=delta), 401, "token")
    more = f'\n[networks.gamma]\ntokens = ["{token_digest(gamma)}"]\n'
    more += '[networks.delta]\ntokens = ["${E2E_DELTA_TOKEN}"]\n'
    apply(gateway, target(target_server) + NETWORKS + more, **TOKEN_ENV, E2E_DELTA_TOKEN=delta)
    # No wait: the first callback with the new token makes the process look at the configuration.
    assert created(base, "gamma", "+15551230001", token=gamma).status == 204
    assert created(base, "delta", "+15551230002", "bearer", delta).status == 204
    assert created(base, "alpha", "+15551230003", "query", ALPHA).status == 204
    target_server.wait_for("/t", 3)
    assert len(store_for(redis).recent_events(50)) == 3


def test_a_token_removed_at_run_time_is_refused_on_the_next_callback(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    base = start_closed(gateway, target_server)
    assert created(base, "alpha", "+15551230001", token=ALPHA_NEXT).status == 204
    # Rotation done: the old token leaves the file.
    rotated = NETWORKS.replace('"${E2E_ALPHA_TOKEN_NEXT}", ', "")
    assert rotated != NETWORKS
    apply(gateway, target(target_server) + rotated, **TOKEN_ENV)
    # The version is read with every accepted batch: one callback with a good token refreshes.
    assert created(base, "alpha", "+15551230002", token=ALPHA).status == 204
    assert_problem(created(base, "alpha", "+15551230003", token=ALPHA_NEXT), 401, "token")
    assert len(store_for(redis).recent_events(50)) == 2


def test_a_token_removed_at_run_time_is_refused_on_the_very_next_callback(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    base = start_closed(gateway, target_server)
    assert created(base, "alpha", "+15551230001", token=ALPHA_NEXT).status == 204
    apply(gateway, target(target_server) + NETWORKS.replace('"${E2E_ALPHA_TOKEN_NEXT}", ', ""), **TOKEN_ENV)
    assert_problem(created(base, "alpha", "+15551230002", token=ALPHA_NEXT), 401, "token")


def test_a_known_token_given_another_network_at_run_time_opens_it_on_the_next_callback(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    base = start_closed(gateway, target_server)
    assert created(base, "beta", "+15551230001", token=BETA).status == 204
    shared = NETWORKS.replace(
        'tokens = ["${E2E_BETA_TOKEN}"]', 'tokens = ["${E2E_BETA_TOKEN}", "${E2E_ALPHA_TOKEN}"]'
    )
    assert shared != NETWORKS
    apply(gateway, target(target_server) + shared, **TOKEN_ENV)
    resp = created(base, "beta", "+15551230002", token=ALPHA)
    assert resp.status == 204, resp.body


# -- allow_from and X-Forwarded-For -----------------------------------------------------------------


ALLOW = '\n[networks.alpha]\nallow_from = ["10.0.0.0/8", "2001:db8::/32"]\n'


def forwarded(base: str, network: str, invitee: str, *xff: str) -> int:
    """A GET callback with one X-Forwarded-For line per `xff` item (raw, so lines may repeat)."""
    headers = [("Host", "127.0.0.1"), ("Connection", "close"), *(("X-Forwarded-For", v) for v in xff)]
    data = build_request("GET", f"/invitation_created?{query(network, invitee)}", headers)
    return raw_exchange(base, data).status


def test_allow_from_sees_the_peer_unless_a_trusted_proxy_forwards(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    gateway.write_config(target(target_server) + ALLOW)
    direct = gateway.start_web()
    proxied = gateway.start_web(GATEWAY_TRUSTED_PROXIES="127.0.0.1/32, 192.168.0.0/16")
    gateway.start_worker(**WORKER)
    # From 127.0.0.1 itself: not in the list.
    assert_problem(created(direct, "alpha"), 403, "client")
    # Without trusted proxies, X-Forwarded-For is whatever the caller wrote: ignored.
    assert forwarded(direct, "alpha", "+15551230001", "10.1.2.3") == 403
    assert forwarded(direct, "beta", "+15551230002", "10.1.2.3") == 204  # no allowlist for beta
    # Behind a trusted proxy, the address it saw counts.
    assert forwarded(proxied, "alpha", "+15551230003", "10.1.2.3") == 204
    assert forwarded(proxied, "alpha", "+15551230004", "198.51.100.1, 10.1.2.3") == 204
    assert forwarded(proxied, "alpha", "+15551230005", "10.1.2.3, 192.168.7.7") == 204  # our own proxy hop
    assert forwarded(proxied, "alpha", "+15551230006", "2001:db8::7") == 204
    # The caller cannot forge its way in: the hop our proxy added is the one that counts...
    assert forwarded(proxied, "alpha", "+15551230007", "10.1.2.3, 198.51.100.1") == 403
    # ...also when the proxy adds its own line after the caller's.
    assert forwarded(proxied, "alpha", "+15551230008", "10.1.2.3", "198.51.100.1") == 403
    assert_problem(created(proxied, "alpha"), 403, "client")  # no header: the proxy itself
    store = store_for(redis)
    ids = store.recent_events(50)
    assert len(ids) == 5
    clients = sorted(event.client or "" for event, _ in store.events_with_deliveries(ids))
    assert clients == sorted(["127.0.0.1", "10.1.2.3", "10.1.2.3", "10.1.2.3", "2001:db8::7"])
    target_server.wait_for("/t", 5)


def test_an_address_allowed_at_run_time_is_let_in_on_the_next_callback(
    gateway: Gateway, target_server: TargetServer
) -> None:
    gateway.write_config(target(target_server) + ALLOW)
    base = gateway.start_web()
    assert_problem(created(base, "alpha"), 403, "client")
    apply(gateway, target(target_server) + ALLOW.replace('"10.0.0.0/8"', '"10.0.0.0/8", "127.0.0.0/8"'))
    resp = created(base, "alpha")
    assert resp.status == 204, resp.body
