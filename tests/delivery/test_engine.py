"""The delivery engine in the test process (asyncio) against the real Redis and real HTTP servers
on 127.0.0.1: batches, retries, throttling, rate limits, concurrency caps, expiry, stops, proxies
and leases. Every state, attempt and Redis key is checked as recorded."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from redis import Redis

from gateway.delivery.engine import Stats

from .engine_support import AsyncTarget, Harness, Hit, did, eventually, forward_proxy, run, target


def _ms() -> int:
    return int(time.time() * 1000)


@pytest.mark.parametrize("fast", [True, False], ids=["fastredis", "redis-py"])
def test_a_batch_of_1500_is_delivered_once_each_with_its_key(
    redis: Redis, redis_url: str, fast: bool
) -> None:
    """Claims and completions through FastRedis (as `gateway worker` makes them), or through
    redis.asyncio (behind Sentinel): the same records either way."""
    names = ["a", "b", "c"]

    async def body(h: Harness, srv: AsyncTarget) -> None:
        h.configure([target(n, f"{srv.base}/{n}?e=%event_id%", retry=[0]) for n in names])
        events = h.add_events(500, names)
        engine = h.engine(fast=fast)
        stats = await engine.run(60)
        assert stats.claimed == 1500
        assert stats.outcomes == {"delivered": 1500}
        assert stats.released == 0

        assert len(srv.hits) == 1500
        keys = [hit.key for hit in srv.hits]
        assert len(set(keys)) == 1500
        for hit in srv.hits:
            assert hit.key == f"{hit.query['e']}-{hit.path.lstrip('/')}"
        assert set(keys) == {did(ev, n) for ev in events for n in names}
        for ev in events:
            for n in names:
                state = h.state(ev.id, n)
                assert (state["status"], state["attempts"], state["retries"]) == ("delivered", 1, 0)
                assert state["last_status_code"] == 200 and state["waiting"] is None
                [attempt] = h.attempts(ev.id, n)
                assert (attempt["attempt"], attempt["outcome"], attempt["status_code"]) == (
                    1,
                    "delivered",
                    200,
                )
                assert attempt["response"] == "ok"
        assert h.due() == {}
        assert h.dead() == set()

        # A delivery already delivered, put back in the waiting set, is not sent again.
        again = did(events[7], "b")
        h.redis.zadd("gw:due", {again: _ms()})
        stats = await engine.run(10)
        assert stats.claimed == 1
        assert stats.outcomes == {}
        assert len(srv.hits) == 1500
        assert len(h.attempts(events[7].id, "b")) == 1
        assert h.state(events[7].id, "b")["status"] == "delivered"
        assert h.due() == {}

    run(redis, redis_url, body)


def test_a_slow_target_does_not_hold_up_a_fast_one(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.delays["/slow"] = 1.0
        h.configure([target("slow", f"{srv.base}/slow"), target("fast", f"{srv.base}/fast")])
        events = h.add_events(10, ["slow", "fast"])
        stats = await h.engine(concurrency=64).run(30)
        assert stats.outcomes == {"delivered": 20}
        fast_done = max(h.state(ev.id, "fast")["updated_at"] for ev in events)
        slow_done = min(h.state(ev.id, "slow")["updated_at"] for ev in events)
        slow_started = min(hit.wall_ms for hit in srv.to("/slow"))
        # Every fast delivery was recorded before the first slow one could even be answered.
        assert fast_done < slow_done
        assert fast_done < slow_started + 1000
        assert max(hit.finished for hit in srv.to("/fast")) < min(hit.finished for hit in srv.to("/slow"))

    run(redis, redis_url, body)


def test_retry_schedule_and_permanent_failures(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script("/flaky", [503, 200])
        srv.script("/down", [503])
        srv.script("/bad", [400])
        srv.script("/moved", [(301, {"Location": "https://new.example.com/hook"}, b"")])
        h.configure(
            [
                target("flaky", f"{srv.base}/flaky", retry=[0]),
                target("down", f"{srv.base}/down", retry=[0]),
                target("bad", f"{srv.base}/bad", retry=[0, 0]),
                target("moved", f"{srv.base}/moved", retry=[0, 0]),
            ]
        )
        names = ["flaky", "down", "bad", "moved"]
        [ev] = h.add_events(1, names)
        stats = await h.engine().run(20)
        assert stats.outcomes == {"retrying": 2, "delivered": 1, "failed": 3}

        flaky = h.state(ev.id, "flaky")
        assert (flaky["status"], flaky["attempts"], flaky["retries"]) == ("delivered", 2, 1)
        assert [(a["attempt"], a["outcome"], a["status_code"]) for a in h.attempts(ev.id, "flaky")] == [
            (1, "retrying", 503),
            (2, "delivered", 200),
        ]

        down = h.state(ev.id, "down")
        # One retry in the schedule: one used, then failed for good.
        assert (down["status"], down["attempts"], down["retries"]) == ("failed", 2, 1)
        assert "no retries left after 2 attempts" in down["last_error"]
        assert [a["outcome"] for a in h.attempts(ev.id, "down")] == ["retrying", "failed"]

        bad = h.state(ev.id, "bad")
        assert (bad["status"], bad["attempts"], bad["retries"], bad["last_error"]) == (
            "failed",
            1,
            0,
            "HTTP 400",
        )
        moved = h.state(ev.id, "moved")
        assert (moved["status"], moved["attempts"], moved["retries"]) == ("failed", 1, 0)
        assert "https://new.example.com/hook" in moved["last_error"]
        assert len(srv.to("/bad")) == 1 and len(srv.to("/moved")) == 1

        assert h.dead() == {did(ev, "down"), did(ev, "bad"), did(ev, "moved")}
        assert h.due() == {}

    run(redis, redis_url, body)


def test_a_private_address_is_refused_when_not_allowed(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        h.configure([target("lan", f"{srv.base}/lan", retry=[0, 0])], allow_private_targets=False)
        [ev] = h.add_events(1, ["lan"])
        stats = await h.engine(allow_private=False).run(10)
        assert stats.outcomes == {"failed": 1}
        state = h.state(ev.id, "lan")
        assert (state["status"], state["attempts"], state["retries"]) == ("failed", 1, 0)
        assert "127.0.0.1 is private, loopback or reserved" in state["last_error"]
        assert srv.hits == []
        assert h.dead() == {did(ev, "lan")}

    run(redis, redis_url, body)


def test_429_throttles_the_whole_target_without_using_retries(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.script("/t", [(429, {"Retry-After": "2"}, b"slow down"), 200])
        h.configure([target("t", f"{srv.base}/t", retry=[0])])
        [first] = h.add_events(1, ["t"])
        one = asyncio.create_task(h.engine().run(20))
        await eventually(lambda: h.redis.exists("gw:throttle:t") == 1, what="the throttle")
        until = int(h.redis.get("gw:throttle:t") or 0)
        assert until > _ms()
        assert h.due()[did(first, "t")] == until

        # Other deliveries of the target, claimed during the throttle, wait for its end.
        later = h.add_events(3, ["t"])
        two = asyncio.create_task(h.engine().run(20))
        await eventually(
            lambda: all(h.due().get(did(ev, "t")) == until for ev in later) or len(srv.hits) > 1,
            what="the others to be held",
        )
        assert len(srv.hits) == 1
        stats = await asyncio.gather(one, two)
        outcomes: dict[str, int] = {}
        for s in stats:
            for k, v in s.outcomes.items():
                outcomes[k] = outcomes.get(k, 0) + v
        assert outcomes == {"throttled": 1, "delivered": 4}

        assert [h.status for h in srv.hits].count(429) == 1
        assert all(hit.wall_ms >= until for hit in srv.hits[1:])
        state = h.state(first.id, "t")
        assert (state["status"], state["attempts"], state["retries"], state["throttles"]) == (
            "delivered",
            2,
            0,
            1,
        )
        throttled, delivered = h.attempts(first.id, "t")
        assert (throttled["outcome"], throttled["status_code"], delivered["outcome"]) == (
            "throttled",
            429,
            "delivered",
        )
        assert 2000 <= until - throttled["at_ms"] < 3000  # Retry-After: 2, from the answer
        assert delivered["at_ms"] >= until
        for ev in later:
            s = h.state(ev.id, "t")
            assert (s["status"], s["attempts"], s["retries"], s["throttles"]) == ("delivered", 1, 0, 0)
        assert h.due() == {}

    run(redis, redis_url, body)


@pytest.mark.parametrize("latency", [0.0, 0.3])
def test_a_rate_limit_spaces_requests(redis: Redis, redis_url: str, latency: float) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.delays["/r"] = latency
        h.configure([target("r", f"{srv.base}/r", rate="10/s")])
        events = h.add_events(20, ["r"])
        slots: dict[str, int] = {}

        def on_hit(hit: Hit) -> None:
            if not slots:  # the first claim sent one and reserved a slot for each other one
                slots.update({k.decode(): int(v) for k, v in h.redis.hgetall("gw:reserved").items()})
                slots[hit.key] = min(slots.values()) - 100  # the claim's own time, to the ms

        srv.on_hit = on_hit
        stats = await h.engine().run(20)
        assert stats.outcomes == {"delivered": 20}
        assert len(srv.hits) == 20 and len(slots) == 20
        assert set(slots) == {did(ev, "r") for ev in events}

        # The slots: 100 ms apart (ceil to whole ms), each used, none re-reserved.
        ordered = sorted(slots.values())
        gaps = [b - a for a, b in itertools.pairwise(ordered)]
        assert all(99 <= g <= 101 for g in gaps), gaps
        assert ordered[-1] - ordered[0] in range(1899, 1902)
        # No request before its slot (how late a slot is used depends on the machine's load: not
        # asserted; bench/ measures speed).
        lateness = {hit.key: hit.wall_ms - slots[hit.key] for hit in srv.hits}
        assert min(lateness.values()) >= -1, lateness  # wall ms are truncated, slots rounded up
        # At the target: at most 11 requests in any 1 s window, plus one per request that load
        # delayed past the next slot (it shares a window with the on-time ones after it).
        late = sum(1 for v in lateness.values() if v > 100)
        times = sorted(hit.wall_ms for hit in srv.hits)
        for i, t in enumerate(times):
            in_window = sum(1 for u in times[i:] if u < t + 1000)
            assert in_window <= 11 + late, f"{in_window} requests within 1 s from request {i}: {lateness}"
        for ev in events:
            s = h.state(ev.id, "r")
            assert (s["status"], s["attempts"]) == ("delivered", 1)
        assert h.redis.hlen("gw:reserved") == 0
        assert h.due() == {}

    run(redis, redis_url, body)


def test_concurrency_cap_holds_across_two_engines(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.delays["/c"] = 0.2
        srv.delays["/free"] = 0.05
        h.configure([target("c", f"{srv.base}/c", concurrency=2), target("free", f"{srv.base}/free")])
        # Each event goes to both targets: the two engines (2 requests in flight each) take turns
        # claiming, and a claim that meets "c" with 2 in flight parks it.
        events = h.add_events(12, ["c", "free"])
        parked_seen = 0

        async def watch() -> None:
            nonlocal parked_seen
            for _ in range(1000):
                parked_seen = max(parked_seen, int(h.redis.zcard("gw:parked:c")))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        stats: list[Stats] = await asyncio.gather(
            h.engine(concurrency=2).run(30), h.engine(concurrency=2).run(30)
        )
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

        assert [s.outcomes.get("delivered", 0) for s in stats] == [s.claimed for s in stats]
        assert sum(s.claimed for s in stats) == 24
        # Both engines sent: the second one's first claim came while the first one's were in flight.
        assert all(s.claimed >= 2 for s in stats), [s.to_dict() for s in stats]
        assert srv.max_open["/c"] == 2
        assert srv.max_open["/free"] >= 2
        assert len(srv.to("/c")) == 12 and len(srv.to("/free")) == 12
        assert parked_seen > 0  # and unparked by completions: no ticker runs here
        for ev in events:
            for name in ("c", "free"):
                s = h.state(ev.id, name)
                assert (s["status"], s["attempts"]) == ("delivered", 1)
        assert h.parked("c") == set()
        assert h.redis.zcard("gw:inflight:c") == 0
        assert h.due() == {}

    run(redis, redis_url, body)


def test_an_event_older_than_expire_after_expires(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        h.configure([target("x", f"{srv.base}/x", expire_after="5s")])
        [old] = h.add_events(1, ["x"], at=time.time() - 10)
        [fresh] = h.add_events(1, ["x"])
        stats = await h.engine().run(10)
        assert stats.outcomes == {"expired": 1, "delivered": 1}
        state = h.state(old.id, "x")
        assert (state["status"], state["attempts"]) == ("expired", 1)
        [attempt] = h.attempts(old.id, "x")
        assert attempt["outcome"] == "expired" and attempt["status_code"] is None
        assert "expire_after=5" in attempt["error"]
        assert h.state(fresh.id, "x")["status"] == "delivered"
        assert [hit.key for hit in srv.hits] == [did(fresh, "x")]
        assert h.dead() == {did(old, "x")}

    run(redis, redis_url, body)


def test_a_deadline_that_passes_during_an_attempt_expires_it_rather_than_another_wait(
    redis: Redis, redis_url: str
) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        # The answer (a 503: retry) comes after the deadline; the next try would be 10 minutes on.
        srv.scripts["/x"] = [503]
        srv.delays["/x"] = 1.5
        h.configure([target("x", f"{srv.base}/x", expire_after="1s", retry=[600])])
        [ev] = h.add_events(1, ["x"])
        stats = await h.engine().run(10)
        assert stats.outcomes == {"expired": 1}
        state = h.state(ev.id, "x")
        assert (state["status"], state["attempts"], state["next_attempt_at"]) == ("expired", 1, None)
        [attempt] = h.attempts(ev.id, "x")
        assert attempt["outcome"] == "expired" and attempt["status_code"] == 503
        assert attempt["error"].endswith("; not delivered within expire_after=1 s")
        assert h.dead() == {did(ev, "x")} and h.due() == {}
        assert len(srv.hits) == 1

    run(redis, redis_url, body)


def test_a_delivery_to_a_removed_target_is_skipped(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        h.configure([target("kept", f"{srv.base}/kept")])
        [ev] = h.add_events(1, ["kept", "removed"])
        stats = await h.engine().run(10)
        assert stats.outcomes == {"delivered": 1, "skipped": 1}
        state = h.state(ev.id, "removed")
        assert (state["status"], state["attempts"]) == ("skipped", 1)
        [attempt] = h.attempts(ev.id, "removed")
        assert attempt["outcome"] == "skipped" and attempt["error"] == "target no longer configured"
        assert h.due() == {}
        assert h.dead() == set()
        assert [hit.path for hit in srv.hits] == ["/kept"]

    run(redis, redis_url, body)


def test_a_stop_hands_back_what_is_still_in_flight(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        srv.delays["/sleepy"] = 10.0
        h.configure([target("sleepy", f"{srv.base}/sleepy", timeout=30)])
        events = h.add_events(3, ["sleepy"])
        engine = h.engine(grace=0.5)
        task = asyncio.create_task(engine.run(60))
        await srv.wait_for("/sleepy", 3)
        engine.request_stop()
        stopped_at = time.monotonic()
        stats = await asyncio.wait_for(task, 5)
        assert time.monotonic() - stopped_at < 2.0
        assert stats.claimed == 3 and stats.released == 3 and stats.outcomes == {}
        now = _ms()
        due = h.due()
        assert set(due) == {did(ev, "sleepy") for ev in events}
        assert all(score <= now for score in due.values())
        for ev in events:
            s = h.state(ev.id, "sleepy")
            assert (s["status"], s["attempts"]) == ("pending", 0)
            assert h.attempts(ev.id) == []

    run(redis, redis_url, body)


def test_a_target_behind_a_proxy(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        with forward_proxy() as proxy:
            h.configure([target("p", f"{srv.base}/via-proxy?e=%event_id%", proxy=proxy.url, retry=[0])])
            [ev] = h.add_events(1, ["p"])
            stats = await h.engine().run(10)
            assert stats.outcomes == {"delivered": 1}
            [hit] = srv.hits
            assert hit.path == "/via-proxy" and hit.key == did(ev, "p")
            assert proxy.forwarded == [f"{srv.base}/via-proxy?e={ev.id}"]

    run(redis, redis_url, body)


def test_the_ssrf_guard_applies_to_the_target_behind_a_proxy_not_the_proxy(
    redis: Redis, redis_url: str
) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        with forward_proxy() as proxy:
            h.configure(
                [
                    target("lan", f"{srv.base}/lan", proxy=proxy.url, retry=[0]),
                    # A public address, answered by the proxy itself: nothing leaves loopback.
                    target("public", "http://93.184.215.14/hook", proxy=proxy.url, retry=[0]),
                ],
                allow_private_targets=False,
            )
            [ev] = h.add_events(1, ["lan", "public"])
            stats = await h.engine(allow_private=False).run(10)
            assert stats.outcomes == {"failed": 1, "delivered": 1}
            lan = h.state(ev.id, "lan")
            assert (lan["status"], lan["attempts"]) == ("failed", 1)
            assert "127.0.0.1 is private, loopback or reserved" in lan["last_error"]
            assert srv.hits == []
            # The proxy on 127.0.0.1 was used for the public target: its address is not vetted.
            assert proxy.seen == ["http://93.184.215.14/hook"]
            assert proxy.forwarded == []
            public = h.state(ev.id, "public")
            assert (public["status"], public["attempts"]) == ("delivered", 1)
            assert h.attempts(ev.id, "public")[0]["response"] == "answered by the proxy"

    run(redis, redis_url, body)


def test_an_abandoned_lease_runs_out_and_another_engine_delivers(redis: Redis, redis_url: str) -> None:
    async def body(h: Harness, srv: AsyncTarget) -> None:
        h.configure([target("l", f"{srv.base}/l")])
        [ev] = h.add_events(1, ["l"])
        crashed = h.async_queue()
        claimed_at = _ms()
        raw = await crashed.claim(claimed_at, 1000, 10, h.config.policies())
        assert [x.decode() if isinstance(x, bytes) else x for x in raw[2::4]] == [did(ev, "l")]
        lease_end = h.due()[did(ev, "l")]
        assert lease_end == claimed_at + 1000

        stats = await h.engine(lease_ms=1000).run(10)
        assert stats.outcomes == {"delivered": 1}
        [hit] = srv.hits
        assert hit.wall_ms >= lease_end
        s = h.state(ev.id, "l")
        assert (s["status"], s["attempts"]) == ("delivered", 1)
        assert h.due() == {}

    run(redis, redis_url, body)
