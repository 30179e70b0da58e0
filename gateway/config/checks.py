"""Checks of a whole target once its values are read (pure): every template rendered with
hostile values, the ${ENV} it needs, its address as written, its lookups' time.

What an invitation sends (the phone's values, a lookup's answer) must come out of a template
intact and must not choose the server: each check renders with a distinct hostile value in each
placeholder and parses the result back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.config.addresses import AllowPrivate, host_refusal
from gateway.config.options import options_env_key
from gateway.config.problems import Problems
from gateway.config.targets import EVENT_PLACEHOLDERS, MAX_TIMEOUT, Config, Lookup, Target
from gateway.config.values import check_proxy, check_secret
from gateway.events import INVITATION_CREATED
from gateway.exceptions import ConfigError
from gateway.templating import (
    FORM_KIND,
    HOSTILE,
    Template,
    escape_header,
    escape_none,
    escape_url,
    parse_body,
    url_strings,
)


def _check_placeholders(template: Template, allowed: set[str], target: str, key: str) -> None:
    unknown = sorted(template.placeholders() - allowed)
    if unknown:
        names = ", ".join(f"%{n}%" for n in unknown)
        known = ", ".join(f"%{n}%" for n in sorted(allowed))
        raise ConfigError(f"unknown placeholder {names} (known: {known})", target, key)


def check_templates(
    target: Target, allowed: set[str], environ: Mapping[str, str] | None, problems: Problems
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
    sample = _Sample.of(target)
    if not problems.failed("url", "vars", "lookups"):
        with problems.check("url"):
            _check_url(target, allowed, sample)

    if target.post_data is not None and not problems.failed("post_data", "vars", "lookups"):
        with problems.check("post_data"):
            _check_body(target, target.post_data, allowed, sample)

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
                check_secret(secret_t.render({}, escape_header, environ), name, expanded=True)
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
                check_proxy(proxy_t.render({}, escape_none, environ), name, expanded=True)


@dataclass(frozen=True, slots=True)
class _Sample:
    """What a target's templates are rendered with to check them."""

    values: dict[str, str]  # every placeholder's value: hostile ones for what comes from outside
    untrusted: frozenset[str]  # the placeholders whose values come from outside
    env: dict[str, str]  # each ${VAR}: a stand-in (real secrets are not needed to check a shape)

    @classmethod
    def of(cls, target: Target) -> _Sample:
        # Values from outside (the phone, a lookup's answer): a distinct hostile value for each,
        # so each one is checked on its own.
        untrusted = EVENT_PLACEHOLDERS | lookup_placeholders(target.lookups)
        values = {n: f"{HOSTILE} {n}" for n in untrusted}
        values.update((k, v if v else "") for k, v in target.vars)
        return cls(values, untrusted, {n: "envvalue" for n in target.own_env_names()})


def _check_url(target: Target, allowed: set[str], sample: _Sample) -> None:
    name = target.name
    values, untrusted, fake_env = sample.values, sample.untrusted, sample.env
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


def _check_body(target: Target, post_data: str, allowed: set[str], sample: _Sample) -> None:
    """The body parses as its content type with hostile values, and gives each one back intact."""
    name = target.name
    values, untrusted, fake_env = sample.values, sample.untrusted, sample.env
    body_t = Template.parse(post_data)
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


def check_lookup_time(target: Target, problems: Problems) -> None:
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


def check_target_address(target: Target, environ: Mapping[str, str] | None, addresses: AllowPrivate) -> None:
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


def lookup_placeholders(lookups: Iterable[Lookup]) -> frozenset[str]:
    return frozenset(f"{lk.name}.{field}" for lk in lookups for field, _ in lk.fields)


def target_hosts(config: Config, environ: Mapping[str, str] | None) -> Iterator[tuple[str, str, str]]:
    """(target, key, host) of every target and lookup URL whose host is known here."""
    for target in config.targets:
        requests = [(target, "url")] + [(lk.request, f"lookups.{lk.name}.url") for lk in target.lookups]
        for request, key in requests:
            host = _host_of(request.url, environ)
            if host:
                yield target.name, key, host


def abuse_warnings(config: Config) -> list[str]:
    """Networks that route invitations to a target that sends SMS or email (`sends`) without a
    per-number limit or without a per-network cap: what SMS pumping feeds on (`gateway check` and
    `gateway web` say it, one line per network and target).

    A per-number limit is a cooldown or a `limits` entry per invitee. The per-network cap matters
    as much: the guard lets `min_created` invitations out to every prefix before it holds one,
    and the other limits count per number, user or prefix, so a bot spreading over many of them
    meets only a cap on the whole network.
    """
    declared = sorted(config.networks)
    found: list[str] = []
    for target in config.targets:
        if target.sends is None or INVITATION_CREATED not in target.events:
            continue
        # "*": every network, each under its own table or the "*" one (or none).
        names = sorted({*declared, "*"}) if "*" in target.networks else list(target.networks)
        for network in names:
            policy = config.network_policy(network)
            per_number = any(lim.per == "invitee" for lim in policy.limits)
            capped = any(lim.per == "network" for lim in policy.limits)
            if per_number and capped:
                continue
            lacking = " and ".join(
                what
                for what, has in (
                    ("a per-number limit (cooldown, or limits per invitee)", per_number),
                    ('a per-network cap (limits per = "network")', capped),
                )
                if not has
            )
            where = (
                "every network without its own [networks] table" if network == "*" else f"network {network}"
            )
            found.append(
                f"{where} sends {'SMS' if target.sends == 'sms' else 'email'} through "
                f"target {target.name!r} without {lacking}: a bot that finds the ingest URL can make "
                "you pay for its messages (the guard alone lets min_created through to every prefix); "
                "see README, Networks: a recommended policy"
            )
    return found
