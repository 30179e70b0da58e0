"""Erasure on request (`gateway forget`, POST /api/v1/erasures): real `gateway web` and
`gateway worker` processes, a real Redis and real targets on loopback.

After an erasure, every key name and every value in the database (strings, hashes, lists, sets,
sorted sets, streams: RQ's keys included) is searched for the number in every form it could
take, and none is found; another number's records are all still there.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from e2e_support import SETTINGS, attempts_of, http_call, run_gateway, store_for, wait_until

from gateway.admin.keys import create_key
from tests.serving import serving

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer
    from redis import Redis


# The number to forget, as the Contacts server may send it, and the forms it could be kept in.
NUMBER = "+447700900123"
SENT_AS = ["+447700900123", "447700900123", "+44 7700 900123", "+44-7700-900-123", "+44 (7700) 900123"]
FORMS = [
    *SENT_AS,
    "7700900123",  # the national significant number: inside every spelling above
    "07700900123",  # the national form
    "07700 900123",
    "7700 900123",
    "%2B447700900123",
]
OTHER = "+15550009999"  # another number, whose records must all stay


def scan_for(redis: Redis, forms: list[str]) -> list[str]:
    """Every key whose name or value holds one of `forms`: (key, where) lines."""
    found = []
    for raw_key in redis.scan_iter("*", count=1000):
        key = raw_key.decode(errors="replace")
        kind = redis.type(raw_key).decode()
        values: list[Any] = []
        if kind == "string":
            values = [redis.get(raw_key)]
        elif kind == "hash":
            values = [x for kv in redis.hgetall(raw_key).items() for x in kv]
        elif kind == "list":
            values = redis.lrange(raw_key, 0, -1)
        elif kind == "set":
            values = list(redis.smembers(raw_key))
        elif kind == "zset":
            values = [m for m, _ in redis.zrange(raw_key, 0, -1, withscores=True)]
        elif kind == "stream":
            values = [x for _, fields in redis.xrange(raw_key) for kv in fields.items() for x in kv]
        else:
            values = [f"(a {kind}: not read)"]
        texts = [key] + [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in values]
        for form in forms:
            for t in texts:
                if form in t:
                    found.append(f"{key} ({kind}) holds {form!r}: {t[:200]}")
    return found


def send(
    base: str, event: str, invitee: str, network: str, invitor: str = "johnsnow", how: str = "GET"
) -> None:
    fields = {"invitee": invitee, "invitor": invitor, "network_id": network}
    encoded = urlencode(fields, quote_via=quote)  # %2B and %20 (the ingest keeps a raw + as +)
    if how == "GET":
        r = httpx.get(f"{base}/{event}?{encoded}")
    elif how == "JSON":
        r = httpx.post(f"{base}/{event}", json=fields)
    else:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        r = httpx.post(f"{base}/{event}", content=encoded, headers=headers)
    assert r.status_code == 204, (r.status_code, r.text)


def config(server: TargetServer) -> str:
    return (
        SETTINGS
        + f"""
[[targets]]
name = "crm"
networks = ["*"]
url = "{server.url}/crm/%event%?i=%invitee%&e=%lookup.email%"
retry = [1]
[targets.lookups.lookup]
url = "{server.url}/lookup?phone=%invitee%"
fields = {{ email = "email" }}

[[targets]]
name = "strict"
networks = ["net-b"]
url = "{server.url}/strict?i=%invitee%"

[[targets]]
name = "later"
networks = ["net-c"]
url = "{server.url}/later?i=%invitee_raw%"
retry = [3600]

[networks.net-b]
limits = [{{ per = "invitee", max = 1, window = "1d" }}]
cooldown = "1h"

[networks.net-gb]
default_region = "GB"
"""
    )


def test_after_gateway_forget_no_key_or_value_holds_the_number(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    target_server.script(
        "/lookup", [(200, {"Content-Type": "application/json"}, b'{"email": "a@example.com"}')]
    )
    # The target echoes the number to the first created callback (sent first): attempts keep the
    # first 512 bytes of each answer.
    target_server.script("/crm/invitation_created", [(201, {}, json.dumps({"to": NUMBER}).encode()), 200])
    target_server.script("/strict", [400])  # a dead letter
    target_server.script("/later", [500])  # retried in an hour: still waiting when erased
    gateway.write_config(config(target_server))
    base = gateway.start_web(GATEWAY_DEDUPE_SECONDS="600")  # dedupe keys too
    gateway.start_worker()
    store = store_for(redis)

    send(base, "invitation_created", SENT_AS[0], "net-a")
    target_server.wait_for("/crm/invitation_created", 1)
    send(base, "invitation_created", SENT_AS[2], "net-b", how="JSON")  # crm, and strict (400)
    send(base, "invitation_created", SENT_AS[3], "net-b", invitor="arya", how="FORM")  # over the limit
    send(base, "invitation_created", SENT_AS[1], "net-c")  # later: 500, retried in an hour
    send(base, "invitation_accepted", SENT_AS[4], "net-a")
    send(base, "invitation_created", "07700 900123", "net-gb")  # national: +447700900123 in GB
    send(base, "invitation_created", OTHER, "net-a", invitor=SENT_AS[0])  # the number as invitor
    for network in ("net-a", "net-b", "net-c"):
        send(base, "invitation_created", OTHER, network, invitor="sansa")
    send(base, "invitation_accepted", OTHER, "net-a", invitor="sansa")
    # A test send whose sample is the number (kept up to 10 minutes).
    tested = run_gateway(
        "targets",
        "test",
        "crm",
        "--invitee",
        SENT_AS[2],
        "--network",
        "net-a",
        "--json",
        env=gateway.environ(),
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr

    def settled() -> bool:
        states = [
            d["status"]
            for _, ds in store.events_with_deliveries(store.recent_events(100))
            for d in ds.values()
        ]
        return len(states) == 16 and all(s != "pending" for s in states)

    wait_until(settled, "every delivery tried once", 30, explain=gateway.logs)
    dead = [d.decode() for d in redis.zrange("gw:dead", 0, -1)]
    assert len(dead) == 2 and redis.zcard("gw:suppressed") == 2, [
        (d, store.get_delivery(*d.split("-", 1)), attempts_of(store, d.split("-")[0], d.split("-", 1)[1]))
        for d in dead
    ]
    assert scan_for(redis, FORMS), "the number is stored before the erasure"
    before = {eid for eid in store.recent_events(100)}

    done = run_gateway("forget", "+44 (7700) 900-123", "--json", env=gateway.environ())
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    # 7 events hold it (6 as invitee, 1 as invitor); waiting: later's (retrying) and the
    # suppressed ones (crm and strict, over net-b's limit).
    assert (answer["events"], answer["deliveries_cancelled"], answer["dead_letters"]) == (7, 3, 1), answer
    assert answer["networks"] is None and answer["keys"] > 6
    assert answer["holders"]["lookups"]["keys"] >= 2  # the answers cached, and their index
    assert answer["holders"]["limits"]["keys"] >= 2  # net-b's counter and cooldown
    assert answer["holders"]["test_sends"]["keys"] >= 1

    assert scan_for(redis, FORMS) == []
    # Another number's records are all still there (its lookup answers too).
    left = set(store.recent_events(100))
    assert len(left) == 4 and left < before
    assert all(store.get_event(e).invitee == OTHER for e in left)  # type: ignore[union-attr]
    assert scan_for(redis, [OTHER]) != []
    # One audit line, without the number in any form.
    audit = [line for line in done.stderr.splitlines() if "erasure " in line]
    assert len(audit) == 1 and answer["erasure_id"] in audit[0] and answer["number_digest"] in audit[0]
    assert not any(form in done.stderr for form in FORMS), done.stderr
    # The waiting delivery is never sent now, nor anything else of the number.
    sent = len(target_server.received)
    time.sleep(2.5)  # (a retry due in the next second, if one were left, would come within this)
    assert len(target_server.received) == sent
    # (what waits is the other number's: its delivery to "later", retried in an hour)
    assert [m.decode().split("-")[0] for m in redis.zrange("gw:due", 0, -1)] == [
        e for e in left if "later" in store.get_deliveries(e)
    ]


class Slow:
    """A target that holds each request until the test lets it answer (with `status`)."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.status = 500
        self.count = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        slow = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                slow.count += 1
                slow.arrived.set()
                slow.release.wait(30)
                body = json.dumps({"to": NUMBER}).encode()  # (attempts keep the answer)
                self.send_response(slow.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def slow() -> Iterator[tuple[Slow, int]]:
    s = Slow()
    with serving(s.handler()) as port:
        yield s, port
        s.release.set()


@pytest.mark.parametrize("status", [500, 200])
def test_a_delivery_in_flight_when_erased_leaves_no_record_and_is_not_sent_again(
    gateway: Gateway, redis: Redis, slow: tuple[Slow, int], status: int
) -> None:
    """The target is slow: the request is on the wire when the number is erased. Its answer (a
    500, which would schedule a retry, or a 200) records nothing, and nothing is sent again."""
    target, port = slow
    target.status = status
    gateway.write_config(
        SETTINGS
        + f'[[targets]]\nname = "slow"\nnetworks = ["*"]\nurl = "http://127.0.0.1:{port}/?i=%invitee%"\n'
        "retry = [1, 1]\n"
    )
    base = gateway.start_web()
    gateway.start_worker()
    store = store_for(redis)
    send(base, "invitation_created", NUMBER, "net-a")
    [event_id] = wait_until(lambda: store.recent_events(5), "the event")
    assert target.arrived.wait(30), gateway.logs()

    done = run_gateway("forget", NUMBER, "--json", env=gateway.environ())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deliveries_cancelled"] == 1
    target.release.set()
    # The worker got its answer and recorded it (its log names the delivery after the record).
    wait_until(lambda: f"{event_id}-slow" in gateway.logs(), "the answer recorded", explain=gateway.logs)
    assert redis.zcard("gw:due") == 0
    time.sleep(2.5)  # a retry (1 s) would come within this
    assert target.count == 1
    assert not redis.exists(
        f"gw:event:{event_id}", f"gw:event:{event_id}:deliveries", f"gw:event:{event_id}:attempts"
    )
    assert store.get_attempts(event_id) == [] and attempts_of(store, event_id, "slow") == []
    assert scan_for(redis, FORMS) == []


def test_a_provider_key_erases_in_its_own_networks_only(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    gateway.write_config(
        SETTINGS + f'[[targets]]\nname = "t"\nnetworks = ["*"]\nurl = "{target_server.url}/t"\n'
    )
    base = gateway.start_web()
    gateway.start_worker()
    store = store_for(redis)
    for network in ("net-acme", "net-globex"):
        send(base, "invitation_created", NUMBER, network)
    wait_until(lambda: len(store.recent_events(5)) == 2, "two events")
    acme = create_key(store, "acme", ["net-acme"])[1]
    operator = create_key(store, "ops", None)[1]

    def erase(key: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{base}/api/v1/erasures", json=body, headers={"Authorization": f"Bearer {key}"})

    # Another provider's network: refused, nothing removed.
    r = erase(acme, {"number": NUMBER, "networks": ["net-globex"]})
    assert r.status_code == 422 and r.json()["field"] == "networks", r.text
    assert len(store.recent_events(5)) == 2
    r = erase(acme, {"number": "not a number"})
    assert r.status_code == 422 and r.json()["field"] == "number", r.text

    # Its own: only there.
    r = erase(acme, {"number": "+44 7700 900123"})
    assert r.status_code == 200, r.text
    assert (r.json()["events"], r.json()["networks"]) == (1, ["net-acme"])
    assert store.recent_events(5, "net-acme") == [] and len(store.recent_events(5, "net-globex")) == 1
    # The operator's: everywhere.
    r = erase(operator, {"number": "447700900123"})
    assert r.status_code == 200 and r.json()["events"] == 1, r.text
    assert store.recent_events(5) == []
    assert scan_for(redis, FORMS) == []
    assert http_call(base, "GET", "/healthz").status == 200
