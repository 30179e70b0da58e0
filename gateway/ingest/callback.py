"""What the ingest reads of a callback request, straight from the ASGI scope: no Starlette
objects built per callback, and no Starlette here (who may call, gateway/ingest/tokens.py,
reads a Callback too)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

# The ASGI types, as starlette.types spells them.
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class Callback:
    """What the ingest reads of a request, straight from the ASGI scope.

    The fast path (gateway/app.py) builds one per callback instead of a Starlette `Request`,
    whose headers, client and path parameters are objects built on first use.
    """

    __slots__ = (
        "content_length",
        "content_type",
        "headers",
        "method",
        "peer",
        "presented",
        "query",
        "receive",
        "token",
    )

    def __init__(self, scope: Scope, receive: Receive, token: str | None = None) -> None:
        self.method: str = scope["method"]
        self.query: bytes = scope.get("query_string", b"")
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]  # names in lower case (ASGI)
        client = scope.get("client")
        self.peer: str | None = client[0] if client else None
        self.token = token  # the path segment /invitation_created/<token>
        self.receive = receive
        # What the ingest reads of the headers (`header(name)`: the first one of each), found in
        # one pass here: the endpoint, the body's reader and the callbacks inspector each need
        # one or two, and a lookup each is a call and a pass of its own.
        content_type = content_length = auth = None
        for key, value in self.headers:
            if key == b"content-type":
                if content_type is None:
                    content_type = value.decode("latin-1")
            elif key == b"content-length":
                if content_length is None:
                    content_length = value.decode("latin-1")
            elif key == b"authorization" and auth is None:
                auth = value.decode("latin-1")
        self.content_type: str | None = content_type
        self.content_length: str | None = content_length
        # The token it presents, wherever (gateway/ingest/tokens.py `presented_token`): looked
        # for once here, as the caller check and the callbacks inspector each need it.
        presented = token or None
        if presented is None:
            if b"token=" in self.query:
                presented = _query_token(self.query)
            if presented is None and auth is not None and auth[:7].lower() == "bearer ":  # the first one
                presented = auth[7:].strip() or None
        self.presented: str | None = presented

    def header(self, name: bytes) -> str | None:
        """The first value of a header (`name` in lower case)."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    def header_list(self, name: bytes) -> list[str]:
        return [value.decode("latin-1") for key, value in self.headers if key == name]


def _query_token(query: bytes) -> str | None:
    for name, value in parse_qsl(query.decode("latin-1")):
        if name == "token" and value:
            return value
    return None
