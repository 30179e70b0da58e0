"""The dashboard's session cookie: signed with HMAC-SHA256, holding a CSRF token (pure).

The cookie carries no secret: the id of the signed-in key (checked again on every request, so a
revoked key ends its sessions at once), a random CSRF token, and the time it was issued. It is
signed, not encrypted. The secret comes from `GATEWAY_SESSION_SECRET`; without it each process
makes a random one, which is fine for one web process but not for several (a cookie signed by
one process is refused by the next) nor across restarts (everyone is signed out).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gateway.exceptions import ConfigError

log = logging.getLogger("gateway.admin.sessions")

COOKIE_NAME = "gw_dashboard"
MAX_AGE = 12 * 3600  # a session lasts a working day; signing in again is cheap
MIN_SECRET_LENGTH = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def session_secret(environ: Mapping[str, str]) -> bytes:
    """`GATEWAY_SESSION_SECRET`, or a random per-process secret (with a warning)."""
    raw = environ.get("GATEWAY_SESSION_SECRET", "")
    if raw:
        if len(raw) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"must be at least {MIN_SECRET_LENGTH} characters (`gateway tokens new` makes one)",
                None,
                "GATEWAY_SESSION_SECRET",
            )
        return raw.encode()
    log.warning(
        "GATEWAY_SESSION_SECRET is not set: dashboard sessions are signed with a random secret of "
        "this process, so they end when it restarts and do not work across several web processes"
    )
    return secrets.token_bytes(32)


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    issued_at: int
    key_id: str | None = None  # None: not signed in (the sign-in form still needs a CSRF token)
    flashes: tuple[tuple[str, str], ...] = ()  # (kind, text) shown once, on the next page

    def with_flash(self, kind: str, text: str) -> Session:
        return replace(self, flashes=(*self.flashes, (kind, text[:300]))[-3:])

    def without_flashes(self) -> Session:
        return replace(self, flashes=())

    @classmethod
    def new(cls, key_id: str | None = None, now: float | None = None) -> Session:
        return cls(secrets.token_urlsafe(24), int(time.time() if now is None else now), key_id)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"c": self.csrf, "t": self.issued_at, "k": self.key_id}
        if self.flashes:
            data["f"] = [list(f) for f in self.flashes]
        return data

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf.encode(), (presented or "").encode())


class SessionCodec:
    """`payload.signature`, both base64url; the signature covers the cookie name too."""

    def __init__(self, secret: bytes, max_age: int = MAX_AGE) -> None:
        self._key = hashlib.sha256(b"gateway dashboard session\x00" + secret).digest()
        self.max_age = max_age

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._key, f"{COOKIE_NAME}={payload}".encode(), hashlib.sha256)
        return _b64(mac.digest())

    def dumps(self, session: Session) -> str:
        payload = _b64(json.dumps(session.to_dict(), separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def loads(self, value: str | None, now: float | None = None) -> Session | None:
        """The session, or None when the cookie is absent, forged, malformed or too old."""
        if not value or value.count(".") != 1:
            return None
        payload, signature = value.split(".")
        if not hmac.compare_digest(self._sign(payload).encode(), signature.encode()):
            return None
        try:
            data = json.loads(_unb64(payload))
            flashes = tuple((str(kind), str(text)) for kind, text in data.get("f", ()))
            session = Session(
                str(data["c"]), int(data["t"]), str(data["k"]) if data.get("k") else None, flashes
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        age = (time.time() if now is None else now) - session.issued_at
        if not -300 <= age <= self.max_age:  # a few minutes of clock skew between processes
            return None
        return session
