"""Target health with the real engine, Redis and HTTP targets on 127.0.0.1: automatic pauses and
probes, 410 Gone, manual pauses, and the alerts sent to the alert target."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from redis import Redis

from gateway.events import InvitationEvent

from .engine_support import AsyncTarget, Harness, did, eventually, run, target


def _ms() -> int:
    return int(time.time() * 1000)


def _states(h: Harness, events: list[InvitationEvent], name: str) -> list[dict[str, Any]]:
    return [h.state(ev.id, name) for ev in events]


def test_failures_pause_a_target_and_a_successful_probe_resumes_it(
    redis: Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.delivery")

    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script("/sick", [503])
        h.configure(
            [
                target(
                    "sick",
                    f"{srv.base}/sick",
                    retry=[0] * 10,
                    concurrency=1,  # one request at a time: exactly 3 attempts before the pause
                    pause_after={"failures": 3, "seconds": 0},
                )
            ]
        )
        first = h.add_events(5, ["sick"])
        ids = {did(ev, "sick") for ev in first}
        stats = await h.engine().run(20)
        assert stats.outcomes == {"retrying": 3}
        assert len(srv.hits) == 3

        health = h.queue.health("sick")
        assert health.state == "paused" and health.manual is False
        assert health.reason == "3 consecutive failures in 0 s"
        assert health.failures == 3 and health.held_deliveries == 5
        assert h.held() == {"sick"}
        assert h.parked("sick") == ids
        assert h.due() == {}
        assert "target sick paused: 3 consecutive failures in 0 s" in caplog.text
        states = _states(h, first, "sick")
        assert sum(s["attempts"] for s in states) == 3
        assert sum(s["retries"] for s in states) == 3
        assert all(s["retries"] == s["attempts"] for s in states)

        # Deliveries arriving while paused are parked without an attempt.
        later = h.add_events(2, ["sick"])
        ids |= {did(ev, "sick") for ev in later}
        stats = await h.engine().run(10)
        assert stats.claimed == 0
        assert len(srv.hits) == 3
        assert h.parked("sick") == ids
        assert all(s["attempts"] == 0 and s["status"] == "pending" for s in _states(h, later, "sick"))

        # A probe lets one through; it fails: parked again, no retry used, still paused.
        probed = h.queue.probe("sick", _ms(), 400)
        assert probed in ids
        assert h.queue.probe("sick", _ms(), 400) is None  # one per probe interval
        stats = await h.engine().run(10)
        assert stats.claimed == 1 and stats.outcomes == {"paused": 1}
        assert len(srv.hits) == 4 and srv.hits[-1].key == probed
        assert h.parked("sick") == ids
        assert h.queue.health("sick").state == "paused"
        event_id = probed.split("-")[0]
        probed_state = h.state(event_id, "sick")
        assert probed_state["waiting"] == "target paused" and probed_state["status"] == "retrying"
        assert h.attempts(event_id)[-1]["outcome"] == "paused"
        everything = _states(h, first + later, "sick")
        assert sum(s["retries"] for s in everything) == 3  # only the failures that caused the pause

        # The target recovers: the next probe succeeds and every parked delivery is delivered.
        srv.script("/sick", [200])
        got: list[str | None] = [None]

        def probe() -> bool:
            got[0] = h.queue.probe("sick", _ms(), 400)
            return got[0] is not None

        await eventually(probe, timeout=5, what="the next probe")
        stats = await h.engine().run(20)
        assert stats.outcomes == {"delivered": 7}
        assert srv.hits[4].key == got[0]
        assert "target sick resumed: a probe succeeded" in caplog.text
        health = h.queue.health("sick")
        assert (health.state, health.failures, health.held_deliveries) == ("active", 0, 0)
        assert h.held() == set()
        assert h.due() == {}
        everything = _states(h, first + later, "sick")
        assert all(s["status"] == "delivered" and s["waiting"] is None for s in everything)
        assert sum(s["retries"] for s in everything) == 3
        assert len(srv.hits) == 11

    run(redis, redis_url, body)


def test_failures_faster_than_pause_seconds_do_not_pause(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script("/s", [503])
        h.configure(
            [target("s", f"{srv.base}/s", retry=[0, 0, 0, 0], pause_after={"failures": 3, "seconds": 60})]
        )
        [ev] = h.add_events(1, ["s"])
        stats = await h.engine().run(10)
        assert stats.outcomes == {"retrying": 4, "failed": 1}
        health = h.queue.health("s")
        assert (health.state, health.failures) == ("active", 5)
        assert h.held() == set()
        state = h.state(ev.id, "s")
        assert (state["status"], state["attempts"], state["retries"]) == ("failed", 5, 4)
        assert h.dead() == {did(ev, "s")}

    run(redis, redis_url, body)


def test_410_disables_a_target_until_it_is_resumed(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script("/g", [410])
        h.configure([target("g", f"{srv.base}/g", retry=[0], probe_interval=1)])
        first = h.add_events(2, ["g"])
        stats = await h.engine().run(10)
        assert stats.outcomes == {"disabled": 2}
        health = h.queue.health("g")
        assert (health.state, health.reason, health.manual) == ("disabled", "410 Gone", False)
        assert h.held() == {"g"}
        for s in _states(h, first, "g"):
            assert (s["status"], s["attempts"], s["retries"]) == ("retrying", 1, 0)
            assert s["waiting"] == "target disabled (410 Gone)"
            assert s["last_status_code"] == 410
        assert [a["outcome"] for a in h.attempts(first[0].id)] == ["disabled"]

        [later] = h.add_events(1, ["g"])
        stats = await h.engine().run(10)
        assert stats.claimed == 0
        assert h.parked("g") == {did(ev, "g") for ev in [*first, later]}
        assert h.queue.probe("g", _ms(), 1000) is None  # no automatic probe of a disabled target
        assert len(srv.hits) == 2

        srv.script("/g", [200])
        assert h.queue.resume("g", _ms()) == "disabled"
        stats = await h.engine().run(10)
        assert stats.outcomes == {"delivered": 3}
        assert h.queue.health("g").state == "active"
        assert h.held() == set() and h.parked("g") == set() and h.due() == {}
        for s in _states(h, first, "g"):
            assert (s["status"], s["attempts"], s["retries"], s["waiting"]) == ("delivered", 2, 0, None)
        assert h.state(later.id, "g")["attempts"] == 1

    run(redis, redis_url, body)


def test_a_manual_pause_holds_everything_until_resumed(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        h.configure([target("m", f"{srv.base}/m", probe_interval=1)])
        assert h.queue.pause("m", _ms()) == "active"
        events = h.add_events(3, ["m"])
        stats = await h.engine().run(10)
        assert stats.claimed == 0
        assert srv.hits == []
        assert h.parked("m") == {did(ev, "m") for ev in events}
        health = h.queue.health("m")
        assert (health.state, health.manual, health.reason) == ("paused", True, "paused by hand")
        assert h.queue.probe("m", _ms(), 1000) is None  # a manual pause is never probed
        assert all(s["attempts"] == 0 for s in _states(h, events, "m"))

        assert h.queue.resume("m", _ms()) == "paused"
        stats = await h.engine().run(10)
        assert stats.outcomes == {"delivered": 3}
        assert len(srv.hits) == 3
        assert h.held() == set() and h.parked("m") == set() and h.due() == {}

    run(redis, redis_url, body)


def test_alerts_go_to_the_alert_target(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script("/ops", [400, 200])  # the first delivery to ops itself fails for good
        srv.script("/sick", [503])
        srv.script("/gone", [410])
        srv.script("/bad", [400])
        h.configure(
            [
                target(
                    "ops",
                    f"{srv.base}/ops",
                    post_data='{"text": "%message%"}',
                    content_type="application/json",
                    retry=[0],
                ),
                target(
                    "sick",
                    f"{srv.base}/sick",
                    retry=[0] * 5,
                    concurrency=1,
                    pause_after={"failures": 2, "seconds": 0},
                ),
                target("gone", f"{srv.base}/gone"),
                target("bad", f"{srv.base}/bad", retry=[]),
            ],
            alert_target="ops",
        )

        def alerts() -> list[str]:
            return [hit.json()["text"] for hit in srv.to("/ops")[1:]]

        # A delivery to the alert target itself fails for good: no alert about it (no loop).
        [to_ops] = h.add_events(1, ["ops"])
        stats = await h.engine().run(10)
        assert stats.outcomes == {"failed": 1}
        assert h.state(to_ops.id, "ops")["status"] == "failed"
        assert len(srv.to("/ops")) == 1 and h.due() == {}

        # A pause, a 410 and two deliveries that fail for good: three alerts.
        events = h.add_events(2, ["sick", "gone", "bad"])
        stats = await h.engine().run(20)
        assert stats.outcomes == {"retrying": 2, "disabled": 2, "failed": 2, "delivered": 3}
        bad_ids = {did(ev, "bad") for ev in events}
        got = sorted(alerts())
        assert len(got) == 3, got
        assert got[0].startswith("deliveries to bad fail for good (latest ")
        assert got[0].split("latest ")[1].split(":")[0] in bad_ids
        assert got[0].endswith(": HTTP 400); see `gateway deliveries failed --target bad`")
        assert got[1:] == [
            "target gone disabled: the target answered 410 Gone",
            "target sick paused: 2 consecutive failures in 0 s",
        ]
        for hit in srv.to("/ops")[1:]:
            assert hit.method == "POST" and hit.headers["content-type"] == "application/json"
            assert hit.key.endswith("-ops")
        assert h.queue.health("ops").state == "active"

        # The sick target recovers through a probe: one more alert. Another dead letter of the
        # same target within 10 minutes: none.
        srv.script("/sick", [200])
        assert h.queue.probe("sick", _ms(), 60_000) is not None
        h.add_events(1, ["bad"])
        stats = await h.engine().run(20)
        assert stats.outcomes == {"delivered": 3, "failed": 1}
        assert alerts()[3:] == ["target sick resumed: a probe succeeded"]
        assert all(h.state(ev.id, "sick")["status"] == "delivered" for ev in events)
        assert h.due() == {}

    run(redis, redis_url, body)


def test_a_probe_comes_back_after_its_interval(redis: Redis, redis_url: str) -> None:
    """`probe` lets one delivery through per interval, only for an automatic pause."""

    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script("/p", [503])
        h.configure([target("p", f"{srv.base}/p", retry=[0] * 3, pause_after={"failures": 1, "seconds": 0})])
        [ev] = h.add_events(1, ["p"])
        await h.engine().run(10)
        assert h.queue.health("p").state == "paused"
        assert h.queue.probe("p", _ms(), 300) == did(ev, "p")
        assert h.queue.probe("p", _ms(), 300) is None  # nothing parked, and the interval runs
        await h.engine().run(10)
        assert h.parked("p") == {did(ev, "p")}
        await eventually(lambda: h.queue.probe("p", _ms(), 300) is not None, timeout=5, what="a probe")
        assert h.due() == {did(ev, "p"): pytest.approx(_ms(), abs=2000)}

    run(redis, redis_url, body)


def test_a_backlog_of_a_paused_target_does_not_hide_what_is_due_behind_it(
    redis: Redis, redis_url: str
) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        h.configure([target("held", f"{srv.base}/held"), target("ok", f"{srv.base}/ok")])
        h.queue.pause("held", _ms())
        backlog = h.add_events(100, ["held"], at=time.time() - 60)  # due before the other one
        [ev] = h.add_events(1, ["ok"])
        # A claim looks at 4 x its free slots (16 here) at most: seven claims park the backlog.
        stats = await h.engine(concurrency=4).run(10)
        assert stats.outcomes == {"delivered": 1}
        assert h.state(ev.id, "ok")["status"] == "delivered"
        assert h.parked("held") == {did(e, "held") for e in backlog}
        assert h.due() == {}
        assert [hit.path for hit in srv.hits] == ["/ok"]

    run(redis, redis_url, body)
