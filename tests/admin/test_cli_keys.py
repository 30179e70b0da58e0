"""CLI parity with the admin API: `gateway keys`, `targets set|delete`, `overview`, and --json on
`events list`, `targets pause|resume` and `replay`, as an operator runs them (real Redis)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from redis import Redis

from gateway.admin.keys import authenticate
from gateway.events import make_event
from gateway.records import Delivery, DeliveryStatus, delivery_id
from gateway.store.events import Store
from tests.conftest import Gateway
from tests.e2e.e2e_support import run_gateway
from tests.seeding import store_events

FILE = """
[[targets]]
name = "file-crm"
networks = ["net-a"]
url = "https://crm.example.com/invite?to=%invitee%"
"""


def gw(gateway: Gateway, *args: str) -> Any:
    """Run `gateway ARGS --json`; its JSON output."""
    done = run_gateway(*args, "--json", env=gateway.environ())
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return json.loads(done.stdout)


def test_keys_create_list_revoke(gateway: Gateway, redis: Redis) -> None:
    made = gw(gateway, "keys", "create", "acme", "--network", "net-a", "--network", "net-b")
    assert made["networks"] == ["net-a", "net-b"] and made["kind"] == "provider"
    principal = authenticate(redis, made["key"])
    assert principal is not None and principal.networks == frozenset({"net-a", "net-b"})
    op = gw(gateway, "keys", "create", "ops", "--operator")
    assert op["networks"] is None and op["key"].startswith("gwk_")
    listed = gw(gateway, "keys", "list")
    assert [k["name"] for k in listed] == ["acme", "ops"]
    assert made["key"] not in json.dumps(listed)
    assert gw(gateway, "keys", "revoke", made["id"])["revoked"] is True
    assert authenticate(redis, made["key"]) is None
    # The text form shows the key once, with a warning.
    text = run_gateway("keys", "create", "globex", "--network", "net-c", env=gateway.environ())
    assert text.returncode == 0 and "gwk_" in text.stdout and "Shown once" in text.stderr
    # Neither or both of --network / --operator; an unknown key id.
    assert run_gateway("keys", "create", "x", env=gateway.environ()).returncode == 2
    both = run_gateway("keys", "create", "x", "--operator", "--network", "n", env=gateway.environ())
    assert both.returncode == 2
    unknown = run_gateway("keys", "revoke", "000000000000", env=gateway.environ())
    assert unknown.returncode == 1 and "no key" in unknown.stderr


def test_targets_set_and_delete_beside_the_file(gateway: Gateway, redis: Redis, tmp_path: Path) -> None:
    config = gateway.write_config(FILE)
    assert run_gateway("targets", "apply", str(config), env=gateway.environ()).returncode == 0
    declaration = tmp_path / "sms.json"
    declaration.write_text(
        json.dumps(
            {
                "networks": ["net-a"],
                "url": "https://sms.example.com/?to=%invitee%",
                "headers": {"X-Token": "t0ken"},
            }
        )
    )
    made = gw(gateway, "targets", "set", "sms", str(declaration))
    assert made["source"] == "api" and made["headers"]["X-Token"] == "********"
    listed = gw(gateway, "targets", "list")
    assert [t["name"] for t in listed["items"]] == ["file-crm", "sms"]
    # Set again: replaced; TOML works too.
    toml = tmp_path / "sms.toml"
    toml.write_text('networks = ["net-a"]\nurl = "https://sms.example.com/v2?to=%invitee%"\n')
    assert gw(gateway, "targets", "set", "sms", str(toml))["url"].endswith("/v2?to=%invitee%")
    # A file-declared target is changed in the file; an invalid one names its field.
    refused = run_gateway("targets", "set", "file-crm", str(toml), env=gateway.environ())
    assert refused.returncode == 1 and "configuration file" in refused.stderr
    toml.write_text('networks = ["net-a"]\nurl = "https://sms.example.com/%nope%"\n')
    bad = run_gateway("targets", "set", "other", str(toml), env=gateway.environ())
    assert bad.returncode == 1 and "(url)" in bad.stderr
    # A later apply keeps it; delete takes it out.
    assert run_gateway("targets", "apply", str(config), env=gateway.environ()).returncode == 0
    assert "sms" in Store(redis).api_targets()
    assert gw(gateway, "targets", "delete", "sms") == {"deleted": "sms"}
    assert Store(redis).api_targets() == {}
    assert run_gateway("targets", "delete", "file-crm", env=gateway.environ()).returncode == 1


def test_events_overview_pause_resume_and_replay_as_json(gateway: Gateway, redis: Redis) -> None:
    config = gateway.write_config(FILE)
    assert run_gateway("targets", "apply", str(config), env=gateway.environ()).returncode == 0
    store = Store(redis)
    ids = []
    for i, network in enumerate(["net-a", "net-a", "net-b"]):
        ev = make_event(
            {"invitee": f"+1555000000{i}", "invitor": "bob", "network_id": network},
            "invitation_created",
            "query",
        )
        targets = ["file-crm"] if network == "net-a" else []
        store_events(store, [(ev, targets)])
        ids.append(ev.id)
    failed = Delivery(status=DeliveryStatus.FAILED, attempts=1, last_error="HTTP 500").to_dict()
    store.record_attempt(ids[0], "file-crm", {"attempt": 1, "outcome": "failed"}, failed)
    redis.zadd("gw:dead", {delivery_id(ids[0], "file-crm"): int(time.time() * 1000)})
    redis.zrem("gw:due", delivery_id(ids[0], "file-crm"))  # failed for good: no longer waiting

    page = gw(gateway, "events", "list", "--network", "net-a", "--limit", "1")
    assert [e["id"] for e in page["items"]] == [ids[1]] and page["next_cursor"]
    rest = gw(gateway, "events", "list", "--network", "net-a", "--cursor", page["next_cursor"])
    assert [e["id"] for e in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    assert [e["id"] for e in gw(gateway, "events", "list", "--state", "failed")["items"]] == [ids[0]]
    assert [e["id"] for e in gw(gateway, "events", "list", "--invitee", "+15550000002")["items"]] == [ids[2]]

    view = gw(gateway, "overview")
    [crm] = view["targets"]
    assert (crm["target"], crm["received"], crm["failed"], crm["waiting"]) == ("file-crm", 2, 1, 1)

    assert gw(gateway, "targets", "pause", "file-crm")["state"] == "paused"
    assert gw(gateway, "targets", "resume", "file-crm")["before"] == "paused"
    did = delivery_id(ids[0], "file-crm")
    assert gw(gateway, "replay", did) == {"results": {did: "replayed"}, "counts": {"replayed": 1}}
