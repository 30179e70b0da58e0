"""The operator's commands for the delivery engine, run as an operator runs them.

`gateway deliveries failed|show|attempt-now`, `gateway replay` and `gateway targets
list|pause|resume`, each a real `python -m gateway` process against the test's Redis, with real
`gateway web` and `gateway worker` processes delivering to a real HTTP target on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e2e_support import SETTINGS, attempts_of, dead_letter_ids, http_call, store_for, wait_final, wait_until

from gateway.store.queue import DeliveryQueue, TargetHealth

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer
    from redis import Redis

    from gateway.store.events import Store

ROOT = Path(__file__).resolve().parents[2]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def gw(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS` with no terminal (stdin is /dev/null)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=gateway.environ(),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(gateway: Gateway, *args: str) -> str:
    result = gw(gateway, *args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def as_json(gateway: Gateway, *args: str) -> Any:
    return json.loads(ok(gateway, *args, "--json"))


def table(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of an aligned table (cells are separated by two spaces or more)."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = re.split(r"\s{2,}", lines[0].strip())
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]
    return header, [r for r in rows if len(r) == len(header)]  # not the summary line under it


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


_invitees = itertools.count(15551230000)


def callback(base: str, event: str, network: str) -> None:
    # A new invitee each time: the same callback twice in a row may be taken for a repeat.
    path = f"/{event}?invitee={next(_invitees)}&invitor=johnsnow&network_id={network}"
    assert http_call(base, "GET", path).status == 204


def new_event(store: Store, known: set[str], base: str, event: str, network: str) -> str:
    callback(base, event, network)
    eid = wait_until(lambda: next(iter(set(store.recent_events(50)) - known), None), "the new event")
    known.add(eid)
    return eid


def health(redis: Redis, target: str) -> TargetHealth:
    return DeliveryQueue(redis, "gw", 86400).health(target)


# -- dead letters and replay ------------------------------------------------------------------------


def test_dead_letters_are_listed_filtered_and_replayed(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    url = target_server.url
    gateway.write_config(
        SETTINGS
        + f'[[targets]]\nname = "crm"\nnetworks = ["net1", "net2"]\nurl = "{url}/crm"\nretry = []\n'
        + '\n[[targets]]\nname = "slack"\nnetworks = ["net1"]\nevents = ["invitation_created"]\n'
        + f'url = "{url}/slack"\nretry = []\n'
    )
    target_server.script("/crm", [400])  # fails at once
    target_server.script("/slack", [500])  # retried, but retry = []: fails after one attempt
    base = gateway.start_web()
    worker = gateway.start_worker()
    store = store_for(redis)
    known: set[str] = set()
    a = new_event(store, known, base, "invitation_created", "net1")  # crm and slack
    b = new_event(store, known, base, "invitation_accepted", "net2")  # crm
    c = new_event(store, known, base, "invitation_created", "net2")  # crm
    gone = new_event(store, known, base, "invitation_created", "net2")  # crm; its event will expire
    dead = {f"{a}-crm", f"{a}-slack", f"{b}-crm", f"{c}-crm", f"{gone}-crm"}
    wait_until(lambda: set(dead_letter_ids(redis)) == dead, "five dead letters", 30)
    redis.delete(store.keys.event(gone))  # as retention would

    # The table: a header, one row per dead letter whose event is still there, newest first.
    header, rows = table(ok(gateway, "deliveries", "failed"))
    assert header == [
        "DELIVERY ID",
        "FAILED AT",
        "TARGET",
        "NETWORK",
        "EVENT",
        "STATUS",
        "ATTEMPTS",
        "LAST ERROR",
    ]
    by_id = {r[0]: r for r in rows}
    assert set(by_id) == dead - {f"{gone}-crm"}
    assert by_id[f"{a}-slack"][2:7] == ["slack", "net1", "invitation_created", "failed", "1"]
    assert by_id[f"{a}-slack"][7].startswith("HTTP 500")
    assert by_id[f"{b}-crm"][2:8] == ["crm", "net2", "invitation_accepted", "failed", "1", "HTTP 400"]

    page = as_json(gateway, "deliveries", "failed")  # GET /api/v1/deliveries/failed's document
    listed = page["items"]
    assert page["next_cursor"] is None
    assert [d["delivery_id"] for d in listed] == [r[0] for r in rows]
    times = [d["failed_at"] for d in listed]
    assert times == sorted(times, reverse=True) and all(ISO.match(t) for t in times)
    assert {d["delivery_id"]: d["event_id"] for d in listed}[f"{c}-crm"] == c

    def ids(*filters: str) -> set[str]:
        return {d["delivery_id"] for d in as_json(gateway, "deliveries", "failed", *filters)["items"]}

    assert ids("--target", "slack") == {f"{a}-slack"}
    assert ids("--network", "net2") == {f"{b}-crm", f"{c}-crm"}
    assert ids("--event", "invitation_accepted") == {f"{b}-crm"}
    assert ids("--error", "http 400") == {f"{a}-crm", f"{b}-crm", f"{c}-crm"}
    assert ids("--since", "10m", "--network", "net1") == {f"{a}-crm", f"{a}-slack"}
    at = next(d["failed_at"] for d in listed if d["delivery_id"] == f"{b}-crm")
    assert f"{b}-crm" in ids("--since", at, "--until", at.replace("Z", "+00:00"))
    newest = ok(gateway, "deliveries", "failed", "--limit", "2")
    assert [r[0] for r in table(newest)[1]] == [r[0] for r in rows[:2]]
    assert "(the newest 2; --limit 0 shows all)" in newest
    more = as_json(gateway, "deliveries", "failed", "--limit", "2")
    rest = as_json(gateway, "deliveries", "failed", "--cursor", more["next_cursor"])
    assert [d["delivery_id"] for d in more["items"] + rest["items"]] == [r[0] for r in rows]
    assert rest["next_cursor"] is None
    assert ok(gateway, "deliveries", "failed", "--until", "1d").strip() == "no dead letters match"
    bad = gw(gateway, "deliveries", "failed", "--since", "last tuesday")
    assert bad.returncode == 2 and "--since" in one_line_error(bad)

    # Replay while no worker runs: the first replay waits, the second finds it waiting.
    worker.stop()
    target_server.script("/crm", [200])
    target_server.script("/slack", [200])
    first = gw(gateway, "replay", f"{a}-crm")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("1 replayed, 0 already waiting, 0 held")
    again = ok(gateway, "replay", f"{a}-crm")
    assert again.startswith("0 replayed, 1 already waiting")

    # A selection asks first; with no terminal and no --yes, it refuses and replays nothing.
    refused = gw(gateway, "replay", "--failed", "--target", "crm")
    assert refused.returncode == 1
    assert "replay 2 deliveries (2 to crm)" in refused.stderr and "--yes" in refused.stderr
    assert f"{b}-crm" in dead_letter_ids(redis)
    selection = ok(gateway, "replay", "--failed", "--target", "crm", "--yes")
    assert "2 replayed, 0 already waiting, 0 held (target paused/disabled), 0 delivered" in selection
    no_filter_without_failed = gw(gateway, "replay", "--target", "crm")
    assert no_filter_without_failed.returncode == 2
    assert "--failed" in one_line_error(no_filter_without_failed)

    unknown = gw(gateway, "replay", f"{gone}-crm", "NOSUCHEVENT-crm", "not-a-delivery-id", "garbage", "--yes")
    assert unknown.returncode == 1
    assert unknown.stdout.strip() == (
        "0 replayed, 0 already waiting, 0 held (target paused/disabled), "
        "0 delivered (use --force to send again), 4 unknown"
    )
    assert f"{gone}-crm: unknown" in unknown.stderr

    # A worker again: each replayed delivery is sent once, slack's dead letter stays.
    gateway.start_worker()
    for eid in (a, b, c):
        try:
            assert wait_final(store, eid, ["crm"], 30)["crm"]["status"] == "delivered"
        except AssertionError as exc:
            due = redis.zrange("gw:due", 0, -1, withscores=True)
            raise AssertionError(f"{exc}\n{store.get_deliveries(eid)}\ndue={due}\n{gateway.logs()}") from None
    crm = target_server.wait_for("/crm", 6)
    keys = [r.headers["idempotency-key"] for r in crm]
    assert sorted(keys) == sorted([f"{e}-crm" for e in (a, b, c, gone)] + [f"{e}-crm" for e in (a, b, c)])
    assert len(target_server.requests_to("/slack")) == 1
    assert [d["delivery_id"] for d in as_json(gateway, "deliveries", "failed")["items"]] == [f"{a}-slack"]
    assert [x["outcome"] for x in attempts_of(store, a, "crm")] == ["failed", "delivered"]

    # A delivered one is sent again only with --force.
    delivered = gw(gateway, "replay", f"{a}-crm")
    assert delivered.returncode == 1
    assert "1 delivered (use --force to send again)" in delivered.stdout
    assert f"{a}-crm: already delivered" in delivered.stderr
    assert ok(gateway, "replay", f"{a}-crm", "--force").startswith("1 replayed")
    wait_until(
        lambda: (
            len([r for r in target_server.requests_to("/crm") if r.headers["idempotency-key"] == f"{a}-crm"])
            == 3
        ),
        "the forced replay at the target",
    )


# -- target health: pause, resume, disabled -------------------------------------------------------------


def test_pause_holds_deliveries_and_resume_releases_them(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    url = target_server.url
    gateway.write_config(
        SETTINGS
        + f'[[targets]]\nname = "crm"\nnetworks = ["net1"]\nurl = "{url}/crm"\nrate = "50/s"\n'
        + f'\n[[targets]]\nname = "gone"\nnetworks = ["*"]\nurl = "{url}/gone"\nconcurrency = 4\n'
    )
    target_server.script("/gone", [410])
    base = gateway.start_web()
    gateway.start_worker()
    store = store_for(redis)

    paused = ok(gateway, "targets", "pause", "crm", "--reason", "CRM maintenance")
    assert paused.strip() == "crm paused; its deliveries wait until `gateway targets resume crm`"
    unknown = gw(gateway, "targets", "pause", "nosuch")
    assert unknown.returncode == 2
    assert "unknown target 'nosuch' (known: crm, gone)" in one_line_error(unknown)

    known: set[str] = set()
    events = [new_event(store, known, base, "invitation_created", "net1") for _ in range(3)]
    wait_until(lambda: health(redis, "crm").held_deliveries == 3, "crm's three held deliveries", 30)
    wait_until(
        lambda: health(redis, "gone").state == "disabled" and health(redis, "gone").held_deliveries == 3,
        "gone disabled with its three deliveries held",
        30,
    )
    assert target_server.requests_to("/crm") == []
    sent_to_gone = len(target_server.requests_to("/gone"))  # the first answered 410; maybe a few more

    header, rows = table(ok(gateway, "targets", "list"))
    assert header[:7] == ["NAME", "STATE", "REASON", "SINCE", "FAILURES", "HELD", "IN-FLIGHT"]
    assert header[7:] == ["RATE", "CONCURRENCY", "NETWORKS"]
    crm, gone = (dict(zip(header, next(r for r in rows if r[0] == n), strict=True)) for n in ("crm", "gone"))
    assert crm["STATE"] == "paused (by hand)" and crm["REASON"] == "CRM maintenance"
    assert (crm["HELD"], crm["RATE"], crm["CONCURRENCY"], crm["NETWORKS"]) == ("3", "50/s", "-", "net1")
    assert ISO.match(crm["SINCE"])
    assert gone["STATE"] == "disabled" and gone["REASON"] == "410 Gone"
    assert (gone["HELD"], gone["CONCURRENCY"], gone["NETWORKS"]) == ("3", "4", "*")
    listed = as_json(gateway, "targets", "list")
    assert listed["version"] >= 1
    states = {t["name"]: t["health"] for t in listed["items"]}
    assert states["crm"]["state"] == "paused" and states["crm"]["manual"] is True
    assert states["gone"]["state"] == "disabled" and ISO.match(states["gone"]["since"])
    assert target_server.requests_to("/crm") == []  # still nothing while paused

    resumed = ok(gateway, "targets", "resume", "crm")
    assert (
        resumed.strip() == "crm resumed (was paused by hand: CRM maintenance); 3 held deliveries are due now"
    )
    crm_requests = target_server.wait_for("/crm", 3)
    assert sorted(r.headers["idempotency-key"] for r in crm_requests) == sorted(f"{e}-crm" for e in events)

    target_server.script("/gone", [200])
    resumed = ok(gateway, "targets", "resume", "gone")
    assert resumed.strip() == "gone resumed (was disabled: 410 Gone); 3 held deliveries are due now"
    target_server.wait_for("/gone", sent_to_gone + 3)
    for eid in events:
        states_now = wait_final(store, eid, ["crm", "gone"])
        assert {n: d["status"] for n, d in states_now.items()} == {"crm": "delivered", "gone": "delivered"}
    assert len(target_server.requests_to("/crm")) == 3
    _, rows = table(ok(gateway, "targets", "list"))
    assert {r[0]: r[1] for r in rows} == {"crm": "active", "gone": "active"}
    assert ok(gateway, "targets", "resume", "crm").strip() == "crm was not paused; nothing was held"


# -- attempt-now and show ---------------------------------------------------------------------------------


def test_attempt_now_sends_a_scheduled_retry_and_show_tells_its_story(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    gateway.write_config(
        SETTINGS
        + f'[[targets]]\nname = "slow"\nnetworks = ["*"]\nurl = "{target_server.url}/slow"\nretry = [3600]\n'
    )
    target_server.script("/slow", [503, 200])
    base = gateway.start_web()
    gateway.start_worker()
    store = store_for(redis)
    eid = new_event(store, set(), base, "invitation_created", "net1")
    did = f"{eid}-slow"
    wait_until(
        lambda: (store.get_delivery(eid, "slow") or {}).get("status") == "retrying", "the first failure"
    )

    shown = ok(gateway, "deliveries", "show", did)
    assert re.search(r"^status\s+retrying\s+\(attempts 1, retries 1", shown, re.M), shown
    assert re.search(r"^next attempt\s+\d{4}-\d\d-\d\dT", shown, re.M), shown
    assert re.search(r"^last answer\s+HTTP 503$", shown, re.M), shown
    assert re.search(r"^last error\s+HTTP 503$", shown, re.M), shown
    header, rows = table(shown.split("\n\n", 1)[1])
    assert header == ["#", "AT", "OUTCOME", "STATUS", "LATENCY", "ERROR"]
    assert rows[0][0] == "1" and ISO.match(rows[0][1]) and rows[0][2:4] == ["retrying", "503"]
    data = as_json(gateway, "deliveries", "show", did)  # GET /api/v1/deliveries/{id}'s document
    assert data["status"] == "retrying" and ISO.match(data["next_attempt_at"])
    assert data["attempt_count"] == 1 and data["target"] == "slow" and data["target_configured"] is True
    assert [(x["outcome"], x["status_code"]) for x in data["attempts"]] == [("retrying", 503)]
    assert ISO.match(data["attempts"][0]["at"]) and "at_ms" not in data["attempts"][0]
    assert data["target_health"]["state"] == "active"

    now = gw(gateway, "deliveries", "attempt-now", did, "NOSUCHEVENT-slow")
    assert now.returncode == 1  # one id is unknown
    assert re.search(rf"^{did}: scheduled: due now \(its next retry was at \d{{4}}-", now.stdout, re.M), (
        now.stdout
    )
    assert "NOSUCHEVENT-slow: unknown" in now.stdout
    assert wait_final(store, eid, ["slow"], 30)["slow"]["status"] == "delivered", gateway.logs()
    assert len(target_server.wait_for("/slow", 2)) == 2

    again = gw(gateway, "deliveries", "attempt-now", did)
    assert again.returncode == 1 and again.stdout.strip() == f"{did}: already delivered"
    _, rows = table(ok(gateway, "deliveries", "show", did).split("\n\n", 1)[1])
    assert [r[2:4] for r in rows] == [["retrying", "503"], ["delivered", "200"]]
    missing = gw(gateway, "deliveries", "show", "NOSUCHEVENT-slow")
    assert missing.returncode == 1 and "no delivery NOSUCHEVENT-slow" in one_line_error(missing)


def test_pausing_and_resuming_by_hand_is_sent_to_the_alert_target(
    gateway: Gateway, target_server: TargetServer
) -> None:
    gateway.write_config(
        SETTINGS.replace("[settings]\n", '[settings]\nalert_target = "ops"\n')
        + f'[[targets]]\nname = "crm"\nnetworks = ["mynetwork"]\nurl = "{target_server.url}/crm"\n'
        + f'\n[[targets]]\nname = "ops"\nnetworks = ["ops"]\nurl = "{target_server.url}/ops"\n'
        + 'post_data = \'{"text": "%message%"}\'\ncontent_type = "application/json"\n'
    )
    gateway.start_web()
    gateway.start_worker()
    env = gateway.environ()
    paused = subprocess.run(
        [sys.executable, "-m", "gateway", "targets", "pause", "crm", "--reason", "CRM upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert paused.returncode == 0, paused.stderr
    resumed = subprocess.run(
        [sys.executable, "-m", "gateway", "targets", "resume", "crm"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stderr
    texts = [r.json()["text"] for r in target_server.wait_for("/ops", 2, timeout=30)]
    assert texts[0] == "target crm paused by hand: CRM upgrade"
    assert texts[1].startswith("target crm resumed by hand (was paused by hand")
