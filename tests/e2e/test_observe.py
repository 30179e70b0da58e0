"""/metrics, /readyz and /healthz through real processes: two web (one with two uvicorn workers
on one port, one on its own) and two delivery workers sharing one Redis."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import pytest
from e2e_support import SETTINGS, http_call, wait_until
from prometheus_client.parser import text_string_to_metric_families

from gateway.store.queue import DeliveryQueue

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer
    from redis import Redis

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def config(url: str) -> str:
    return SETTINGS + (
        f'[[targets]]\nname = "crm"\nnetworks = ["mynetwork"]\nurl = "{url}/crm"\n\n'
        f'[[targets]]\nname = "flaky"\nnetworks = ["mynetwork"]\nurl = "{url}/flaky"\nretry = [1]\n\n'
        f'[[targets]]\nname = "bad"\nnetworks = ["othernet"]\nurl = "{url}/bad"\n'
    )


def scrape(base: str) -> Samples:
    resp = http_call(base, "GET", "/metrics")
    assert resp.status == 200, resp.body
    assert resp.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def callback(n: int, network: str = "mynetwork") -> str:
    return f"/invitation_created?invitee=%2B44770090{n:04d}&invitor=alice&network_id={network}"


@pytest.mark.timeout(150)
def test_metrics_add_up_over_two_web_and_two_worker_processes(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    target_server.script("/flaky", [503, 200])  # the first attempt fails: one retry
    target_server.script("/bad", [400])  # failed for good: a dead letter
    gateway.write_config(config(target_server.url))
    shared = gateway.start_web(WEB_CONCURRENCY="2")  # two uvicorn processes on one port
    single = gateway.start_web()
    gateway.start_worker()
    gateway.start_worker()
    n = 0
    for base, count in ((shared, 10), (single, 6)):
        for _ in range(count):
            n += 1
            resp = http_call(base, "GET", callback(n))
            assert resp.status == 204, resp.body
    for _ in range(3):
        n += 1
        body = json.dumps({"invitee": f"+4477009{n:05d}", "invitor": "bob", "network_id": "mynetwork"})
        resp = http_call(
            single,
            "POST",
            "/invitation_accepted",
            body.encode(),
            {"Content-Type": "application/json"},
        )
        assert resp.status == 204, resp.body
    assert http_call(shared, "GET", callback(9999, "othernet")).status == 204
    for _ in range(2):
        assert http_call(shared, "GET", "/invitation_created?invitor=a&network_id=mynetwork").status == 400
    resp = http_call(
        single, "POST", "/invitation_created", b"\x00\x01\x02", {"Content-Type": "application/octet-stream"}
    )
    assert resp.status == 415
    # 16 + 3 events for mynetwork; flaky answers its first request 503 and is retried.
    target_server.wait_for("/crm", 19, timeout=30)
    target_server.wait_for("/flaky", 20, timeout=30)
    target_server.wait_for("/bad", 1, timeout=30)

    expected = {
        ("gateway_callbacks_total", "invitation_created", "query", "accepted", ""): 17,
        ("gateway_callbacks_total", "invitation_accepted", "json", "accepted", ""): 3,
        ("gateway_callbacks_total", "invitation_created", "unknown", "rejected", "invalid"): 2,
        ("gateway_callbacks_total", "invitation_created", "unknown", "rejected", "unsupported_media_type"): 1,
    }

    def settled() -> Samples | None:
        samples = scrape(shared)
        for (name, event, fmt, outcome, reason), want in expected.items():
            got = value(samples, name, event=event, format=fmt, outcome=outcome, reason=reason)
            if got != want:
                return None
        if value(samples, "gateway_deliveries_total", target="crm", outcome="delivered") != 19:
            return None
        if value(samples, "gateway_deliveries_total", target="flaky", outcome="delivered") != 19:
            return None
        if value(samples, "gateway_workers_alive") != 2:
            return None
        return samples

    samples = wait_until(
        settled,
        "the totals in /metrics",
        timeout=40,
        interval=0.5,
        explain=lambda: http_call(shared, "GET", "/metrics").body.decode(),
    )
    assert value(samples, "gateway_ingest_seconds_count", event="invitation_created") == 20
    assert value(samples, "gateway_ingest_seconds_count", event="invitation_accepted") == 3
    assert value(samples, "gateway_ingest_seconds_bucket", event="invitation_created", le="+Inf") == 20
    assert value(samples, "gateway_deliveries_total", target="flaky", outcome="retrying") == 1
    assert value(samples, "gateway_delivery_retries_total", target="flaky") == 1
    assert value(samples, "gateway_deliveries_total", target="bad", outcome="failed") == 1
    assert value(samples, "gateway_dead_letters_added_total", target="bad") == 1
    assert value(samples, "gateway_dead_letters") == 1
    assert value(samples, "gateway_delivery_attempt_seconds_count", target="crm") == 19
    assert value(samples, "gateway_delivery_attempt_seconds_count", target="flaky") == 20
    assert value(samples, "gateway_queue_due") == 0
    assert value(samples, "gateway_redis_up") == 1
    assert value(samples, "gateway_spool_bytes") == 0
    assert value(samples, "gateway_targets_paused") == 0

    # Every web process answers with the same totals (they come from Redis).
    other = scrape(single)
    assert value(other, "gateway_deliveries_total", target="crm", outcome="delivered") == 19

    # A paused target shows as held, with its parked deliveries.
    DeliveryQueue(redis, "gw", 86400).pause("crm", int(time.time() * 1000))
    samples = scrape(single)
    assert value(samples, "gateway_targets_paused") == 1
    assert value(samples, "gateway_target_held", target="crm", state="paused") == 1


@pytest.mark.timeout(90)
def test_readyz_needs_a_live_worker(gateway: Gateway, target_server: TargetServer) -> None:
    gateway.write_config(config(target_server.url))
    base = gateway.start_web()
    resp = http_call(base, "GET", "/readyz")
    assert resp.status == 503
    assert resp.json()["failed"] == ["workers"], resp.body
    assert resp.json()["checks"]["redis"] == "ok"
    assert http_call(base, "GET", "/healthz").status == 200  # the process is up
    worker = gateway.start_worker()
    ready = wait_until(
        lambda: http_call(base, "GET", "/readyz").status == 200, "/readyz 200", timeout=30, interval=0.2
    )
    assert ready
    body = http_call(base, "GET", "/readyz").json()
    assert body == {"status": "ok", "failed": [], "checks": body["checks"]}
    assert body["checks"]["workers"] == "1 alive"
    worker.stop()  # a stopping worker takes its heartbeat with it
    resp = http_call(base, "GET", "/readyz")
    assert resp.status == 503 and resp.json()["failed"] == ["workers"], resp.body
