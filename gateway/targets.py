"""Targets: where invitations go, declared in the Acrobits vocabulary (pure).

A target is the triple a provider already fills in the Acrobits portal (URL template, post-data
template, content type), plus method, headers, auth, signing secret, success codes, timeout,
retry schedule and variables, and the delivery policy: rate limit, concurrency, expiry, proxy and
when to pause an unhealthy target. Everything is validated here, once, at load time: a template
that cannot render is an error naming the target and the key, never a 3 a.m. surprise.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config.options import OPTION_KEYS, OAuth2, options_env_key, options_from_dict, options_to_dict
from gateway.config.presets import apply_preset
from gateway.delivery.netguard import AllowPrivate, host_refusal, parse_networks
from gateway.events import DEFAULT_ALIASES, EVENT_TYPES, FIELDS, build_aliases
from gateway.exceptions import ConfigError, ConfigErrors, config_problems
from gateway.networks import NetworkPolicy, networks_from_dict
from gateway.templating import (
    FORM_KIND,
    HOSTILE,
    BodyKind,
    Template,
    body_kind,
    escape_header,
    escape_none,
    escape_url,
    parse_body,
    url_strings,
)

DEFAULT_CONTENT_TYPE = "application/x-www-form-urlencoded"  # the Acrobits default
# Standard Webhooks' schedule after the first, immediate attempt: 5 s, 5 min, 30 min, 2 h, 5 h,
# 10 h, 14 h, 20 h, 24 h (jitter is added when a retry is scheduled).
DEFAULT_RETRY = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 60.0
MAX_CONCURRENCY = 1000
# Auto-pause: at least this many consecutive failures, the first at least this many seconds old.
DEFAULT_PAUSE_FAILURES = 10
DEFAULT_PAUSE_SECONDS = 60
MAX_PAUSE_FAILURES = 100_000
MAX_PAUSE_SECONDS = 7 * 86400
MAX_EXPIRE_AFTER = 365 * 86400
DEFAULT_PROBE_INTERVAL = 30  # seconds between probes of a paused target
MAX_PROBE_INTERVAL = 3600

# Values a template can use besides the target's own `vars`.
EVENT_PLACEHOLDERS = frozenset(
    {
        "invitee",
        "invitee_raw",
        "invitor",
        "network_id",
        "event",
        "event_id",
        "received_at",
        "delivery_id",
        "message",
    }
)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# "1/s", "200/s", "20/m", "20/min", "1000/h"; at most 9 digits.
_RATE = re.compile(r"([1-9][0-9]{0,8})/(s|m|min|h)")
_RATE_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}
_RATE_NAMES = {1: "s", 60: "m", 3600: "h"}
# "90s", "5m", "1h", "2d"; at most 9 digits.
_DURATION = re.compile(r"([1-9][0-9]{0,8})(s|m|h|d)")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
# Headers the gateway owns: a target may not set them (Host and Content-Length would break the
# request, the webhook-* ones are the signature's).
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
_TARGET_KEYS = frozenset(
    {
        "name",
        "networks",
        "events",
        "url",
        "post_data",
        "content_type",
        "method",
        "headers",
        "auth",
        "signing_secret",
        "success_codes",
        "timeout",
        "retry",
        "vars",
        "rate",
        "concurrency",
        "expire_after",
        "proxy",
        "pause_after",
        "probe_interval",
        *OPTION_KEYS,
        "lookups",
    }
)
_PAUSE_KEYS = frozenset({"failures", "seconds"})
# Lookups: `[targets.lookups.NAME]`, its values `%NAME.field%`.
_LOOKUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_JSON_PATH = re.compile(r"[A-Za-z0-9_$@-]+(\.[A-Za-z0-9_$@-]+)*")  # contact.email, results.0.email
_LOOKUP_REQUEST_KEYS = frozenset(
    {"url", "method", "headers", "auth", "post_data", "content_type", "timeout", "proxy"}
)
_LOOKUP_KEYS = _LOOKUP_REQUEST_KEYS | {"fields", "cache", "not_found", "on_not_found"}
_ON_NOT_FOUND = ("retry", "skip", "fail")
DEFAULT_LOOKUP_CACHE = 3600  # seconds an answer is kept (in Redis, across workers)
MAX_LOOKUP_CACHE = 30 * 86400
_SETTINGS_KEYS = frozenset({"allow_private_targets", "alert_target", "limited_status"})


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
    # gateway/config/options.py: OAuth2 client credentials, answers that count as delivered
    # ((status, text the body contains or ""), ...), and a previous signing secret that
    # signs too until `previous_signing_secret_until` (epoch seconds in `..._expires`).
    oauth2: OAuth2 | None = None
    delivered_statuses: tuple[tuple[int, str], ...] = ()
    previous_signing_secret: str | None = None
    previous_signing_secret_until: str | None = None
    previous_signing_secret_expires: float = 0.0
    lookups: tuple[Lookup, ...] = ()  # fields the callback lacks, fetched before each request

    def matches(self, event_type: str, network_id: str) -> bool:
        return event_type in self.events and ("*" in self.networks or network_id in self.networks)

    def is_success(self, status: int) -> bool:
        if self.success_codes is not None:
            return status in self.success_codes
        return 200 <= status < 300

    def delivered_anyway(self, status: int, body: bytes) -> bool:
        """A failure status that `delivered_statuses` counts as delivered ("already done")."""
        return any(c == status and (not t or t.encode() in body) for c, t in self.delivered_statuses)

    @property
    def body_kind(self) -> BodyKind:
        kind = body_kind(self.content_type)
        assert kind is not None  # checked in target_from_dict
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
        data.update(options_to_dict(self))
        if self.lookups:
            data["lookups"] = {lk.name: lk.to_dict() for lk in self.lookups}
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
        data: dict[str, Any] = {k: v for k, v in request.items() if k in _LOOKUP_REQUEST_KEYS}
        if data.get("headers") == {}:
            del data["headers"]
        data["fields"] = dict(self.fields)
        data["cache"] = self.cache
        data["not_found"] = list(self.not_found)
        data["on_not_found"] = self.on_not_found
        return data


_index: tuple[tuple[Target, ...], dict[str, Target]] | None = None


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

    def policies(self) -> dict[str, dict[str, float | int]]:
        """Per target: the minimum spacing of requests in ms and the concurrency cap (0: none)."""
        return {
            t.name: {
                "interval": t.rate.interval_ms if t.rate is not None else 0.0,
                "concurrency": t.concurrency or 0,
            }
            for t in self.targets
        }

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


def _str_list(value: object, target: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError("must be a non-empty list of non-empty strings", target, key)
    return tuple(value)


def _string(value: object, target: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"must be a non-empty string, got {value!r}", target, key)
    return value


def _rate(value: object, target: str) -> Rate:
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(f'must be like "1/s", "200/s", "20/m" or "1000/h", got {value!r}', target, "rate")
    return Rate(count=int(match[1]), per=_RATE_UNITS[match[2]])


def _concurrency(value: object, target: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise ConfigError(
            f"must be a whole number from 1 to {MAX_CONCURRENCY} (leave it out for no limit), got {value!r}",
            target,
            "concurrency",
        )
    return value


def _duration(value: object, target: str, key: str, most: int) -> int:
    seconds: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = int(match[1]) * _DURATION_UNITS[match[2]]
    if seconds is None or not 1 <= seconds <= most:
        raise ConfigError(
            f'must be whole seconds or a duration like "90s", "5m", "1h", "2d", from 1 second '
            f"to {most // 86400} days, got {value!r}",
            target,
            key,
        )
    return seconds


def _bounded(value: object, low: int, high: int, what: str, target: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"must be {what} from {low} to {high}, got {value!r}", target, key)
    return value


def _pause_after(value: object, target: str) -> tuple[int, int]:
    if not isinstance(value, dict):
        raise ConfigError(
            f"must be a table like {{ failures = {DEFAULT_PAUSE_FAILURES}, "
            f"seconds = {DEFAULT_PAUSE_SECONDS} }} (failures = 0 never pauses)",
            target,
            "pause_after",
        )
    unknown = sorted(set(value) - _PAUSE_KEYS)
    if unknown:
        raise ConfigError("unknown key (known: failures, seconds)", target, f"pause_after.{unknown[0]}")
    failures = _bounded(
        value.get("failures", DEFAULT_PAUSE_FAILURES),
        0,
        MAX_PAUSE_FAILURES,
        "a number of consecutive failures",
        target,
        "pause_after.failures",
    )
    seconds = _bounded(
        value.get("seconds", DEFAULT_PAUSE_SECONDS),
        0,
        MAX_PAUSE_SECONDS,
        "whole seconds",
        target,
        "pause_after.seconds",
    )
    return failures, seconds


def _check_proxy(proxy: str, target: str, expanded: bool = False) -> None:
    """An http(s) proxy URL with a host; user:password@ is allowed (and never quoted back)."""
    if "${" in proxy and not expanded:
        return  # checked with the environment, in _validate_templates
    if any(c in proxy for c in " \t\r\n\0"):
        raise ConfigError("must not contain spaces or control characters", target, "proxy")
    shown = "" if expanded else f", got {_hide_password(proxy)!r}"
    try:
        parts = urlsplit(proxy)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"must be an http:// or https:// proxy URL{shown}", target, "proxy") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"must be an http:// or https:// proxy URL{shown}", target, "proxy")


def _hide_password(url: str) -> str:
    head, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{head}://{userinfo.split(':', 1)[0]}:***@{host}"


def _check_placeholders(template: Template, allowed: set[str], target: str, key: str) -> None:
    unknown = sorted(template.placeholders() - allowed)
    if unknown:
        names = ", ".join(f"%{n}%" for n in unknown)
        known = ", ".join(f"%{n}%" for n in sorted(allowed))
        raise ConfigError(f"unknown placeholder {names} (known: {known})", target, key)


def _check_secret(secret: str, target: str, expanded: bool = False) -> None:
    if "${" in secret and not expanded:
        return  # checked with the environment, in _validate_templates
    if not secret.startswith("whsec_"):
        raise ConfigError(
            "must be whsec_ followed by base64 (or ${ENV_VAR} holding one)", target, "signing_secret"
        )
    try:
        key = base64.b64decode(secret[len("whsec_") :], validate=True)
    except binascii.Error:
        raise ConfigError("is not valid base64 after whsec_", target, "signing_secret") from None
    if not 24 <= len(key) <= 64:
        raise ConfigError("must decode to 24 to 64 bytes", target, "signing_secret")


class _Problems:
    """Collects configuration problems, so that one run reports every one of them."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []
        self.keys: set[str] = set()  # the (target, key)s that failed, so later checks skip them

    @contextmanager
    def check(self, *keys: str) -> Iterator[None]:
        try:
            yield
        except ConfigError as exc:
            found = config_problems(exc)
            self.errors.extend(found)
            self.keys.update(keys)
            self.keys.update(e.key or "" for e in found)

    def failed(self, *keys: str) -> bool:
        return any(k in self.keys for k in keys)

    def raise_any(self, source: str | None = None) -> None:
        if len(self.errors) == 1 and source is None:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors, source)


def target_from_dict(
    data: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    addresses: AllowPrivate | None = None,
) -> Target:
    """Validate one target declaration. With `environ`, `${VAR}` references must be set in it.

    With `addresses` (the allow_private_targets policy), a URL whose host as written (an IP
    literal, localhost) that policy refuses is an error. Every problem is reported at once: one
    ConfigError, or ConfigErrors listing them all.
    """
    raw_name = data.get("name")
    if not isinstance(raw_name, str) or not _NAME.fullmatch(raw_name):
        raise ConfigError(f"name must be 1-64 letters, digits, '_' or '-', got {raw_name!r}", None, "name")
    name = raw_name
    if "preset" in data:
        data = _with_preset(data)
    problems = _Problems()
    for key in sorted(set(data) - _TARGET_KEYS):
        problems.errors.append(
            ConfigError(f"unknown key (known: {', '.join(sorted(_TARGET_KEYS))})", name, key)
        )
    networks: tuple[str, ...] = ("*",)
    with problems.check("networks"):
        if "networks" not in data:
            raise ConfigError(
                'is required: the network ids this target serves, or ["*"] for all', name, "networks"
            )
        networks = _str_list(data["networks"], name, "networks")
    events: tuple[str, ...] = EVENT_TYPES
    with problems.check("events"):
        events = _str_list(data.get("events", list(EVENT_TYPES)), name, "events")
        for ev in events:
            if ev not in EVENT_TYPES:
                raise ConfigError(f"unknown event {ev!r} (known: {', '.join(EVENT_TYPES)})", name, "events")

    variables: dict[str, str] = {}
    with problems.check("vars"):
        raw_vars = data.get("vars", {})
        if not isinstance(raw_vars, dict) or not all(
            isinstance(k, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) and isinstance(v, str)
            for k, v in raw_vars.items()
        ):
            raise ConfigError('must be a table of name = "text"', name, "vars")
        hexlike = sorted(k for k in raw_vars if re.fullmatch(r"[0-9A-Fa-f]{2}", k))
        if hexlike:
            raise ConfigError(
                f"{hexlike[0]!r} reads as percent-encoding (%{hexlike[0]}%); rename it", name, "vars"
            )
        clash = sorted(set(raw_vars) & EVENT_PLACEHOLDERS)
        if clash:
            raise ConfigError(f"{clash[0]!r} is an event value and cannot be redefined", name, "vars")
        variables = dict(raw_vars)

    lookups: tuple[Lookup, ...] = ()
    with problems.check("lookups"):
        if "lookups" in data:
            lookups = _lookups(data["lookups"], name, variables, environ, addresses)
    allowed = set(EVENT_PLACEHOLDERS) | set(variables) | _lookup_placeholders(lookups)

    url = "https://invalid.invalid/"
    with problems.check("url"):
        url = _string(data.get("url"), name, "url")
    post_data = data.get("post_data")
    with problems.check("post_data"):
        if post_data is not None and not isinstance(post_data, str):
            post_data = None
            raise ConfigError("must be a string", name, "post_data")
    if post_data == "":
        post_data = None  # as in Acrobits: empty post data means GET
    content_type = DEFAULT_CONTENT_TYPE
    with problems.check("content_type", "post_data"):
        content_type = _string(data.get("content_type", DEFAULT_CONTENT_TYPE), name, "content_type")
        if body_kind(content_type) is None:
            bad, content_type = content_type, DEFAULT_CONTENT_TYPE
            raise ConfigError(
                "must be application/x-www-form-urlencoded, application/json (or +json), "
                f"application/xml, text/xml (or +xml) or text/plain, got {bad!r}",
                name,
                "content_type",
            )
    method = "POST" if post_data is not None else "GET"
    with problems.check("method"):
        method = _string(data.get("method", method), name, "method").upper()
        if method not in _METHODS:
            raise ConfigError(f"must be one of {', '.join(sorted(_METHODS))}, got {method!r}", name, "method")
        if post_data is not None and method == "GET":
            raise ConfigError("a GET request cannot carry post_data: remove one of them", name, "method")

    headers: list[tuple[str, str]] = []
    headers_raw = data.get("headers", {})
    if not isinstance(headers_raw, dict):
        problems.errors.append(ConfigError('must be a table of Header-Name = "value"', name, "headers"))
        headers_raw = {}
    for hname, hvalue in headers_raw.items():
        with problems.check(f"headers.{hname}"):
            if not _HEADER_NAME.fullmatch(hname) or not isinstance(hvalue, str):
                raise ConfigError(
                    f"header {hname!r} must be a valid name with a string value", name, "headers"
                )
            if hname.lower() in _RESERVED_HEADERS:
                raise ConfigError(f"header {hname!r} is set by the gateway", name, "headers")
            if any(c in hvalue for c in "\r\n\0"):
                raise ConfigError(f"header {hname!r} contains a line break", name, "headers")
            headers.append((hname, hvalue))

    auth: tuple[str, str] | None = None
    with problems.check("auth"):
        if "auth" in data:
            a = data["auth"]
            if not isinstance(a, dict) or set(a) != {"username", "password"}:
                raise ConfigError('must be { username = "...", password = "..." } (HTTP Basic)', name, "auth")
            auth = (_string(a["username"], name, "auth"), _string(a["password"], name, "auth"))

    secret = data.get("signing_secret")
    with problems.check("signing_secret"):
        if secret is not None:
            checked, secret = secret, None
            _check_secret(_string(checked, name, "signing_secret"), name)
            secret = checked

    success_codes: tuple[int, ...] | None = None
    with problems.check("success_codes"):
        if "success_codes" in data:
            codes = data["success_codes"]
            if (
                not isinstance(codes, list)
                or not codes
                or not all(isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in codes)
            ):
                raise ConfigError("must be a non-empty list of HTTP status codes", name, "success_codes")
            success_codes = tuple(codes)

    timeout: float = DEFAULT_TIMEOUT
    with problems.check("timeout"):
        raw_timeout = data.get("timeout", DEFAULT_TIMEOUT)
        if (
            isinstance(raw_timeout, bool)
            or not isinstance(raw_timeout, int | float)
            or not 0 < raw_timeout <= MAX_TIMEOUT
        ):
            raise ConfigError(
                f"must be a number of seconds above 0 and at most {MAX_TIMEOUT:g}", name, "timeout"
            )
        timeout = float(raw_timeout)

    retry: tuple[int, ...] = DEFAULT_RETRY
    with problems.check("retry"):
        raw_retry = data.get("retry", list(DEFAULT_RETRY))
        if not isinstance(raw_retry, list) or not all(
            isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= 7 * 86400 for r in raw_retry
        ):
            raise ConfigError(
                "must be a list of whole seconds between retries, e.g. [5, 300, 1800]", name, "retry"
            )
        if len(raw_retry) > 25:
            raise ConfigError("allows at most 25 retries", name, "retry")
        retry = tuple(raw_retry)

    rate = None
    with problems.check("rate"):
        rate = _rate(data["rate"], name) if "rate" in data else None
    concurrency = None
    with problems.check("concurrency"):
        concurrency = _concurrency(data["concurrency"], name) if "concurrency" in data else None
    expire_after = None
    with problems.check("expire_after"):
        if "expire_after" in data:
            expire_after = _duration(data["expire_after"], name, "expire_after", MAX_EXPIRE_AFTER)
    proxy = data.get("proxy")
    with problems.check("proxy"):
        if proxy is not None:
            checked, proxy = proxy, None
            _check_proxy(_string(checked, name, "proxy"), name)
            proxy = checked
    pause_failures, pause_seconds = DEFAULT_PAUSE_FAILURES, DEFAULT_PAUSE_SECONDS
    with problems.check("pause_after"):
        pause_failures, pause_seconds = _pause_after(
            data.get("pause_after", {"failures": DEFAULT_PAUSE_FAILURES, "seconds": DEFAULT_PAUSE_SECONDS}),
            name,
        )
    probe_interval = DEFAULT_PROBE_INTERVAL
    with problems.check("probe_interval"):
        probe_interval = _bounded(
            data.get("probe_interval", DEFAULT_PROBE_INTERVAL),
            1,
            MAX_PROBE_INTERVAL,
            "whole seconds",
            name,
            "probe_interval",
        )

    target = Target(
        name=name,
        networks=networks,
        events=events,
        url=url,
        post_data=post_data,
        content_type=content_type,
        method=method,
        headers=tuple(headers),
        auth=auth,
        signing_secret=secret,
        success_codes=success_codes,
        timeout=timeout,
        retry=retry,
        vars=tuple(variables.items()),
        rate=rate,
        concurrency=concurrency,
        expire_after=expire_after,
        proxy=proxy,
        pause_failures=pause_failures,
        pause_seconds=pause_seconds,
        probe_interval=probe_interval,
        **options_from_dict(data, name, environ),
        lookups=lookups,
    )
    _validate_templates(target, allowed, environ, problems)
    _check_lookup_time(target, problems)
    if addresses is not None and not problems.failed("url"):
        with problems.check():
            _check_address(target, environ, addresses)
    problems.raise_any()
    return target


def _validate_templates(
    target: Target, allowed: set[str], environ: Mapping[str, str] | None, problems: _Problems
) -> None:
    """Render every template with hostile values; each must parse and keep every value intact.

    A template whose key already failed is left out; every other problem is collected.
    """
    name = target.name
    if environ is not None:
        # Every missing variable at once, each with the key that uses it (a lookup's own are
        # reported by its own check).
        for var in sorted(n for n in target.own_env_names() if n not in environ):
            problems.errors.append(
                ConfigError(f"environment variable {var} is not set", name, _env_key(target, var))
            )
    # Real secrets are not needed to check the shape: a plain token stands in for each.
    fake_env = {n: "envvalue" for n in target.own_env_names()}
    # Values from outside (the phone, a lookup's answer): a distinct hostile value for each, so
    # each one is checked on its own.
    untrusted = EVENT_PLACEHOLDERS | _lookup_placeholders(target.lookups)
    values = {n: f"{HOSTILE} {n}" for n in untrusted}
    values.update((k, v if v else "") for k, v in target.vars)

    if not problems.failed("url", "vars", "lookups"):
        with problems.check("url"):
            _validate_url(target, allowed, values, untrusted, fake_env)

    if target.post_data is not None and not problems.failed("post_data", "vars", "lookups"):
        with problems.check("post_data"):
            body_t = Template.parse(target.post_data)
            _check_placeholders(body_t, allowed, name, "post_data")
            kind = target.body_kind
            rendered = body_t.render(values, kind.escape, fake_env)
            try:
                strings = parse_body(kind, rendered)
            except ValueError as exc:
                hint = " (put each placeholder inside a JSON string)" if kind.name == "json" else ""
                raise ConfigError(
                    f"does not render as {target.content_type} with hostile values: {exc}{hint}",
                    name,
                    "post_data",
                ) from None
            for ph in sorted(body_t.placeholders() & untrusted):
                if not any(values[ph] in s for s in strings):
                    raise ConfigError(
                        f"%{ph}% does not come back intact when the {kind.name} body is parsed",
                        name,
                        "post_data",
                    )
            if kind is FORM_KIND and "=" not in rendered:
                raise ConfigError("a form body must be name=value pairs joined by &", name, "post_data")

    for hname, hvalue in target.headers:
        with problems.check():
            _check_placeholders(Template.parse(hvalue), allowed, name, f"headers.{hname}")
    for part in target.auth or ():
        with problems.check():
            _check_placeholders(Template.parse(part), allowed, name, "auth")
    if target.signing_secret is not None:
        with problems.check():
            secret_t = Template.parse(target.signing_secret)
            _check_placeholders(secret_t, set(), name, "signing_secret")
            if environ is not None and secret_t.env_names() <= set(environ) and secret_t.env_names():
                _check_secret(secret_t.render({}, escape_header, environ), name, expanded=True)
    if target.proxy is not None:
        with problems.check():
            # Only ${ENV} here: an invitation must not choose the proxy.
            proxy_t = Template.parse(target.proxy)
            if proxy_t.placeholders():
                ph = sorted(proxy_t.placeholders())[0]
                raise ConfigError(
                    f"cannot use %{ph}%: only ${{ENV_VAR}} references are allowed", name, "proxy"
                )
            if environ is not None and proxy_t.env_names() and proxy_t.env_names() <= set(environ):
                _check_proxy(proxy_t.render({}, escape_none, environ), name, expanded=True)


def _validate_url(
    target: Target,
    allowed: set[str],
    values: Mapping[str, str],
    untrusted: frozenset[str],
    fake_env: Mapping[str, str],
) -> None:
    name = target.name
    url_t = Template.parse(target.url)
    _check_placeholders(url_t, allowed, name, "url")
    benign = {**values, **{n: "x" for n in untrusted}}
    plain_url = url_t.render(benign, escape_url, fake_env)
    try:  # a stray [ or ] in the host (ValueError, not a 500)
        parts = urlsplit(plain_url)
    except ValueError as exc:
        raise ConfigError(f"must be an http:// or https:// URL ({exc}): {target.url!r}", name, "url") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"must be an http:// or https:// URL, got {target.url!r}", name, "url")
    if parts.username is not None or parts.password is not None:
        raise ConfigError("must not carry user:password@; use the auth key", name, "url")
    hostile_url = url_t.render(values, escape_url, fake_env)
    hostile_parts = urlsplit(hostile_url)
    if (hostile_parts.scheme, hostile_parts.netloc) != (parts.scheme, parts.netloc):
        raise ConfigError("a placeholder in the host part lets an invitation choose the server", name, "url")
    try:
        _ = parts.port
    except ValueError as exc:  # not a number, or out of range
        raise ConfigError(f"must be an http:// or https:// URL ({exc}): {target.url!r}", name, "url") from exc
    pieces = url_strings(hostile_url)
    for ph in sorted(url_t.placeholders() & untrusted):
        if not any(values[ph] in p for p in pieces):
            raise ConfigError(f"%{ph}% does not survive URL encoding where it stands", name, "url")


def _check_lookup_time(target: Target, problems: _Problems) -> None:
    """Lookups and the request together within MAX_TIMEOUT: the worker's lease is sized by it."""
    total = target.timeout + sum(lk.request.timeout for lk in target.lookups)
    if target.lookups and total > MAX_TIMEOUT:
        problems.errors.append(
            ConfigError(
                f"the lookups' timeouts and the target's add up to {total:g} s, more than "
                f"{MAX_TIMEOUT:g} s: lower some",
                target.name,
                "lookups",
            )
        )


def _check_address(target: Target, environ: Mapping[str, str] | None, addresses: AllowPrivate) -> None:
    """Refuse a URL on a literal loopback or private address (or localhost) the policy refuses."""
    host = _host_of(target.url, environ)
    refusal = host_refusal(host, addresses) if host else None
    if refusal is not None:
        raise ConfigError(refusal, target.name, "url")


def _host_of(url: str, environ: Mapping[str, str] | None) -> str | None:
    """The host of a URL template (None when a ${VAR} in it is not known here)."""
    url_t = Template.parse(url)
    if url_t.env_names() and (environ is None or not url_t.env_names() <= set(environ)):
        return None
    sample = {n: "x" for n in url_t.placeholders()}
    try:
        return urlsplit(url_t.render(sample, escape_url, environ or {})).hostname
    except (ConfigError, ValueError):
        return None


def _env_key(target: Target, var: str) -> str:
    ref = "${" + var + "}"
    if ref in target.url:
        return "url"
    if target.post_data and ref in target.post_data:
        return "post_data"
    for hname, hvalue in target.headers:
        if ref in hvalue:
            return f"headers.{hname}"
    if target.auth and any(ref in part for part in target.auth):
        return "auth"
    if target.proxy and ref in target.proxy:
        return "proxy"
    if (key := options_env_key(target, ref)) is not None:
        return key
    for lookup in target.lookups:
        if var in lookup.request.env_names():
            return f"lookups.{lookup.name}.{_env_key(lookup.request, var)}"
    return "signing_secret"


# -- lookups: fields the callback lacks, fetched from the provider's own service -------------------


def _lookup_placeholders(lookups: Iterable[Lookup]) -> frozenset[str]:
    return frozenset(f"{lk.name}.{field}" for lk in lookups for field, _ in lk.fields)


def _lookups(
    value: object,
    target: str,
    variables: Mapping[str, str],
    environ: Mapping[str, str] | None,
    addresses: AllowPrivate | None,
) -> tuple[Lookup, ...]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(
            "must be a table of lookups: [targets.lookups.NAME] with a url and "
            'fields = { email = "contact.email" }',
            target,
            "lookups",
        )
    problems = _Problems()
    found = []
    for lname, ldata in value.items():
        with problems.check():
            found.append(_lookup(lname, ldata, target, variables, environ, addresses))
    problems.raise_any()
    return tuple(found)


def _lookup(
    lname: str,
    data: object,
    target: str,
    variables: Mapping[str, str],
    environ: Mapping[str, str] | None,
    addresses: AllowPrivate | None,
) -> Lookup:
    key = f"lookups.{lname}"
    if not _LOOKUP_NAME.fullmatch(lname):
        raise ConfigError("a lookup's name must be a letter or _, then letters, digits or _", target, key)
    if not isinstance(data, dict):
        raise ConfigError("must be a table with url and fields", target, key)
    problems = _Problems()
    for unknown in sorted(set(data) - _LOOKUP_KEYS):
        problems.errors.append(
            ConfigError(f"unknown key (known: {', '.join(sorted(_LOOKUP_KEYS))})", target, f"{key}.{unknown}")
        )
    fields: list[tuple[str, str]] = []
    with problems.check():
        raw = data.get("fields")
        if (
            not isinstance(raw, dict)
            or not raw
            or not all(isinstance(k, str) and _LOOKUP_NAME.fullmatch(k) for k in raw)
            or not all(isinstance(v, str) and _JSON_PATH.fullmatch(v) for v in raw.values())
        ):
            raise ConfigError(
                'must be a table of placeholder = "json.path", e.g. { email = "contact.email", '
                'name = "results.0.name" }',
                target,
                f"{key}.fields",
            )
        fields = list(raw.items())
    cache = DEFAULT_LOOKUP_CACHE
    with problems.check():
        raw_cache = data.get("cache", DEFAULT_LOOKUP_CACHE)
        cache = 0 if raw_cache == 0 else _duration(raw_cache, target, f"{key}.cache", MAX_LOOKUP_CACHE)
    not_found: tuple[int, ...] = (404,)
    with problems.check():
        raw_nf = data.get("not_found", [404])
        if not isinstance(raw_nf, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in raw_nf
        ):
            raise ConfigError(
                "must be a list of HTTP status codes meaning 'no such record'", target, f"{key}.not_found"
            )
        not_found = tuple(raw_nf)
    on_not_found = "retry"
    with problems.check():
        on_not_found = data.get("on_not_found", "retry")
        if on_not_found not in _ON_NOT_FOUND:
            raise ConfigError(
                f"must be one of {', '.join(_ON_NOT_FOUND)}, got {on_not_found!r}",
                target,
                f"{key}.on_not_found",
            )
    request: Target | None = None
    with problems.check():
        sub = {k: v for k, v in data.items() if k in _LOOKUP_REQUEST_KEYS}
        sub.update(name=target, networks=["*"], vars=dict(variables))
        try:
            request = target_from_dict(sub, environ, addresses)
        except ConfigError as exc:
            raise ConfigErrors(
                [ConfigError(e.reason, target, f"{key}.{e.key}") for e in config_problems(exc)]
            ) from None
    problems.raise_any()
    assert request is not None
    return Lookup(lname, request, tuple(fields), cache, not_found, on_not_found)


def address_policy(allow: AllowPrivate, environ: Mapping[str, str] | None) -> AllowPrivate:
    """The file's setting, or true when GATEWAY_ALLOW_PRIVATE_TARGETS says so (as on workers)."""
    flag = (environ or {}).get("GATEWAY_ALLOW_PRIVATE_TARGETS", "").strip().lower()
    return True if flag in ("1", "true", "yes", "on") else allow


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def target_hosts(config: Config, environ: Mapping[str, str] | None) -> Iterator[tuple[str, str, str]]:
    """(target, key, host) of every target and lookup URL whose host is known here."""
    for target in config.targets:
        requests = [(target, "url")] + [(lk.request, f"lookups.{lk.name}.url") for lk in target.lookups]
        for request, key in requests:
            host = _host_of(request.url, environ)
            if host:
                yield target.name, key, host


def config_from_dict(
    data: Mapping[str, Any], environ: Mapping[str, str] | None = None, check_addresses: bool = False
) -> Config:
    """Validate a whole configuration; every problem at once (ConfigErrors when several).

    `check_addresses` refuses target URLs on literal private addresses (a file being checked or
    applied; what Redis holds was checked when applied).
    """
    problems = _Problems()
    for key in sorted(set(data) - {"settings", "aliases", "targets", "networks"}):
        problems.errors.append(
            ConfigError("unknown top-level key (known: settings, aliases, targets, networks)", None, key)
        )
    networks: Mapping[str, NetworkPolicy] = {}
    with problems.check():
        networks = networks_from_dict(data.get("networks", {}), environ)
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        problems.errors.append(ConfigError("must be a table", None, "settings"))
        settings = {}
    limited_status = settings.get("limited_status", 204)
    if isinstance(limited_status, bool) or limited_status not in (204, 429):
        problems.errors.append(
            ConfigError(f"must be 204 or 429, got {limited_status!r}", None, "settings.limited_status")
        )
        limited_status = 204
    for bad in sorted(set(settings) - _SETTINGS_KEYS):
        problems.errors.append(
            ConfigError(
                f"unknown setting (known: {', '.join(sorted(_SETTINGS_KEYS))})", None, f"settings.{bad}"
            )
        )
    allow_private: AllowPrivate = False
    with problems.check():
        allow_private = _allow_private(settings.get("allow_private_targets", False))
    addresses = address_policy(allow_private, environ) if check_addresses else None
    alert_target = settings.get("alert_target")
    if alert_target is not None and (not isinstance(alert_target, str) or not alert_target):
        problems.errors.append(
            ConfigError(
                f"must be the name of a declared target, got {alert_target!r}", None, "settings.alert_target"
            )
        )
        alert_target = None

    aliases_raw = data.get("aliases", {})
    aliases: dict[str, tuple[str, ...]] = {}
    with problems.check():
        if not isinstance(aliases_raw, dict):
            raise ConfigError('must be a table of field = ["name", ...]', None, "aliases")
        for fname, names in aliases_raw.items():
            if fname not in FIELDS:
                raise ConfigError(f"unknown field (known: {', '.join(FIELDS)})", None, f"aliases.{fname}")
            aliases[fname] = _str_list(names, "", f"aliases.{fname}") if names else ()
        _check_alias_clash(aliases)

    raw_targets = data.get("targets", [])
    if not isinstance(raw_targets, list):
        problems.errors.append(ConfigError("must be an array of tables ([[targets]])", None, "targets"))
        raw_targets = []
    targets: list[Target] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_targets):
        with problems.check():
            if not isinstance(raw, dict):
                raise ConfigError("must be a table", None, f"targets[{i}]")
            if raw.get("name") in seen:
                raise ConfigError("is declared twice", raw["name"], "name")
            if isinstance(raw.get("name"), str):
                seen.add(raw["name"])
            targets.append(target_from_dict(raw, environ, addresses))
    if alert_target is not None and alert_target not in seen:
        problems.errors.append(
            ConfigError(f"{alert_target!r} names no declared target", None, "settings.alert_target")
        )
    config = Config(
        targets=tuple(targets),
        aliases=aliases,
        allow_private_targets=allow_private,
        alert_target=alert_target,
        networks=networks,
        limited_status=limited_status,
    )
    problems.raise_any()
    return config


def _allow_private(value: object) -> AllowPrivate:
    if isinstance(value, bool):
        return value
    try:
        networks = parse_networks(value)
    except ValueError as exc:
        raise ConfigError(str(exc), None, "settings.allow_private_targets") from None
    return networks or False


def _check_alias_clash(aliases: Mapping[str, Sequence[str]]) -> None:
    owner = {name.lower(): f for f, names in DEFAULT_ALIASES.items() for name in names}
    for fname, names in aliases.items():
        for n in names:
            other = owner.setdefault(n.lower(), fname)
            if other != fname:
                raise ConfigError(f"{n!r} already names {other}", None, f"aliases.{fname}")


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML configuration file; every error names the file.

    All the problems of the file at once: a ConfigErrors (one line each) when there are several.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    try:
        return config_from_dict(data, environ, check_addresses=True)
    except ConfigError as exc:
        raise ConfigErrors(config_problems(exc), str(p)) from None


def _with_preset(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The declaration with its `preset` (templates/presets/NAME.toml) filled in."""
    return apply_preset(data)
