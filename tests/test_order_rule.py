""" "Created" before "accepted": the configuration key, the bounds and the notes (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.load import config_from_dict, target_from_dict
from gateway.config.targets import duration_label
from gateway.exceptions import ConfigError
from gateway.ordering import NO_ORDER, IngestOrder, ingest_order, note_for, order_flag


def _target(**extra: Any) -> dict[str, Any]:
    return {"name": "crm", "networks": ["n1"], "url": "https://crm.example.com/hook", **extra}


def test_the_default_bound_is_the_created_deliverys_span() -> None:
    t = target_from_dict(_target(retry=[10, 100], timeout=5))
    assert t.accepted_waits_for_created is None
    assert t.delivery_span() == 136  # (10 + 100) x 1.1 + 3 attempts x 5 s
    assert t.order_bound() == 136
    assert target_from_dict(_target(expire_after="1h")).order_bound() == 3600
    lookup = {"url": "https://crm.example.com/q?p=%invitee%", "fields": {"e": "email"}, "timeout": 5}
    with_lookup = target_from_dict(_target(retry=[10], timeout=5, lookups={"c": lookup}))
    assert with_lookup.delivery_span() == 11 + 2 * 10


@pytest.mark.parametrize(("value", "seconds"), [("6h", 21600), (90, 90), ("2d", 172800), (False, 0), (0, 0)])
def test_the_key(value: object, seconds: int) -> None:
    t = target_from_dict(_target(accepted_waits_for_created=value))
    assert t.order_bound() == seconds
    assert target_from_dict(t.to_dict()) == t


@pytest.mark.parametrize("value", ["6 hours", -1, True, "0s", 1.5, 366 * 86400])
def test_a_bad_value_names_the_target_and_key(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        target_from_dict(_target(accepted_waits_for_created=value))
    assert (info.value.target, info.value.key) == ("crm", "accepted_waits_for_created")
    assert "false" in info.value.reason


def test_a_target_of_one_event_neither_orders_nor_takes_the_key() -> None:
    assert target_from_dict(_target(events=["invitation_accepted"])).order_bound() == 0
    with pytest.raises(ConfigError) as info:
        target_from_dict(_target(events=["invitation_created"], accepted_waits_for_created="1h"))
    assert (info.value.target, info.value.key) == ("crm", "accepted_waits_for_created")
    assert "needs both in `events`" in info.value.reason
    # false on such a target says nothing new: accepted
    assert target_from_dict(_target(events=["invitation_created"], accepted_waits_for_created=False))


def test_the_ingest_keeps_a_created_key_for_the_longest_bound_and_links_accepted_events() -> None:
    config = config_from_dict(
        {
            "targets": [
                _target(name="a", accepted_waits_for_created="1h"),
                _target(name="b", accepted_waits_for_created="6h"),
                _target(name="c", networks=["n2"], events=["invitation_created"]),
                _target(name="d", networks=["n3"], accepted_waits_for_created=False),
            ]
        }
    )
    assert ingest_order(config, "invitation_created", "n1") == IngestOrder(dedupe_ttl_ms=6 * 3_600_000)
    assert ingest_order(config, "invitation_accepted", "n1") == IngestOrder(link=True)
    assert ingest_order(config, "invitation_created", "n2") is NO_ORDER
    assert ingest_order(config, "invitation_accepted", "n3") is NO_ORDER
    assert ingest_order(config, "invitation_created", "elsewhere") is NO_ORDER
    assert config.order_bounds() == {"a": 3600, "b": 21600}


def test_flags_and_notes() -> None:
    assert order_flag("probe") == (True, None)
    assert order_flag(" after:delivered:E1-crm") == (False, "after:delivered:E1-crm")
    assert order_flag("probe bound:retrying:E1-crm") == (True, "bound:retrying:E1-crm")
    assert note_for("after:failed:E1-crm", 60) == "waited for its invitation_created delivery E1-crm (failed)"
    assert note_for("bound:pending:E1-crm", 21600) == (
        "sent after the ordering bound (6h): its invitation_created delivery E1-crm was still pending"
    )


@pytest.mark.parametrize(
    ("seconds", "label"),
    [(0, "0s"), (90, "1m 30s"), (3600, "1h"), (299_416, "3d 11h"), (86_400 * 2 + 5, "2d")],
)
def test_duration_label(seconds: int, label: str) -> None:
    assert duration_label(seconds) == label
