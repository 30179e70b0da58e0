"""Refused callbacks say what is wrong (problem+json naming the field and reason) and are logged:
issue 8, point 8, through a real `gateway web` (uvicorn)."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import TYPE_CHECKING, Any

import pytest
from e2e_support import HttpResponse, RawResponse, build_request, http_call, raw_exchange, wait_until

if TYPE_CHECKING:
    from conftest import Gateway

FORM = b"invitee=%2B447700900123&invitor=alice&network_id=mynetwork"


def check_problem(resp: HttpResponse | RawResponse, status: int, field: str, reason: str) -> dict[str, Any]:
    assert resp.status == status, resp.body
    if isinstance(resp, RawResponse):
        content_type = resp.header("content-type") or ""
    else:
        content_type = resp.headers["content-type"]
    assert content_type.startswith("application/problem+json")
    body: dict[str, Any] = json.loads(resp.body)
    assert body["status"] == status
    assert body["field"] == field, body
    assert reason in body["detail"], body
    assert body["invalid-params"] == [{"name": field, "reason": body["detail"]}]
    return body


@pytest.fixture
def web(gateway: Gateway) -> str:
    return gateway.start_web(GATEWAY_MAX_BODY="1024")


def test_a_body_over_the_limit_is_413_and_logged(gateway: Gateway, web: str) -> None:
    big = b"invitee=1&pad=" + b"x" * 2000
    resp = http_call(web, "POST", "/invitation_created", big, {"Content-Type": FORM_TYPE})
    check_problem(resp, 413, "body", "over the limit of 1024 bytes")
    # Chunked: no Content-Length to refuse it by, the count while reading does.
    chunk = b"x" * 700
    data = (
        b"POST /invitation_created HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 3
        + b"0\r\n\r\n"
    )
    raw = raw_exchange(web, data)
    check_problem(raw, 413, "body", "over the limit")
    wait_until(lambda: gateway.logs().count("over the limit of 1024 bytes") >= 2, "two 413s logged")
    assert "rejected invitation_created" in gateway.logs()


def test_a_binary_body_is_415_not_a_missing_field(gateway: Gateway, web: str) -> None:
    resp = http_call(
        web,
        "POST",
        "/invitation_created",
        bytes(range(256)),
        {"Content-Type": "application/octet-stream"},
    )
    check_problem(resp, 415, "Content-Type", "binary application/octet-stream")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_compressed_body_is_415_naming_the_encoding(web: str, encoding: str) -> None:
    body = {"gzip": gzip.compress(FORM), "deflate": zlib.compress(FORM)}.get(encoding, FORM)
    resp = http_call(
        web,
        "POST",
        "/invitation_created",
        body,
        {"Content-Type": FORM_TYPE, "Content-Encoding": encoding},
    )
    if encoding == "br":
        # Labelled compressed but plain: read as it is (the label is a hint, like Content-Type).
        assert resp.status == 204, resp.body
        return
    check_problem(resp, 415, "Content-Encoding", f"Content-Encoding {encoding} is not supported")


def test_a_gzip_body_without_its_header_is_415(web: str) -> None:
    resp = http_call(web, "POST", "/invitation_created", gzip.compress(FORM), {"Content-Type": FORM_TYPE})
    check_problem(resp, 415, "Content-Encoding", "gzip-compressed")


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
def test_a_json_array_must_be_an_object(web: str, content_type: str) -> None:
    body = json.dumps([{"invitee": "+447700900123", "invitor": "a", "network_id": "mynetwork"}]).encode()
    resp = http_call(web, "POST", "/invitation_created", body, {"Content-Type": content_type})
    check_problem(resp, 400, "body", "must be a JSON object, got an array")


def test_a_missing_field_names_it(web: str) -> None:
    resp = http_call(web, "GET", "/invitation_created?invitor=a&network_id=mynetwork")
    check_problem(resp, 400, "invitee", "invitee is missing")


def test_other_methods_and_paths_are_problems_too(web: str) -> None:
    resp = raw_exchange(
        web, build_request("DELETE", "/invitation_created", [("Host", "x"), ("Connection", "close")])
    )
    assert resp.status == 405
    assert (resp.header("content-type") or "").startswith("application/problem+json")
    # HEAD (a monitor, a link checker) must not store an invitation.
    head = http_call(web, "HEAD", "/invitation_created?invitee=%2B447700900123&invitor=a&network_id=n")
    assert head.status == 405 and head.headers["allow"] == "GET, POST"
    resp2 = http_call(web, "GET", "/nothing-here")
    assert resp2.status == 404
    assert resp2.headers["content-type"].startswith("application/problem+json")


FORM_TYPE = "application/x-www-form-urlencoded"
