"""Loading a configuration: TOML, presets, validation (pure but for reading the file).

`load_config(path)` reads a targets file; `config_from_dict` and `target_from_dict` validate
what Redis holds, an API-made target, or a dashboard form. Every problem is reported at once,
each naming its target and key: one ConfigError, or ConfigErrors listing them all. The values
are the model's (gateway/config/targets.py); one value at a time is read by
gateway/config/values.py, a whole target is checked by gateway/config/checks.py.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.config.addresses import AllowPrivate, address_policy, parse_networks
from gateway.config.checks import (
    check_lookup_time,
    check_target_address,
    check_templates,
    lookup_placeholders,
)
from gateway.config.options import OPTION_KEYS, options_from_dict
from gateway.config.presets import apply_preset
from gateway.config.problems import Problems
from gateway.config.targets import (
    DEFAULT_CONTENT_TYPE,
    DEFAULT_LOOKUP_CACHE,
    DEFAULT_PAUSE_FAILURES,
    DEFAULT_PAUSE_SECONDS,
    DEFAULT_PROBE_INTERVAL,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    EVENT_PLACEHOLDERS,
    LOOKUP_REQUEST_KEYS,
    MAX_TIMEOUT,
    SENDS,
    Config,
    Lookup,
    Target,
)
from gateway.config.values import (
    bounded_int,
    check_proxy,
    check_secret,
    nonempty_string,
    parse_concurrency,
    parse_duration,
    parse_order_bound,
    parse_pause_after,
    parse_rate,
    str_list,
)
from gateway.events import DEFAULT_ALIASES, EVENT_TYPES, FIELDS
from gateway.exceptions import ConfigError, ConfigErrors, config_problems
from gateway.networks import NetworkPolicy, networks_from_dict
from gateway.templating import body_kind

MAX_EXPIRE_AFTER = 365 * 86400
MAX_PROBE_INTERVAL = 3600
MAX_LOOKUP_CACHE = 30 * 86400
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEXLIKE = re.compile(r"[0-9A-Fa-f]{2}")  # %AB% would read as percent-encoding
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
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
        "accepted_waits_for_created",
        "sends",
        *OPTION_KEYS,
        "lookups",
    }
)
# Lookups: `[targets.lookups.NAME]`, its values `%NAME.field%`.
_LOOKUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_JSON_PATH = re.compile(r"[A-Za-z0-9_$@-]+(\.[A-Za-z0-9_$@-]+)*")  # contact.email, results.0.email
_LOOKUP_KEYS = LOOKUP_REQUEST_KEYS | {"fields", "cache", "not_found", "on_not_found"}
_ON_NOT_FOUND = ("retry", "skip", "fail")
_SETTINGS_KEYS = frozenset({"allow_private_targets", "alert_target", "limited_status"})
_TOP_KEYS = ("settings", "aliases", "targets", "networks")


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


# -- a whole configuration ------------------------------------------------------------------------


def config_from_dict(
    data: Mapping[str, Any], environ: Mapping[str, str] | None = None, check_addresses: bool = False
) -> Config:
    """Validate a whole configuration; every problem at once (ConfigErrors when several).

    `check_addresses` refuses target URLs on literal private addresses (a file being checked or
    applied; what Redis holds was checked when applied).
    """
    problems = Problems()
    for key in sorted(set(data) - set(_TOP_KEYS)):
        problems.errors.append(
            ConfigError(f"unknown top-level key (known: {', '.join(_TOP_KEYS)})", None, key)
        )
    networks: Mapping[str, NetworkPolicy] = {}
    with problems.check():
        networks = networks_from_dict(data.get("networks", {}), environ)
    settings = _settings(data.get("settings", {}), problems)
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
    aliases: dict[str, tuple[str, ...]] = {}
    with problems.check():
        aliases = _aliases(data.get("aliases", {}))
    targets, declared = _targets(data.get("targets", []), environ, addresses, problems)
    if alert_target is not None and alert_target not in declared:
        problems.errors.append(
            ConfigError(f"{alert_target!r} names no declared target", None, "settings.alert_target")
        )
    config = Config(
        targets=tuple(targets),
        aliases=aliases,
        allow_private_targets=allow_private,
        alert_target=alert_target,
        networks=networks,
        limited_status=settings.get("limited_status", 204),
    )
    problems.raise_any()
    return config


def _settings(settings: object, problems: Problems) -> dict[str, Any]:
    """The `[settings]` table, a bad limited_status reported (and replaced by its default)."""
    if not isinstance(settings, dict):
        problems.errors.append(ConfigError("must be a table", None, "settings"))
        return {}
    settings = dict(settings)
    limited_status = settings.get("limited_status", 204)
    if isinstance(limited_status, bool) or limited_status not in (204, 429):
        problems.errors.append(
            ConfigError(f"must be 204 or 429, got {limited_status!r}", None, "settings.limited_status")
        )
        settings["limited_status"] = 204
    for bad in sorted(set(settings) - _SETTINGS_KEYS):
        problems.errors.append(
            ConfigError(
                f"unknown setting (known: {', '.join(sorted(_SETTINGS_KEYS))})", None, f"settings.{bad}"
            )
        )
    return settings


def _allow_private(value: object) -> AllowPrivate:
    if isinstance(value, bool):
        return value
    try:
        networks = parse_networks(value)
    except ValueError as exc:
        raise ConfigError(str(exc), None, "settings.allow_private_targets") from None
    return networks or False


def _aliases(raw: object) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise ConfigError('must be a table of field = ["name", ...]', None, "aliases")
    aliases: dict[str, tuple[str, ...]] = {}
    for fname, names in raw.items():
        if fname not in FIELDS:
            raise ConfigError(f"unknown field (known: {', '.join(FIELDS)})", None, f"aliases.{fname}")
        aliases[fname] = str_list(names, "", f"aliases.{fname}") if names else ()
    _check_alias_clash(aliases)
    return aliases


def _check_alias_clash(aliases: Mapping[str, Sequence[str]]) -> None:
    owner = {name.lower(): f for f, names in DEFAULT_ALIASES.items() for name in names}
    for fname, names in aliases.items():
        for n in names:
            other = owner.setdefault(n.lower(), fname)
            if other != fname:
                raise ConfigError(f"{n!r} already names {other}", None, f"aliases.{fname}")


def _targets(
    raw_targets: object,
    environ: Mapping[str, str] | None,
    addresses: AllowPrivate | None,
    problems: Problems,
) -> tuple[list[Target], set[str]]:
    """The valid targets, and the names declared (a target with problems declares its name too)."""
    if not isinstance(raw_targets, list):
        problems.errors.append(ConfigError("must be an array of tables ([[targets]])", None, "targets"))
        return [], set()
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
    return targets, seen


# -- one target -----------------------------------------------------------------------------------


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
        data = apply_preset(data)  # the declaration with its preset's keys filled in
    problems = Problems()
    for key in sorted(set(data) - _TARGET_KEYS):
        problems.errors.append(
            ConfigError(f"unknown key (known: {', '.join(sorted(_TARGET_KEYS))})", name, key)
        )
    # Each concern in the order a file is read, so the problems come in that order too.
    fields = _routing(data, name, problems)
    variables = _variables(data, name, problems)
    lookups: tuple[Lookup, ...] = ()
    with problems.check("lookups"):
        if "lookups" in data:
            lookups = _lookups(data["lookups"], name, variables, environ, addresses)
    fields |= _request_line(data, name, problems)
    fields |= _headers(data, name, problems)
    fields |= _credentials(data, name, problems)
    fields |= _answers(data, name, problems)
    fields |= _policy(data, name, problems)
    target = Target(
        name=name,
        **fields,
        vars=tuple(variables.items()),
        **options_from_dict(data, name, environ),
        lookups=lookups,
    )
    allowed = set(EVENT_PLACEHOLDERS) | set(variables) | lookup_placeholders(lookups)
    check_templates(target, allowed, environ, problems)
    check_lookup_time(target, problems)
    if target.accepted_waits_for_created and target.order_bound() == 0:
        problems.errors.append(
            ConfigError(
                "orders a target's two events: it needs both in `events` (a target that takes one "
                "of them never holds a delivery back)",
                name,
                "accepted_waits_for_created",
            )
        )
    if addresses is not None and not problems.failed("url"):
        with problems.check():
            check_target_address(target, environ, addresses)
    problems.raise_any()
    return target


def _routing(data: Mapping[str, Any], name: str, problems: Problems) -> dict[str, Any]:
    """`networks` (required) and `events`: which callbacks the target serves."""
    networks: tuple[str, ...] = ("*",)
    with problems.check("networks"):
        if "networks" not in data:
            raise ConfigError(
                'is required: the network ids this target serves, or ["*"] for all', name, "networks"
            )
        networks = str_list(data["networks"], name, "networks")
    events: tuple[str, ...] = EVENT_TYPES
    with problems.check("events"):
        events = str_list(data.get("events", list(EVENT_TYPES)), name, "events")
        for ev in events:
            if ev not in EVENT_TYPES:
                raise ConfigError(f"unknown event {ev!r} (known: {', '.join(EVENT_TYPES)})", name, "events")
    return {"networks": networks, "events": events}


def _variables(data: Mapping[str, Any], name: str, problems: Problems) -> dict[str, str]:
    """`vars`: the target's own %placeholders%, which must not pass for event values."""
    variables: dict[str, str] = {}
    with problems.check("vars"):
        raw_vars = data.get("vars", {})
        if not isinstance(raw_vars, dict) or not all(
            isinstance(k, str) and _VAR_NAME.fullmatch(k) and isinstance(v, str) for k, v in raw_vars.items()
        ):
            raise ConfigError('must be a table of name = "text"', name, "vars")
        hexlike = sorted(k for k in raw_vars if _HEXLIKE.fullmatch(k))
        if hexlike:
            raise ConfigError(
                f"{hexlike[0]!r} reads as percent-encoding (%{hexlike[0]}%); rename it", name, "vars"
            )
        clash = sorted(set(raw_vars) & EVENT_PLACEHOLDERS)
        if clash:
            raise ConfigError(f"{clash[0]!r} is an event value and cannot be redefined", name, "vars")
        variables = dict(raw_vars)
    return variables


def _request_line(data: Mapping[str, Any], name: str, problems: Problems) -> dict[str, Any]:
    """`url`, `post_data`, `content_type` and `method`: the Acrobits triple and its method."""
    url = "https://invalid.invalid/"
    with problems.check("url"):
        url = nonempty_string(data.get("url"), name, "url")
    post_data = data.get("post_data")
    with problems.check("post_data"):
        if post_data is not None and not isinstance(post_data, str):
            post_data = None
            raise ConfigError("must be a string", name, "post_data")
    if post_data == "":
        post_data = None  # as in Acrobits: empty post data means GET
    content_type = DEFAULT_CONTENT_TYPE
    with problems.check("content_type", "post_data"):
        content_type = nonempty_string(data.get("content_type", DEFAULT_CONTENT_TYPE), name, "content_type")
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
        method = nonempty_string(data.get("method", method), name, "method").upper()
        if method not in _METHODS:
            raise ConfigError(f"must be one of {', '.join(sorted(_METHODS))}, got {method!r}", name, "method")
        if post_data is not None and method == "GET":
            raise ConfigError("a GET request cannot carry post_data: remove one of them", name, "method")
    return {"url": url, "post_data": post_data, "content_type": content_type, "method": method}


def _headers(data: Mapping[str, Any], name: str, problems: Problems) -> dict[str, Any]:
    """`headers`: each one on its own (a bad one does not hide the others)."""
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
    return {"headers": tuple(headers)}


def _credentials(data: Mapping[str, Any], name: str, problems: Problems) -> dict[str, Any]:
    """`auth` (HTTP Basic) and `signing_secret` (Standard Webhooks)."""
    auth: tuple[str, str] | None = None
    with problems.check("auth"):
        if "auth" in data:
            a = data["auth"]
            if not isinstance(a, dict) or set(a) != {"username", "password"}:
                raise ConfigError('must be { username = "...", password = "..." } (HTTP Basic)', name, "auth")
            auth = (
                nonempty_string(a["username"], name, "auth"),
                nonempty_string(a["password"], name, "auth"),
            )
    secret = data.get("signing_secret")
    with problems.check("signing_secret"):
        if secret is not None:
            checked, secret = secret, None
            check_secret(nonempty_string(checked, name, "signing_secret"), name)
            secret = checked
    return {"auth": auth, "signing_secret": secret}


def _answers(data: Mapping[str, Any], name: str, problems: Problems) -> dict[str, Any]:
    """`success_codes`, `timeout` and `retry`: what counts as delivered, and how long to try."""
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
    return {"success_codes": success_codes, "timeout": timeout, "retry": retry}


def _policy(data: Mapping[str, Any], name: str, problems: Problems) -> dict[str, Any]:
    """The delivery policy: rate, concurrency, expire_after, accepted_waits_for_created, proxy,
    pause_after, probe_interval."""
    fields: dict[str, Any] = {}
    with problems.check("rate"):
        fields["rate"] = parse_rate(data["rate"], name) if "rate" in data else None
    with problems.check("concurrency"):
        fields["concurrency"] = (
            parse_concurrency(data["concurrency"], name) if "concurrency" in data else None
        )
    with problems.check("expire_after"):
        if "expire_after" in data:
            fields["expire_after"] = parse_duration(
                data["expire_after"], name, "expire_after", MAX_EXPIRE_AFTER
            )
    with problems.check("accepted_waits_for_created"):
        if "accepted_waits_for_created" in data:
            fields["accepted_waits_for_created"] = parse_order_bound(data["accepted_waits_for_created"], name)
    with problems.check("proxy"):
        if data.get("proxy") is not None:
            check_proxy(nonempty_string(data["proxy"], name, "proxy"), name)
            fields["proxy"] = data["proxy"]
    with problems.check("pause_after"):
        fields["pause_failures"], fields["pause_seconds"] = parse_pause_after(
            data.get("pause_after", {"failures": DEFAULT_PAUSE_FAILURES, "seconds": DEFAULT_PAUSE_SECONDS}),
            name,
        )
    with problems.check("sends"):
        if data.get("sends") is not None:
            if data["sends"] not in SENDS:
                raise ConfigError(
                    f"must be one of {', '.join(SENDS)} (what the target sends to the invitee), "
                    f"got {data['sends']!r}",
                    name,
                    "sends",
                )
            fields["sends"] = data["sends"]
    with problems.check("probe_interval"):
        fields["probe_interval"] = bounded_int(
            data.get("probe_interval", DEFAULT_PROBE_INTERVAL),
            1,
            MAX_PROBE_INTERVAL,
            "whole seconds",
            name,
            "probe_interval",
        )
    return fields


# -- lookups: fields the callback lacks, fetched from the provider's own service -------------------


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
    problems = Problems()
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
    problems = Problems()
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
        cache = 0 if raw_cache == 0 else parse_duration(raw_cache, target, f"{key}.cache", MAX_LOOKUP_CACHE)
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
        sub = {k: v for k, v in data.items() if k in LOOKUP_REQUEST_KEYS}
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
