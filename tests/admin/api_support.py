"""What the admin API tests share: a deployment (web + worker) with two providers' data and keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from redis import Redis

from gateway.admin.keys import create_key
from gateway.store.events import Store
from tests.conftest import Gateway, TargetServer
from tests.e2e.e2e_support import SETTINGS, wait_final, wait_until

# Each provider: its network, a file-declared target that fails for good on its first 500, and
# the invitee of its one event.
PROVIDERS = {
    "acme": ("net-acme", "acme-crm", "+15550001111"),
    "globex": ("net-globex", "globex-crm", "+15550002222"),
}


def config(target_url: str) -> str:
    text = SETTINGS
    for name, (net, target, _) in PROVIDERS.items():
        text += f"""
[[targets]]
name = "{target}"
networks = ["{net}"]
url = "{target_url}/{name}?invitee=%invitee%"
retry = []
"""
    return text


@dataclass
class Deployment:
    base: str
    keys: dict[str, str]  # acme, globex, operator -> gwk_...
    events: dict[str, str]  # acme, globex -> the id of its event (its delivery failed for good)
    store: Store
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who else {}
        c = httpx.Client(base_url=self.base + "/api/v1", headers=headers, timeout=30)
        self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def delivery(self, who: str) -> str:
        return f"{self.events[who]}-{PROVIDERS[who][1]}"


def send_callback(base: str, network: str, invitee: str) -> None:
    r = httpx.get(
        f"{base}/invitation_created", params={"invitee": invitee, "invitor": "alice", "network_id": network}
    )
    assert r.status_code == 204, r.text


def deploy(gateway: Gateway, redis: Redis, target_server: TargetServer) -> Deployment:
    """web + worker, one failed delivery per provider, and a key for each and the operator."""
    for name in PROVIDERS:
        target_server.script(f"/{name}", [500])
    gateway.write_config(config(target_server.url))
    base = gateway.start_web()
    gateway.start_worker()
    store = Store(redis)
    events = {}
    for name, (net, target, invitee) in PROVIDERS.items():
        send_callback(base, net, invitee)
        [eid] = wait_until(lambda net=net: store.recent_events(5, net), f"the event of {net}")
        wait_final(store, eid, [target])
        events[name] = eid
    keys = {name: create_key(store, name, [net])[1] for name, (net, _, _) in PROVIDERS.items()}
    keys["operator"] = create_key(store, "ops", None)[1]
    return Deployment(base, keys, events, store)


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    return body
