"""Target options that presets brought (pure): OAuth2 client credentials, answers that count as
delivered, and signing-secret rotation, validated. `gateway.config.load` validates the rest of a
target and calls `options_from_dict` for these keys; the values are the model's
(gateway/config/targets.py: `OAuth2`, and the Target's fields).

- `oauth2 = { token_url = "...", client_id = "${ID}", client_secret = "${SECRET}", scope = "..." }`:
  a token is fetched from `token_url` with HTTP Basic client_id:client_secret and sent as
  `Authorization: Bearer` (gateway/delivery/oauth2.py). Only `${ENV}`, never a %placeholder%:
  the token belongs to the target, not to an invitation.
- `delivered_statuses = [409]` or `{ 404 = "already invited" }`: these answers (with that text
  in the body, when given) are recorded as delivered: "already done" is not a failure.
- `previous_signing_secret = "${OLD}"`, `previous_signing_secret_until = 2026-12-01T00:00:00Z`:
  until then every request carries two signatures in `webhook-signature`, the new secret's and
  the previous one's, so receivers can switch secrets at their own pace.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from gateway.config.targets import OAuth2, Target
from gateway.config.values import check_whsec
from gateway.exceptions import ConfigError
from gateway.templating import Template

OPTION_KEYS = (
    "preset",
    "oauth2",
    "delivered_statuses",
    "previous_signing_secret",
    "previous_signing_secret_until",
)
_OAUTH2_KEYS = frozenset({"token_url", "client_id", "client_secret", "scope"})


def options_from_dict(
    data: Mapping[str, Any], target: str, environ: Mapping[str, str] | None
) -> dict[str, Any]:
    """The Target fields of these options, validated (ConfigError naming target and key)."""
    fields: dict[str, Any] = {}
    if "oauth2" in data:
        fields["oauth2"] = _oauth2(data["oauth2"], data, target, environ)
    if "delivered_statuses" in data:
        fields["delivered_statuses"] = _delivered_statuses(data["delivered_statuses"], target)
    if "previous_signing_secret" in data or "previous_signing_secret_until" in data:
        fields.update(_previous_secret(data, target, environ))
    return fields


def options_env_key(target: Target, ref: str) -> str | None:
    """Which of these keys holds the `${NAME}` reference `ref`, if one does."""
    if target.oauth2 is not None and any(ref in part for part in target.oauth2.templates()):
        return "oauth2"
    if target.previous_signing_secret is not None and ref in target.previous_signing_secret:
        return "previous_signing_secret"
    return None


def _env_only(value: object, target: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"must be a non-empty string, got {value!r}", target, key)
    placeholders = Template.parse(value).placeholders()
    if placeholders:
        raise ConfigError(
            f"cannot use %{sorted(placeholders)[0]}%: only ${{ENV_VAR}} references are allowed", target, key
        )
    return value


def _expand(value: str, environ: Mapping[str, str] | None, target: str, key: str) -> str | None:
    """The value with its ${ENV} filled in; None when it needs an environment there is not."""
    template = Template.parse(value)
    names = template.env_names()
    if names and environ is None:
        return None
    missing = sorted(n for n in names if n not in (environ or {}))
    if missing:
        raise ConfigError(f"environment variable {missing[0]} is not set", target, key)
    return template.render({}, str, environ or {})


def _oauth2(value: object, data: Mapping[str, Any], target: str, environ: Mapping[str, str] | None) -> OAuth2:
    if not isinstance(value, dict):
        raise ConfigError(
            'must be { token_url = "https://...", client_id = "${ID}", client_secret = "${SECRET}" }',
            target,
            "oauth2",
        )
    unknown = sorted(set(value) - _OAUTH2_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key (known: {', '.join(sorted(_OAUTH2_KEYS))})", target, f"oauth2.{unknown[0]}"
        )
    for key in ("token_url", "client_id", "client_secret"):
        if key not in value:
            raise ConfigError("is required", target, f"oauth2.{key}")
    parts = {k: _env_only(v, target, f"oauth2.{k}") for k, v in value.items()}
    # The URL's shape, with a stand-in for each ${ENV} and then with the real values.
    for url in (
        Template.parse(parts["token_url"]).render({}, str, _stand_ins(parts["token_url"])),
        _expand(parts["token_url"], environ, target, "oauth2.token_url"),
    ):
        if url is None:
            continue
        try:
            split = urlsplit(url)
        except ValueError:  # a stray [ or ] in the host
            split = urlsplit("")
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ConfigError("must be an http:// or https:// URL", target, "oauth2.token_url")
    for key in ("client_id", "client_secret", "scope"):
        if key in parts:
            _expand(parts[key], environ, target, f"oauth2.{key}")
    headers = data.get("headers", {})
    if "auth" in data or (isinstance(headers, dict) and any(h.lower() == "authorization" for h in headers)):
        raise ConfigError(
            "sets the Authorization header (Bearer): remove auth or the Authorization header",
            target,
            "oauth2",
        )
    return OAuth2(parts["token_url"], parts["client_id"], parts["client_secret"], parts.get("scope"))


def _stand_ins(text: str) -> dict[str, str]:
    return {n: "envvalue" for n in Template.parse(text).env_names()}


def _delivered_statuses(value: object, target: str) -> tuple[tuple[int, str], ...]:
    hint = 'must be a list of status codes ([409]) or a table of code = "text the body contains"'
    items: list[tuple[object, object]]
    if isinstance(value, list):
        items = [(code, "") for code in value]
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        raise ConfigError(hint, target, "delivered_statuses")
    out: list[tuple[int, str]] = []
    for code, text in items:
        if isinstance(code, str) and code.isdigit():
            code = int(code)
        if isinstance(code, bool) or not isinstance(code, int) or not 300 <= code <= 599:
            raise ConfigError(
                f"{hint}; status codes from 300 to 599, got {code!r}", target, "delivered_statuses"
            )
        if not isinstance(text, str):
            raise ConfigError(f"{hint}; got {text!r} for {code}", target, "delivered_statuses")
        out.append((code, text))
    if not out:
        raise ConfigError(hint, target, "delivered_statuses")
    return tuple(out)


def _previous_secret(
    data: Mapping[str, Any], target: str, environ: Mapping[str, str] | None
) -> dict[str, Any]:
    secret = data.get("previous_signing_secret")
    until = data.get("previous_signing_secret_until")
    if secret is None or until is None:
        raise ConfigError(
            "previous_signing_secret and previous_signing_secret_until go together",
            target,
            "previous_signing_secret" if secret is None else "previous_signing_secret_until",
        )
    if data.get("signing_secret") is None:
        raise ConfigError("needs signing_secret (the new secret)", target, "previous_signing_secret")
    key = "previous_signing_secret"
    _env_only(secret, target, key)
    expanded = secret if "${" not in secret else _expand(secret, environ, target, key)
    if expanded is not None:
        check_whsec(expanded, target, key)
    when: datetime | None = None
    if isinstance(until, datetime):
        when = until
    elif isinstance(until, str):
        try:
            when = datetime.fromisoformat(until.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            when = None
    if when is None or when.tzinfo is None:
        raise ConfigError(
            f"must be a date and time with its offset, like 2026-12-01T00:00:00Z, got {until!r}",
            target,
            "previous_signing_secret_until",
        )
    text = until if isinstance(until, str) else when.isoformat()
    return {
        "previous_signing_secret": secret,
        "previous_signing_secret_until": text,
        "previous_signing_secret_expires": when.timestamp(),
    }
