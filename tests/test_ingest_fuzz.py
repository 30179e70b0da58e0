"""A property-based fuzz of the ingest endpoint: the ASGI app in this process, a real Redis.

Random methods, paths, query strings, content types, encodings, headers and bodies (valid
callbacks, mangled ones and noise, in one to three body messages). Whatever comes in:
never a 5xx; every 4xx is application/problem+json with its status and a reason (`detail`),
and names the field when one is at fault; every 204 is stored (the event count in Redis grows
by one: duplicates are not folded here, GATEWAY_DEDUPE_SECONDS=0).

The regular suite runs a few hundred cases. The long run (SECURITY.md):

    GATEWAY_FUZZ_EXAMPLES=20000 python -m pytest tests/test_ingest_fuzz.py -q -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from gateway.app import create_app
from gateway.settings import Secret, Settings

EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "300"))
MAX_BODY = 4096
STATS: dict[int, int] = {}

INGEST_PATHS = [
    "/invitation_created",
    "/invitation_accepted",
    "/invitation_created/",
    "/invitation_created/sometoken",
    "/invitation_accepted/x/",
]
OTHER_PATHS = [
    "/healthz",
    "/nothing",
    "/invitation_created/a/b",
    "/%69nvitation_created",
    "//",
    "/invitation_créé",
    "/invitation_created/" + "t" * 300,
]
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"]
CONTENT_TYPES = [
    None,
    "",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=utf-8",
    "application/x-www-form-urlencoded; charset=latin-1",
    "application/x-www-form-urlencoded; charset=nosuch",
    "application/json",
    "application/json; charset=utf-16",
    "text/json",
    "application/xml",
    "text/xml; charset=iso-8859-1",
    "multipart/form-data; boundary=XyZ",
    "multipart/form-data",
    "application/octet-stream",
    "text/plain",
    "image/png",
    "application/vnd.api+json",
    ";;;",
    'application/json; charset="',
]

digits = st.integers(min_value=0, max_value=10**15).map(str)
numbers = st.one_of(
    digits,
    digits.map(lambda d: "+" + d),
    st.sampled_from(["+1 (555) 123-1234", "00447700900123", "+", "", "12", "+1555123123412345678"]),
    st.text(max_size=12),
)
names = st.one_of(
    st.sampled_from(["mynetwork", "alice", "o'brien <x>", "net-1", "a" * 300, "ü€", " "]),
    st.text(max_size=12),
)
field_names = st.sampled_from(["invitee", "invitor", "network_id", "networkId", "to", "x", ""])


@st.composite
def fields(draw: st.DrawFn) -> list[tuple[str, str]]:
    pairs = [("invitee", draw(numbers)), ("invitor", draw(names)), ("network_id", draw(names))]
    if draw(st.integers(0, 3)) == 0:
        pairs = pairs[: draw(st.integers(0, 2))]  # one or more missing
    if draw(st.integers(0, 3)) == 0:
        pairs.append((draw(field_names), draw(names)))  # an extra, or a duplicate
    if draw(st.booleans()):
        pairs.reverse()
    return pairs


def form(pairs: list[tuple[str, str]]) -> bytes:
    return "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs).encode()


def xml(pairs: list[tuple[str, str]]) -> bytes:
    def esc(v: str) -> str:
        return v.replace("&", "&amp;").replace("<", "&lt;")

    inner = "".join(f"<{k or 'x'}>{esc(v)}</{k or 'x'}>" for k, v in pairs if k.isidentifier())
    return f"<invitation>{inner}</invitation>".encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    pairs = draw(fields())
    kind = draw(st.sampled_from(["form", "json", "xml", "json-any", "bytes", "text", "empty", "multipart"]))
    if kind == "form":
        return form(pairs)
    if kind == "json":
        return json.dumps(dict(pairs)).encode()
    if kind == "xml":
        return xml(pairs)
    if kind == "json-any":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "multipart":
        parts = "".join(
            f'--XyZ\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in pairs
        )
        return (parts + "--XyZ--\r\n").encode()
    if kind == "text":
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    return b""


header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=40)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    method = draw(st.sampled_from(["GET", "POST"] * 3 + METHODS))
    # Mostly the ingest (a single sampled_from: hypothesis' mutations of a one_of drift towards
    # its noisiest branch, and the router's 404 for random paths is not what is fuzzed here).
    path = draw(st.sampled_from(INGEST_PATHS * 4 + OTHER_PATHS))
    query = draw(st.one_of(fields().map(form), st.just(b""), fields().map(form), st.binary(max_size=80)))
    body = draw(bodies()) if method != "GET" or draw(st.booleans()) else b""
    headers: list[tuple[bytes, bytes]] = [(b"host", b"gateway.test")]
    content_type = draw(st.one_of(st.sampled_from(CONTENT_TYPES), header_values))
    if content_type is not None:
        headers.append((b"content-type", content_type.encode("latin-1")))
    encoding = draw(st.sampled_from([None, None, "gzip", "identity", "br", "x"]))
    if encoding is not None:
        headers.append((b"content-encoding", encoding.encode()))
    length = draw(st.sampled_from(["right", "right", "none", "huge", "junk"]))
    if length == "right":
        headers.append((b"content-length", str(len(body)).encode()))
    elif length == "huge":
        headers.append((b"content-length", str(MAX_BODY * 10).encode()))
    elif length == "junk":
        headers.append((b"content-length", draw(header_values).encode("latin-1")))
    for name, value in draw(
        st.lists(
            st.tuples(
                st.sampled_from(["authorization", "x-forwarded-for", "x-ingest-token", "cookie", "x-random"]),
                header_values,
            ),
            max_size=3,
        )
    ):
        headers.append((name.encode(), value.encode("latin-1")))
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(body)), max_size=2)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    return {"method": method, "path": path, "query": query, "headers": headers, "chunks": chunks}


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Callbacks the Contacts server could send, so that a good share of cases is stored."""
    pairs = [
        ("invitee", draw(digits.map(lambda d: "+1555" + d[:7].rjust(7, "0")))),
        ("invitor", draw(st.sampled_from(["alice", "bob@example.com", "o'brien <x>", "ü€"]))),
        ("network_id", draw(st.sampled_from(["mynetwork", "net-1", "x"]))),
    ]
    path = draw(st.sampled_from(INGEST_PATHS[:3]))
    kind = draw(st.sampled_from(["query", "form", "json", "xml"]))
    headers = [(b"host", b"gateway.test")]
    if kind == "query":
        return {"method": "GET", "path": path, "query": form(pairs), "headers": headers, "chunks": [b""]}
    body, content_type = {
        "form": (form(pairs), "application/x-www-form-urlencoded"),
        "json": (json.dumps(dict(pairs)).encode(), "application/json"),
        "xml": (xml(pairs), "application/xml"),
    }[kind]
    headers.append((b"content-type", content_type.encode()))
    return {"method": "POST", "path": path, "query": b"", "headers": headers, "chunks": [body]}


class App:
    """The gateway's ASGI app with its lifespan entered, on an event loop of this thread."""

    def __init__(self, redis_url: str, spool_dir: Path) -> None:
        self.settings = Settings(
            redis_url=Secret(redis_url),
            open_ingest=True,
            dedupe_seconds=0,
            max_body=MAX_BODY,
            spool_dir=str(spool_dir),
            data_dir=str(spool_dir),
        )
        self.loop = asyncio.new_event_loop()
        self.app = create_app(self.settings)
        self._lifespan = self.app.app.router.lifespan_context(self.app.app)
        self.loop.run_until_complete(self._lifespan.__aenter__())

    def close(self) -> None:
        self.loop.run_until_complete(self._lifespan.__aexit__(None, None, None))
        self.loop.close()

    def call(self, req: dict[str, Any]) -> tuple[int, dict[bytes, bytes], bytes]:
        return self.loop.run_until_complete(asyncio.wait_for(self._call(req), 10))

    async def _call(self, req: dict[str, Any]) -> tuple[int, dict[bytes, bytes], bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": req["method"],
            "scheme": "http",
            "path": req["path"],
            "raw_path": req["path"].encode("utf-8", "surrogatepass"),
            "query_string": req["query"],
            "root_path": "",
            "headers": req["headers"],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }
        messages = [
            {"type": "http.request", "body": c, "more_body": i < len(req["chunks"]) - 1}
            for i, c in enumerate(req["chunks"])
        ]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await asyncio.sleep(5)  # a second read after the body: only a disconnect comes
            return {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], dict(start["headers"]), body


@pytest.fixture
def app(redis_url: str, tmp_path: Path) -> Iterator[App]:
    a = App(redis_url, tmp_path / "spool")
    try:
        yield a
    finally:
        a.close()


def spooled(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.jsonl")) if directory.is_dir() else 0


@pytest.mark.timeout(max(120, EXAMPLES // 2))  # the long run: 2 cases a second at worst
def test_the_ingest_never_fails_and_always_explains(app: App, redis: Redis, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    STATS.clear()
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(st.one_of(requests(), valid_requests()))
    def one(req: dict[str, Any]) -> None:
        before = int(redis.zcard("gw:events"))
        spool_before = spooled(spool_dir)
        status, headers, body = app.call(req)
        STATS[status] = STATS.get(status, 0) + 1
        assert status < 500, (status, body, req)
        if 400 <= status < 500:
            assert headers[b"content-type"].startswith(b"application/problem+json"), (status, headers, req)
            problem = json.loads(body)
            assert problem["status"] == status
            assert isinstance(problem["detail"], str) and problem["detail"], problem
            if "field" in problem:
                assert problem["invalid-params"] == [{"name": problem["field"], "reason": problem["detail"]}]
        elif status == 204:
            assert req["method"] in ("GET", "POST"), req
            after = int(redis.zcard("gw:events"))
            assert after == before + 1 or spooled(spool_dir) > spool_before, (req, before, after)
        else:
            assert status == 200 and req["path"] == "/healthz", (status, body, req)

    one()
    elapsed = time.monotonic() - started
    # Shown with -s; the long run's figures in SECURITY.md come from here.
    print(f"\nfuzz: {sum(STATS.values())} cases in {elapsed:.1f} s, statuses {dict(sorted(STATS.items()))}")
    assert STATS.get(204, 0) > 0 and STATS.get(400, 0) > 0
