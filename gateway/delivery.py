"""One delivery: render the target's request, send it, classify the answer, record the attempt.

The delivery logic (`build_request`, `classify`, `attempt_delivery`) knows nothing about RQ, so
deliveries can later be grouped into jobs differently without changing what a delivery means.
`deliver` is the RQ job: it turns an outcome into RQ's vocabulary (return a `Retry` to be run
again on the target's schedule, raise to land in RQ's failed-job registry).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any

from gateway.events import InvitationEvent
from gateway.exceptions import ConfigError, PermanentDelivery, RetryableDelivery
from gateway.queue import CRASH_RETRY, delivery_id
from gateway.sender import OutboundRequest, Response, Sender, SendError
from gateway.settings import LiveConfig, Settings
from gateway.store import DELIVERED, FAILED, RETRYING, SKIPPED, Store, now_ms
from gateway.targets import Target
from gateway.templating import Template, escape_header, escape_url

log = logging.getLogger("gateway.delivery")

RETRYABLE_STATUSES = frozenset({408, 425, 429})
MAX_RETRY_AFTER = 86400


@lru_cache(maxsize=1024)
def _template(source: str) -> Template:
    return Template.parse(source)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """A Standard Webhooks signature: v1,base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, to_sign, hashlib.sha256).digest()).decode()


def build_request(
    target: Target, event: InvitationEvent, environ: Mapping[str, str], now: float | None = None
) -> OutboundRequest:
    """Render the target's request for this event. Raises ConfigError for a missing ${VAR}."""
    did = delivery_id(event.id, target.name)
    values = {**event.placeholders(), "delivery_id": did, **dict(target.vars)}
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
    if target.signing_secret is not None:
        secret = _template(target.signing_secret).render(values, escape_header, environ)
        ts = int(time.time() if now is None else now)
        headers += [
            ("webhook-id", did),
            ("webhook-timestamp", str(ts)),
            ("webhook-signature", sign(secret, did, ts, body or b"")),
        ]
    return OutboundRequest(target.method, url, tuple(headers), body, target.timeout)


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
        # RQ schedules in whole seconds, rounding down: one second more keeps it a floor.
        delay = max(delay, math.ceil(retry_after) + 1)
    return delay


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # delivered | retrying | failed
    record: dict[str, Any]
    retry_in: int | None = None


def attempt_delivery(
    sender: Sender,
    target: Target,
    event: InvitationEvent,
    attempt: int,
    environ: Mapping[str, str],
    rng: random.Random,
) -> Outcome:
    """Make one attempt and decide what comes next. Never raises for a delivery failure."""
    started = time.time()
    record: dict[str, Any] = {
        "attempt": attempt,
        "at": datetime.fromtimestamp(started, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "at_ms": int(started * 1000),
        "status_code": None,
        "latency_ms": None,
        "error": None,
        "response": None,
    }
    retry_after: float | None = None
    try:
        try:
            request = build_request(target, event, environ, now=started)
        except ConfigError:
            raise
        except Exception as exc:
            # A ${VAR} whose value cannot be used (a signing secret that is not base64, a line
            # break in a header): the operator can fix it, so keep trying. The type only: the
            # message could quote the secret.
            log.error(
                "delivery %s: cannot build the request", delivery_id(event.id, target.name), exc_info=False
            )
            raise ConfigError(
                f"cannot build the request ({type(exc).__name__}); check the ${{VARS}}"
            ) from None
        response = sender.send(request)
        record["status_code"] = response.status
        record["latency_ms"] = response.latency_ms
        record["response"] = response.body.decode("utf-8", "replace")
        classify(target, response, time.time())
        return Outcome(DELIVERED, record)
    except ConfigError as exc:
        # A ${VAR} missing on this worker: the operator can fix it, so keep trying.
        record["error"] = f"{exc.reason} on the worker"
    except SendError as exc:
        record["latency_ms"] = exc.latency_ms
        record["error"] = exc.reason
        if exc.blocked:
            return Outcome(FAILED, record)
    except RetryableDelivery as exc:
        record["error"] = exc.reason
        retry_after = exc.retry_after
    except PermanentDelivery as exc:
        record["error"] = exc.reason
        return Outcome(FAILED, record)
    delay = retry_delay(target, attempt, retry_after, rng)
    if delay is None:
        record["error"] = f"{record['error']} (no retries left after {attempt} attempts)"
        return Outcome(FAILED, record)
    return Outcome(RETRYING, record, retry_in=delay)


# -- the RQ job -------------------------------------------------------------------------------


class _WorkerContext:
    """Per-process state of a worker: settings, live configuration, HTTP pool."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.live = LiveConfig(store)
        self.sender = Sender()
        self.rng = random.Random()  # noqa: S311 - jitter, not security


_context: _WorkerContext | None = None


def worker_context(redis: Any) -> _WorkerContext:
    global _context
    if _context is None or _context.store.redis is not redis:
        settings = Settings.from_env()
        store = Store(redis, prefix=settings.prefix, retention=settings.retention_days * 86400)
        _context = _WorkerContext(store, settings)
    return _context


def deliver(event_id: str, target_name: str) -> Any:
    """The RQ job for one (event, target) delivery."""
    from rq import Retry, get_current_job

    job = get_current_job()
    assert job is not None, "deliver() runs inside an RQ job"
    ctx = worker_context(job.connection)
    store = ctx.store
    event = store.get_event(event_id)
    if event is None:
        log.warning("event %s is gone (expired?); delivery to %s dropped", event_id, target_name)
        return "event expired"
    config = ctx.live.refresh(store.config_version())
    target = config.target(target_name)
    state = store.get_delivery(event_id, target_name) or {"attempts": 0}
    if state.get("status") == DELIVERED:
        return "already delivered"  # a duplicate run (at-least-once): do not send twice
    attempts = int(state.get("attempts", 0)) + 1
    if target is None:
        note = {"attempt": attempts, "at_ms": now_ms(), "error": "target no longer configured"}
        store.record_attempt(
            event_id, target_name, note, {**state, "status": SKIPPED, "updated_at": now_ms()}
        )
        return "target removed"

    ctx.sender.allow_private = ctx.settings.allow_private_targets or config.allow_private_targets
    outcome = attempt_delivery(ctx.sender, target, event, attempts, os.environ, ctx.rng)
    new_state = {
        "status": outcome.status,
        "attempts": attempts,
        "last_status_code": outcome.record["status_code"],
        "last_error": outcome.record["error"],
        "updated_at": now_ms(),
        "next_attempt_at": now_ms() + outcome.retry_in * 1000 if outcome.retry_in is not None else None,
    }
    store.record_attempt(event_id, target_name, {**outcome.record, "outcome": outcome.status}, new_state)
    log.info(
        "delivery %s attempt %d: %s%s",
        delivery_id(event_id, target_name),
        attempts,
        outcome.status,
        f" ({outcome.record['error']})" if outcome.record["error"] else "",
    )
    if outcome.status == DELIVERED:
        return {"status": DELIVERED, "attempts": attempts, "status_code": outcome.record["status_code"]}
    if outcome.status == RETRYING:
        assert outcome.retry_in is not None
        # Our own attempt count decides; RQ's max is only a backstop above it.
        return Retry(max=len(target.retry) + CRASH_RETRY.max, interval=[outcome.retry_in])
    # Failed for good: no RQ retry, but RQ's failed-job registry must see it.
    job.retries_left = 0
    raise PermanentDelivery(f"delivery to {target_name} failed: {outcome.record['error']}")
