"""Targets: where invitations go, declared in the Acrobits vocabulary (the model, pure).

A target is the triple a provider already fills in the Acrobits portal (URL template, post-data
template, content type), plus method, headers, auth, signing secret, success codes, timeout,
retry schedule and variables, and the delivery policy: rate limit, concurrency, expiry, proxy and
when to pause an unhealthy target. A `Config` holds the targets, the field aliases, the network
policies and a few settings. These are values only: they are made from a declaration, and
validated once, by gateway/config/load.py (a template that cannot render is an error naming the
target and the key, never a 3 a.m. surprise).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config.addresses import AllowPrivate
from gateway.events import EVENT_TYPES, INVITATION_ACCEPTED, INVITATION_CREATED, build_aliases
from gateway.networks import NetworkPolicy
from gateway.templating import BodyKind, Template, body_kind

DEFAULT_CONTENT_TYPE = "application/x-www-form-urlencoded"  # the Acrobits default
# Standard Webhooks' schedule after the first, immediate attempt: 5 s, 5 min, 30 min, 2 h, 5 h,
# 10 h, 14 h, 20 h, 24 h (jitter is added when a retry is scheduled).
DEFAULT_RETRY = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
DEFAULT_TIMEOUT = 10.0
# A request's timeout, and a target's lookups' and its own together, stay within this: the
# worker's lease of a delivery is sized by it.
MAX_TIMEOUT = 60.0
# Auto-pause: at least this many consecutive failures, the first at least this many seconds old.
DEFAULT_PAUSE_FAILURES = 10
DEFAULT_PAUSE_SECONDS = 60
DEFAULT_PROBE_INTERVAL = 30  # seconds between probes of a paused target
DEFAULT_LOOKUP_CACHE = 3600  # seconds a lookup's answer is kept (in Redis, across workers)

SENDS = ("sms", "email")  # what a target may say it sends to the invitee (`sends`)
# Values a template can use besides the target's own `vars`.
EVENT_PLACEHOLDERS = frozenset(
    {
        "invitee",
        "invitee_raw",
        "invitee_e164",
        "invitor",
        "network_id",
        "event",
        "event_id",
        "received_at",
        "delivery_id",
        "message",
    }
)
# The keys of a lookup that make its request (the rest say what to do with the answer).
LOOKUP_REQUEST_KEYS = frozenset(
    {"url", "method", "headers", "auth", "post_data", "content_type", "timeout", "proxy"}
)
_RATE_NAMES = {1: "s", 60: "m", 3600: "h"}


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` requests every `per` seconds (1, 60 or 3600)."""

    count: int
    per: int

    @property
    def interval_ms(self) -> float:
        """The spacing between two requests, in milliseconds."""
        return self.per * 1000 / self.count

    def __str__(self) -> str:
        return f"{self.count}/{_RATE_NAMES[self.per]}"


@dataclass(frozen=True, slots=True)
class OAuth2:
    """OAuth2 client credentials (RFC 6749 4.4); each part may use ${ENV}."""

    token_url: str
    client_id: str
    client_secret: str
    scope: str | None = None

    def templates(self) -> tuple[str, ...]:
        return (self.token_url, self.client_id, self.client_secret, *((self.scope,) if self.scope else ()))

    def to_dict(self) -> dict[str, str]:
        data = {"token_url": self.token_url, "client_id": self.client_id, "client_secret": self.client_secret}
        if self.scope is not None:
            data["scope"] = self.scope
        return data


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    networks: tuple[str, ...]
    url: str
    events: tuple[str, ...] = EVENT_TYPES
    post_data: str | None = None
    content_type: str = DEFAULT_CONTENT_TYPE
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    auth: tuple[str, str] | None = None  # HTTP Basic (username, password); may use ${ENV}
    signing_secret: str | None = None  # Standard Webhooks `whsec_...`, usually "${ENV}"
    success_codes: tuple[int, ...] | None = None  # None: any 2xx
    timeout: float = DEFAULT_TIMEOUT
    retry: tuple[int, ...] = DEFAULT_RETRY
    vars: tuple[tuple[str, str], ...] = ()
    rate: Rate | None = None  # None: no rate limit
    concurrency: int | None = None  # requests in flight at once; None: unlimited
    expire_after: int | None = None  # seconds after which an unsent delivery expires; None: never
    proxy: str | None = None  # http(s)://[user:pass@]host[:port]; may use ${ENV}
    pause_failures: int = DEFAULT_PAUSE_FAILURES  # 0: never pause automatically
    pause_seconds: int = DEFAULT_PAUSE_SECONDS
    probe_interval: int = DEFAULT_PROBE_INTERVAL
    # What the target sends to the invitee, at the provider's cost ("sms" or "email"; None: it
    # sends nothing a bot could pump): `gateway check` and `web` warn about a network that routes
    # invitations to such a target without limits (config/checks.py, `abuse_warnings`).
    sends: str | None = None
    # The options presets brought (gateway/config/options.py validates them): OAuth2 client
    # credentials, answers that count as delivered
    # ((status, text the body contains or ""), ...), and a previous signing secret that
    # signs too until `previous_signing_secret_until` (epoch seconds in `..._expires`).
    oauth2: OAuth2 | None = None
    delivered_statuses: tuple[tuple[int, str], ...] = ()
    previous_signing_secret: str | None = None
    previous_signing_secret_until: str | None = None
    previous_signing_secret_expires: float = 0.0
    lookups: tuple[Lookup, ...] = ()  # fields the callback lacks, fetched before each request
    # Seconds an invitation_accepted delivery waits for its invitation_created sibling to this
    # target to be delivered or fail for good (0: it never waits); None: `delivery_span()`.
    accepted_waits_for_created: int | None = None

    def matches(self, event_type: str, network_id: str) -> bool:
        return event_type in self.events and ("*" in self.networks or network_id in self.networks)

    def is_success(self, status: int) -> bool:
        if self.success_codes is not None:
            return status in self.success_codes
        return 200 <= status < 300

    def delivered_anyway(self, status: int, body: bytes) -> bool:
        """A failure status that `delivered_statuses` counts as delivered ("already done")."""
        return any(c == status and (not t or t.encode() in body) for c, t in self.delivered_statuses)

    def delivery_span(self) -> int:
        """Seconds from a callback to the last attempt of its delivery: `expire_after`, else the
        end of the retry schedule (its steps with their +10% jitter, and every attempt's timeouts)."""
        if self.expire_after is not None:
            return self.expire_after
        per_attempt = self.timeout + sum(lk.request.timeout for lk in self.lookups)
        return math.ceil(sum(self.retry) * 1.1 + per_attempt * (len(self.retry) + 1))

    def order_bound(self) -> int:
        """Seconds an accepted delivery waits at most for its created one (0: never waits).

        Only a target that takes both events orders them; by default the bound is the created
        delivery's own span (after it, that delivery is expired or out of retries anyway).
        """
        if INVITATION_CREATED not in self.events or INVITATION_ACCEPTED not in self.events:
            return 0
        if self.accepted_waits_for_created is not None:
            return self.accepted_waits_for_created
        return self.delivery_span()

    @property
    def body_kind(self) -> BodyKind:
        kind = body_kind(self.content_type)
        assert kind is not None  # checked when the target was loaded
        return kind

    def env_names(self) -> set[str]:
        """Every ${VAR} the target's requests use, its lookups' included."""
        names = self.own_env_names()
        for lookup in self.lookups:
            names |= lookup.request.env_names()
        return names

    def own_env_names(self) -> set[str]:
        names: set[str] = set()
        for text in self._templates():
            names |= Template.parse(text).env_names()
        return names

    def _templates(self) -> Iterable[str]:
        yield self.url
        if self.post_data is not None:
            yield self.post_data
        for _, value in self.headers:
            yield value
        if self.auth is not None:
            yield from self.auth
        if self.signing_secret is not None:
            yield self.signing_secret
        if self.proxy is not None:
            yield self.proxy
        if self.oauth2 is not None:
            yield from self.oauth2.templates()
        if self.previous_signing_secret is not None:
            yield self.previous_signing_secret

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "networks": list(self.networks),
            "events": list(self.events),
            "url": self.url,
            "content_type": self.content_type,
            "method": self.method,
            "headers": dict(self.headers),
            "timeout": self.timeout,
            "retry": list(self.retry),
            "vars": dict(self.vars),
        }
        if self.post_data is not None:
            data["post_data"] = self.post_data
        if self.auth is not None:
            data["auth"] = {"username": self.auth[0], "password": self.auth[1]}
        if self.signing_secret is not None:
            data["signing_secret"] = self.signing_secret
        if self.success_codes is not None:
            data["success_codes"] = list(self.success_codes)
        # The delivery policy appears only when set, so a file that does not use it keeps the
        # same dict (and the same stored digest) as before these keys existed.
        if self.rate is not None:
            data["rate"] = str(self.rate)
        if self.concurrency is not None:
            data["concurrency"] = self.concurrency
        if self.expire_after is not None:
            data["expire_after"] = self.expire_after
        if self.proxy is not None:
            data["proxy"] = self.proxy
        if (self.pause_failures, self.pause_seconds) != (DEFAULT_PAUSE_FAILURES, DEFAULT_PAUSE_SECONDS):
            data["pause_after"] = {"failures": self.pause_failures, "seconds": self.pause_seconds}
        if self.probe_interval != DEFAULT_PROBE_INTERVAL:
            data["probe_interval"] = self.probe_interval
        if self.accepted_waits_for_created is not None:
            data["accepted_waits_for_created"] = self.accepted_waits_for_created
        if self.sends is not None:
            data["sends"] = self.sends
        data.update(self._options_dict())
        if self.lookups:
            data["lookups"] = {lk.name: lk.to_dict() for lk in self.lookups}
        return data

    def _options_dict(self) -> dict[str, Any]:
        """The options presets brought, only what is set (a target without them keeps its digest)."""
        data: dict[str, Any] = {}
        if self.oauth2 is not None:
            data["oauth2"] = self.oauth2.to_dict()
        if self.delivered_statuses:
            if all(not text for _, text in self.delivered_statuses):
                data["delivered_statuses"] = [code for code, _ in self.delivered_statuses]
            else:
                data["delivered_statuses"] = {str(code): text for code, text in self.delivered_statuses}
        if self.previous_signing_secret is not None:
            data["previous_signing_secret"] = self.previous_signing_secret
            data["previous_signing_secret_until"] = self.previous_signing_secret_until
        return data


@dataclass(frozen=True, slots=True)
class Lookup:
    """An HTTP request made before a target's, whose JSON answer fills `%NAME.field%` values.

    `request` is a target in all but name (url, method, headers, auth, post_data, content_type,
    timeout, proxy): the same templating, escaping and address policy.
    """

    name: str
    request: Target
    fields: tuple[tuple[str, str], ...]  # placeholder field -> JSON path ("contact.email")
    cache: int = DEFAULT_LOOKUP_CACHE  # seconds; 0: asked every time
    not_found: tuple[int, ...] = (404,)  # statuses that mean "no such record"
    on_not_found: str = "retry"  # retry | skip (the target, for this event) | fail

    def placeholders(self) -> list[str]:
        return [f"{self.name}.{f}" for f, _ in self.fields]

    def to_dict(self) -> dict[str, Any]:
        request = self.request.to_dict()
        data: dict[str, Any] = {k: v for k, v in request.items() if k in LOOKUP_REQUEST_KEYS}
        if data.get("headers") == {}:
            del data["headers"]
        data["fields"] = dict(self.fields)
        data["cache"] = self.cache
        data["not_found"] = list(self.not_found)
        data["on_not_found"] = self.on_not_found
        return data


_index: tuple[tuple[Target, ...], dict[str, Target]] | None = None


def duration_label(seconds: int) -> str:
    """A duration as the configuration writes it, to its largest unit and the next: "6h",
    "3d 11h", "1m 30s" ("2d" for two days and five seconds)."""
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for i, (unit, size) in enumerate(units):
        if seconds >= size or unit == "s":
            label = f"{seconds // size}{unit}"
            if unit != "s":
                small, small_size = units[i + 1]
                if rest := seconds % size // small_size:
                    label += f" {rest}{small}"
            return label
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a provider declares: targets, field aliases and a few settings."""

    targets: tuple[Target, ...] = ()
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # True, False, or the private networks targets may be on ("10.1.2.0/24", "fd00::/8")
    allow_private_targets: AllowPrivate = False
    alert_target: str | None = None  # the target that receives alerts (e.g. "target paused")
    networks: Mapping[str, NetworkPolicy] = field(default_factory=dict)
    limited_status: int = 204  # the answer to a callback held back by a limit (204 or 429)

    def network_policy(self, network_id: str) -> NetworkPolicy:
        """The network's own `[networks.<id>]` table, else the `[networks."*"]` defaults."""
        return self.networks.get(network_id) or self.networks.get("*") or NetworkPolicy(network_id)

    def alias_table(self) -> dict[str, str]:
        return build_aliases(self.aliases)

    def routes(self, event_type: str, network_id: str) -> list[Target]:
        return [t for t in self.targets if t.matches(event_type, network_id)]

    def target(self, name: str) -> Target | None:
        # Looked up for every delivery: a dict kept for the configuration in use, not a scan.
        global _index
        index = _index
        if index is None or index[0] is not self.targets:
            index = _index = (self.targets, {t.name: t for t in self.targets})
        return index[1].get(name)

    def policies(self) -> dict[str, dict[str, float | int | str]]:
        """Per target, for the claim script: the minimum spacing of requests in ms, the concurrency
        cap (0: none) and, for a target whose accepted deliveries wait for their created ones,
        that bound in ms (`order`) and as words (`order_label`, for the waiting delivery's state)."""
        out: dict[str, dict[str, float | int | str]] = {}
        for t in self.targets:
            policy: dict[str, float | int | str] = {
                "interval": t.rate.interval_ms if t.rate is not None else 0.0,
                "concurrency": t.concurrency or 0,
            }
            bound = t.order_bound()
            if bound:
                policy["order"] = bound * 1000
                policy["order_label"] = duration_label(bound)
            out[t.name] = policy
        return out

    def order_bounds(self) -> dict[str, int]:
        """Target name -> seconds its accepted deliveries wait at most for their created ones
        (only targets that order the two events)."""
        return {t.name: b for t in self.targets if (b := t.order_bound())}

    def to_dict(self) -> dict[str, Any]:
        allow = self.allow_private_targets
        settings: dict[str, Any] = {
            "allow_private_targets": allow if isinstance(allow, bool) else list(allow)
        }
        if self.alert_target is not None:
            settings["alert_target"] = self.alert_target
        if self.limited_status != 204:
            settings["limited_status"] = self.limited_status
        data: dict[str, Any] = {
            "settings": settings,
            "aliases": {k: list(v) for k, v in self.aliases.items()},
            "targets": [t.to_dict() for t in self.targets],
        }
        if self.networks:
            data["networks"] = {name: p.to_dict() for name, p in self.networks.items()}
        return data
