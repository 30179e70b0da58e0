"""The delivery engine under faults, through real processes: dead and stopped workers, a Redis
restart, targets that hang, reset, throttle, fail, go away or pause, rate limits, replays and a
soak with two workers.

Every scenario ends the same way: every accepted callback is delivered to every matching target,
and duplicates are counted AT THE TARGET (requests with the same Idempotency-Key answered 2xx
more than once). Each writes test-output/faults/<scenario>.json with its numbers.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from e2e_support import PREFIX, QUEUE_NAME, SETTINGS
from fault_support import (
    PROJECT_ROOT,
    FaultTarget,
    Sent,
    duplicates,
    expected_deliveries,
    poll,
    send_callbacks,
    start_fault_target,
    statuses,
    write_summary,
)
from redis import Redis

from gateway.embedded import EmbeddedRedis
from gateway.queue import enqueue_drain, make_queue
from gateway.store.queue import DeliveryQueue

if TYPE_CHECKING:
    from conftest import Gateway, Process

NET = "faultnet"
LEASE = {"GATEWAY_LEASE_SECONDS": "5"}
RETENTION = 86400
BAD_LOG_TEXT = ("Unclosed client session", "Unclosed connector", "Task was destroyed", "Traceback")


def config(url: str, *targets: tuple[str, str, str]) -> str:
    """A targets file: (name, path on the fault target, extra TOML) per target, all on NET."""
    text = SETTINGS
    for name, path, extra in targets:
        text += f'\n[[targets]]\nname = "{name}"\nnetworks = ["{NET}"]\nurl = "{url}{path}"\n{extra}\n'
    return text


def logs(gateway: Gateway, chars: int = 6000) -> str:
    """The end of every process's output (a soak's full logs are megabytes)."""
    return "\n".join(f"--- {p.log_path.name}\n{p.output()[-chars:]}" for p in gateway.processes)


def cli(gateway: Gateway, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=gateway.environ(),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def has_command(gateway: Gateway, *words: str) -> bool:
    """Whether the CLI has this (sub)command now (other work may add it at any time)."""
    return cli(gateway, *words, "--help").returncode == 0


def accepted(sent: Sent, gateway: Gateway) -> None:
    assert sent.accepted == sent.sent, (sent.refused[:5], logs(gateway))


def delivery_queue(redis: Redis) -> DeliveryQueue:
    return DeliveryQueue(redis, PREFIX, RETENTION)


@dataclass
class Settled:
    """How a scenario ended, measured at the target and in Redis."""

    name: str
    sent: Sent
    expected: int
    seconds: float
    states: dict[str, dict[str, Any]]  # delivery id -> state, every delivery of every event
    records: list[dict[str, Any]]  # every request the target read
    ok_keys: set[str]  # keys answered 2xx
    duplicates: int
    duplicate_keys: list[str]

    def summary(self, **extra: Any) -> dict[str, Any]:
        return write_summary(
            self.name,
            callbacks=self.sent.sent,
            deliveries_expected=self.expected,
            delivered=len(self.ok_keys & set(self.states)),
            duplicates=self.duplicates,
            seconds=round(self.seconds, 2),
            target_requests=len(self.records),
            **extra,
        )


def settle(
    name: str,
    gateway: Gateway,
    redis: Redis,
    target: FaultTarget,
    sent: Sent,
    started: float,
    targets: int,
    timeout: float,
) -> Settled:
    """Wait until every accepted callback is delivered to each of its `targets`, and check it.

    Writes the scenario's summary either way (a test adds its own numbers with `.summary()`).
    """
    want = sent.accepted * targets
    states: dict[str, dict[str, Any]] = {}

    def at_target() -> bool:
        return bool(sum(target.stats()["ok_keys"].values()) >= want)

    def in_redis() -> bool:
        states.clear()
        states.update(expected_deliveries(redis, PREFIX))
        return len(states) == want and all(s["status"] == "delivered" for s in states.values())

    def explain() -> str:
        return f"target: {target.stats()}\nstates: {statuses(states)} of {len(states)}\n{logs(gateway)}"

    try:
        poll(at_target, f"{want} deliveries answered 2xx at the target", timeout, 0.2, explain)
        poll(in_redis, f"{want} deliveries recorded as delivered", 30, 0.2, explain)
    finally:
        if not states:  # timed out at the target: still, what Redis says, if it can
            with contextlib.suppress(Exception):
                states.update(expected_deliveries(redis, PREFIX))
        records = target.records()
        dups, ok_keys, dup_keys = duplicates(records)
        result = Settled(
            name, sent, want, time.monotonic() - started, dict(states), records, ok_keys, dups, dup_keys
        )
        result.summary()
    missing = set(states) - ok_keys
    stray = ok_keys - set(states)
    assert not missing and not stray, (sorted(missing)[:10], sorted(stray)[:10])
    return result


def delivered_at(records: list[dict[str, Any]]) -> dict[str, float]:
    """Key -> when the target first answered it 2xx."""
    out: dict[str, float] = {}
    for r in records:
        if r.get("status") is not None and 200 <= r["status"] < 300 and r["key"] not in out:
            out[r["key"]] = r["arrived"]
    return out


def start_worker(gateway: Gateway, **env: str) -> Process:
    """Start a worker and wait until it takes jobs (imports and connections take a moment)."""
    proc = gateway.start_worker(**env)
    poll(
        lambda: proc.proc.poll() is not None or "Listening on" in proc.output(),
        "the worker to listen",
        30,
        0.05,
        proc.output,
    )
    assert proc.proc.poll() is None, proc.output()
    return proc


def kill9(proc: Process) -> float:
    os.kill(proc.pid, signal.SIGKILL)
    killed = time.time()
    proc.proc.wait(10)
    return killed


# -- 1. a worker SIGKILLed mid-batch ------------------------------------------------------------


@pytest.mark.timeout(90)
def test_worker_sigkilled_mid_batch(gateway: Gateway, redis: Redis) -> None:
    target = start_fault_target(gateway, {"/slow": {"delay": 1.5}})
    gateway.write_config(config(target.url, ("slow", "/slow", "timeout = 5\nretry = [1, 1, 2]")))
    base = gateway.start_web()
    # Ten at a time: waves of ten requests, each held 1.5 s by the target.
    env = {**LEASE, "GATEWAY_WORKER_CONCURRENCY": "10"}
    worker = start_worker(gateway, **env)
    started = time.monotonic()
    sent = send_callbacks(base, NET, 50, "kill")
    accepted(sent, gateway)

    poll(lambda: target.ok_keys("/slow") >= 20, "two waves delivered", 30, 0.05, lambda: logs(gateway))

    def mid_wave() -> bool:
        # A wave in flight, the previous one answered (and recorded) a while ago.
        s = target.stats()
        return bool(s["holding"] > 0 and time.time() - s["last_answer"] >= 0.4)

    poll(mid_wave, "a wave in flight", 20, 0.02, lambda: logs(gateway))
    killed = kill9(worker)
    before = expected_deliveries(redis, PREFIX)
    delivered_before = {did for did, s in before.items() if s["status"] == "delivered"}
    start_worker(gateway, **env)

    result = settle("worker_sigkill_mid_batch", gateway, redis, target, sent, started, 1, 45)
    # In flight at the kill: read by the target before it, answered (or not) after it.
    in_flight = {
        r["key"] for r in result.records if r["arrived"] < killed and (r["answered"] or killed) >= killed
    }
    resent = [r["key"] for r in result.records if r["arrived"] >= killed and r["key"] in delivered_before]
    result.summary(in_flight_at_kill=len(in_flight), delivered_before_kill=len(delivered_before))
    assert in_flight, "the kill found nothing in flight"
    assert len(delivered_before) >= 20
    assert not resent, f"delivered before the kill, sent again: {resent}"
    assert result.duplicates <= len(in_flight)
    assert set(result.duplicate_keys) <= in_flight, sorted(set(result.duplicate_keys) - in_flight)


# -- 2. Redis restarted while retries wait --------------------------------------------------------


@pytest.mark.timeout(90)
def test_redis_restarted_with_retries_pending(gateway: Gateway, tmp_path: Path) -> None:
    data = tmp_path / "redis-data"
    server = EmbeddedRedis(data_dir=data).start()
    port = server.port
    client = Redis.from_url(server.url)
    try:
        gateway.redis_url = server.url
        target = start_fault_target(gateway, {"/p": {"fail_first_per_key": 1, "fail_status": 503}})
        gateway.write_config(config(target.url, ("p", "/p", "timeout = 2\nretry = [3]")))
        base = gateway.start_web()
        worker = start_worker(gateway, **LEASE)
        started = time.monotonic()
        sent = send_callbacks(base, NET, 10, "redis")
        accepted(sent, gateway)
        states = wait_retrying(client, gateway, 10)
        due = {did: s["next_attempt_at"] / 1000 for did, s in states.items()}
        # The drain job has recorded them; let RQ finish its own bookkeeping of the job first (on
        # a loaded machine it can lag, and RQ logs a traceback when Redis goes away under it).
        wait_worker_idle(client, gateway)

        server.stop()  # by PID, SIGTERM: the append-only file is flushed
        stopped = time.time()
        # Down until every retry is overdue, and a little more. Nothing is sent meanwhile.
        time.sleep(max(max(due.values()) - time.time(), 0) + 1.5)
        down = time.time() - stopped
        server = EmbeddedRedis(data_dir=data, port=port).start()
        restarted = time.time()

        result = settle("redis_restart_retries_pending", gateway, client, target, sent, started, 1, 40)
        late = {k: round(t - due[k], 2) for k, t in delivered_at(result.records).items()}
        result.summary(
            redis_down_seconds=round(down, 2),
            worst_seconds_after_due=max(late.values()),
            worst_seconds_after_restart=round(max(delivered_at(result.records).values()) - restarted, 2),
        )
        assert all(s["attempts"] == 2 for s in result.states.values()), result.states
        assert result.duplicates == 0
        assert max(late.values()) <= 15, (late, logs(gateway))

        # Told to stop while Redis is down, the worker goes (status 1), without a traceback.
        server.stop()
        os.kill(worker.pid, signal.SIGTERM)
        code = worker.proc.wait(30)
        output = worker.output()
        assert code == 1, output
        for text in BAD_LOG_TEXT:
            assert text not in output, output
    finally:
        client.close()
        server.stop()


def wait_worker_idle(redis: Redis, gateway: Gateway) -> None:
    """Wait until every registered RQ worker is idle (no drain job being finished)."""
    from rq import Worker

    def check() -> bool | None:
        workers = Worker.all(connection=redis)
        return (bool(workers) and all(w.get_state() == "idle" for w in workers)) or None

    poll(check, "the worker idle", 10, 0.02, lambda: logs(gateway))


def wait_retrying(redis: Redis, gateway: Gateway, count: int) -> dict[str, dict[str, Any]]:
    """Wait until `count` deliveries wait for their retry; return their states."""

    def check() -> dict[str, dict[str, Any]] | None:
        states = expected_deliveries(redis, PREFIX)
        ok = len(states) == count and all(
            s["status"] == "retrying" and s["next_attempt_at"] for s in states.values()
        )
        return states if ok else None

    result: dict[str, dict[str, Any]] = poll(
        check, f"{count} retries waiting", 20, 0.05, lambda: logs(gateway)
    )
    return result


# -- 3. every worker restarted; an idle worker ----------------------------------------------------


@pytest.mark.timeout(60)
def test_overdue_retry_goes_out_when_a_worker_starts(gateway: Gateway, redis: Redis) -> None:
    target = start_fault_target(gateway, {"/p": {"fail_first_per_key": 1, "fail_status": 503}})
    # 3 s: longer than a drain job waits for the next due delivery, so no job holds them.
    gateway.write_config(config(target.url, ("p", "/p", "timeout = 2\nretry = [3]")))
    base = gateway.start_web()
    worker = start_worker(gateway, **LEASE)
    started = time.monotonic()
    sent = send_callbacks(base, NET, 5, "restart")
    accepted(sent, gateway)
    states = wait_retrying(redis, gateway, 5)
    kill9(worker)  # the only worker, and no scheduler: nothing runs until the next one starts
    due = max(s["next_attempt_at"] for s in states.values()) / 1000
    time.sleep(max(due - time.time(), 0) + 2)
    assert len(target.records("/p")) == 5, "a retry went out with no worker running"
    fresh = time.time()
    start_worker(gateway, **LEASE)

    result = settle("overdue_retry_new_worker", gateway, redis, target, sent, started, 1, 30)
    after_start = round(max(delivered_at(result.records).values()) - fresh, 2)
    result.summary(seconds_after_worker_start=after_start)
    assert result.duplicates == 0
    # A process start (imports, connections) and a tick; generous for a loaded machine.
    assert after_start <= 15, logs(gateway)


@pytest.mark.timeout(60)
def test_idle_worker_sends_the_retry_on_time(gateway: Gateway, redis: Redis) -> None:
    target = start_fault_target(gateway, {"/p": {"fail_first_per_key": 1, "fail_status": 503}})
    gateway.write_config(config(target.url, ("p", "/p", "timeout = 2\nretry = [5]")))
    base = gateway.start_web()
    start_worker(gateway, **LEASE)
    started = time.monotonic()
    sent = send_callbacks(base, NET, 3, "idle")
    accepted(sent, gateway)
    states = wait_retrying(redis, gateway, 3)
    due = {did: s["next_attempt_at"] / 1000 for did, s in states.items()}
    # No callback from now on: the worker sits idle, only its ticker can wake it.
    result = settle("idle_worker_retry", gateway, redis, target, sent, started, 1, 30)
    late = {k: round(t - due[k], 2) for k, t in delivered_at(result.records).items()}
    result.summary(worst_seconds_after_due=max(late.values()))
    assert min(late.values()) >= -0.05, f"a retry went out before it was due: {late}"
    assert max(late.values()) <= 5, (late, logs(gateway))
    assert result.duplicates == 0


# -- 4. targets that misbehave ------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_misbehaving_targets_do_not_hold_up_a_healthy_one(gateway: Gateway, redis: Redis) -> None:
    n = 10
    target = start_fault_target(
        gateway,
        {
            "/ok": {},
            "/hang": {"fail_first_per_key": 1, "fail_action": "hang"},
            "/reset": {"fail_first_per_key": 1, "fail_action": "reset"},
            "/flaky": {"fail_first": n + n // 2, "fail_status": 503},
            "/throttle": {"fail_first": 2, "fail_status": 429, "fail_headers": {"Retry-After": "1"}},
            "/gone": {"status": 410},
        },
    )
    short = "timeout = 2\nretry = [1, 1, 2]"
    gateway.write_config(
        config(
            target.url,
            ("ok", "/ok", short),
            ("hang", "/hang", "timeout = 1\nretry = [1, 1, 2]"),
            ("reset", "/reset", short),
            ("flaky", "/flaky", short),
            ("throttle", "/throttle", short),
            ("gone", "/gone", short),
        )
    )
    base = gateway.start_web()
    start_worker(gateway, **LEASE)
    started = time.monotonic()
    sent = send_callbacks(base, NET, n, "misbehave")
    accepted(sent, gateway)
    sent_at = time.monotonic()

    def of(name: str) -> dict[str, dict[str, Any]]:
        return {d: s for d, s in expected_deliveries(redis, PREFIX).items() if d.endswith(f"-{name}")}

    def delivered(*names: str) -> bool:
        states = [s for name in names for s in of(name).values()]
        return len(states) == n * len(names) and all(s["status"] == "delivered" for s in states)

    def explain() -> str:
        return f"{statuses(expected_deliveries(redis, PREFIX))}\n{logs(gateway)}"

    poll(lambda: delivered("ok"), "the healthy target to get every delivery", 10, 0.05, explain)
    healthy_seconds = time.monotonic() - sent_at

    queue = delivery_queue(redis)

    def gone_held() -> bool:
        h = queue.health("gone")
        return bool(h.state == "disabled" and h.held_deliveries == n)

    poll(
        gone_held, "the 410 target disabled, its deliveries held", 20, 0.1, lambda: str(queue.health("gone"))
    )
    others = ("hang", "reset", "flaky", "throttle")
    poll(lambda: delivered(*others), "the misbehaving targets to get everything in the end", 30, 0.2, explain)
    gone_states = of("gone")
    # Held, no retry used: "retrying" if it got its 410, "pending" if parked before its turn.
    assert all(s["status"] in ("pending", "retrying") and s["retries"] == 0 for s in gone_states.values())

    target.rule("/gone", {})  # fixed: answers 200 from now on
    if has_command(gateway, "targets", "resume"):
        resumed_by = "gateway targets resume gone"
        out = cli(gateway, "targets", "resume", "gone")
        assert out.returncode == 0, (out.stdout, out.stderr)
    else:
        resumed_by = "DeliveryQueue.resume"
        assert queue.resume("gone", int(time.time() * 1000)) == "disabled"
        if queue.set_wake():
            enqueue_drain(make_queue(redis, QUEUE_NAME))

    result = settle("misbehaving_targets", gateway, redis, target, sent, started, 6, 30)
    result.summary(healthy_delivered_seconds=round(healthy_seconds, 2), resumed_by=resumed_by)
    assert result.duplicates == 0, logs(gateway)
    gone = [r["key"] for r in result.records if r["path"] == "/gone" and r["status"] == 410]
    assert len(gone) == len(set(gone)), "a disabled target was sent to"
    throttled = [s for d, s in result.states.items() if d.endswith("-throttle") and s["throttles"]]
    assert throttled and all(s["retries"] == 0 for s in throttled), throttled
    assert queue.health("gone").state == "active"


# -- 5. a paused target resuming --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_paused_target_is_probed_and_resumes(gateway: Gateway, redis: Redis) -> None:
    n = 10
    target = start_fault_target(gateway, {"/p": {"status": 500}})
    policy = "pause_after = {failures = 3, seconds = 0}\nprobe_interval = 1"
    gateway.write_config(config(target.url, ("p", "/p", f"timeout = 2\nretry = [1, 1, 2]\n{policy}")))
    base = gateway.start_web()
    start_worker(gateway, **LEASE)
    started = time.monotonic()
    sent = send_callbacks(base, NET, n, "pause")
    accepted(sent, gateway)
    queue = delivery_queue(redis)
    poll(lambda: queue.health("p").state == "paused", "the target paused", 20, 0.05, lambda: logs(gateway))
    paused_at = time.time()
    # Failing for a while longer: the probes fail, nothing else is sent, no retry is used up
    # (without the pause, three retries in 1 + 1 + 2 s would fail every delivery for good).
    time.sleep(4)
    held = expected_deliveries(redis, PREFIX)
    assert max(s["retries"] for s in held.values()) <= 1, held
    assert queue.health("p").state == "paused"
    target.rule("/p", {})  # answers 200 from now on

    result = settle("paused_target_resumes", gateway, redis, target, sent, started, 1, 30)
    probes = [r for r in result.records if paused_at <= r["arrived"] and r["status"] == 500]
    max_retries = max(s["retries"] for s in result.states.values())
    result.summary(failed_probes=len(probes), max_retries=max_retries)
    assert max_retries <= 1, result.states
    # One probe a second at most.
    assert 1 <= len(probes) <= 4 + 2, probes
    assert queue.health("p").state == "active"
    assert result.duplicates == 0


# -- 6. a rate-limited target -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_rate_limit_holds_at_the_target(gateway: Gateway, redis: Redis) -> None:
    n, per_second = 30, 5
    target = start_fault_target(gateway, {"/rl": {}})
    policy = f'rate = "{per_second}/s"'
    gateway.write_config(config(target.url, ("rl", "/rl", f"timeout = 2\nretry = [1, 1, 2]\n{policy}")))
    base = gateway.start_web()
    start_worker(gateway, **LEASE)
    started = time.monotonic()
    sent = send_callbacks(base, NET, n, "rate")
    accepted(sent, gateway)

    result = settle("rate_limited_target", gateway, redis, target, sent, started, 1, 40)
    arrivals = sorted(r["arrived"] for r in result.records)
    busiest = max(sum(1 for t in arrivals if a <= t < a + 1.0) for a in arrivals)
    span = arrivals[-1] - arrivals[0]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(arrivals)]
    result.summary(busiest_second=busiest, span_seconds=round(span, 2), gaps=gaps)
    assert busiest <= per_second + 1, gaps
    assert span >= (n - 1) / per_second - 0.3, gaps
    assert result.duplicates == 0


# -- 7. replaying dead letters, twice ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_replay_twice_delivers_once_more(gateway: Gateway, redis: Redis) -> None:
    n = 5
    target = start_fault_target(gateway, {"/bad": {"status": 400}})
    gateway.write_config(config(target.url, ("bad", "/bad", "timeout = 2\nretry = [1, 1, 2]")))
    base = gateway.start_web()
    start_worker(gateway, **LEASE)
    started = time.monotonic()
    sent = send_callbacks(base, NET, n, "replay")
    accepted(sent, gateway)
    queue = delivery_queue(redis)
    poll(lambda: len(queue.dead_letters()) == n, "five dead letters", 20, 0.05, lambda: logs(gateway))
    dead = [did for did, _ in queue.dead_letters()]
    target.rule("/bad", {})  # fixed

    if has_command(gateway, "replay"):
        replayed_by = "gateway replay --failed --target bad --yes, twice"
        for _ in range(2):
            out = cli(gateway, "replay", "--failed", "--target", "bad", "--yes")
            assert out.returncode == 0, (out.stdout, out.stderr)
    else:
        replayed_by = "DeliveryQueue.replay, twice, and a drain job"
        answers = [queue.replay(did, int(time.time() * 1000)) for _ in range(2) for did in dead]
        assert answers.count("replayed") == n, answers
        enqueue_drain(make_queue(redis, QUEUE_NAME))

    result = settle("replay_twice", gateway, redis, target, sent, started, 1, 30)
    time.sleep(2)  # a second send, if the double replay queued one, would come within this
    records = target.records("/bad")
    result.records = records
    result.duplicates, result.ok_keys, result.duplicate_keys = duplicates(records)
    result.summary(replayed_by=replayed_by)
    per_key = {did: [r["status"] for r in records if r["key"] == did] for did in dead}
    assert all(codes == [400, 200] for codes in per_key.values()), per_key
    assert all(s["replays"] == 1 and s["status"] == "delivered" for s in result.states.values())
    assert queue.dead_letters() == []
    assert result.duplicates == 0


# -- 8. soak -----------------------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_soak_two_workers_one_flaky_target(gateway: Gateway, redis: Redis) -> None:
    n = 5000
    target = start_fault_target(
        gateway, {"/steady": {}, "/flaky": {"fail_rate": 0.3, "fail_status": 503}}, seed=int(time.time())
    )
    gateway.write_config(
        config(
            target.url,
            ("steady", "/steady", "timeout = 2\nretry = [1, 1, 2]"),
            ("flaky", "/flaky", "timeout = 2\nretry = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]"),
        )
    )
    quiet = {"GATEWAY_LOG_LEVEL": "WARNING"}  # a line per attempt would be 12,000 lines
    base = gateway.start_web(**quiet)
    for _ in range(2):
        start_worker(gateway, **quiet, **LEASE)
    started = time.monotonic()
    sent = send_callbacks(base, NET, n, "soak", threads=16)
    accepted(sent, gateway)
    ingest_seconds = time.monotonic() - started

    result = settle("soak", gateway, redis, target, sent, started, 2, 120)
    answered_503 = sum(1 for r in result.records if r["status"] == 503)
    delivered = len(result.ok_keys & set(result.states))
    result.summary(ingest_seconds=round(ingest_seconds, 2), answered_503=answered_503, lost=2 * n - delivered)
    assert delivered == 2 * n
    assert answered_503 > 0
    for p in gateway.processes:
        assert "Traceback" not in p.output(), p.output()[-6000:]


# -- 9. SIGTERM ---------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_sigterm_finishes_in_flight_and_exits_cleanly(gateway: Gateway, redis: Redis) -> None:
    n = 15
    target = start_fault_target(gateway, {"/slow": {"delay": 3}})
    gateway.write_config(config(target.url, ("slow", "/slow", "timeout = 5\nretry = [1, 1, 2]")))
    base = gateway.start_web()
    worker = start_worker(gateway, GATEWAY_WORKER_CONCURRENCY="5")
    started = time.monotonic()
    sent = send_callbacks(base, NET, n, "sigterm")
    accepted(sent, gateway)
    poll(lambda: target.stats()["holding"] >= 5, "five requests held", 20, 0.05, lambda: logs(gateway))
    stopped = time.monotonic()
    os.kill(worker.pid, signal.SIGTERM)
    try:
        code = worker.proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not exit within 30 s of SIGTERM\n{worker.output()}") from None
    exit_seconds = time.monotonic() - stopped
    output = worker.output()
    by_first = sum(1 for s in expected_deliveries(redis, PREFIX).values() if s["status"] == "delivered")
    start_worker(gateway)  # for what the first one never claimed (or handed back)

    result = settle("sigterm_worker", gateway, redis, target, sent, started, 1, 40)
    handed_back = sum(int(m) for m in re.findall(r"handed back (\d+) deliveries", output))
    result.summary(
        exit_seconds=round(exit_seconds, 2), delivered_by_first_worker=by_first, handed_back=handed_back
    )
    assert code == 0, output
    for text in BAD_LOG_TEXT:
        assert text not in output, output
    assert result.duplicates == 0, logs(gateway)
    assert by_first >= 5, "the requests in flight at SIGTERM were not recorded"
