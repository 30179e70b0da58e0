"""Per-network ingest policy: who may call, from where, and how often an invitation may go out (pure).

Declared in the targets file as `[networks.<network id>]` (or `[networks."*"]` for the defaults of
every network):

    [networks.mynetwork]
    tokens = ["${MYNETWORK_TOKEN}", "sha256:9f86d081..."]  # several at once, for rotation
    allow_from = ["203.0.113.0/24"]                          # optional CIDR allowlist
    allowed_prefixes = ["+1", "+44"]                         # E.164 prefixes invitees may have
    limits = [
      { per = "invitee", max = 3, window = "1d" },
      { per = "invitor", max = 20, window = "1h" },
      { per = "prefix", max = 100, window = "1h", digits = 4 },
    ]
    cooldown = "10m"                                         # per invitee number
    guard = { window = "1h", min_created = 20, max_accepted_ratio = 0.05, hold = "6h", digits = 4 }
    default_region = "US"                                    # where national numbers are dialled

A token is never written in the file: `${VAR}` takes it from the web process' environment,
`sha256:<hex>` is its digest (`gateway tokens hash` makes one).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from gateway.exceptions import ConfigError
from gateway.numbers import REGIONS

_DURATION = re.compile(r"([1-9][0-9]{0,6})(s|m|h|d)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ENV_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_PREFIX = re.compile(r"\+[0-9]{1,15}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # a TOML key that needs no quotes
PER = ("invitee", "invitor", "prefix", "network")
_KEYS = frozenset(
    {"tokens", "allow_from", "allowed_prefixes", "limits", "cooldown", "guard", "default_region"}
)
_LIMIT_KEYS = frozenset({"per", "max", "window", "digits"})
_GUARD_KEYS = frozenset({"window", "min_created", "max_accepted_ratio", "hold", "digits"})
DEFAULT_PREFIX_DIGITS = 4


def config_error(reason: str, network: str, key: str | None = None) -> ConfigError:
    """An error in `[networks.<id>]`, named by its path in the file: `networks.mynetwork.limits[0].max`.

    (A network is not a target: the error does not say "target".)
    """
    name = network if _BARE_KEY.fullmatch(network) else json.dumps(network, ensure_ascii=False)
    return ConfigError(reason, None, f"networks.{name}" + (f".{key}" if key else ""))


def parse_duration(value: object, network: str, key: str) -> int:
    """Seconds, from a whole number or "90s", "10m", "1h", "2d"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        return int(m.group(1)) * _UNITS[m.group(2)]
    raise config_error(
        f'must be seconds or a duration like "90s", "10m", "1h", "2d", got {value!r}', network, key
    )


def token_digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Limit:
    per: str  # invitee | invitor | prefix | network
    max: int
    window: int  # seconds
    digits: int = DEFAULT_PREFIX_DIGITS  # for per = "prefix": how many digits after the +
    cooldown: bool = False  # a sliding window from the last one, not fixed buckets

    @property
    def reason(self) -> str:
        if self.cooldown:
            return f"another invitation to this number less than {self.window} s ago (cooldown)"
        what = f"{self.digits}-digit prefix" if self.per == "prefix" else self.per
        invitations = "invitation" if self.max == 1 else "invitations"
        return f"over {self.max} {invitations} per {self.window} s for this {what}"


_GUARD_DEFAULTS: dict[str, Any] = {
    "window": 3600,
    "min_created": 20,
    "max_accepted_ratio": 0.05,
    "hold": 6 * 3600,
    "digits": DEFAULT_PREFIX_DIGITS,
}


@dataclass(frozen=True, slots=True)
class Guard:
    """Hold a destination prefix whose invitations pile up while almost none are accepted."""

    window: int = 3600
    min_created: int = 20
    max_accepted_ratio: float = 0.05
    hold: int = 6 * 3600
    digits: int = DEFAULT_PREFIX_DIGITS


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    network: str
    tokens: tuple[str, ...] = ()  # "${VAR}" or "sha256:<hex>"
    allow_from: tuple[str, ...] = ()
    allowed_prefixes: tuple[str, ...] = ()
    limits: tuple[Limit, ...] = ()
    guard: Guard | None = None
    default_region: str | None = None  # ISO 3166 code: where a number without + was dialled

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return _networks(self.allow_from)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.tokens:
            data["tokens"] = list(self.tokens)
        if self.allow_from:
            data["allow_from"] = list(self.allow_from)
        if self.allowed_prefixes:
            data["allowed_prefixes"] = list(self.allowed_prefixes)
        plain = [lim for lim in self.limits if not lim.cooldown]
        if plain:
            data["limits"] = [
                {"per": lim.per, "max": lim.max, "window": lim.window}
                | ({"digits": lim.digits} if lim.per == "prefix" else {})
                for lim in plain
            ]
        for lim in self.limits:
            if lim.cooldown:
                data["cooldown"] = lim.window
        if self.guard is not None:
            g = self.guard
            data["guard"] = {
                "window": g.window,
                "min_created": g.min_created,
                "max_accepted_ratio": g.max_accepted_ratio,
                "hold": g.hold,
                "digits": g.digits,
            }
        if self.default_region is not None:
            data["default_region"] = self.default_region
        return data


def _strings(value: object, network: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise config_error("must be a list of non-empty strings", network, key)
    return tuple(value)


def _int(value: object, network: str, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise config_error(f"must be a whole number from {low} to {high}, got {value!r}", network, key)
    return value


def policy_from_dict(network: str, data: object, environ: Mapping[str, str] | None = None) -> NetworkPolicy:
    """Validate one `[networks.<id>]` table; with `environ`, its ${VARS} must be set there."""
    where = network
    if not isinstance(data, dict):
        raise config_error("must be a table", where)
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise config_error(f"unknown key (known: {', '.join(sorted(_KEYS))})", where, unknown[0])
    tokens = _strings(data.get("tokens", []), where, "tokens")
    for t in tokens:
        if _DIGEST.fullmatch(t):
            continue
        if not _ENV_REF.fullmatch(t):
            raise config_error(
                "each token must be ${ENV_VAR} or sha256:<64 hex digits> (`gateway tokens hash`): "
                "a token written in the file is a secret in your repository",
                where,
                "tokens",
            )
        if environ is not None and not environ.get(t[2:-1]):
            # Empty is as good as unset: the token would open nothing (TokenTable skips it).
            raise config_error(f"environment variable {t[2:-1]} is not set (or is empty)", where, "tokens")
    allow_from = _strings(data.get("allow_from", []), where, "allow_from")
    for cidr in allow_from:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise config_error(
                f"{cidr!r} is not an IP network like 203.0.113.0/24", where, "allow_from"
            ) from None
    prefixes = _strings(data.get("allowed_prefixes", []), where, "allowed_prefixes")
    for prefix in prefixes:
        if not _PREFIX.fullmatch(prefix):
            raise config_error(
                f"{prefix!r} must be + and 1 to 15 digits, like +1 or +44", where, "allowed_prefixes"
            )
    limits: list[Limit] = []
    raw_limits = data.get("limits", [])
    if not isinstance(raw_limits, list):
        raise config_error(
            'must be a list like [{ per = "invitee", max = 3, window = "1d" }]', where, "limits"
        )
    for i, raw in enumerate(raw_limits):
        key = f"limits[{i}]"
        if not isinstance(raw, dict):
            raise config_error('must be a table like { per = "invitee", max = 3, window = "1d" }', where, key)
        bad = sorted(set(raw) - _LIMIT_KEYS)
        if bad:
            raise config_error(
                f"unknown key (known: {', '.join(sorted(_LIMIT_KEYS))})", where, f"{key}.{bad[0]}"
            )
        per = raw.get("per")
        if per not in PER:
            raise config_error(f"per must be one of {', '.join(PER)}, got {per!r}", where, f"{key}.per")
        if "max" not in raw or "window" not in raw:
            raise config_error("needs max and window", where, key)
        limits.append(
            Limit(
                per=per,
                max=_int(raw["max"], where, f"{key}.max", 1, 10_000_000),
                window=parse_duration(raw["window"], where, f"{key}.window"),
                digits=_int(raw.get("digits", DEFAULT_PREFIX_DIGITS), where, f"{key}.digits", 1, 15),
            )
        )
    if "cooldown" in data:
        limits.append(Limit("invitee", 1, parse_duration(data["cooldown"], where, "cooldown"), cooldown=True))
    guard: Guard | None = None
    if "guard" in data:
        g = data["guard"]
        if not isinstance(g, dict):
            raise config_error("must be a table", where, "guard")
        bad = sorted(set(g) - _GUARD_KEYS)
        if bad:
            raise config_error(
                f"unknown key (known: {', '.join(sorted(_GUARD_KEYS))})", where, f"guard.{bad[0]}"
            )
        ratio = g.get("max_accepted_ratio", _GUARD_DEFAULTS["max_accepted_ratio"])
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 1:
            raise config_error(
                f"must be a number from 0 to below 1, got {ratio!r}", where, "guard.max_accepted_ratio"
            )
        guard = Guard(
            window=parse_duration(g.get("window", _GUARD_DEFAULTS["window"]), where, "guard.window"),
            min_created=_int(
                g.get("min_created", _GUARD_DEFAULTS["min_created"]),
                where,
                "guard.min_created",
                1,
                10_000_000,
            ),
            max_accepted_ratio=float(ratio),
            hold=parse_duration(g.get("hold", _GUARD_DEFAULTS["hold"]), where, "guard.hold"),
            digits=_int(g.get("digits", DEFAULT_PREFIX_DIGITS), where, "guard.digits", 1, 15),
        )
    region = data.get("default_region")
    if region is not None and (not isinstance(region, str) or region not in REGIONS):
        raise config_error(
            f'must be a region code like "US", "GB" or "DE" (ISO 3166-1, upper case), got {region!r}',
            where,
            "default_region",
        )
    return NetworkPolicy(network, tokens, allow_from, prefixes, tuple(limits), guard, region)


def networks_from_dict(data: object, environ: Mapping[str, str] | None = None) -> dict[str, NetworkPolicy]:
    if not isinstance(data, dict):
        raise ConfigError("must be a table of [networks.<network id>] tables", None, "networks")
    return {str(name): policy_from_dict(str(name), table, environ) for name, table in data.items()}


# -- at ingest time ---------------------------------------------------------------------------------


class TokenTable:
    """The digests of every network's tokens, resolved from this process' environment."""

    def __init__(self, policies: Mapping[str, NetworkPolicy], environ: Mapping[str, str]) -> None:
        self._entries: list[tuple[bytes, str]] = []
        self.missing: list[str] = []
        for network, policy in policies.items():
            for ref in policy.tokens:
                if ref.startswith("sha256:"):
                    digest = ref
                else:
                    name = ref[2:-1]
                    if not environ.get(name):
                        self.missing.append(name)
                        continue
                    digest = token_digest(environ[name])
                self._entries.append((digest.encode(), network))

    def __bool__(self) -> bool:
        return bool(self._entries)

    def networks_of(self, token: str) -> set[str]:
        """The networks this token opens; every stored digest is compared in constant time."""
        presented = token_digest(token).encode()
        found = set()
        for digest, network in self._entries:
            if hmac.compare_digest(digest, presented):
                found.add(network)
        return found


def prefix_of(number: str, digits: int) -> str:
    """The first `digits` digits of a number (without its +): the destination prefix."""
    return number.lstrip("+")[:digits]


def prefix_allowed(number: str, allowed: Sequence[str]) -> bool:
    """Whether a number may be invited: its digits must start with an allowed prefix.

    `number`: the digits of its E.164 form, or, for a number that has none (national without a
    default region, impossible), its digits as they are (gateway/numbers.py, `identity`).
    """
    digits = number.lstrip("+")
    return any(digits.startswith(p[1:]) for p in allowed)


@lru_cache(maxsize=1024)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
