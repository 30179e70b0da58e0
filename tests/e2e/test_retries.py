"""Retries through RQ's scheduler: a real worker against targets that answer from a script."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from e2e_support import (
    FINAL_STATES,
    SETTINGS,
    attempts_of,
    dead_letter_ids,
    http_call,
    queued_job_count,
    store_for,
    the_event_id,
    wait_final,
    wait_until,
)

from gateway.store.queue import DeliveryQueue

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer
    from redis import Redis

    from gateway.store.events import Store

CALLBACK = "/invitation_created/?invitee=15551231234&invitor=johnsnow&network_id=mynetwork"
# Long enough for a wrongly scheduled retry (the shortest schedule here is 1 s) to show up.
QUIET_PERIOD = 3.0


def run_one(
    gateway: Gateway, target_server: TargetServer, redis: Redis, target_toml: str
) -> tuple[Store, str]:
    """Start web + worker with one target named `t` on path /t, send one callback."""
    gateway.write_config(
        SETTINGS
        + f"""
[[targets]]
name = "t"
networks = ["mynetwork"]
url = "{target_server.url}/t"
{target_toml}
"""
    )
    base = gateway.start_web()
    gateway.start_worker()
    resp = http_call(base, "GET", CALLBACK)
    assert resp.status == 204, (resp.body, gateway.logs())
    store = store_for(redis)
    return store, the_event_id(store)


def final(store: Store, event_id: str, gateway: Gateway, timeout: float = 30.0) -> dict[str, Any]:
    try:
        return wait_final(store, event_id, ["t"], timeout)["t"]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{store.get_deliveries(event_id)}\n{gateway.logs()}") from None


def test_503_503_200_is_delivered_on_the_third_attempt(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    target_server.script("/t", [503, 503, 200])
    store, event_id = run_one(gateway, target_server, redis, "retry = [1, 1]")

    state = final(store, event_id, gateway)
    assert state["status"] == "delivered"
    assert state["attempts"] == 3
    attempts = attempts_of(store, event_id, "t")
    assert [a["status_code"] for a in attempts] == [503, 503, 200]
    assert [a["outcome"] for a in attempts] == ["retrying", "retrying", "delivered"]
    requests = target_server.requests_to("/t")
    assert len(requests) == 3
    # The same delivery id on every retry, so the target can deduplicate.
    assert {r.headers["idempotency-key"] for r in requests} == {f"{event_id}-t"}
    assert dead_letter_ids(redis) == []


def test_400_is_failed_after_one_attempt_and_is_a_dead_letter(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    target_server.script("/t", [400])
    store, event_id = run_one(gateway, target_server, redis, "retry = [1, 1]")

    state = final(store, event_id, gateway)
    assert state["status"] == "failed"
    assert state["last_status_code"] == 400
    time.sleep(QUIET_PERIOD)  # a retry, if one were scheduled, would come within this
    assert len(target_server.requests_to("/t")) == 1
    assert store.get_delivery(event_id, "t") == state
    assert [a["status_code"] for a in attempts_of(store, event_id, "t")] == [400]
    assert dead_letter_ids(redis) == [f"{event_id}-t"]
    assert queued_job_count(redis) == 0


def test_429_with_retry_after_is_retried(gateway: Gateway, target_server: TargetServer, redis: Redis) -> None:
    target_server.script("/t", [(429, {"Retry-After": "1"}, b"slow down"), 200])
    store, event_id = run_one(gateway, target_server, redis, "retry = [1, 1]")

    state = final(store, event_id, gateway)
    assert state["status"] == "delivered"
    assert state["attempts"] == 2
    attempts = attempts_of(store, event_id, "t")
    assert [a["status_code"] for a in attempts] == [429, 200]
    # A 429 waits as asked and does not use up a step of the retry schedule.
    assert [a["outcome"] for a in attempts] == ["throttled", "delivered"]
    assert attempts[0]["response"] == "slow down"
    assert state["retries"] == 0 and state["throttles"] == 1
    assert len(target_server.requests_to("/t")) == 2


def test_retry_after_is_a_floor_for_the_retry(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    """`retry = [0]` says "at once", the target says "not before 1 s": the target wins.

    This is an ordering fact, not a speed requirement: the second attempt may come as late as
    it likes, but not before the Retry-After has passed since the 429 arrived.
    """
    target_server.script("/t", [(429, {"Retry-After": "1"}, b"slow down"), 200])
    gateway.write_config(
        SETTINGS
        + f"""
[[targets]]
name = "t"
networks = ["mynetwork"]
url = "{target_server.url}/t"
retry = [0]

[[targets]]
name = "warm"
networks = ["warmup"]
url = "{target_server.url}/warm"
"""
    )
    base = gateway.start_web()
    gateway.start_worker()
    store = store_for(redis)
    # Warm the worker up (imports, HTTP pool) so that the 429 below is answered without delay.
    assert http_call(base, "GET", CALLBACK.replace("mynetwork", "warmup")).status == 204
    target_server.wait_for("/warm", 1)
    # Send when a wall-clock second is about to end: a whole-second scheduler rounds a retry
    # due at 12.95 + 1 s down to 13 s, so a retry that does not honour the floor shows up.
    wait_until(lambda: time.time() % 1 < 0.8, "a second to start")
    wait_until(lambda: time.time() % 1 >= 0.85, "the end of a second", interval=0.002)
    assert http_call(base, "GET", CALLBACK).status == 204
    event_id = wait_until(
        lambda: next((e for e in store.recent_events(10) if store.get_delivery(e, "t")), None), "the event"
    )
    # While the retry waits in the waiting set, note when it is due.
    delivery = f"{event_id}-t"
    due: list[float] = []

    def finished() -> bool:
        score = redis.zscore("gw:due", delivery)
        if score is not None:
            due.append(score)
        return (store.get_delivery(event_id, "t") or {}).get("status") in FINAL_STATES

    wait_until(finished, "the delivery to finish", timeout=30, interval=0.01)

    state = final(store, event_id, gateway)
    assert state["status"] == "delivered"
    first, second = attempts_of(store, event_id, "t")
    assert (first["status_code"], second["status_code"]) == (429, 200)
    answered_at = (first["at_ms"] + first["latency_ms"]) / 1000
    if due:  # the retry was seen waiting: it must not be due before the floor
        assert min(due) >= answered_at + 1, (
            f"retry scheduled {min(due) - answered_at:.3f} s after a 429 with Retry-After: 1"
        )
    assert second["at_ms"] / 1000 - answered_at >= 1, (
        f"retried {second['at_ms'] / 1000 - answered_at:.3f} s after a 429 with Retry-After: 1"
    )


def test_used_up_schedule_is_failed_after_two_attempts(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    target_server.script("/t", [500])
    store, event_id = run_one(gateway, target_server, redis, "retry = [1]")

    state = final(store, event_id, gateway)
    assert state["status"] == "failed"
    assert state["attempts"] == 2
    assert "no retries left" in state["last_error"]
    time.sleep(QUIET_PERIOD)
    assert len(target_server.requests_to("/t")) == 2
    assert [a["status_code"] for a in attempts_of(store, event_id, "t")] == [500, 500]
    assert dead_letter_ids(redis) == [f"{event_id}-t"]


def test_ramen_duplicate_404_counts_as_delivered(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    duplicate = b'{"error":{"message":"recipient_email already invited","param":"recipient_email"}}'
    target_server.script("/t", [(404, {"Content-Type": "application/json"}, duplicate)])
    store, event_id = run_one(
        gateway,
        target_server,
        redis,
        """
method = "POST"
content_type = "application/json"
post_data = '{"recipient_email": "invite-%invitee%@example.com", "invitation_type": "org_customer"}'
headers = { RAMEN_API_KEY = "key" }
success_codes = [200, 404]
retry = [1, 1]
""",
    )

    state = final(store, event_id, gateway)
    assert state["status"] == "delivered"
    assert state["attempts"] == 1
    [attempt] = attempts_of(store, event_id, "t")
    assert attempt["status_code"] == 404
    assert "already invited" in attempt["response"]
    [r] = target_server.requests_to("/t")
    assert r.headers["ramen_api_key"] == "key"
    assert r.json() == {
        "recipient_email": "invite-15551231234@example.com",
        "invitation_type": "org_customer",
    }
    assert dead_letter_ids(redis) == []


def test_a_deadline_is_recorded_when_it_passes_not_at_the_next_try(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    """expire_after = "3s" with a retry step of 10 minutes: the delivery is recorded expired (a
    dead letter, counted, alerted) a second or so after its deadline, not 10 minutes later; and
    one held back by a paused target likewise."""
    target_server.script("/t", [503])
    gateway.write_config(
        SETTINGS
        + 'alert_target = "alerts"\n'
        + f"""
[[targets]]
name = "t"
networks = ["mynetwork"]
url = "{target_server.url}/t"
retry = [600]
expire_after = "3s"

[[targets]]
name = "held"
networks = ["mynetwork"]
url = "{target_server.url}/held"
expire_after = "3s"

[[targets]]
name = "alerts"
networks = ["gateway"]
url = "{target_server.url}/alerts"
post_data = "%message%"
content_type = "text/plain"
"""
    )
    base = gateway.start_web()
    store = store_for(redis)
    DeliveryQueue(redis, "gw", 86400).pause("held", int(time.time() * 1000))
    gateway.start_worker()
    resp = http_call(base, "GET", CALLBACK)
    assert resp.status == 204
    event_id = the_event_id(store)
    target_server.wait_for("/t", 1)
    # The first try failed; the next is 10 minutes away. The deadline passes 3 s after the callback.
    deliveries = wait_until(
        lambda: (
            (d := store.get_deliveries(event_id))
            and d["t"]["status"] == "expired"
            and d["held"]["status"] == "expired"
            and d
        ),
        "both deliveries recorded expired",
        timeout=20,
        explain=gateway.logs,
    )
    received = store.get_event(event_id).received_at_ms  # type: ignore[union-attr]
    for name in ("t", "held"):
        state = deliveries[name]
        assert state["last_error"] == "not delivered within expire_after=3 s"
        assert state["updated_at"] >= received + 3000  # at its deadline, not before
        assert state["next_attempt_at"] is None
        assert f"{event_id}-{name}" in dead_letter_ids(redis)
        assert redis.zscore("gw:due", f"{event_id}-{name}") is None
        assert redis.zscore(f"gw:parked:{name}", f"{event_id}-{name}") is None
    assert [a["outcome"] for a in attempts_of(store, event_id, "t")] == ["retrying", "expired"]
    assert [a["outcome"] for a in attempts_of(store, event_id, "held")] == ["expired"]
    assert len(target_server.requests_to("/t")) == 1 and target_server.requests_to("/held") == []
    # Alerted (dead letters of each target) and counted.
    alerts = [r.body.decode() for r in target_server.wait_for("/alerts", 2)]
    assert any(a.startswith("deliveries to t fail for good") and "expire_after=3 s" in a for a in alerts)
    assert any(a.startswith("deliveries to held fail for good") for a in alerts)
    wait_until(
        lambda: (
            'gateway_deliveries_total{outcome="expired",target="t"} 1.0'
            in http_call(base, "GET", "/metrics").body.decode()
        ),
        "the expiry counted",
    )
