"""The admin side: API keys (keys.py), the data the API and the dashboard share (service.py),
the JSON API under /api/v1 (api.py) and the dashboard.

Its errors, which api.py turns into application/problem+json:

    AdminError         400: the body is missing or is not JSON
     ├── BadParameter  400: a query parameter is not as the API's document says, naming it
     ├── NotFound      404: no such thing, or not one the key may see (the two are not told apart)
     ├── Conflict      409: a name already taken, a file-declared target changed through the API
     └── Invalid       422: a bad value in a body, naming the field
"""

from __future__ import annotations

from gateway.exceptions import ProblemError


class AdminError(ProblemError):
    """What the admin side refuses (api.py answers it as a problem document)."""


class BadParameter(AdminError):
    """A query parameter the OpenAPI document calls invalid (empty, not one of an enum, ...)."""

    status_code = 400
    title = "Invalid query parameter"


class NotFound(AdminError):
    status_code = 404
    title = "Not found"


class Conflict(AdminError):
    status_code = 409
    title = "Conflict"


class Invalid(AdminError):
    """A bad value; `problems` lists every one found (field, reason), the first as `field`/`detail`."""

    status_code = 422
    title = "Invalid value"

    def __init__(
        self, detail: str, field: str | None = None, problems: list[tuple[str | None, str]] | None = None
    ) -> None:
        super().__init__(detail, field)
        self.problems = problems or [(field, detail)]
