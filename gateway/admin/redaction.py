"""Secrets in target declarations: hidden in what the admin side shows, kept on the way back.

A secret is a string value under a secret-sounding key (password, signing_secret, client_secret,
an Authorization or X-Api-Key header, a vars entry named like a key or token), at any depth, and
the password in a proxy URL; an ${ENV} reference is not one (it names, it does not hold).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

REDACTED = "********"
_SECRETISH = re.compile(r"(?i)auth|key|token|secret|passw|cookie|signature|credential")


def _secret_key(key: str) -> bool:
    """A key whose string value is a secret: a password, a token, an API key header (not a URL)."""
    return bool(_SECRETISH.search(key)) and not key.endswith(("_url", "_until"))


def _is_env_ref(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", value) is not None


def _hide_url_password(url: str) -> str:
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1" + REDACTED + "@", url)


def redact(target: Mapping[str, Any]) -> dict[str, Any]:
    """A target's declaration with its secrets replaced by REDACTED (an ${ENV} reference stays).

    Secrets: string values under a secret-sounding key (password, signing_secret, client_secret,
    an Authorization or X-Api-Key header, a vars entry named like a key or token), at any depth
    (auth, headers, vars, oauth2, lookups), and the password in a proxy URL.
    """

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        if isinstance(value, str):
            if key == "proxy":
                return _hide_url_password(value)
            if _secret_key(key) and not _is_env_ref(value):
                return REDACTED
        return value

    out: dict[str, Any] = walk(dict(target), "")
    return out


def unredact(data: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with each REDACTED value replaced by the current target's at the same place."""

    def walk(new: Any, old: Any) -> Any:
        if new == REDACTED:
            return old
        if (
            isinstance(new, str)
            and REDACTED in new
            and isinstance(old, str)
            and new == _hide_url_password(old)
        ):
            return old
        if isinstance(new, dict):
            olds = old if isinstance(old, dict) else {}
            return {k: walk(v, olds.get(k)) for k, v in new.items()}
        return new

    out: dict[str, Any] = walk(dict(data), dict(current))
    return out


def secret_values(target: Mapping[str, Any]) -> list[str]:
    """The literal secrets of a declaration (what `redact` hides), longest first."""
    found: list[str] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and len(value) >= 3 and _secret_key(key) and not _is_env_ref(value):
            found.append(value)
        elif isinstance(value, str) and key == "proxy":
            match = re.search(r"://[^/:@]*:([^@/]*)@", value)
            if match and len(match[1]) >= 3:
                found.append(match[1])

    walk(dict(target), "")
    return sorted(set(found), key=len, reverse=True)


def scrub(data: Any, secrets: Sequence[str]) -> Any:
    """`data` (JSON-like) with every occurrence of each secret replaced by REDACTED."""
    if not secrets:
        return data
    if isinstance(data, str):
        for secret in secrets:
            data = data.replace(secret, REDACTED)
        return data
    if isinstance(data, dict):
        return {k: scrub(v, secrets) for k, v in data.items()}
    if isinstance(data, list):
        return [scrub(v, secrets) for v in data]
    return data
