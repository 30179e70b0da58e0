"""Lookups through a real worker: a loopback lookup service fills fields the callback lacks."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from e2e_support import SETTINGS, attempts_of, http_call, store_for, wait_final, wait_until

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer
    from redis import Redis

CALLBACK = "/invitation_created/?invitee=15551231234&invitor=johnsnow&network_id=mynetwork"
JSON = {"Content-Type": "application/json"}
CONTACT = (200, JSON, b'{"contact": {"email": "jon@example.com", "name": "Jon"}}')
BODY = (
    '{"recipient_email": "%crm.email%", "meta_data": {"name": "%crm.name%"}, "invitation_type": "org_team"}'
)


def _config(url: str, lookup_path: str, extra: str = "") -> str:
    return (
        SETTINGS
        + f"""
[[targets]]
name = "ramen"
networks = ["mynetwork"]
url = "{url}/ramen"
content_type = "application/json"
post_data = '{BODY}'
retry = [1, 1]

[targets.lookups.crm]
url = "{url}{lookup_path}?phone=%invitee%"
headers = {{ Authorization = "Bearer ${{CRM_TOKEN}}" }}
fields = {{ email = "contact.email", name = "contact.name" }}
cache = "10m"
{extra}
"""
    )


def _callback(base: str, invitor: str = "johnsnow") -> None:
    assert http_call(base, "GET", CALLBACK.replace("johnsnow", invitor)).status == 204


def _new_event(store, seen: set[str]) -> str:  # type: ignore[no-untyped-def]
    def fresh() -> str | None:
        return next((e for e in store.recent_events(20) if e not in seen), None)

    event_id = wait_until(fresh, "a new event")
    seen.add(event_id)
    return event_id


def test_a_lookup_fills_the_target_request_and_is_cached(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    target_server.script("/contacts", [CONTACT])
    gateway.write_config(_config(target_server.url, "/contacts"))
    base = gateway.start_web(CRM_TOKEN="tok-web")
    gateway.start_worker(CRM_TOKEN="tok-worker")
    store = store_for(redis)
    seen: set[str] = set()

    _callback(base)
    first = _new_event(store, seen)
    assert wait_final(store, first, ["ramen"])["ramen"]["status"] == "delivered", gateway.logs()
    [lookup] = target_server.requests_to("/contacts")
    assert lookup.method == "GET"
    assert lookup.query == [("phone", "15551231234")]
    assert lookup.headers["authorization"] == "Bearer tok-worker"  # the worker's environment
    assert "idempotency-key" not in lookup.headers
    [sent] = target_server.wait_for("/ramen", 1)
    assert sent.json() == {
        "recipient_email": "jon@example.com",
        "meta_data": {"name": "Jon"},
        "invitation_type": "org_team",
    }

    # The same invitee again: the answer comes from the cache, shared in Redis.
    _callback(base, "aryastark")
    second = _new_event(store, seen)
    assert wait_final(store, second, ["ramen"])["ramen"]["status"] == "delivered"
    assert len(target_server.wait_for("/ramen", 2)) == 2
    assert len(target_server.requests_to("/contacts")) == 1
    cached = [k for k in redis.scan_iter(match="gw:lookup:*")]
    assert len(cached) == 1 and 0 < redis.ttl(cached[0]) <= 600
    assert "15551231234" not in cached[0].decode()  # no phone number in key names


def test_a_failed_lookup_is_a_retryable_delivery_failure(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    target_server.script("/contacts", [503, (200, {}, b"<html>not json</html>"), CONTACT])
    gateway.write_config(_config(target_server.url, "/contacts"))
    base = gateway.start_web(CRM_TOKEN="t")
    gateway.start_worker(CRM_TOKEN="t")
    store = store_for(redis)
    _callback(base)
    event_id = _new_event(store, set())
    state = wait_final(store, event_id, ["ramen"], timeout=30)["ramen"]
    assert state["status"] == "delivered", (state, gateway.logs())
    attempts = attempts_of(store, event_id, "ramen")
    assert [a["outcome"] for a in attempts] == ["retrying", "retrying", "delivered"], attempts
    assert attempts[0]["error"] == "lookup crm: HTTP 503"
    assert attempts[1]["error"] == "lookup crm: the answer is not JSON"
    assert len(target_server.requests_to("/ramen")) == 1


def test_not_found_can_skip_the_target_for_that_event(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    target_server.script("/contacts", [(404, {}, b'{"error": "no such contact"}')])
    target_server.script("/empty", [(200, JSON, b'{"contact": {"email": ""}}')])
    text = _config(target_server.url, "/contacts", 'on_not_found = "skip"')
    text += (
        f'\n[[targets]]\nname = "brillium"\nnetworks = ["mynetwork"]\nurl = "{target_server.url}/brillium"\n'
        'content_type = "application/json"\npost_data = \'{"Email": "%crm.email%"}\'\n'
        f'[targets.lookups.crm]\nurl = "{target_server.url}/empty?phone=%invitee%"\n'
        'fields = { email = "contact.email" }\non_not_found = "skip"\n'
    )
    gateway.write_config(text)
    base = gateway.start_web(CRM_TOKEN="t")
    gateway.start_worker(CRM_TOKEN="t")
    store = store_for(redis)
    _callback(base)
    event_id = _new_event(store, set())
    states = wait_final(store, event_id, ["ramen", "brillium"])
    assert states["ramen"]["status"] == "skipped", states
    assert states["ramen"]["last_error"] == "lookup crm: not found (HTTP 404); target skipped for this event"
    assert states["brillium"]["status"] == "skipped", states
    assert "no value at contact.email" in states["brillium"]["last_error"]
    assert target_server.requests_to("/ramen") == [] and target_server.requests_to("/brillium") == []
    [attempt] = attempts_of(store, event_id, "ramen")
    assert attempt["outcome"] == "skipped"
    # Skipped is not a failure: no dead letter, and the target's health is untouched.
    assert redis.zcard("gw:dead") == 0
    assert json.loads(json.dumps(store.get_deliveries(event_id)))["ramen"]["attempts"] == 1
