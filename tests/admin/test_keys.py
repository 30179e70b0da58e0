"""Admin API keys: shown once, stored hashed, scoped, revocable."""

from __future__ import annotations

import hashlib

import pytest
from redis import Redis

from gateway.admin import Invalid
from gateway.admin.keys import authenticate, create_key, get_key, list_keys, revoke_key
from gateway.store.events import Store


def test_a_key_is_stored_hashed_and_shown_once(redis: Redis) -> None:
    store = Store(redis)
    key, secret = create_key(store, "acme", ["net-a", "net-b"])
    assert secret.startswith(f"gwk_{key.key_id}_")
    # Nothing in Redis holds the secret; the hash of the whole key does.
    dump = b"".join(redis.dump(k) or b"" for k in redis.keys("*"))
    assert secret.encode() not in dump
    assert secret.split("_", 2)[2].encode() not in dump
    stored = redis.hgetall(store.keys.api_key(key.key_id))
    assert stored[b"hash"] == hashlib.sha256(secret.encode()).hexdigest().encode()
    # Listing never shows it again.
    listed = [k.to_dict() for k in list_keys(store)]
    assert listed[0]["id"] == key.key_id and secret not in repr(listed)
    assert listed[0]["networks"] == ["net-a", "net-b"] and listed[0]["kind"] == "provider"


def test_authenticate_scopes_and_refusals(redis: Redis) -> None:
    store = Store(redis)
    _, op_secret = create_key(store, "ops", None)
    prov, prov_secret = create_key(redis, "acme", ["net-a"])  # a Redis client works too
    p = authenticate(store, op_secret)
    assert p is not None and p.is_operator and p.networks is None and p.can_see("anything")
    assert "operator" in p.scopes
    q = authenticate(redis, prov_secret)
    assert q is not None and q.key_id == prov.key_id and q.name == "acme"
    assert q.networks == frozenset({"net-a"}) and q.can_see("net-a") and not q.can_see("net-b")
    assert "operator" not in q.scopes
    assert q.can_see_target(["net-a"]) and not q.can_see_target(["net-a", "net-b"])
    assert not q.can_see_target(["*"])
    # A wrong secret with a real id, garbage, and an empty string: refused.
    forged = prov_secret[:-4] + ("AAAA" if not prov_secret.endswith("AAAA") else "BBBB")
    for bad in (forged, "gwk_", "", "Bearer " + prov_secret, prov_secret + "x"):
        assert authenticate(store, bad) is None
    assert get_key(store, prov.key_id).last_used_at is not None  # type: ignore[union-attr]


def test_revoked_keys_are_refused(redis: Redis) -> None:
    store = Store(redis)
    key, secret = create_key(store, "acme", ["net-a"])
    assert authenticate(store, secret) is not None
    revoked = revoke_key(store, key.key_id)
    assert revoked is not None and revoked.revoked
    assert authenticate(store, secret) is None
    assert revoke_key(store, "000000000000") is None
    assert revoke_key(store, "../../etc") is None


@pytest.mark.parametrize(
    ("name", "networks", "field"),
    [
        ("", ["a"], "name"),
        ("x" * 101, ["a"], "name"),
        ("ok", [], "networks"),
        ("ok", ["*"], "networks"),
        ("ok", ["has space"], "networks"),
    ],
)
def test_bad_key_requests(redis: Redis, name: str, networks: list[str], field: str) -> None:
    with pytest.raises(Invalid) as info:
        create_key(Store(redis), name, networks)
    assert info.value.field == field
