""" "Created" before "accepted", per target (gateway/ordering.py): real `gateway web` and
`gateway worker` processes, a real Redis and a real target server on loopback.

The target's URL names the event (`/crm/%event%`), so each event has its own script of answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from e2e_support import (
    SETTINGS,
    attempts_of,
    http_call,
    run_gateway,
    store_for,
    wait_final,
    wait_until,
)

from gateway.admin.keys import create_key
from tests.admin.dashboard_support import sign_in

if TYPE_CHECKING:
    from conftest import Gateway, Received, TargetServer
    from redis import Redis

    from gateway.store.events import Store

NETWORK = "mynetwork"
INVITEE = "+15551231234"
CREATED, ACCEPTED = "/crm/invitation_created", "/crm/invitation_accepted"


def target(server: TargetServer, name: str = "crm", extra: str = "", network: str = NETWORK) -> str:
    return (
        f'[[targets]]\nname = "{name}"\nnetworks = ["{network}"]\n'
        f'url = "{server.url}/{name}/%event%?i=%invitee%&id=%event_id%"\n{extra}\n'
    )


def send(base: str, event: str, invitee: str = INVITEE, network: str = NETWORK) -> None:
    q = f"invitee={invitee.replace('+', '%2B')}&invitor=johnsnow&network_id={network}"
    resp = http_call(base, "GET", f"/{event}?{q}")
    assert resp.status == 204, (resp.status, resp.body)


def warm_up(base: str, server: TargetServer) -> None:
    """Wait until the worker delivers (the bound counts from the created callback: a worker still
    starting on a loaded machine would use it up)."""
    send(base, "invitation_created", network="warmup")
    server.wait_for("/warm/invitation_created", 1, timeout=60)


def newest_event(store: Store, network: str = NETWORK, count: int = 1) -> list[str]:
    return wait_until(
        lambda: (ids := store.recent_events(count, network)) and len(ids) == count and ids,
        f"{count} events of {network}",
    )


def event_id_of(request: Received) -> str:
    return dict(request.query)["id"]


def delivery(store: Store, event_id: str, name: str = "crm") -> dict[str, Any]:
    return store.get_delivery(event_id, name) or {}


def test_an_accepted_waits_until_its_created_is_delivered_after_two_failures(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    """The created delivery fails twice (500, 500, then 200); its accepted sibling arrives
    meanwhile; the target receives the created one first, and the accepted one's record says
    it waited. Other targets on the same network are not held: one that takes the accepted event
    only, and one whose created delivery is already delivered."""
    target_server.script(CREATED, [500, 500, 200])
    gateway.write_config(
        SETTINGS
        + target(target_server, "crm", "retry = [2, 2, 2]")
        + target(target_server, "only", 'events = ["invitation_accepted"]')
        + target(target_server, "fast")
    )
    base = gateway.start_web()
    gateway.start_worker()
    store = store_for(redis)

    send(base, "invitation_created")
    [created] = newest_event(store)
    target_server.wait_for(CREATED, 1)  # the first attempt (a 500) was made
    wait_final(store, created, ["fast"])  # ("fast" got its created one: nothing to wait for)
    send(base, "invitation_accepted")
    accepted = next(e for e in newest_event(store, count=2) if e != created)
    # The accepted callback came while the created delivery was still being retried.
    assert delivery(store, created)["status"] != "delivered", delivery(store, created)

    wait_final(store, created, ["crm", "fast"], timeout=30)
    final = wait_final(store, accepted, ["crm", "only", "fast"], timeout=30)
    assert {name: d["status"] for name, d in final.items()} == dict.fromkeys(
        ["crm", "only", "fast"], "delivered"
    )

    # The target got the three created attempts, then the accepted one.
    crm = [r for r in target_server.received if r.path.startswith("/crm/")]
    assert [r.path for r in crm] == [CREATED, CREATED, CREATED, ACCEPTED], [r.path for r in crm]
    assert [event_id_of(r) for r in crm] == [created] * 3 + [accepted]
    assert [a["status_code"] for a in attempts_of(store, created, "crm")] == [500, 500, 200]

    # The accepted event names its created one, and the attempt says it waited for it.
    event = store.get_event(accepted)
    assert event is not None and event.created_id == created
    [attempt] = attempts_of(store, accepted, "crm")
    assert attempt["note"] == f"waited for its invitation_created delivery {created}-crm (delivered)"
    assert final["crm"]["waiting"] is None
    # The others went without waiting: no note.
    assert "note" not in attempts_of(store, accepted, "only")[0]
    assert "note" not in attempts_of(store, accepted, "fast")[0]
    # The dashboard's event page links the created event and shows the note.
    _, key = create_key(store, "ops", None)
    client, _ = sign_in(base, key)
    try:
        page = client.get(f"/events/{accepted}")
    finally:
        client.close()
    assert page.status_code == 200
    assert f'href="/dashboard/events/{created}"' in page.text
    assert f"waited for its invitation_created delivery {created}-crm (delivered)" in page.text


def test_the_bound_releases_an_accepted_whose_created_never_settles(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    """The target keeps failing the created delivery (500, retried every second); after the
    target's bound (5 s after the created callback) the accepted one goes anyway, and its
    record says so. While it waits, its state says what it waits for."""
    target_server.script(CREATED, [500])
    crm = 'retry = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\naccepted_waits_for_created = "5s"'
    gateway.write_config(
        SETTINGS + target(target_server, "crm", crm) + target(target_server, "warm", network="warmup")
    )
    base = gateway.start_web()
    gateway.start_worker()
    warm_up(base, target_server)
    store = store_for(redis)

    send(base, "invitation_created")
    [created] = newest_event(store)
    target_server.wait_for(CREATED, 1)
    send(base, "invitation_accepted")
    accepted = next(e for e in newest_event(store, count=2) if e != created)

    waiting = wait_until(
        lambda: (
            "waiting for its invitation_created" in (delivery(store, accepted).get("waiting") or "")
            and delivery(store, accepted)
        ),
        "the accepted delivery to say it waits",
        explain=lambda: (
            f"{delivery(store, accepted)} {attempts_of(store, accepted, 'crm')}\n{gateway.logs()}"
        ),
    )
    assert waiting["waiting"] == (
        f"waiting for its invitation_created delivery {created}-crm to be delivered or fail for good "
        "(at most 5s)"
    )
    assert waiting["status"] == "pending" and waiting["attempts"] == 0

    final = wait_final(store, accepted, ["crm"], timeout=30)["crm"]
    assert final["status"] == "delivered"
    [attempt] = attempts_of(store, accepted, "crm")
    assert attempt["note"] == (
        f"sent after the ordering bound (5s): its invitation_created delivery {created}-crm "
        "was still retrying"
    )
    # Not before the bound: 5 s after the created callback (the created id's millisecond).
    created_ms = store.get_event(created).received_at_ms  # type: ignore[union-attr]
    assert attempt["at_ms"] >= created_ms + 5000
    # The created delivery had not settled then, and the target got created attempts first.
    assert delivery(store, created)["status"] == "retrying"
    paths = [r.path for r in target_server.received if r.path.startswith("/crm/")]
    assert paths[0] == CREATED and paths.count(ACCEPTED) == 1


def test_what_is_not_held(gateway: Gateway, target_server: TargetServer, redis: Redis) -> None:
    """An accepted invitation goes at once when its created one never came, when that one was
    suppressed by an abuse limit (it would never go by itself), or was delivered already; and a
    replay of an accepted delivery whose created one is delivered goes at once too."""
    gateway.write_config(
        SETTINGS + target(target_server, "crm", network="*") + '\n[networks.cc]\nallowed_prefixes = ["+44"]\n'
    )
    base = gateway.start_web()
    gateway.start_worker()
    store = store_for(redis)

    # Never came: no created_id, no note.
    send(base, "invitation_accepted", invitee="+15550000001")
    [alone] = newest_event(store)
    assert wait_final(store, alone, ["crm"])["crm"]["status"] == "delivered"
    assert store.get_event(alone).created_id is None  # type: ignore[union-attr]

    # Suppressed (the network allows +44 numbers only): the accepted one is not held.
    send(base, "invitation_created", invitee="+15550000002", network="cc")
    [suppressed] = newest_event(store, "cc")
    assert delivery(store, suppressed)["status"] == "suppressed"
    send(base, "invitation_accepted", invitee="+15550000002", network="cc")
    accepted_cc = next(e for e in newest_event(store, "cc", 2) if e != suppressed)
    assert wait_final(store, accepted_cc, ["crm"])["crm"]["status"] == "delivered"
    assert store.get_event(accepted_cc).created_id == suppressed  # type: ignore[union-attr]
    assert "note" not in attempts_of(store, accepted_cc, "crm")[0]

    # Delivered before the accepted one came: not held.
    send(base, "invitation_created", invitee="+15550000003", network="net3")
    [created] = newest_event(store, "net3")
    wait_final(store, created, ["crm"])
    send(base, "invitation_accepted", invitee="+15550000003", network="net3")
    accepted = next(e for e in newest_event(store, "net3", 2) if e != created)
    assert wait_final(store, accepted, ["crm"])["crm"]["status"] == "delivered"
    assert store.get_event(accepted).created_id == created  # type: ignore[union-attr]
    assert "note" not in attempts_of(store, accepted, "crm")[0]

    # A replay of the accepted delivery: the created one is delivered, it goes at once.
    before = len(target_server.requests_to(ACCEPTED))
    result = run_gateway("replay", "--force", f"{accepted}-crm", env=gateway.environ())
    assert result.returncode == 0, result.stderr
    target_server.wait_for(ACCEPTED, before + 1)
    wait_until(lambda: delivery(store, accepted)["status"] == "delivered", "the replay delivered")
    assert "note" not in attempts_of(store, accepted, "crm")[-1]
