"""Deduplication and abuse limits at the ingest: real `gateway web` and `gateway worker`
processes, a real Redis and a real target server.

A limited or held callback is answered 204 (or 429), kept as an event whose deliveries are
"suppressed" (listed in gw:suppressed, never in gw:due) and never reaches a target. Limits slide:
no stretch of a window lets more than the max through, wherever the burst falls.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from e2e_support import PREFIX, SETTINGS, http_call, store_for, wait_until, waiting_count

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer
    from e2e_support import HttpResponse
    from redis import Redis

    from gateway.store.events import Store

# The test's target server listens with a backlog of 5: a burst of connections beyond that may be
# accepted only after the worker's 10 s timeout, and the delivery is then (rightly) made again.
# Tests that count requests at the target keep the worker to a few connections at once.
WORKER = {"GATEWAY_WORKER_CONCURRENCY": "4"}

NETWORKS = """
[networks.inv]
limits = [{ per = "invitee", max = 2, window = "1d" }]

[networks.invr]
limits = [{ per = "invitor", max = 2, window = "1d" }]

[networks.pre]
limits = [{ per = "prefix", max = 2, window = "1d", digits = 4 }]

[networks.net]
limits = [{ per = "network", max = 2, window = "1d" }]

[networks.cool]
cooldown = "10m"

[networks.cc]
allowed_prefixes = ["+1"]

[networks.grd]
guard = { window = "1h", min_created = 5, max_accepted_ratio = 0.2, hold = "6h", digits = 4 }

[networks.burst]
limits = [{ per = "invitee", max = 2, window = "20s" }]

[networks.us]
default_region = "US"
limits = [{ per = "invitee", max = 2, window = "1d" }]

[networks.uscool]
default_region = "US"
cooldown = "10m"

[networks.gbcool]
default_region = "GB"
cooldown = "10m"
"""


def config(target_server: TargetServer, settings: str = SETTINGS) -> str:
    return (
        settings
        + '[[targets]]\nname = "t"\nnetworks = ["*"]\n'
        + f'url = "{target_server.url}/t?n=%network_id%&i=%invitee%&by=%invitor%&e=%event%'
        + '&e164=%invitee_e164%"\n'
        + NETWORKS
    )


def start(gateway: Gateway, target_server: TargetServer, settings: str = SETTINGS, **env: str) -> str:
    gateway.write_config(config(target_server, settings))
    base = gateway.start_web(**env)
    gateway.start_worker(**WORKER)
    return base


def call(
    base: str, network: str, invitee: str, invitor: str = "johnsnow", event: str = "invitation_created"
) -> HttpResponse:
    q = f"invitee={invitee.replace('+', '%2B')}&invitor={invitor}&network_id={network}"
    return http_call(base, "GET", f"/{event}?{q}")


def ok(
    base: str, network: str, invitee: str, invitor: str = "johnsnow", event: str = "invitation_created"
) -> None:
    resp = call(base, network, invitee, invitor, event)
    assert resp.status == 204, (network, invitee, resp.status, resp.body)


def by_status(store: Store, network: str) -> dict[str, list[tuple[Any, dict[str, Any]]]]:
    """The network's events grouped by the status of their delivery to "t"."""
    out: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    for event, deliveries in store.events_with_deliveries(store.recent_events(100, network)):
        out.setdefault(deliveries["t"]["status"], []).append((event, deliveries["t"]))
    return out


def assert_suppressed(redis: Redis, network: str, count: int, reason: str) -> list[Any]:
    """`count` events of the network are suppressed, with `reason`; listed, never due."""
    suppressed = by_status(store_for(redis), network).get("suppressed", [])
    assert len(suppressed) == count, by_status(store_for(redis), network)
    for event, delivery in suppressed:
        assert reason in delivery["waiting"], delivery
        assert delivery["attempts"] == 0
        did = f"{event.id}-t"
        assert redis.zscore(f"{PREFIX}:suppressed", did) == event.received_at_ms
        assert redis.zscore(f"{PREFIX}:due", did) is None
    return [event for event, _ in suppressed]


def delivered(target_server: TargetServer, network: str) -> list[tuple[str, str]]:
    """(invitee, invitor) of every request the target got for the network."""
    return [
        (dict(r.query)["i"], dict(r.query)["by"])
        for r in target_server.requests_to("/t")
        if dict(r.query)["n"] == network
    ]


def settle(base: str, target_server: TargetServer, redis: Redis) -> None:
    """Send one callback no limit touches and wait until it and everything before it is delivered."""
    before = len(target_server.requests_to("/t"))
    ok(base, "unlimited", f"+1999{time.time_ns() % 10**7:07d}")
    target_server.wait_for("/t", before + 1)
    wait_until(lambda: waiting_count(redis) == 0, "nothing left to deliver")


def suppressed_log_lines(gateway: Gateway, network: str) -> list[str]:
    return [
        line
        for line in gateway.logs().splitlines()
        if "suppressed invitation_created" in line and f"(network {network})" in line
    ]


# -- deduplication --------------------------------------------------------------------------------


def test_the_same_callback_twice_is_stored_and_delivered_once(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    base = start(gateway, target_server, GATEWAY_DEDUPE_SECONDS="600")
    ok(base, "mynetwork", "+15551230001")
    ok(base, "mynetwork", "+15551230001")  # the Contacts server sent it twice: 204 both times
    # Anything that differs is another invitation.
    ok(base, "mynetwork", "+15551230002")
    ok(base, "mynetwork", "+15551230001", invitor="arya")
    ok(base, "othernetwork", "+15551230001")
    ok(base, "mynetwork", "+15551230001", event="invitation_accepted")
    ok(base, "mynetwork", "+15551230001")  # still the first one
    settle(base, target_server, redis)
    store = store_for(redis)
    assert len(store.recent_events(100, "mynetwork")) == 4
    assert (
        delivered(target_server, "mynetwork").count(("+15551230001", "johnsnow")) == 2
    )  # created + accepted
    assert len(delivered(target_server, "mynetwork")) == 4
    assert int(redis.hget(f"{PREFIX}:counters", "duplicates") or 0) == 2
    assert "duplicate invitation_created" in gateway.logs()


def test_after_the_dedupe_window_the_same_callback_is_delivered_again(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    base = start(gateway, target_server, GATEWAY_DEDUPE_SECONDS="2")
    ok(base, "mynetwork", "+15551230001")
    ok(base, "mynetwork", "+15551230001")
    assert int(redis.hget(f"{PREFIX}:counters", "duplicates") or 0) == 1
    [key] = redis.scan_iter(match=f"{PREFIX}:dedupe:*")
    first = redis.get(key)
    time.sleep(2.1)  # the window ends (the key stays: "t" orders its two events, gateway/ordering.py)
    ok(base, "mynetwork", "+15551230001")
    # A new invitation, which took the key over (an accepted one now finds the newer created one).
    assert redis.get(key) not in (None, first)
    settle(base, target_server, redis)
    assert delivered(target_server, "mynetwork") == [("+15551230001", "johnsnow")] * 2
    assert int(redis.hget(f"{PREFIX}:counters", "duplicates") or 0) == 1


# -- limits -------------------------------------------------------------------------------------


def test_each_kind_of_limit_suppresses_the_invitation_over_it(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    base = start(gateway, target_server)
    # per invitee: the third invitation to one number in a day.
    for invitor in ("johnsnow", "arya", "sansa"):
        ok(base, "inv", "+15551230001", invitor)
    ok(base, "inv", "+15551230002", "sansa")  # another number is fine
    # per invitor
    for n in range(3):
        ok(base, "invr", f"+1555123100{n}", "johnsnow")
    ok(base, "invr", "+15551231009", "arya")
    # per destination prefix (4 digits: 4477)
    for n in range(3):
        ok(base, "pre", f"+44770090{n:04d}", f"u{n}")
    ok(base, "pre", "+447810000000", "u9")  # 4478: another prefix
    # per network
    for n in range(3):
        ok(base, "net", f"+1555124{n:04d}", f"u{n}")
    ok(base, "inv", "+15551249999", "u9")  # another network's count is its own
    settle(base, target_server, redis)

    [event] = assert_suppressed(redis, "inv", 1, "over 2 invitations per 86400 s for this invitee")
    assert (event.invitee, event.invitor) == ("+15551230001", "sansa")
    [event] = assert_suppressed(redis, "invr", 1, "over 2 invitations per 86400 s for this invitor")
    assert (event.invitee, event.invitor) == ("+15551231002", "johnsnow")
    [event] = assert_suppressed(redis, "pre", 1, "over 2 invitations per 86400 s for this 4-digit prefix")
    assert event.invitee == "+447700900002"
    [event] = assert_suppressed(redis, "net", 1, "over 2 invitations per 86400 s for this network")
    assert event.invitee == "+15551240002"
    # None of them reached the target; everything else did.
    assert sorted(delivered(target_server, "inv")) == sorted(
        [
            ("+15551230001", "johnsnow"),
            ("+15551230001", "arya"),
            ("+15551230002", "sansa"),
            ("+15551249999", "u9"),
        ]
    )
    assert ("+15551231002", "johnsnow") not in delivered(target_server, "invr")
    assert len(delivered(target_server, "invr")) == 3
    assert "+447700900002" not in [i for i, _ in delivered(target_server, "pre")]
    assert len(delivered(target_server, "pre")) == 3
    assert len(delivered(target_server, "net")) == 2
    assert int(redis.hget(f"{PREFIX}:counters", "suppressed") or 0) == 4
    # The web log says which and why, as a warning.
    for network in ("inv", "invr", "pre", "net"):
        [line] = suppressed_log_lines(gateway, network)
        assert " WARNING " in line and "over 2 invitations per 86400 s" in line
    # No phone number in any key name.
    for key in redis.scan_iter(count=1000):
        assert b"555123" not in key and b"4477009" not in key, key
    # Still never delivered a while later.
    time.sleep(1.5)
    assert by_status(store_for(redis), "inv").keys() == {"delivered", "suppressed"}
    assert len(delivered(target_server, "inv")) == 4


def test_a_burst_across_a_window_edge_never_passes_the_limit(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    """Fixed windows let "2 per 20 s" pass 4 within a second or two across the edge of a block of
    20 s; a sliding window lets 2."""
    base = start(gateway, target_server)
    # Just before the edge of a block of 20 s (the fixed windows' edge): waits at most 20 s.
    wait_until(lambda: 18.6 <= time.time() % 20 < 19.2, "the last second of a block of 20 s", 25, 0.01)
    ok(base, "burst", "+15550100009", "u1")
    ok(base, "burst", "+15550100009", "u2")
    wait_until(lambda: 0.3 <= time.time() % 20 < 10, "the next block", 25, 0.01)
    ok(base, "burst", "+15550100009", "u3")
    ok(base, "burst", "+15550100009", "u4")
    settle(base, target_server, redis)
    late = assert_suppressed(redis, "burst", 2, "over 2 invitations per 20 s for this invitee")
    assert sorted(e.invitor for e in late) == ["u3", "u4"]
    assert sorted(delivered(target_server, "burst")) == [("+15550100009", "u1"), ("+15550100009", "u2")]


def test_cooldown_per_invitee(gateway: Gateway, target_server: TargetServer, redis: Redis) -> None:
    base = start(gateway, target_server)
    ok(base, "cool", "+15551230001", "johnsnow")
    ok(base, "cool", "+15551230001", "arya")  # another invitor, the same number: cooling down
    ok(base, "cool", "+15551230001", "johnsnow")
    ok(base, "cool", "+15551230002", "johnsnow")
    settle(base, target_server, redis)
    assert_suppressed(redis, "cool", 2, "another invitation to this number less than 600 s ago (cooldown)")
    assert sorted(delivered(target_server, "cool")) == [
        ("+15551230001", "johnsnow"),
        ("+15551230002", "johnsnow"),
    ]
    assert len(suppressed_log_lines(gateway, "cool")) == 2


def test_every_spelling_of_one_number_shares_one_limit_and_one_cooldown(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    """+15550100009, 15550100009 (default_region US), 0015550100009 (00: international) and the
    national 5550100009 are one number to the limits and the cooldown."""
    base = start(gateway, target_server)
    spellings = ["+15550100009", "15550100009", "0015550100009", "5550100009"]
    for n, invitee in enumerate(spellings):
        ok(base, "us", invitee, f"u{n}")  # a limit of 2 per invitee: the last two are over it
        ok(base, "uscool", invitee, f"u{n}")  # a cooldown: only the first goes out
    ok(base, "gbcool", "+15550100009")
    ok(base, "gbcool", "0015550100009")  # GB dials 00 for abroad: the same number
    ok(base, "gbcool", "07700900123")  # a national GB number: another one
    settle(base, target_server, redis)

    over = assert_suppressed(redis, "us", 2, "over 2 invitations per 86400 s for this invitee")
    assert sorted(e.invitee_raw for e in over) == ["0015550100009", "5550100009"]
    cooling = assert_suppressed(redis, "uscool", 3, "(cooldown)")
    assert sorted(e.invitee_raw for e in cooling) == ["0015550100009", "15550100009", "5550100009"]
    assert_suppressed(redis, "gbcool", 1, "(cooldown)")
    # Each event keeps the number as it came and as normalized, and gains its E.164 form.
    store = store_for(redis)
    events = [e for e, _ in store.events_with_deliveries(store.recent_events(100, "us"))]
    assert sorted((e.invitee_raw, e.invitee, e.invitee_e164) for e in events) == sorted(
        (s, s, "+15550100009") for s in spellings
    )
    # The target sees %invitee% as before and %invitee_e164%.
    queries = [dict(r.query) for r in target_server.requests_to("/t")]
    got = sorted((q["n"], q["i"], q["e164"]) for q in queries)
    assert [g for g in got if g[0] in ("us", "uscool", "gbcool")] == [
        ("gbcool", "+15550100009", "+15550100009"),
        ("gbcool", "07700900123", "+447700900123"),
        ("us", "+15550100009", "+15550100009"),
        ("us", "15550100009", "+15550100009"),
        ("uscool", "+15550100009", "+15550100009"),
    ]


def test_a_prefix_that_is_not_allowed_is_suppressed_not_refused(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    base = start(gateway, target_server)
    ok(base, "cc", "+447700900123")
    ok(base, "cc", "447700900124")  # no +: matched on its digits
    ok(base, "cc", "+15551230001")
    ok(base, "cc", "+447700900125", event="invitation_accepted")  # only created ones are limited
    settle(base, target_server, redis)
    events = assert_suppressed(redis, "cc", 2, "invitee prefix +44 not allowed for network cc")
    assert sorted(e.invitee for e in events) == ["+447700900123", "447700900124"]
    assert sorted(i for i, _ in delivered(target_server, "cc")) == ["+15551230001", "+447700900125"]
    assert len(suppressed_log_lines(gateway, "cc")) == 2


def test_limited_status_429_answers_problem_json_and_still_keeps_the_invitation(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    base = start(gateway, target_server, SETTINGS + "limited_status = 429\n")
    ok(base, "inv", "+15551230001")
    ok(base, "inv", "+15551230001")
    resp = call(base, "inv", "+15551230001")
    assert resp.status == 429, resp.body
    assert resp.headers["content-type"].startswith("application/problem+json")
    problem = resp.json()
    assert problem["status"] == 429
    assert "over 2 invitations per 86400 s for this invitee" in problem["detail"]
    resp = call(base, "cc", "+447700900123")
    assert resp.status == 429
    assert "prefix +44 not allowed" in resp.json()["detail"]
    settle(base, target_server, redis)
    assert_suppressed(redis, "inv", 1, "over 2 invitations per 86400 s for this invitee")
    assert_suppressed(redis, "cc", 1, "invitee prefix +44 not allowed")
    assert len(delivered(target_server, "inv")) == 2
    assert delivered(target_server, "cc") == []


# -- the prefix guard ---------------------------------------------------------------------------


def test_a_prefix_with_many_invitations_and_none_accepted_is_held(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    base = start(gateway, target_server)
    for n in range(5):
        ok(base, "grd", f"+88216123{n:04d}", f"u{n}")
    # The fifth made it 5 created, 0 accepted: from now on the prefix is held.
    held_lines = [line for line in gateway.logs().splitlines() if "network grd: prefix +8821 held" in line]
    assert len(held_lines) == 1 and " WARNING " in held_lines[0], gateway.logs()
    assert "5 invitations, 0 accepted" in held_lines[0]
    ok(base, "grd", "+882161230100", "u5")
    ok(base, "grd", "+882161230101", "u6")
    ok(base, "grd", "+15551230001", "u7")  # another prefix goes through
    ok(base, "grd", "+882261230001", "u8")  # and another
    settle(base, target_server, redis)
    events = assert_suppressed(redis, "grd", 2, "prefix +8821 held")
    assert sorted(e.invitee for e in events) == ["+882161230100", "+882161230101"]
    got = [i for i, _ in delivered(target_server, "grd")]
    assert sorted(got) == sorted([f"+88216123{n:04d}" for n in range(5)] + ["+15551230001", "+882261230001"])
    # No key names the prefix or a number in it: limit, guard and hold keys are digests (a hex
    # digest, or a ULID, may hold the digits 8821 by chance: what is left without them may not).
    for key in redis.scan_iter(count=1000):
        assert b"8821" not in re.sub(rb"[0-9a-f]{16,}|[0-9A-Z]{26}", b"", key), key


def test_accepted_invitations_keep_a_prefix_from_being_held(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    base = start(gateway, target_server)
    ok(base, "grd", "+882161239001", "u1", event="invitation_accepted")
    ok(base, "grd", "+882161239002", "u2", event="invitation_accepted")
    # 2 accepted: 2/5 .. 2/9 is above 0.2, so nothing is held; the tenth makes it 2/10 = 0.2.
    for n in range(10):
        ok(base, "grd", f"+88216123{n:04d}", f"u{n}")
    assert not by_status(store_for(redis), "grd").get("suppressed")
    ok(base, "grd", "+882161230100", "u10")
    settle(base, target_server, redis)
    [event] = assert_suppressed(redis, "grd", 1, "10 invitations, 2 accepted")
    assert event.invitee == "+882161230100"
    assert len(delivered(target_server, "grd")) == 12
