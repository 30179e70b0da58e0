"""What the ingest reads of a request's scope (gateway/ingest/callback.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.ingest.callback import Callback

_NAMES = st.sampled_from([b"host", b"content-type", b"content-length", b"authorization", b"x-other"])
_VALUES = st.sampled_from(
    [b"", b"application/json", b"42", b"Bearer abc", b"bearer  xyz ", b"Basic x", b"Bearer ", b"\xe9t\xe9"]
)


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


def _first(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


@given(
    st.lists(st.tuples(_NAMES, _VALUES), max_size=8),
    st.sampled_from([b"", b"token=q1", b"a=1&token=", b"invitee=1"]),
    st.sampled_from([None, "", "p1"]),
)
def test_headers_read_once_are_the_first_of_each(
    headers: list[tuple[bytes, bytes]], query: bytes, token: str | None
) -> None:
    # Found in one pass when the Callback is made: what a lookup of each (`header`) finds, and the
    # token presented as the path, then ?token=, then the first Authorization header's Bearer.
    scope = {"method": "POST", "query_string": query, "headers": headers, "client": ("127.0.0.1", 1)}
    callback = Callback(scope, _receive, token)
    assert callback.content_type == callback.header(b"content-type") == _first(headers, b"content-type")
    assert callback.content_length == callback.header(b"content-length") == _first(headers, b"content-length")
    expected = token or None
    if expected is None and query == b"token=q1":
        expected = "q1"
    auth = _first(headers, b"authorization")
    if expected is None and auth is not None and auth[:7].lower() == "bearer ":
        expected = auth[7:].strip() or None
    assert callback.presented == expected
