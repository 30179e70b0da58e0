"""One web and one worker process fanning one callback out to several real targets, and the
callbacks the web process must refuse without enqueuing anything."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from e2e_support import (
    SETTINGS,
    attempts_of,
    build_request,
    http_call,
    job_keys,
    parse_response,
    queued_job_count,
    raw_exchange,
    read_until_closed,
    store_for,
    the_event_id,
    toml_str,
    wait_final,
    waiting_count,
)
from lxml import etree

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer
    from redis import Redis

INVITOR = 'o\'brien "x" <a&b> +ü€'
INVITEE = "+1 555 123 1234"
INVITEE_NORMALIZED = "+15551231234"
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


def fanout_config(url: str) -> str:
    json_body = (
        '{"invitee": "%invitee%", "invitee_raw": "%invitee_raw%", "invitor": "%invitor%", '
        '"network": "%network_id%", "event": "%event%", "event_id": "%event_id%"}'
    )
    form_body = "to=%invitee%&raw=%invitee_raw%&from=%invitor%&net=%network_id%&kind=%event%"
    xml_body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<invitation event="%event%" from="%invitor%">'
        "<to>%invitee%</to><raw>%invitee_raw%</raw><from>%invitor%</from><net>%network_id%</net>"
        "</invitation>"
    )
    get_url = f"{url}/get?to=%invitee%&from=%invitor%&net=%network_id%&id=%event_id%&raw=%invitee_raw%"
    return (
        SETTINGS
        + f"""
[[targets]]
name = "json-post"
networks = ["mynetwork"]
events = ["invitation_created"]
url = "{url}/json"
content_type = "application/json"
post_data = {toml_str(json_body)}
retry = [1, 1]

[[targets]]
name = "form-post"
networks = ["mynetwork"]
events = ["invitation_created"]
url = "{url}/form"
post_data = {toml_str(form_body)}
retry = [1, 1]

[[targets]]
name = "xml-post"
networks = ["mynetwork"]
events = ["invitation_created"]
url = "{url}/xml"
content_type = "application/xml"
post_data = {toml_str(xml_body)}
retry = [1, 1]

[[targets]]
name = "get-query"
networks = ["mynetwork"]
events = ["invitation_created"]
url = {toml_str(get_url)}
retry = [1, 1]

[[targets]]
name = "other-network"
networks = ["othernetwork"]
url = "{url}/other"
retry = [1, 1]

[[targets]]
name = "accepted-only"
networks = ["mynetwork"]
events = ["invitation_accepted"]
url = "{url}/accepted?who=%invitor%&event=%event%"
retry = [1, 1]
"""
    )


CREATED_TARGETS = {"json-post": "/json", "form-post": "/form", "xml-post": "/xml", "get-query": "/get"}


def form_body(**fields: str) -> bytes:
    """Every value percent-encoded (`%20` for a space, `%2B` for a plus)."""
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in fields.items()).encode()


def test_hostile_values_reach_every_target_intact(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    gateway.write_config(fanout_config(target_server.url))
    base = gateway.start_web()
    gateway.start_worker()

    body = form_body(invitee=INVITEE, invitor=INVITOR, network_id="mynetwork")
    assert b"%2B1%20555%20123%201234" in body
    resp = http_call(base, "POST", "/invitation_created", body, FORM_HEADERS)
    assert resp.status == 204, (resp.body, gateway.logs())

    store = store_for(redis)
    event_id = the_event_id(store)
    deliveries = wait_final(store, event_id, CREATED_TARGETS, timeout=30)
    # Only the matching targets got a delivery at all.
    assert set(deliveries) == set(CREATED_TARGETS), deliveries
    for name in CREATED_TARGETS:
        assert deliveries[name]["status"] == "delivered", (name, deliveries[name], gateway.logs())
        assert deliveries[name]["attempts"] == 1
        assert [a["status_code"] for a in attempts_of(store, event_id, name)] == [200]

    got = {name: target_server.wait_for(path, 1) for name, path in CREATED_TARGETS.items()}
    for name, requests in got.items():
        assert len(requests) == 1, (name, requests)
        assert requests[0].headers["idempotency-key"] == f"{event_id}-{name}"

    [j] = got["json-post"]
    assert j.method == "POST"
    assert j.headers["content-type"] == "application/json"
    assert j.json() == {
        "invitee": INVITEE_NORMALIZED,
        "invitee_raw": INVITEE,
        "invitor": INVITOR,
        "network": "mynetwork",
        "event": "invitation_created",
        "event_id": event_id,
    }

    [f] = got["form-post"]
    assert f.method == "POST"
    assert f.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qsl(f.body.decode("ascii"), keep_blank_values=True, strict_parsing=True) == [
        ("to", INVITEE_NORMALIZED),
        ("raw", INVITEE),
        ("from", INVITOR),
        ("net", "mynetwork"),
        ("kind", "invitation_created"),
    ]

    [x] = got["xml-post"]
    assert x.method == "POST"
    assert x.headers["content-type"] == "application/xml"
    root = etree.fromstring(x.body, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    assert root.tag == "invitation"
    assert root.get("event") == "invitation_created"
    assert root.get("from") == INVITOR
    assert [(child.tag, child.text) for child in root] == [
        ("to", INVITEE_NORMALIZED),
        ("raw", INVITEE),
        ("from", INVITOR),
        ("net", "mynetwork"),
    ]

    [g] = got["get-query"]
    assert g.method == "GET"
    assert g.body == b""
    assert g.query == [
        ("to", INVITEE_NORMALIZED),
        ("from", INVITOR),
        ("net", "mynetwork"),
        ("id", event_id),
        ("raw", INVITEE),
    ]

    # Nothing is left waiting, so these two will never get anything.
    assert waiting_count(redis) == 0
    assert target_server.requests_to("/other") == []
    assert target_server.requests_to("/accepted") == []


def test_invitation_accepted_routes_only_to_its_targets(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    gateway.write_config(fanout_config(target_server.url))
    base = gateway.start_web()
    gateway.start_worker()

    resp = http_call(
        base, "GET", "/invitation_accepted/?invitee=15551231234&invitor=johnsnow&network_id=mynetwork"
    )
    assert resp.status == 204, (resp.body, gateway.logs())

    store = store_for(redis)
    event_id = the_event_id(store)
    event = store.get_event(event_id)
    assert event is not None and event.type == "invitation_accepted"
    deliveries = wait_final(store, event_id, ["accepted-only"])
    assert set(deliveries) == {"accepted-only"}
    assert deliveries["accepted-only"]["status"] == "delivered"
    [r] = target_server.wait_for("/accepted", 1)
    assert r.query == [("who", "johnsnow"), ("event", "invitation_accepted")]
    assert r.headers["idempotency-key"] == f"{event_id}-accepted-only"
    assert waiting_count(redis) == 0
    assert [r.path for r in target_server.received] == ["/accepted"]


# -- refused callbacks ------------------------------------------------------------------------------


def _assert_nothing_stored(redis: Redis) -> None:
    assert queued_job_count(redis) == 0
    assert waiting_count(redis) == 0
    assert job_keys(redis) == []
    assert list(redis.scan_iter(match="gw:event*")) == []


def _raw_headers(content_type: str) -> list[tuple[str, str]]:
    return [
        ("Host", "example.com"),
        ("Connection", "close"),
        ("User-Agent", "Sync Server 1.0"),
        ("Content-Type", content_type),
    ]


@pytest.fixture
def web_only(gateway: Gateway, target_server: TargetServer) -> str:
    """A web process with a target for `mynetwork` and no worker: whatever is enqueued stays."""
    gateway.write_config(fanout_config(target_server.url))
    return gateway.start_web()


FORM_TYPE = FORM_HEADERS["Content-Type"]
NO_INVITOR = b"invitee=15551231234&network_id=mynetwork"
NO_NETWORK = b'{"invitee": "15551231234", "invitor": "johnsnow"}'


@pytest.mark.parametrize(
    ("path", "body", "content_type", "missing"),
    [
        ("/invitation_created/", NO_INVITOR, FORM_TYPE, "invitor"),
        ("/invitation_created/", NO_NETWORK, "application/json", "network_id"),
        ("/invitation_created/?invitor=johnsnow&network_id=mynetwork", b"", None, "invitee"),
    ],
    ids=["form-no-invitor", "json-no-network", "get-no-invitee"],
)
def test_missing_field_is_a_400_problem_naming_it(
    web_only: str, redis: Redis, path: str, body: bytes, content_type: str | None, missing: str
) -> None:
    if body:
        resp = http_call(web_only, "POST", path, body, {"Content-Type": str(content_type)})
    else:
        resp = http_call(web_only, "GET", path)
    assert resp.status == 400
    assert resp.headers["content-type"].startswith("application/problem+json")
    problem = resp.json()
    assert problem["status"] == 400
    assert problem["field"] == missing
    assert missing in problem["detail"]
    _assert_nothing_stored(redis)


def test_body_over_64_kib_by_content_length_is_413(web_only: str, redis: Redis) -> None:
    # Declared too large: the head alone must be enough to refuse it (no body is sent).
    head = build_request("POST", "/invitation_created/", _raw_headers(FORM_HEADERS["Content-Type"]))
    head = head.replace(b"\r\n\r\n", b"\r\nContent-Length: 65537\r\n\r\n")
    resp = raw_exchange(web_only, head)
    assert resp.status == 413, resp.raw
    assert (resp.header("Content-Type") or "").startswith("application/problem+json")
    assert resp.json()["status"] == 413
    _assert_nothing_stored(redis)


def test_body_over_64_kib_chunked_is_413(web_only: str, redis: Redis) -> None:
    headers = [*_raw_headers(FORM_HEADERS["Content-Type"]), ("Transfer-Encoding", "chunked")]
    head = build_request("POST", "/invitation_created/", headers)
    assert b"Content-Length" not in head
    # A valid form body that never ends: 8 KiB chunks up to one byte over the limit, and no
    # terminating chunk, so the server has read everything sent when it refuses.
    payload = b"invitee=15551231234&invitor=johnsnow&network_id=mynetwork&pad="
    payload += b"x" * (64 * 1024 + 1 - len(payload))
    chunks = [payload[i : i + 8192] for i in range(0, len(payload), 8192)]
    host, port = urlsplit(web_only).hostname, urlsplit(web_only).port
    assert host == "127.0.0.1" and port is not None
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(head)
        for chunk in chunks:
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        resp = parse_response(read_until_closed(sock))
    assert resp.status == 413, resp.raw
    assert (resp.header("Content-Type") or "").startswith("application/problem+json")
    assert resp.json()["status"] == 413
    _assert_nothing_stored(redis)


def test_chunked_body_under_the_limit_is_accepted(web_only: str, redis: Redis) -> None:
    """The control for the test above: the same framing with a small body is a 204."""
    headers = [*_raw_headers(FORM_HEADERS["Content-Type"]), ("Transfer-Encoding", "chunked")]
    body = b"invitee=15551231234&invitor=johnsnow&network_id=mynetwork"
    data = build_request("POST", "/invitation_created/", headers)
    data += b"%x\r\n" % 20 + body[:20] + b"\r\n" + b"%x\r\n" % (len(body) - 20) + body[20:] + b"\r\n0\r\n\r\n"
    resp = raw_exchange(web_only, data)
    assert resp.status_line == "HTTP/1.1 204 No Content", resp.raw
    # Waiting for the four invitation_created targets of mynetwork (no worker runs here), one job.
    assert waiting_count(redis) == len(CREATED_TARGETS)
    assert queued_job_count(redis) == 1


def test_binary_body_is_415(web_only: str, redis: Redis) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))  # binary: neither JSON, XML nor form
    resp = http_call(web_only, "POST", "/invitation_created/", png, {"Content-Type": "image/png"})
    assert resp.status == 415
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["status"] == 415
    _assert_nothing_stored(redis)
