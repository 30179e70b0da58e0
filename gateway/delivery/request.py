"""The request of one delivery and the meaning of its answer (pure: no I/O, no RQ).

`build_request` renders a target's templates for an event, `classify` reads the answer,
`retry_delay` picks the wait before the next attempt from the target's schedule.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from functools import lru_cache

from gateway.events import InvitationEvent
from gateway.exceptions import PermanentDelivery, RetryableDelivery
from gateway.records import delivery_id
from gateway.targets import Target
from gateway.templating import Template, escape_header, escape_url

log = logging.getLogger("gateway.delivery")

RETRYABLE_STATUSES = frozenset({408, 425, 429})
MAX_RETRY_AFTER = 86400


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    timeout: float
    proxy: str | None = None
    response_cap: int | None = None  # bytes of the answer read; None: the Sender's


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    latency_ms: float


@lru_cache(maxsize=1024)
def _template(source: str) -> Template:
    return Template.parse(source)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """A Standard Webhooks signature: v1,base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, to_sign, hashlib.sha256).digest()).decode()


def build_request(
    target: Target,
    event: InvitationEvent,
    environ: Mapping[str, str],
    now: float | None = None,
    extra: Mapping[str, str] | None = None,
    bearer: str | None = None,
) -> OutboundRequest:
    """Render the target's request for this event. Raises ConfigError for a missing ${VAR}.

    `extra` overrides event values (an alert's `%message%`); `bearer` is an OAuth2 token.
    """
    did = delivery_id(event.id, target.name)
    values = {**event.placeholders(), **(extra or {}), "delivery_id": did, **dict(target.vars)}
    url = _template(target.url).render(values, escape_url, environ)
    body: bytes | None = None
    headers: list[tuple[str, str]] = [("Idempotency-Key", did)]
    if target.post_data is not None:
        kind = target.body_kind
        body = _template(target.post_data).render(values, kind.escape, environ).encode("utf-8")
        headers.append(("Content-Type", target.content_type))
    for name, value in target.headers:
        headers.append((name, _template(value).render(values, escape_header, environ)))
    if target.auth is not None:
        user = _template(target.auth[0]).render(values, escape_header, environ)
        password = _template(target.auth[1]).render(values, escape_header, environ)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers.append(("Authorization", f"Basic {token}"))
    if bearer is not None:
        headers.append(("Authorization", f"Bearer {bearer}"))
    if target.signing_secret is not None:
        secret = _template(target.signing_secret).render(values, escape_header, environ)
        ts = int(time.time() if now is None else now)
        headers += [
            ("webhook-id", did),
            ("webhook-timestamp", str(ts)),
            ("webhook-signature", _signatures(target, secret, values, environ, did, ts, body or b"")),
        ]
    return OutboundRequest(
        target.method, url, tuple(headers), body, target.timeout, proxy_for(target, environ)
    )


def _signatures(
    target: Target,
    secret: str,
    values: Mapping[str, str],
    environ: Mapping[str, str],
    did: str,
    ts: int,
    body: bytes,
) -> str:
    """The new secret's signature, and during a rotation the previous secret's after it."""
    signature = sign(secret, did, ts, body)
    if target.previous_signing_secret is not None and ts < target.previous_signing_secret_expires:
        previous = _template(target.previous_signing_secret).render(values, escape_header, environ)
        signature += " " + sign(previous, did, ts, body)
    return signature


def proxy_for(target: Target, environ: Mapping[str, str]) -> str | None:
    """The target's own proxy, else HTTPS_PROXY (every target: a static outbound address)."""
    if target.proxy is not None:
        return _template(target.proxy).render({}, escape_header, environ)
    return environ.get("HTTPS_PROXY") or environ.get("https_proxy") or None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped at a day."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)


def classify(target: Target, response: Response, now: float) -> None:
    """Return if the response is a success for this target; raise the kind of failure it is."""
    status = response.status
    if target.is_success(status):
        return
    if target.delivered_statuses and target.delivered_anyway(status, response.body):
        return  # "already done" (Ramen's 404 already invited, HubSpot's 409)
    reason = f"HTTP {status}"
    headers = {name.lower(): value for name, value in response.headers.items()}
    if status in RETRYABLE_STATUSES or status >= 500:
        retry_after = parse_retry_after(headers.get("retry-after"), now)
        raise RetryableDelivery(reason, status=status, retry_after=retry_after)
    if 300 <= status < 400:
        where = headers.get("location", "")
        raise PermanentDelivery(
            f"{reason}: redirect to {where!r} not followed; fix the target URL", status=status
        )
    raise PermanentDelivery(reason, status=status)


def retry_delay(target: Target, attempt: int, retry_after: float | None, rng: random.Random) -> int | None:
    """Seconds before attempt `attempt + 1`, or None when the schedule is used up.

    The schedule value gets +-10% jitter so that a burst of failures does not come back as a
    burst; a Retry-After from the target is a floor.
    """
    if attempt > len(target.retry):
        return None
    base = target.retry[attempt - 1]
    delay = round(base * rng.uniform(0.9, 1.1)) if base else 0
    if retry_after is not None:
        # Whole seconds, rounded up: never before the target asked.
        delay = max(delay, math.ceil(retry_after))
    return delay
