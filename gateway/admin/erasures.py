"""Erasure on request, as a key may ask for it (`Service.forget`: `gateway forget` and
`POST /api/v1/erasures`).

An operator key erases in every network, a provider key in its own only (what it can see it can
erase; `networks` narrows either). The holders (gateway/store/erasure.py) do the work; here the
number is checked, the scope decided, and the erasure told: the answer counts what was removed,
and one audit line is logged at WARNING without the number (a digest of it, the counts, who).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from gateway.admin import Invalid
from gateway.admin.keys import Principal
from gateway.config.load import config_from_dict
from gateway.config.targets import Config
from gateway.exceptions import ConfigError
from gateway.logs import short_id
from gateway.store.codec import now_ms
from gateway.store.erasure import Erasure, Number, erase
from gateway.store.events import Store

log = logging.getLogger("gateway.erasure")

TOTALS = ("events", "deliveries_cancelled", "dead_letters", "keys")


def forget(store: Store, p: Principal, number: str, networks: Iterable[str] | None = None) -> dict[str, Any]:
    if not isinstance(number, str):
        raise Invalid("must be a phone number (a string)", "number")
    scope = p.networks
    if networks is not None:
        given = list(networks)
        if not given or not all(isinstance(n, str) and n for n in given):
            raise Invalid("must be a non-empty list of network ids", "networks")
        asked = frozenset(given)
        outside = sorted(n for n in asked if not p.can_see(n))
        if outside:
            raise Invalid(f"network {outside[0]!r} is not one of this key's", "networks")
        scope = asked
    _, data = store.load_config()
    try:
        config = config_from_dict(data) if data else Config()
    except ConfigError:
        config = Config()  # (an unreadable stored configuration: no policies, no targets known)
    # A national number means the number the networks' default_region makes of it (each of
    # them: an erasure rather takes one record too many than leaves one).
    regions = {config.network_policy(n).default_region for n in (scope or {*config.networks, "*"})}
    try:
        forms = Number.parse(number, regions)
    except ValueError as exc:
        raise Invalid(str(exc), "number") from None
    job = Erasure(store.redis, store.keys, forms, scope, config, now_ms(), p.can_see_target)
    by_holder = erase(job)
    total: Counter[str] = sum(by_holder.values(), Counter())
    erasure_id = short_id()
    answer: dict[str, Any] = {
        "erasure_id": erasure_id,
        "number_digest": forms.digest(),
        "networks": None if scope is None else sorted(scope),
        **{k: total[k] for k in TOTALS},
        "holders": {name: dict(counts) for name, counts in by_holder.items()},
    }
    log.warning(
        "erasure %s of number %s by %s (%s): %d events, %d deliveries cancelled, %d dead letters, "
        "%d keys removed",
        erasure_id,
        answer["number_digest"],
        p.name,
        "every network" if scope is None else "networks " + ",".join(sorted(scope)),
        *(total[k] for k in TOTALS),
    )
    return answer
