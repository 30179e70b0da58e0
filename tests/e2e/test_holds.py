"""Holds and suppressions a provider can see and act on, through real processes: a real
`gateway web` and `gateway worker`, a real Redis, the operator's `python -m gateway` commands and
real HTTP targets on 127.0.0.1.

A hold of the prefix guard reaches the alert target, is listed, lifted (the alert target hears of
its end), and what it held back is released in bulk, each delivered once; `gateway events list`
shows why an invitation was held back, and /metrics which rule held it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from e2e_support import SETTINGS, http_call, wait_until, waiting_count
from test_cli_deliveries import as_json, gw, ok

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer
    from redis import Redis


def config(target_server: TargetServer) -> str:
    return (
        SETTINGS
        + 'alert_target = "alerts"\n'
        + '[[targets]]\nname = "t"\nnetworks = ["grd", "cool"]\nevents = ["invitation_created"]\n'
        + f'url = "{target_server.url}/t?i=%invitee%&by=%invitor%&n=%network_id%"\n'
        + '[[targets]]\nname = "alerts"\nnetworks = ["gateway"]\n'
        + f'url = "{target_server.url}/alerts"\npost_data = "%message%"\ncontent_type = "text/plain"\n'
        + "[networks.grd]\n"
        + 'guard = { window = "1h", min_created = 3, max_accepted_ratio = 0.2, hold = "6h", digits = 4 }\n'
        + '[networks.cool]\ncooldown = "1h"\n'
    )


def call(base: str, network: str, invitee: str, invitor: str) -> None:
    q = f"invitee={invitee.replace('+', '%2B')}&invitor={invitor}&network_id={network}"
    resp = http_call(base, "GET", f"/invitation_created?{q}")
    assert resp.status == 204, resp.body


def alerts(target_server: TargetServer) -> list[str]:
    return [r.body.decode() for r in target_server.requests_to("/alerts")]


def test_a_hold_is_told_listed_lifted_and_what_it_held_is_released_once(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    gateway.write_config(config(target_server))
    base = gateway.start_web()
    gateway.start_worker()
    for n in range(3):  # the third makes it 3 created, 0 accepted: the prefix is held
        call(base, "grd", f"+88216123{n:04d}", f"u{n}")
    for n in range(3, 5):
        call(base, "grd", f"+88216123{n:04d}", f"u{n}")  # held back by the guard
    call(base, "cool", "+15550100009", "a")
    call(base, "cool", "+15550100009", "b")  # held back by the cooldown
    target_server.wait_for("/t", 4)
    wait_until(lambda: waiting_count(redis) == 0, "the first four delivered")

    # The alert target hears of the hold.
    [held] = [a for a in target_server.wait_for("/alerts", 1) if "held" in a.body.decode()]
    text = held.body.decode()
    assert "network grd: prefix +8821 held until" in text and "3 invitations, 0 accepted" in text

    # Listed, with its id.
    [hold] = as_json(gateway, "holds", "list")["items"]
    assert (hold["network"], hold["prefix"]) == ("grd", "+8821")
    assert re.fullmatch(r"[0-9a-f]{24}", hold["id"]) and hold["id"] in text
    assert "+8821" in ok(gateway, "holds", "list")

    # The events list says why each was held back, in the table and in --json.
    items = as_json(gateway, "events", "list", "--network", "grd", "--state", "suppressed")["items"]
    assert len(items) == 2
    for ev in items:
        d = ev["deliveries"]["t"]
        assert d["status"] == "suppressed" and d["suppressed_by"] == "guard"
        assert d["waiting"].startswith("prefix +8821 held")
    table = ok(gateway, "events", "list", "--network", "cool")
    assert "SUPPRESSED BECAUSE" in table
    assert "[cooldown] another invitation to this number less than 3600 s ago (cooldown)" in table

    # /metrics says which rule held each back.
    metrics = http_call(base, "GET", "/metrics").body.decode()
    wait_until(
        lambda: (
            'gateway_suppressed_total{event="invitation_created",kind="guard"} 2.0'
            in http_call(base, "GET", "/metrics").body.decode()
        ),
        "the suppressions counted by kind",
        explain=lambda: metrics,
    )
    assert 'kind="cooldown"} 1.0' in http_call(base, "GET", "/metrics").body.decode()

    # Lifted: the alert target hears of its end, and the list is empty.
    lifted = ok(gateway, "holds", "lift", hold["id"])
    assert "lifted the hold on +8821 (network grd)" in lifted
    wait_until(
        lambda: any("no longer held (lifted by hand)" in a for a in alerts(target_server)), "the end told"
    )
    assert as_json(gateway, "holds", "list")["items"] == []
    assert gw(gateway, "holds", "lift", hold["id"]).returncode == 1  # once only
    call(base, "grd", "+882161230100", "u9")  # the prefix takes invitations again

    # Released in bulk by filter: a confirmation is asked without --yes.
    listed = as_json(gateway, "suppressed", "list", "--network", "grd", "--reason", "guard")["items"]
    assert len(listed) == 2 and {s["kind"] for s in listed} == {"guard"}
    refused = gw(gateway, "suppressed", "release", "--network", "grd", "--reason", "guard")
    assert refused.returncode == 1 and "release 2 suppressed deliveries (2 to t)" in refused.stderr
    released = as_json(gateway, "suppressed", "release", "--network", "grd", "--reason", "guard", "--yes")
    assert released["counts"] == {"replayed": 2}
    target_server.wait_for("/t", 7)
    wait_until(lambda: waiting_count(redis) == 0, "the released ones delivered")
    # Each delivered once; the cooldown's stays held (another reason), and a second release
    # finds nothing.
    got = sorted(dict(r.query)["i"] for r in target_server.requests_to("/t") if dict(r.query)["n"] == "grd")
    assert got == sorted([f"+88216123{n:04d}" for n in range(5)] + ["+882161230100"])
    assert len(as_json(gateway, "suppressed", "list")["items"]) == 1
    again = as_json(gateway, "suppressed", "release", "--network", "grd", "--yes")
    assert again["counts"] == {}
