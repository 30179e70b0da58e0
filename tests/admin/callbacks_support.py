"""What the inspector's and Connect's tests share: a deployment with acme's, globex's and an
operator's keys, and API clients closed at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from gateway.admin.keys import create_key
from gateway.store.events import Store


@dataclass
class KeyedDeployment:
    base: str
    store: Store
    keys: dict[str, str]  # acme, globex, operator -> gwk_...
    env: dict[str, str]  # the processes' environment, for `gateway ...` commands
    clients: list[httpx.Client] = field(default_factory=list)

    def api(self, who: str) -> httpx.Client:
        client = httpx.Client(
            base_url=self.base + "/api/v1", headers={"Authorization": f"Bearer {self.keys[who]}"}, timeout=60
        )
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()


D = TypeVar("D", bound=KeyedDeployment)


def keyed(base: str, store: Store, env: dict[str, str], kind: type[D]) -> D:
    """A deployment of `kind` with a provider key for acme, one for globex, an operator key."""
    keys = {
        "acme": create_key(store, "acme", ["acme"])[1],
        "globex": create_key(store, "globex", ["globex"])[1],
        "operator": create_key(store, "ops", None)[1],
    }
    return kind(base, store, keys, env)
