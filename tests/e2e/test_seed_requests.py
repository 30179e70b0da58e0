"""The requests of the Acrobits seed (seeds/acrobits-invitation-created.txt), byte for byte.

Each one goes as raw HTTP/1.1 over a plain socket to the real uvicorn process, with the seed's
headers but a Content-Length that matches the body (the seed's `66` is wrong for both bodies),
must be answered with a bare 204, and must reach a real target through a real worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from e2e_support import (
    SETTINGS,
    attempts_of,
    build_request,
    raw_exchange,
    store_for,
    the_event_id,
    toml_str,
    wait_final,
)

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer
    from redis import Redis

SEED_XML = (
    b"<root>\n"
    b"    <invitee>15551231234</invitee>\n"
    b"    <invitor>johnsnow</invitor>\n"
    b"    <network_id>mynetwork</network_id>\n"
    b"</root>"
)
SEED_JSON = b'{"invitee" : "15551231234", "invitor" : "johnsnow", "network_id" : "mynetwork"}'
# The seed's invitationCreatedPostData template, filled in: the network travels as "network".
TEMPLATE_JSON = b'{ "invitee" : "15551231234", "invitor" : "johnsnow", "network" : "mynetwork" }'
TARGET_BODY = (
    '{"invitee": "%invitee%", "raw": "%invitee_raw%", "invitor": "%invitor%", '
    '"net": "%network_id%", "event": "%event%"}'
)
FORM = b"invitee=15551231234&invitor=johnsnow&network_id=mynetwork"


@dataclass(frozen=True)
class Case:
    method: str
    target: str
    user_agent: str
    content_type: str | None = None
    body: bytes = b""
    source_format: str = "query"
    invitee: str = "15551231234"


CASES = {
    "seed-get-query": Case(
        "GET",
        "/invitation_created/?invitee=15551231234&invitor=johnsnow&network_id=mynetwork",
        "Sync Server 1.0",
    ),
    "seed-post-xml": Case(
        "POST", "/invitation_created/", "Sync Server 1.1", "application/xml", SEED_XML, "xml"
    ),
    "seed-post-json": Case(
        "POST", "/invitation_created/", "CloudSoftphone/1.5.6", "application/json", SEED_JSON, "json"
    ),
    "form-post": Case(
        "POST", "/invitation_created/", "Sync Server 1.0", "application/x-www-form-urlencoded", FORM, "form"
    ),
    "seed-json-template-network-key": Case(
        "POST", "/invitation_created/", "CloudSoftphone/1.5.6", "application/json", TEMPLATE_JSON, "json"
    ),
    # The portal's default content type is form even when the template is JSON: a mislabelled body.
    "json-template-labelled-as-form": Case(
        "POST",
        "/invitation_created/",
        "CloudSoftphone/1.5.6",
        "application/x-www-form-urlencoded",
        TEMPLATE_JSON,
        "json",
    ),
    "seed-url-template-net": Case(
        "GET", "/invitation_created/?invitee=15551231234&invitor=johnsnow&net=mynetwork", "Sync Server 1.0"
    ),
    "raw-plus-in-get-query": Case(
        "GET",
        "/invitation_created/?invitee=+15551231234&invitor=johnsnow&network_id=mynetwork",
        "Sync Server 1.0",
        invitee="+15551231234",
    ),
    "raw-plus-in-form-body": Case(
        "POST",
        "/invitation_created/",
        "Sync Server 1.0",
        "application/x-www-form-urlencoded",
        b"invitee=+15551231234&invitor=johnsnow&network_id=mynetwork",
        "form",
        invitee="+15551231234",
    ),
}


def test_seed_bodies_are_the_documented_lengths() -> None:
    # CONTRACTS.md: the seed's `Content-Length: 66` is wrong; the bodies are 120 and 79 bytes.
    assert len(SEED_XML) == 120
    assert len(SEED_JSON) == 79


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_seed_request_is_accepted_and_delivered(
    case: Case, gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    gateway.write_config(
        SETTINGS
        + f"""
[[targets]]
name = "crm"
networks = ["mynetwork"]
url = "{target_server.url}/hook"
content_type = "application/json"
post_data = {toml_str(TARGET_BODY)}
retry = [1, 1]
"""
    )
    base = gateway.start_web()
    gateway.start_worker()

    headers = [
        ("Host", "example.com"),
        ("Connection", "close"),
        ("Cache-Control", "max-age=0"),
        ("User-Agent", case.user_agent),
    ]
    if case.content_type is not None:
        headers.append(("Content-Type", case.content_type))
    request = build_request(case.method, case.target, headers, case.body)
    if case.body:
        assert f"Content-Length: {len(case.body)}\r\n".encode() in request

    response = raw_exchange(base, request)

    assert response.status_line == "HTTP/1.1 204 No Content", (response.raw, gateway.logs())
    assert response.body == b""
    assert response.header("Content-Length") in (None, "0")
    assert response.header("Transfer-Encoding") is None

    [received] = target_server.wait_for("/hook", 1)
    assert received.method == "POST"
    assert received.json() == {
        "invitee": case.invitee,
        "raw": case.invitee,
        "invitor": "johnsnow",
        "net": "mynetwork",
        "event": "invitation_created",
    }

    store = store_for(redis)
    event_id = the_event_id(store)
    event = store.get_event(event_id)
    assert event is not None
    assert (event.type, event.invitee, event.invitee_raw, event.invitor, event.network_id) == (
        "invitation_created",
        case.invitee,
        case.invitee,
        "johnsnow",
        "mynetwork",
    )
    assert event.source_format == case.source_format
    assert received.headers["idempotency-key"] == f"{event_id}-crm"
    deliveries = wait_final(store, event_id, ["crm"])
    assert deliveries["crm"]["status"] == "delivered"
    assert [a["status_code"] for a in attempts_of(store, event_id, "crm")] == [200]
