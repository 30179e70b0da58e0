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
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from functools import lru_cache
from json.encoder import encode_basestring as _encode_json_string
from operator import itemgetter

from gateway.config.targets import Target
from gateway.events import InvitationEvent
from gateway.exceptions import ConfigError, PermanentDelivery, RetryableDelivery
from gateway.records import delivery_id
from gateway.templating import JSON_KIND, Escape, Template, escape_header, escape_url

log = logging.getLogger("gateway.delivery")

RETRYABLE_STATUSES = frozenset({408, 425, 429})
MAX_RETRY_AFTER = 86400


@dataclass(slots=True, init=False, unsafe_hash=True)
class OutboundRequest:
    """One request to make. Treat it as immutable: not frozen only because one is built per
    delivery, and a frozen dataclass' `__init__` sets each field through `object.__setattr__`."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    timeout: float
    proxy: str | None
    response_cap: int | None  # bytes of the answer read; None: the Sender's
    # The body as the text it was rendered from, when it was (its UTF-8 is `body`): the Sender
    # hands reqwest text, so it need not decode `body` again. Not compared: `body` says it all.
    # A copy with another body (dataclasses.replace) must set `text` too (None: sent as `body`).
    text: str | None = field(default=None, compare=False)

    def __init__(
        self,
        method: str,
        url: str,
        headers: tuple[tuple[str, str], ...],
        body: bytes | None,
        timeout: float,
        proxy: str | None = None,
        response_cap: int | None = None,
        text: str | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeout = timeout
        self.proxy = proxy
        self.response_cap = response_cap
        self.text = text


@dataclass(slots=True, init=False, eq=True)
class Response:
    """A target's answer (immutable by convention, as OutboundRequest)."""

    status: int
    headers: Mapping[str, str]  # case-insensitive when it comes from the Sender
    body: bytes
    latency_ms: float

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, latency_ms: float) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.latency_ms = latency_ms


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
    return RequestPlan(target, environ).render(event, now, extra, bearer)


# A part of a compiled template: literal text, or (placeholder name, escape).
_Part = str | tuple[str, Escape]


def _escape_json(value: str) -> str:
    # As templating.escape_json (json.dumps(value, ensure_ascii=False)[1:-1]), without building
    # a JSONEncoder per call.
    return _encode_json_string(value)[1:-1]


class RequestPlan:
    """A target's request with everything that does not depend on the event worked out once.

    `${ENV}` references, the target's own `vars`, the proxy and the literal text are resolved
    when the plan is made (from the worker's environment, which does not change while it runs);
    `render` fills in the event's values. A plan is made per target and configuration version.
    Raises ConfigError for a missing ${VAR} (in the order build_request always rendered: URL,
    body, headers, auth, signing secret, proxy).
    """

    __slots__ = (
        "_auth",
        "_body",
        "_extra_headers",
        "_headers",
        "_previous",
        "_secret",
        "_url",
        "proxy",
        "target",
    )

    def __init__(self, target: Target, environ: Mapping[str, str]) -> None:
        self.target = target
        constants = dict(target.vars)  # they override the event's values and %delivery_id%
        self._url = _compile(target.url, escape_url, constants, environ)
        self._body: _Compiled | None = None
        headers: list[tuple[str, str]] = []
        if target.post_data is not None:
            kind = target.body_kind
            escape = _escape_json if kind is JSON_KIND else kind.escape
            self._body = _compile(target.post_data, escape, constants, environ)
            headers.append(("Content-Type", target.content_type))
        self._headers = tuple(headers)
        self._extra_headers = tuple(
            (name, _compile(value, escape_header, constants, environ)) for name, value in target.headers
        )
        self._auth: tuple[_Compiled, _Compiled] | None = None
        if target.auth is not None:
            self._auth = (
                _compile(target.auth[0], escape_header, constants, environ),
                _compile(target.auth[1], escape_header, constants, environ),
            )
        self._secret: _Compiled | None = None
        if target.signing_secret is not None:
            self._secret = _compile(target.signing_secret, escape_header, constants, environ)
        # During a rotation, the previous secret signs too (until previous_signing_secret_expires).
        self._previous: _Compiled | None = None
        if (
            target.previous_signing_secret is not None
            and time.time() < target.previous_signing_secret_expires
        ):
            self._previous = _compile(target.previous_signing_secret, escape_header, constants, environ)
        self.proxy = proxy_for(target, environ)

    def render(
        self,
        event: InvitationEvent,
        now: float | None = None,
        extra: Mapping[str, str] | None = None,
        bearer: str | None = None,
    ) -> OutboundRequest:
        target = self.target
        did = delivery_id(event.id, target.name)
        values = event.placeholders()
        if extra:
            values.update(extra)
        values["delivery_id"] = did
        url = self._url.render(values)
        headers: list[tuple[str, str]] = [("Idempotency-Key", did), *self._headers]
        body: bytes | None = None
        text: str | None = None
        if self._body is not None:
            text = self._body.render(values)
            body = text.encode("utf-8")
        for name, value in self._extra_headers:
            headers.append((name, value.render(values)))
        if self._auth is not None:
            user = self._auth[0].render(values)
            password = self._auth[1].render(values)
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers.append(("Authorization", f"Basic {token}"))
        if bearer is not None:
            headers.append(("Authorization", f"Bearer {bearer}"))
        if self._secret is not None:
            secret = self._secret.render(values)
            ts = int(time.time() if now is None else now)
            signature = sign(secret, did, ts, body or b"")
            if self._previous is not None and ts < target.previous_signing_secret_expires:
                signature += " " + sign(self._previous.render(values), did, ts, body or b"")
            headers += [
                ("webhook-id", did),
                ("webhook-timestamp", str(ts)),
                ("webhook-signature", signature),
            ]
        method, timeout = target.method, target.timeout
        return OutboundRequest(method, url, tuple(headers), body, timeout, self.proxy, text=text)


def _compile(
    source: str, escape: Escape, constants: Mapping[str, str], environ: Mapping[str, str]
) -> _Compiled:
    """The template's parts, with ${ENV} and the target's vars made literal, adjacent text joined."""
    parts: list[_Part] = []
    for kind, value in _template(source).parts:
        if kind == "text":
            text = value
        elif kind == "env":
            try:
                text = environ[value]
            except KeyError:
                raise ConfigError(f"environment variable {value} is not set") from None
        elif value in constants:
            text = escape(constants[value])
        else:
            parts.append((value, escape))
            continue
        if parts and isinstance(parts[-1], str):
            parts[-1] += text
        else:
            parts.append(text)
    if escape is _escape_json:
        parts = _json_strings(parts)
    return _Compiled(tuple(parts))


def _json_strings(parts: list[_Part]) -> list[_Part]:
    """A JSON placeholder between two quotes becomes one JSON string, quotes included: rendered
    by `encode_basestring` itself (C), the same text as the quotes around `_escape_json`'s."""
    out: list[_Part] = []
    for i, part in enumerate(parts):
        if isinstance(part, str):
            out.append(part)
            continue
        before = out[-1] if out else None
        after = parts[i + 1] if i + 1 < len(parts) else None
        quoted = isinstance(before, str) and before.endswith('"')
        if quoted and isinstance(before, str) and isinstance(after, str) and after.startswith('"'):
            out[-1] = before[:-1]
            out.append((part[0], _encode_json_string))
            parts[i + 1] = after[1:]
        else:
            out.append(part)
    return [p for p in out if p != ""]


class _Compiled:
    """A compiled template as one %-format string and its placeholders: `render` is one `%`."""

    __slots__ = ("escape", "fields", "fmt", "get", "text")

    def __init__(self, parts: tuple[_Part, ...]) -> None:
        self.text = parts[0] if len(parts) == 1 and isinstance(parts[0], str) else None
        self.fmt = "".join(p.replace("%", "%%") if isinstance(p, str) else "%s" for p in parts)
        self.fields = tuple(p for p in parts if not isinstance(p, str))
        # The values fetched at once (itemgetter) and escaped by one function (map), both in C,
        # when every placeholder has the same escape (the usual case).
        escapes = {escape for _, escape in self.fields}
        self.escape = escapes.pop() if len(self.fields) > 1 and len(escapes) == 1 else None
        self.get = itemgetter(*(name for name, _ in self.fields)) if self.escape is not None else None

    def render(self, values: Mapping[str, str]) -> str:
        if self.text is not None:
            return self.text
        if self.get is not None:
            assert self.escape is not None
            return self.fmt % tuple(map(self.escape, self.get(values)))
        return self.fmt % tuple([escape(values[name]) for name, escape in self.fields])


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
