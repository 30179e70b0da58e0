"""A target's request shown before it is sent, and a test send made by a worker (no RQ, no Starlette).

`render_preview` renders a target (and its lookups) for a sample event, as `gateway targets
validate` and the admin API show it: no network, no secrets. `send_test` is what a worker does
for `gateway targets test`: the sample event goes to that one target now, through the worker's
own Sender (its address policy included), lookups, OAuth2 token and environment, and the whole
exchange comes back as a dict.

Secrets never appear in either: each `${VAR}`'s value is shown as `${VAR}`, HTTP Basic
credentials as `Basic ***`, a bearer token as `Bearer ***` and signatures as `v1,***`.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.config.targets import Config, Target
from gateway.config.values import hide_password
from gateway.delivery.lookups import LookupFailure, Lookups, lookup_request
from gateway.delivery.request import OutboundRequest, Response, build_request, classify
from gateway.delivery.sender import SendError
from gateway.events import InvitationEvent, new_ulid
from gateway.exceptions import ConfigError, PermanentDelivery, RetryableDelivery
from gateway.numbers import e164
from gateway.records import iso_ms

SAMPLE = {"invitee": "+15551231234", "invitee_raw": "15551231234", "invitor": "johnsnow"}
BODY_SHOWN = 512  # bytes of a response body kept in a test result
# Stands in for a signing secret in a preview: a signature is computed, then hidden.
_FAKE_WHSEC = "whsec_" + base64.b64encode(bytes(32)).decode()


class UnknownTarget(LookupError):
    """No target of that name in the configuration."""

    def __init__(self, name: str, known: list[str]) -> None:
        listed = ", ".join(known) if known else "none loaded"
        super().__init__(f"unknown target {name!r} (known: {listed})")
        self.name = name


def find_target(config: Config, name: str) -> Target:
    target = config.target(name)
    if target is None:
        raise UnknownTarget(name, sorted(t.name for t in config.targets))
    return target


def sample_event(
    target: Target, fields: Mapping[str, str] | None = None, now: float | None = None
) -> InvitationEvent:
    """A sample invitation for `target`: its first event type and network, or `fields` given."""
    fields = fields or {}
    ms = int((time.time() if now is None else now) * 1000)
    network = fields.get("network_id") or next((n for n in target.networks if n != "*"), "mynetwork")
    invitee = fields.get("invitee") or SAMPLE["invitee"]
    return InvitationEvent(
        id=new_ulid(ms),
        type=fields.get("event") or target.events[0],
        invitee=invitee,
        invitee_raw=fields.get("invitee") or SAMPLE["invitee_raw"],
        invitee_e164=e164(invitee),
        invitor=fields.get("invitor") or SAMPLE["invitor"],
        network_id=network,
        received_at=iso_ms(ms),
        received_at_ms=ms,
        source_format="test",
    )


def redact(request: OutboundRequest, secrets: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The request as JSON-able data, with secrets hidden.

    `secrets` maps each secret value to what is shown instead (`${NAME}`).
    """
    hidden = sorted(((v, k) for v, k in (secrets or {}).items() if len(v) >= 3), key=lambda p: -len(p[0]))

    def scrub(text: str) -> str:
        for value, shown in hidden:
            text = text.replace(value, shown)
        return text

    headers = []
    for name, value in request.headers:
        lower = name.lower()
        if lower == "authorization" and value.startswith("Basic "):
            value = "Basic ***"
        elif lower == "authorization" and value.startswith("Bearer "):
            # "Bearer ${TOKEN}" stays readable; an OAuth2 or literal token never shows.
            shown = scrub(value)
            value = shown if "${" in shown else "Bearer ***"
        elif lower == "webhook-signature":
            value = " ".join(f"{sig.split(',', 1)[0]},***" for sig in value.split())
        else:
            value = scrub(value)
        headers.append([name, value])
    body = request.body.decode("utf-8", "replace") if request.body is not None else None
    return {
        "method": request.method,
        "url": scrub(request.url),
        "headers": headers,
        "body": scrub(body) if body is not None else None,
        "timeout": request.timeout,
        "proxy": hide_password(scrub(request.proxy)) if request.proxy else None,
    }


def _preview_env(target: Target) -> dict[str, str]:
    """Each ${VAR} rendered as its own name; a signing secret as a stand-in that signs."""
    env = {name: "${" + name + "}" for name in target.env_names()}
    for attr in ("signing_secret", "previous_signing_secret"):
        text = getattr(target, attr, None)
        if text:
            for name in target.env_names():
                if "${" + name + "}" in text:
                    env[name] = _FAKE_WHSEC
    return env


def render_preview(
    config: Config,
    target_name: str,
    environ: Mapping[str, str] | None = None,
    fields: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The exact request `target_name` would send for a sample event, secrets redacted.

    With `environ`, also which of the ${VARS} it needs are set there (never their values).
    Lookup values are shown as `<lookup.field>`: nothing is fetched. Raises UnknownTarget.
    """
    target = find_target(config, target_name)
    event = sample_event(target, fields)
    env = _preview_env(target)
    extra = {ph: f"<{ph}>" for lk in target.lookups for ph in lk.placeholders()}
    kwargs: dict[str, Any] = {}
    if getattr(target, "oauth2", None) is not None:
        kwargs["bearer"] = "***"  # fetched from the token endpoint by the worker
    request = build_request(target, event, env, extra=extra, **kwargs)
    preview: dict[str, Any] = {
        "target": target.name,
        "event": event.to_dict(),
        "lookups": {
            lk.name: {
                "request": redact(lookup_request(lk, event, env)),
                "fields": dict(lk.fields),
                "cache": lk.cache,
                "not_found": list(lk.not_found),
                "on_not_found": lk.on_not_found,
            }
            for lk in target.lookups
        },
        "request": redact(request),
        "success_codes": list(target.success_codes) if target.success_codes else "2xx",
    }
    if environ is not None:
        preview["env"] = {name: name in environ for name in sorted(target.env_names())}
    return preview


async def send_test(
    config: Config,
    target_name: str,
    send: Callable[[OutboundRequest], Awaitable[Response]],
    environ: Mapping[str, str],
    lookups: Lookups | None = None,
    tokens: Any = None,
    fields: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Send a sample event to one target now and return the exchange (secrets redacted).

    `tokens` is the engine's OAuth2 token source, for targets that use one. Never raises for
    what the target or the network does: that is the result.
    """
    result: dict[str, Any] = {
        "target": target_name,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "at": iso_ms(int(time.time() * 1000)),
        "lookups": {},
        "request": None,
        "response": None,
        "latency_ms": None,
        "outcome": "failed",
        "error": None,
    }
    try:
        target = find_target(config, target_name)
    except UnknownTarget as exc:
        result["error"] = f"{exc} on the worker"
        return result
    event = sample_event(target, fields)
    result["event"] = event.to_dict()
    secrets = {environ[n]: "${" + n + "}" for n in target.env_names() if environ.get(n)}
    extra: dict[str, str] = {}
    for lookup in target.lookups:
        try:
            found = await (lookups or Lookups(send, environ)).run(lookup, event)
        except LookupFailure as exc:
            result["lookups"][lookup.name] = {"error": exc.reason}
            result["outcome"], result["error"] = exc.outcome.value, exc.reason
            return result
        result["lookups"][lookup.name] = {"values": found}
        extra.update(found)
    kwargs: dict[str, Any] = {}
    try:
        if getattr(target, "oauth2", None) is not None and tokens is not None:
            kwargs["bearer"] = await tokens.token(target, environ)
        request = build_request(target, event, environ, extra=extra, **kwargs)
    except ConfigError as exc:
        result["error"] = f"{exc.reason} on the worker"
        return result
    except Exception as exc:
        # The type only: the message could quote a secret.
        reason = getattr(exc, "reason", None)
        result["error"] = reason or f"cannot build the request ({type(exc).__name__}); check the ${{VARS}}"
        return result
    result["request"] = redact(request, secrets)
    try:
        response = await send(request)
    except SendError as exc:
        result["latency_ms"] = exc.latency_ms
        result["error"] = exc.reason
        result["outcome"] = "failed" if exc.blocked else "retrying"
        return result
    result["latency_ms"] = response.latency_ms
    result["response"] = {
        "status": response.status,
        "headers": [[k, v] for k, v in response.headers.items()],
        "body": response.body[:BODY_SHOWN].decode("utf-8", "replace"),
    }
    try:
        classify(target, response, time.time())
    except RetryableDelivery as exc:
        result["outcome"], result["error"] = "retrying", exc.reason
    except PermanentDelivery as exc:
        result["outcome"], result["error"] = "failed", exc.reason
    else:
        result["outcome"] = "delivered"
    return result
