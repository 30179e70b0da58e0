"""Counts of several processes summed through a real Redis hash, and rendered for Prometheus."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import IngestMetrics, Tally, count_deliveries, flush_commands, render
from gateway.store.ops import OpsKeys

if TYPE_CHECKING:
    from redis import Redis


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_two_processes_add_up_in_redis(redis: Redis) -> None:
    ops = OpsKeys("gw")
    web_a, web_b, worker = IngestMetrics(), IngestMetrics(), Tally()
    for _ in range(3):
        web_a.callback("invitation_created", "query", "accepted", 0.0007)
    web_b.callback("invitation_created", "query", "accepted", 0.2)
    web_b.rejected("invitation_created", "unknown", 415, 0.0001)
    count_deliveries(worker, [("crm", "delivered", 0.03), ("crm", "retrying", 2.0), ("sms", "failed", None)])
    for tally in (web_a.tally, web_b.tally, worker):
        with redis.pipeline(transaction=False) as pipe:
            flush_commands(pipe, ops.metrics, tally.take())
            pipe.execute()
        assert tally.data == {}
    got = samples(render(redis.hgetall(ops.metrics), {"gateway_queue_due": 4}, {"sms": ("paused", 2)}))
    created = (("event", "invitation_created"),)
    accepted = (("event", "invitation_created"), ("format", "query"), ("outcome", "accepted"), ("reason", ""))
    assert got[("gateway_callbacks_total", accepted)] == 4
    rejected = (
        ("event", "invitation_created"),
        ("format", "unknown"),
        ("outcome", "rejected"),
        ("reason", "unsupported_media_type"),
    )
    assert got[("gateway_callbacks_total", rejected)] == 1
    assert got[("gateway_ingest_seconds_count", created)] == 5
    assert got[("gateway_ingest_seconds_bucket", (*created, ("le", "0.0005")))] == 1
    assert got[("gateway_ingest_seconds_bucket", (*created, ("le", "0.001")))] == 4
    assert got[("gateway_ingest_seconds_bucket", (*created, ("le", "0.25")))] == 5
    assert abs(got[("gateway_ingest_seconds_sum", created)] - 0.2022) < 1e-9
    assert got[("gateway_deliveries_total", (("outcome", "delivered"), ("target", "crm")))] == 1
    assert got[("gateway_delivery_retries_total", (("target", "crm"),))] == 1
    assert got[("gateway_dead_letters_added_total", (("target", "sms"),))] == 1
    assert got[("gateway_delivery_attempt_seconds_count", (("target", "crm"),))] == 2
    assert ("gateway_delivery_attempt_seconds_count", (("target", "sms"),)) not in got  # no request made
    assert got[("gateway_queue_due", ())] == 4
    assert got[("gateway_target_held", (("state", "paused"), ("target", "sms")))] == 1
    assert got[("gateway_target_parked_deliveries", (("target", "sms"),))] == 2


def test_counts_a_flush_could_not_write_are_kept() -> None:
    tally = Tally()
    tally.add(("gateway_deliveries", "crm", "delivered"), 2)
    data = tally.take()
    tally.add(("gateway_deliveries", "crm", "delivered"))
    tally.put_back(data)
    assert tally.data == {("gateway_deliveries", "crm", "delivered"): 3}


def test_without_redis_the_scrape_still_renders() -> None:
    got = samples(render(None, {"gateway_redis_up": 0, "gateway_spool_bytes": 120}, {}))
    assert got[("gateway_redis_up", ())] == 0
    assert got[("gateway_spool_bytes", ())] == 120
