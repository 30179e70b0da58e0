"""Every error the gateway raises on purpose.

GatewayError
├── ProblemError              answered as application/problem+json (problem_document)
│   ├── CallbackError         an inbound callback we refuse
│   │   ├── InvalidCallback   400: a field is missing or malformed
│   │   ├── UnsupportedBody   415: the body is in no shape we recognise
│   │   ├── Unauthorized      401: no ingest token, or one that opens nothing
│   │   ├── Forbidden         403: the token or the caller's address is not for this network
│   │   ├── PayloadTooLarge   413: the body is over the configured cap
│   │   ├── Limited           429: kept but held back by a limit (only with limited_status = 429)
│   │   └── StoreUnavailable  503: Redis could not take the invitation
│   └── AdminError            the admin API and dashboard (gateway/admin/__init__.py): 404, 409, 422
├── ConfigError               a broken target or setting, found at load time
│   └── ConfigErrors          several of them, every problem of a file at once
├── NotDurable                Redis did not confirm a write at GATEWAY_DURABILITY (it is spooled)
└── DeliveryError             one delivery attempt did not succeed
    ├── RetryableDelivery     try again later (connection error, timeout, 408, 429, 5xx)
    └── PermanentDelivery     do not try again (other 4xx, a template that cannot render)
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base class for the gateway's own errors."""


class ProblemError(GatewayError):
    """An error answered with an RFC 9457 problem document (see problem_document)."""

    status_code = 400
    title = "Bad request"

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


def problem_document(
    status: int,
    title: str,
    detail: str,
    field: str | None = None,
    problems: list[tuple[str | None, str]] | None = None,
) -> dict[str, Any]:
    """The body of an application/problem+json answer; `problems`: every (field, reason) found."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if field is not None or problems:
        body["field"] = field
        body["invalid-params"] = [{"name": n, "reason": r} for n, r in (problems or [(field, detail)])]
    return body


class CallbackError(ProblemError):
    status_code = 400
    title = "Invalid callback"


class InvalidCallback(CallbackError):
    status_code = 400
    title = "Invalid invitation callback"


class UnsupportedBody(CallbackError):
    status_code = 415
    title = "Unsupported request body"


class Unauthorized(CallbackError):
    status_code = 401
    title = "Ingest token required"


class Forbidden(CallbackError):
    status_code = 403
    title = "Not allowed for this network"


class PayloadTooLarge(CallbackError):
    status_code = 413
    title = "Request body too large"


class Limited(CallbackError):
    status_code = 429
    title = "Invitation held back"


class StoreUnavailable(CallbackError):
    status_code = 503
    title = "Invitation store unavailable"


class NotDurable(GatewayError):
    """Redis ran a batch but did not confirm it on disk or on replicas (GATEWAY_DURABILITY) in time.

    The batch goes to the spool, as when Redis does not answer: a 204 is never sent from a write
    that the configured level does not cover.
    """


class ConfigError(GatewayError):
    """A configuration problem, named by target and key so the operator can find it."""

    def __init__(self, reason: str, target: str | None = None, key: str | None = None) -> None:
        where = ""
        if target is not None:
            where = f"target {target!r}"
            if key is not None:
                where += f", key {key!r}"
        elif key is not None:
            where = f"key {key!r}"
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.target = target
        self.key = key


class ConfigErrors(ConfigError):
    """Every problem found in one configuration, each a ConfigError naming its target and key.

    Its attributes (reason, target, key) are the first problem's; its text lists them all, one
    per line, each prefixed with `source` (the file) when given.
    """

    def __init__(self, errors: list[ConfigError], source: str | None = None) -> None:
        assert errors, "ConfigErrors needs at least one error"
        first = errors[0]
        super().__init__(first.reason, first.target, first.key)
        self.errors = list(errors)
        self.source = source
        self.args = ("\n".join(self.lines()),)

    def lines(self) -> list[str]:
        return [f"{self.source}: {e}" if self.source else str(e) for e in self.errors]


def config_problems(exc: ConfigError) -> list[ConfigError]:
    """The single problems an error holds (itself, or each of several)."""
    return list(exc.errors) if isinstance(exc, ConfigErrors) else [exc]


class DeliveryError(GatewayError):
    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class RetryableDelivery(DeliveryError):
    pass


class PermanentDelivery(DeliveryError):
    pass
