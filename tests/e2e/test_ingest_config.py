"""The ingest sees configuration changes on the very next callback, and several web processes on
one Redis behave as one. Real `gateway web` and `gateway worker` processes, a real Redis, a real
target server; `gateway targets apply` as an operator runs it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from e2e_support import PREFIX, SETTINGS, http_call, run_gateway, store_for, wait_until, waiting_count

from gateway.embedded import EmbeddedRedis
from gateway.networks import token_digest

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer
    from redis import Redis

# The test's target server listens with a backlog of 5: a burst of connections beyond that may be
# accepted only after the worker's 10 s timeout, and the delivery is then (rightly) made again.
# Tests that count requests at the target keep the worker to a few connections at once.
WORKER = {"GATEWAY_WORKER_CONCURRENCY": "4"}


def target(target_server: TargetServer, name: str) -> str:
    return (
        f'[[targets]]\nname = "{name}"\nnetworks = ["mynetwork"]\n'
        + f'url = "{target_server.url}/{name}?i=%invitee%"\n'
    )


def params(invitee: str, field: str = "invitee") -> str:
    return f"{field}={invitee.replace('+', '%2B')}&invitor=johnsnow&network_id=mynetwork"


def callback(invitee: str, field: str = "invitee") -> str:
    return "/invitation_created?" + params(invitee, field)


def apply(gateway: Gateway, text: str) -> None:
    path = gateway.tmp_path / f"applied-{time.monotonic_ns()}.toml"
    path.write_text(text)
    result = run_gateway("targets", "apply", str(path), env=gateway.environ())
    assert result.returncode == 0, result.stdout + result.stderr


def invitees(target_server: TargetServer, path: str) -> list[str]:
    return [dict(r.query)["i"] for r in target_server.requests_to(path)]


# -- configuration applied at run time ------------------------------------------------------------


def test_an_alias_applied_at_run_time_is_used_on_the_very_next_callback(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    gateway.write_config(SETTINGS + target(target_server, "t"))
    base = gateway.start_web()
    gateway.start_worker(**WORKER)
    resp = http_call(base, "GET", callback("+15551230001", field="phone"))
    assert resp.status == 400 and resp.json()["field"] == "invitee", resp.body
    apply(gateway, SETTINGS + '[aliases]\ninvitee = ["phone"]\n' + target(target_server, "t"))
    # No reload interval: the first callback that does not parse makes the process look.
    resp = http_call(base, "GET", callback("+15551230002", field="phone"))
    assert resp.status == 204, resp.body
    body = b'{"phone": "+15551230003", "invitor": "johnsnow", "network_id": "mynetwork"}'
    resp = http_call(base, "POST", "/invitation_created", body, {"Content-Type": "application/json"})
    assert resp.status == 204, resp.body
    target_server.wait_for("/t", 2)
    assert sorted(invitees(target_server, "/t")) == ["+15551230002", "+15551230003"]
    assert len(store_for(redis).recent_events(10)) == 2


def test_a_target_added_at_run_time_gets_the_very_next_callback(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    gateway.write_config(SETTINGS + target(target_server, "t1"))
    base = gateway.start_web()
    gateway.start_worker(**WORKER)
    assert http_call(base, "GET", callback("+15551230001")).status == 204
    target_server.wait_for("/t1", 1)
    apply(gateway, SETTINGS + target(target_server, "t1") + target(target_server, "t2"))
    # The process still routes by the configuration it has; the accept tells it a newer one is
    # there, and the deliveries for the new target are added before the 204.
    assert http_call(base, "GET", callback("+15551230002")).status == 204
    store = store_for(redis)
    newest = store.recent_events(1)[0]
    assert set(store.get_deliveries(newest)) == {"t1", "t2"}
    target_server.wait_for("/t1", 2)
    target_server.wait_for("/t2", 1)
    assert http_call(base, "GET", callback("+15551230003")).status == 204
    target_server.wait_for("/t2", 2)
    wait_until(lambda: waiting_count(redis) == 0, "every delivery to be made")
    assert sorted(invitees(target_server, "/t1")) == ["+15551230001", "+15551230002", "+15551230003"]
    assert sorted(invitees(target_server, "/t2")) == ["+15551230002", "+15551230003"]


# -- several web processes ---------------------------------------------------------------------


def test_two_web_processes_deduplicate_together(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    gateway.write_config(SETTINGS + target(target_server, "t"))
    one = gateway.start_web(GATEWAY_DEDUPE_SECONDS="600")
    two = gateway.start_web(GATEWAY_DEDUPE_SECONDS="600")
    gateway.start_worker(**WORKER)
    for n in range(10):
        for base in (one, two) if n % 2 else (two, one):
            resp = http_call(base, "GET", callback(f"+1555123{n:04d}"))
            assert resp.status == 204, resp.body
    target_server.wait_for("/t", 10)
    wait_until(lambda: waiting_count(redis) == 0, "every delivery to be made")
    time.sleep(0.5)
    assert sorted(invitees(target_server, "/t")) == [f"+1555123{n:04d}" for n in range(10)]
    assert len(store_for(redis).recent_events(100)) == 10
    assert int(redis.hget(f"{PREFIX}:counters", "duplicates") or 0) == 10


@pytest.mark.timeout(90)
def test_200_callbacks_over_two_web_processes_are_each_delivered_once(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    gateway.write_config(SETTINGS + target(target_server, "t"))
    bases = [gateway.start_web(GATEWAY_DEDUPE_SECONDS="600"), gateway.start_web(GATEWAY_DEDUPE_SECONDS="600")]
    gateway.start_worker(**WORKER)

    def send(n: int) -> int:
        return http_call(bases[n % 2], "GET", callback(f"+1555200{n:04d}")).status

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(send, range(200)))
    assert statuses == [204] * 200
    target_server.wait_for("/t", 200, timeout=45)
    wait_until(lambda: waiting_count(redis) == 0, "every delivery to be made", timeout=30)
    time.sleep(1)
    got = target_server.requests_to("/t")
    assert sorted(dict(r.query)["i"] for r in got) == [f"+1555200{n:04d}" for n in range(200)]
    assert len({r.headers["idempotency-key"] for r in got}) == 200
    store = store_for(redis)
    ids = store.recent_events(500)
    assert len(ids) == 200
    for event_id in ids:
        assert [a["outcome"] for a in store.get_attempts(event_id)] == ["delivered"], event_id
    assert int(redis.hget(f"{PREFIX}:counters", "duplicates") or 0) == 0
    # Each web logs its accepted callbacks a line per event: every event id once, both took some.
    web_logs = [p.output() for p in gateway.processes[:2]]
    logged = [sum(log.count(event_id) for event_id in ids) for log in web_logs]
    assert sum(logged) == 200 and all(logged), logged
    assert all(sum(log.count(event_id) for log in web_logs) == 1 for event_id in ids)


# -- the configuration check on the error path, with Redis gone -------------------------------------


TOKEN = "config-e2e-token-0123456789"


@pytest.mark.timeout(60)
def test_with_redis_down_a_bad_callback_still_gets_its_own_answer(
    gateway: Gateway, target_server: TargetServer, tmp_path: Path
) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    try:
        gateway.redis_url = server.url
        networks = f'\n[networks.mynetwork]\ntokens = ["{token_digest(TOKEN)}"]\n'
        gateway.write_config(SETTINGS + target(target_server, "t") + networks)
        base = gateway.start_web(GATEWAY_OPEN_INGEST="false")
        assert http_call(base, "GET", f"/invitation_created/{TOKEN}?" + params("+15551230001")).status == 204
    finally:
        server.stop()
    # Redis is gone: a good callback is spooled (204)...
    good = http_call(base, "GET", f"/invitation_created/{TOKEN}?" + params("+15551230002"))
    assert good.status == 204, good.body
    # ...and a bad one is told what is wrong with it.
    wrong = http_call(base, "GET", "/invitation_created/not-the-token?" + params("+15551230003"))
    missing = http_call(base, "GET", f"/invitation_created/{TOKEN}?network_id=mynetwork")
    assert (wrong.status, missing.status) == (401, 400), (wrong.body, missing.body)
