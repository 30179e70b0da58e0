"""What the dashboard tests share: a deployment with two providers' data, and signing in over HTTP."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
from redis import Redis

from gateway.admin.keys import create_key
from gateway.store.events import Store
from tests.conftest import Gateway, TargetServer
from tests.e2e.e2e_support import two_providers, wait_until

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SESSION_SECRET = "s" * 40


@dataclass
class Deployment:
    base: str  # http://127.0.0.1:PORT
    acme_key: str  # provider key for network "acme"
    globex_key: str  # provider key for network "globex"
    operator_key: str
    acme_event: str  # an event of acme whose delivery to "acme-crm" failed for good
    globex_event: str  # the same for globex and "globex-crm"


def config(target_url: str) -> str:
    return two_providers(target_url, "?invitee=%invitee%", "?invitee=%invitee%")


def deploy(gateway: Gateway, redis: Redis, target_server: TargetServer, **env: str) -> Deployment:
    """web + worker, a failing target per provider, one failed delivery each, and three keys."""
    target_server.script("/acme", [500])
    target_server.script("/globex", [500])
    gateway.write_config(config(target_server.url))
    gateway.env["GATEWAY_SESSION_SECRET"] = SESSION_SECRET
    base = gateway.start_web(**env)
    gateway.start_worker()
    store = Store(redis)
    ids = {}
    for net, invitee in (("acme", "15550001111"), ("globex", "15550002222")):
        r = httpx.get(
            f"{base}/invitation_created", params={"invitee": invitee, "invitor": "bob", "network_id": net}
        )
        assert r.status_code == 204, r.text
        ids[net] = wait_until(lambda n=net: (store.recent_events(1, network=n) or [None])[0], "event stored")
    for net in ("acme", "globex"):
        did = f"{ids[net]}-{net}-crm"
        wait_until(
            lambda d=did: (store.get_delivery(*d.split("-", 1)) or {}).get("status") == "failed",
            f"{did} failed",
            timeout=30,
            explain=gateway.logs,
        )
    _, acme = create_key(store, "acme", ["acme"])
    _, globex = create_key(store, "globex", ["globex"])
    _, operator = create_key(store, "ops", None)
    return Deployment(base, acme, globex, operator, ids["acme"], ids["globex"])


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, f"no CSRF token in the page:\n{html[:2000]}"
    return match[1]


def sign_in(base: str, key: str) -> tuple[httpx.Client, str]:
    """A client signed in with `key`, and its session's CSRF token."""
    client = httpx.Client(base_url=base + "/dashboard", follow_redirects=False, timeout=20)
    page = client.get("/login")
    assert page.status_code == 200
    r = client.post("/login", data={"csrf": csrf_of(page.text), "key": key})
    assert r.status_code == 303, r.text
    home = client.get("/")
    assert home.status_code == 200, home.text
    return client, csrf_of(home.text)
