"""One value of a target's declaration, validated: each function returns the value or raises a
ConfigError naming the target and the key (pure)."""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

from gateway.config.targets import DEFAULT_PAUSE_FAILURES, DEFAULT_PAUSE_SECONDS, Rate
from gateway.exceptions import ConfigError

MAX_CONCURRENCY = 1000
MAX_PAUSE_FAILURES = 100_000
MAX_PAUSE_SECONDS = 7 * 86400
MAX_ORDER_BOUND = 365 * 86400
# "1/s", "200/s", "20/m", "20/min", "1000/h"; at most 9 digits.
_RATE = re.compile(r"([1-9][0-9]{0,8})/(s|m|min|h)")
_RATE_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600}
# "90s", "5m", "1h", "2d"; at most 9 digits.
_DURATION = re.compile(r"([1-9][0-9]{0,8})(s|m|h|d)")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PAUSE_KEYS = frozenset({"failures", "seconds"})


def str_list(value: object, target: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError("must be a non-empty list of non-empty strings", target, key)
    return tuple(value)


def nonempty_string(value: object, target: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"must be a non-empty string, got {value!r}", target, key)
    return value


def parse_rate(value: object, target: str) -> Rate:
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(f'must be like "1/s", "200/s", "20/m" or "1000/h", got {value!r}', target, "rate")
    return Rate(count=int(match[1]), per=_RATE_UNITS[match[2]])


def parse_concurrency(value: object, target: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise ConfigError(
            f"must be a whole number from 1 to {MAX_CONCURRENCY} (leave it out for no limit), got {value!r}",
            target,
            "concurrency",
        )
    return value


def parse_duration(value: object, target: str, key: str, most: int) -> int:
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


def parse_order_bound(value: object, target: str) -> int:
    """`accepted_waits_for_created`: a duration, or false (0) for "never wait"."""
    if value is False or (value == 0 and not isinstance(value, bool)):
        return 0
    try:
        return parse_duration(value, target, "accepted_waits_for_created", MAX_ORDER_BOUND)
    except ConfigError:
        raise ConfigError(
            f'must be a duration like "30m", "6h", "2d" (up to {MAX_ORDER_BOUND // 86400} days), or '
            f"false: accepted deliveries then never wait for created ones, got {value!r}",
            target,
            "accepted_waits_for_created",
        ) from None


def bounded_int(value: object, low: int, high: int, what: str, target: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"must be {what} from {low} to {high}, got {value!r}", target, key)
    return value


def parse_pause_after(value: object, target: str) -> tuple[int, int]:
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
    failures = bounded_int(
        value.get("failures", DEFAULT_PAUSE_FAILURES),
        0,
        MAX_PAUSE_FAILURES,
        "a number of consecutive failures",
        target,
        "pause_after.failures",
    )
    seconds = bounded_int(
        value.get("seconds", DEFAULT_PAUSE_SECONDS),
        0,
        MAX_PAUSE_SECONDS,
        "whole seconds",
        target,
        "pause_after.seconds",
    )
    return failures, seconds


def check_proxy(proxy: str, target: str, expanded: bool = False) -> None:
    """An http(s) proxy URL with a host; user:password@ is allowed (and never quoted back)."""
    if "${" in proxy and not expanded:
        return  # checked with the environment, in gateway.config.checks
    if any(c in proxy for c in " \t\r\n\0"):
        raise ConfigError("must not contain spaces or control characters", target, "proxy")
    shown = "" if expanded else f", got {hide_password(proxy)!r}"
    try:
        parts = urlsplit(proxy)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"must be an http:// or https:// proxy URL{shown}", target, "proxy") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"must be an http:// or https:// proxy URL{shown}", target, "proxy")


def hide_password(url: str) -> str:
    """A URL with the password of its user:password@ shown as ***."""
    head, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{head}://{userinfo.split(':', 1)[0]}:***@{host}"


def check_secret(secret: str, target: str, expanded: bool = False) -> None:
    """A signing secret as written: whsec_..., or ${ENV} (checked with the environment, later)."""
    if "${" in secret and not expanded:
        return  # checked with the environment, in gateway.config.checks
    check_whsec(secret, target, "signing_secret")


def check_whsec(secret: str, target: str, key: str) -> None:
    """A Standard Webhooks secret: whsec_ and the base64 of 24 to 64 bytes."""
    if not secret.startswith("whsec_"):
        raise ConfigError("must be whsec_ followed by base64 (or ${ENV_VAR} holding one)", target, key)
    try:
        raw = base64.b64decode(secret[len("whsec_") :], validate=True)
    except binascii.Error:
        raise ConfigError("is not valid base64 after whsec_", target, key) from None
    if not 24 <= len(raw) <= 64:
        raise ConfigError("must decode to 24 to 64 bytes", target, key)
