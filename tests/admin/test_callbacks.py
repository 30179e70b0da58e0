"""The callbacks inspector through real processes: `gateway web` and `gateway worker` on the test's
Redis, callbacks over HTTP, read through GET /api/v1/callbacks and `gateway callbacks list`.

Every outcome is kept with its reason (accepted with its event, duplicate of which, suppressed
and why, rejected with status, reason and what to change in the portal; unroutable ones apart),
no token is stored anywhere in Redis, the caps hold, a provider key sees only its networks'
callbacks and the unroutable ones are an operator's.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis import Redis

from gateway.networks import token_digest
from gateway.store.events import Store
from tests.admin.callbacks_support import KeyedDeployment, keyed
from tests.conftest import Gateway, TargetServer
from tests.e2e.e2e_support import run_gateway, two_providers, wait_until

KEPT = 5  # GATEWAY_CALLBACKS_KEPT of this deployment
# The tokens: acme's as a digest in the file, globex's from the web's environment. Not shaped like
# generated ones (lower case only), so that only the inspector's own masking can hide them.
ACME_TOKEN = "acme-ingest-token-" + secrets.token_hex(8)
GLOBEX_TOKEN = "globex-ingest-token-" + secrets.token_hex(8)
WRONG_TOKEN = "an-old-token-" + secrets.token_hex(8)
PASSWORD = "hunter-" + secrets.token_hex(4)


def config(target_url: str) -> str:
    networks = f"""
[networks.acme]
tokens = ["{token_digest(ACME_TOKEN)}"]
allowed_prefixes = ["+1"]

[networks.globex]
tokens = ["${{GLOBEX_TOKEN}}"]
"""
    return two_providers(target_url, "?invitee=%invitee%", networks=networks)


@pytest.fixture
def deployment(gateway: Gateway, redis: Redis, target_server: TargetServer) -> Iterator[KeyedDeployment]:
    gateway.write_config(config(target_server.url))
    env = {
        "GATEWAY_OPEN_INGEST": "false",
        "GATEWAY_DEDUPE_SECONDS": "600",
        "GATEWAY_CALLBACKS_KEPT": str(KEPT),
        "GLOBEX_TOKEN": GLOBEX_TOKEN,
    }
    gateway.env.update(env)
    base = gateway.start_web()
    gateway.start_worker()
    store = Store(redis)
    d = keyed(base, store, gateway.environ(), KeyedDeployment)
    try:
        yield d
    finally:
        d.close()


def get(base: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(base + path, params=params, timeout=30)


def fields(invitee: str, network: str = "acme", invitor: str = "alice") -> dict[str, str]:
    return {"invitee": invitee, "invitor": invitor, "network_id": network}


def listed(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    r = client.get("/callbacks", params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def every_value_in_redis(redis: Redis) -> str:
    """Every key and every value in the database, as one text (to look for a secret in)."""
    parts = []
    for key in redis.scan_iter(count=1000):
        parts.append(key.decode(errors="replace"))
        kind = redis.type(key).decode()
        if kind == "string":
            parts.append(repr(redis.get(key)))
        elif kind == "list":
            parts.append(repr(redis.lrange(key, 0, -1)))
        elif kind == "hash":
            parts.append(repr(redis.hgetall(key)))
        elif kind == "set":
            parts.append(repr(redis.smembers(key)))
        elif kind == "zset":
            parts.append(repr(redis.zrange(key, 0, -1)))
        elif kind == "stream":
            parts.append(repr(redis.xrange(key)))
    return "\n".join(parts)


@pytest.mark.timeout(180)
def test_every_outcome_is_kept_with_its_reason_and_no_token(
    deployment: KeyedDeployment, redis: Redis, target_server: TargetServer
) -> None:
    d = deployment
    base = d.base
    # Accepted (token in the path), then the same again: a duplicate.
    assert get(base, f"/invitation_created/{ACME_TOKEN}", **fields("+15551230001")).status_code == 204
    assert get(base, f"/invitation_created/{ACME_TOKEN}", **fields("+15551230001")).status_code == 204
    # Suppressed (acme allows +1 numbers only), the token in the query.
    assert get(base, "/invitation_created", token=ACME_TOKEN, **fields("+447700900123")).status_code == 204
    # Rejected with acme's token: the invitee under another name, the token in the body too.
    body = {"phone": "+15551230002", "invitor": "bob", "network_id": "acme", "token": ACME_TOKEN}
    r = httpx.post(f"{base}/invitation_created/{ACME_TOKEN}", json=body)
    assert r.status_code == 400
    # Rejected: an old token, for acme (a form body with a password in it, by Bearer).
    r = httpx.post(
        f"{base}/invitation_accepted",
        content=f"invitee=15551230003&invitor=carol&network_id=acme&password={PASSWORD}",
        headers={
            "Authorization": f"Bearer {WRONG_TOKEN}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert r.status_code == 401
    # Rejected: acme's token for globex (403); a token of nothing for a network nobody knows.
    assert (
        get(base, f"/invitation_created/{ACME_TOKEN}", **fields("+15551230004", "globex")).status_code == 403
    )
    assert (
        get(base, f"/invitation_created/{WRONG_TOKEN}", **fields("+15551230005", "nosuchnet")).status_code
        == 401
    )
    # globex's own, accepted.
    assert (
        get(base, f"/invitation_created/{GLOBEX_TOKEN}", **fields("+15551230006", "globex")).status_code
        == 204
    )

    operator, acme, globex = d.api("operator"), d.api("acme"), d.api("globex")
    # The rejected ones are written in the background: all eight there.
    wait_until(lambda: len(listed(operator)) == 8, "the eight callbacks in the inspector")

    seen = listed(acme)
    by = {(c["outcome"], c["status"]): c for c in seen}
    assert sorted(by) == [("accepted", 204), ("duplicate", 204), ("rejected", 400), ("rejected", 401),
                          ("rejected", 403), ("suppressed", 204)]  # fmt: skip
    assert all(c["network"] == "acme" for c in seen)
    accepted, suppressed = by[("accepted", 204)], by[("suppressed", 204)]
    event_id = accepted["event_id"]
    # The events: the accepted one and the suppressed one (kept, not delivered).
    assert sorted(d.store.recent_events(5, "acme")) == sorted([event_id, suppressed["event_id"]])
    assert accepted["hint"] is None
    assert accepted["path"].startswith("/invitation_created/****?invitee=") and accepted["token"] == "path"
    assert accepted["fields"] == fields("+15551230001") and accepted["method"] == "GET"
    assert by[("duplicate", 204)]["duplicate_of"] == event_id and by[("duplicate", 204)]["event_id"] is None
    assert "prefix +44 not allowed" in suppressed["reason"] and suppressed["token"] == "query"
    assert "token=****" in suppressed["path"]
    missing = by[("rejected", 400)]
    assert missing["reason"] == "invitee is missing" and missing["field"] == "invitee"
    assert "invitationCreatedPostData has no %invitee%" in missing["hint"] and "phone" in missing["hint"]
    assert missing["field_names"] == ["phone", "invitor", "network_id", "token"]
    assert (
        '"token":"****"' in missing["body"] and "+15551230002" in missing["body"]
    )  # proven: numbers in full
    old = by[("rejected", 401)]
    assert old["event"] == "invitation_accepted" and old["token"] == "header"
    assert "token in invitationAcceptedUrl is not valid" in old["hint"]
    # Only claimed (no token opened acme): the numbers masked as the logs mask them.
    assert "15551230003" not in json.dumps(old) and "1555****0003" in old["body"]
    assert "password=****" in old["body"] and old["fields"]["invitee"] == "1555****0003"
    other = by[("rejected", 403)]
    assert "for another network" in other["hint"] and other["fields"]["network_id"] == "globex"

    # The filters: outcome, and a network the key may not see (nothing, as if it had none).
    assert {c["status"] for c in listed(acme, outcome="rejected")} == {400, 401, 403}
    assert listed(acme, network="globex") == []
    assert [c["fields"]["invitee"] for c in listed(globex)] == ["+15551230006"]
    # The unroutable one: the operator's only.
    [lost] = listed(operator, unroutable="true")
    assert lost["network"] is None and lost["status"] == 401 and lost["fields"]["network_id"] == "nosuchnet"
    assert lost["fields"]["invitee"] == "+1555****0005"
    assert lost["id"] in {c["id"] for c in listed(operator)}
    assert acme.get("/callbacks", params={"unroutable": "true"}).status_code == 403
    assert lost["id"] not in {c["id"] for c in listed(acme) + listed(globex)}
    # A page and its cursor.
    first = operator.get("/callbacks", params={"limit": 3}).json()
    rest = operator.get("/callbacks", params={"cursor": first["next_cursor"], "limit": 500}).json()
    assert [c["id"] for c in first["items"] + rest["items"]] == [c["id"] for c in listed(operator)]

    # No token, nor the password, anywhere in Redis: keys, values, the inspector's entries.
    everything = every_value_in_redis(redis)
    for secret in (ACME_TOKEN, GLOBEX_TOKEN, WRONG_TOKEN, PASSWORD):
        assert secret not in everything

    # `gateway callbacks list --json` prints the API's document.
    for args, params in (
        ((), {"limit": 20}),
        (("--outcome", "rejected"), {"outcome": "rejected", "limit": 20}),
        (("--network", "acme", "--limit", "2"), {"network": "acme", "limit": 2}),
        (("--unroutable",), {"unroutable": "true", "limit": 20}),
    ):
        done = run_gateway("callbacks", "list", *args, "--json", env=d.env)
        assert done.returncode == 0, done.stderr
        api = operator.get("/callbacks", params=params)
        assert json.dumps(json.loads(done.stdout)) == json.dumps(api.json())
    table = run_gateway("callbacks", "list", "--outcome", "rejected", env=d.env).stdout
    assert "rejected 400: invitee is missing" in table and "(unroutable)" in table


@pytest.mark.timeout(180)
def test_the_caps_hold(deployment: KeyedDeployment, redis: Redis) -> None:
    d = deployment
    # KEPT + 3 accepted and KEPT + 3 rejected for acme: the newest KEPT of each are kept.
    for i in range(KEPT + 3):
        r = get(d.base, f"/invitation_created/{ACME_TOKEN}", **fields(f"+1555124{i:04d}", invitor=f"u{i}"))
        assert r.status_code == 204
    for i in range(KEPT + 3):
        r = get(d.base, f"/invitation_created/{ACME_TOKEN}", invitee=f"+1555125{i:04d}", invitor=f"r{i}")
        assert r.status_code == 400
    acme = d.api("acme")
    wait_until(lambda: len(listed(acme, outcome="rejected")) == KEPT, "the rejected list at its cap")
    kept = listed(acme)
    assert len(kept) == 2 * KEPT
    taken = [c["fields"]["invitee"] for c in kept if c["outcome"] == "accepted"]
    assert taken == [f"+1555124{i:04d}" for i in reversed(range(3, KEPT + 3))]
    assert redis.llen(d.store.keys.callbacks("acme")) == KEPT
    assert redis.llen(d.store.keys.callbacks_rejected("acme")) == KEPT
    assert 6 * 86400_000 < redis.pttl(d.store.keys.callbacks("acme")) <= 7 * 86400_000
