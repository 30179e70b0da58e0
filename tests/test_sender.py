"""The sender (pyreqwest) against real servers on loopback: what it sends, what it refuses, what it
records."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.config.addresses import AddressNotAllowed, check_address
from gateway.config.load import target_from_dict
from gateway.delivery.request import OutboundRequest, RequestPlan, Response
from gateway.delivery.sender import Sender, SendError
from gateway.events import INVITATION_CREATED, make_event
from tests.conftest import TargetServer


class SyncSender:
    """The async Sender on a private event loop, as the worker runs it."""

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.sender = Sender(**options)

    def send(self, request: OutboundRequest) -> Response:
        return self.loop.run_until_complete(self.sender.send(request))

    def close(self) -> None:
        self.loop.run_until_complete(self.sender.close())
        self.loop.close()


def _get(url: str, timeout: float = 5.0) -> OutboundRequest:
    return OutboundRequest("GET", url, (), None, timeout)


@pytest.fixture
def sender() -> Iterator[SyncSender]:
    s = SyncSender(allow_private=True)
    try:
        yield s
    finally:
        s.close()


def test_targets_share_no_cookies(sender: SyncSender, target_server: TargetServer) -> None:
    target_server.script("/a", [(200, {"Set-Cookie": "sid=provider-a; Path=/"}, b"ok")])
    sender.send(_get(f"{target_server.url}/a"))
    sender.send(_get(f"{target_server.url}/b"))
    second = target_server.requests_to("/b")[0]
    assert "cookie" not in second.headers
    assert second.headers["accept-encoding"] == "identity"
    assert second.headers["user-agent"].startswith("invitation-gateway/")


@pytest.mark.parametrize(
    "body",
    ['{"invitee":"+15551231234","name":"Zoë ✓"}'.encode(), b"\xff\xfe not UTF-8", b""],
    ids=["utf-8", "not-utf-8", "empty"],
)
def test_the_body_goes_out_byte_for_byte(
    sender: SyncSender, target_server: TargetServer, body: bytes
) -> None:
    # Text bodies travel as text (a copy reqwest owns), anything else as bytes: the same bytes.
    headers = (("Content-Type", "application/json"),)
    sender.send(OutboundRequest("POST", f"{target_server.url}/body", headers, body, 5.0))
    got = target_server.requests_to("/body")[0]
    assert got.body == body
    assert got.headers["content-type"] == "application/json"
    assert got.headers.get("content-length", "0") == str(len(body))


def test_a_rendered_body_goes_out_as_its_text(sender: SyncSender, target_server: TargetServer) -> None:
    # A plan's request carries the text its body was rendered from: that text is what is sent.
    url = f"{target_server.url}/rendered"
    data = {
        "name": "t1",
        "networks": ["*"],
        "url": url,
        "post_data": '{"who":"%invitee%"}',
        "content_type": "application/json",
    }
    fields = {"invitee": "+15551231234", "invitor": "john.snow@example.com", "network_id": "mynetwork"}
    event = dataclasses.replace(make_event(fields, INVITATION_CREATED, "json"), invitee="Zoë ✓")
    request = RequestPlan(target_from_dict(data), {}).render(event)
    assert request.text is not None and request.text.encode() == request.body
    sender.send(request)
    got = target_server.requests_to("/rendered")[0]
    assert got.body == request.body == '{"who":"Zoë ✓"}'.encode()


def test_response_is_read_up_to_the_cap(target_server: TargetServer) -> None:
    target_server.script("/big", [(200, {}, b"x" * 5000)])
    s = SyncSender(allow_private=True, response_cap=100)
    try:
        response = s.send(_get(f"{target_server.url}/big"))
    finally:
        s.close()
    assert response.status == 200
    assert response.body == b"x" * 100


def test_redirects_are_not_followed(sender: SyncSender, target_server: TargetServer) -> None:
    target_server.script("/moved", [(302, {"Location": f"{target_server.url}/elsewhere"}, b"")])
    response = sender.send(_get(f"{target_server.url}/moved"))
    assert response.status == 302
    assert target_server.requests_to("/elsewhere") == []


@pytest.fixture
def broken_server() -> Iterator[int]:
    """Answers every connection with an unparsable response, then closes it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_errors_never_quote_the_url(sender: SyncSender, broken_server: int) -> None:
    url = f"http://127.0.0.1:{broken_server}/services/T000/SuperSecretToken?to=%2B15551231234"
    with pytest.raises(SendError) as info:
        sender.send(_get(url))
    assert "SuperSecretToken" not in info.value.reason
    assert "15551231234" not in info.value.reason
    assert info.value.reason  # still says what went wrong


def test_connection_refused_is_a_send_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    s = SyncSender(allow_private=True)
    try:
        with pytest.raises(SendError) as info:
            s.send(_get(f"http://127.0.0.1:{port}/"))
    finally:
        s.close()
    assert info.value.reason.startswith("cannot connect")
    assert not info.value.blocked


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/",
        "http://localhost:9/",  # a name: refused once resolved, before any connection
        "http://[::1]:9/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fe80::a9fe:a9fe%25lo]/",
        "http://[::127.0.0.1]/",
    ],
)
def test_private_targets_are_refused_before_connecting(url: str) -> None:
    s = SyncSender(allow_private=False)
    try:
        with pytest.raises(SendError) as info:
            s.send(_get(url))
    finally:
        s.close()
    assert info.value.blocked, info.value.reason


class Names:
    """Answers for host names, in place of the private loop's resolver (counts the look-ups)."""

    def __init__(self, sender: SyncSender) -> None:
        self.answers: dict[str, list[str]] = {}
        self.lookups: list[str] = []
        sender.loop.getaddrinfo = self.getaddrinfo  # type: ignore[method-assign]

    async def getaddrinfo(self, host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        self.lookups.append(host)
        await asyncio.sleep(0.01)  # as a real look-up: others ask meanwhile
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in self.answers[host]]


def test_a_name_is_pinned_to_its_vetted_address_until_the_ttl(
    target_server: TargetServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.delivery import sender as sender_module

    s = SyncSender(allow_private=("127.0.0.0/8",))
    names = Names(s)
    names.answers["crm.test"] = ["127.0.0.1"]
    url = f"http://crm.test:{target_server.port}/hook"
    try:
        # Twenty sends at once: one look-up, and the request goes to the vetted address.
        async def many() -> list[Response]:
            return await asyncio.gather(*(s.sender.send(_get(url)) for _ in range(20)))

        assert [r.status for r in s.loop.run_until_complete(many())] == [200] * 20
        assert names.lookups == ["crm.test"]
        assert target_server.requests_to("/hook")[0].headers["host"] == f"crm.test:{target_server.port}"
        # The name now resolves to a refused address (rebinding): the pin holds until its TTL...
        names.answers["crm.test"] = ["10.9.9.9"]
        assert s.send(_get(url)).status == 200
        # ... then the name is looked up again, and refused before any connection.
        monkeypatch.setattr(sender_module, "DNS_TTL", 0.0)
        s.sender._pins["crm.test"].expires = 0.0
        with pytest.raises(SendError) as info:
            s.send(_get(url))
        assert info.value.blocked and "10.9.9.9" in info.value.reason
        assert len(target_server.requests_to("/hook")) == 21
        # A name that does not resolve: a send error to retry, not a refusal.
        with pytest.raises(SendError) as info:
            s.send(_get(f"http://nowhere.test:{target_server.port}/hook"))
        assert not info.value.blocked and info.value.reason.startswith("cannot resolve the target")
    finally:
        s.close()


def test_a_changed_policy_vets_pinned_names_again(target_server: TargetServer) -> None:
    s = SyncSender(allow_private=("127.0.0.0/8",))
    names = Names(s)
    names.answers["crm.test"] = ["127.0.0.1"]
    url = f"http://crm.test:{target_server.port}/hook"
    try:
        assert s.send(_get(url)).status == 200
        s.sender.allow_private = False  # as a new configuration sets it (engine._claim)
        with pytest.raises(SendError) as info:
            s.send(_get(url))
        assert info.value.blocked
        assert names.lookups == ["crm.test", "crm.test"]
    finally:
        s.close()


@pytest.mark.parametrize("address", ["2002:a9fe:a9fe::1", "2001:0:4136:e378::1", "::127.0.0.1", "fe80::1%lo"])
def test_tunnelled_and_scoped_ipv6_refused(address: str) -> None:
    with pytest.raises(AddressNotAllowed):
        check_address(address, allow_private=False)


def test_a_chunked_body_is_capped_whatever_its_content_length() -> None:
    """Transfer-Encoding: chunked wins over Content-Length (hyper ignores the latter): the cap holds."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * 65536
            try:
                for _ in range(256):  # 16 MiB offered
                    conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                conn.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the client stopped reading: as it should

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    s = SyncSender(allow_private=True, response_cap=100)
    try:
        response = s.send(_get(f"http://127.0.0.1:{port}/"))
    finally:
        s.close()
        thread.join(5)
        listener.close()
    assert response.body == b"x" * 100


@pytest.mark.parametrize(
    ("host", "resolved"),
    [
        ("faß.test", "xn--fa-hia.test"),  # UTS 46 (reqwest), not IDNA 2003's "fass.test"
        ("bücher.test", "xn--bcher-kva.test"),
        ("crm%2etest", "crm.test"),  # percent-decoded by reqwest
        ("CRM.TEST.", "crm.test."),
    ],
)
def test_the_name_vetted_and_pinned_is_the_one_reqwest_connects_to(
    target_server: TargetServer, host: str, resolved: str
) -> None:
    s = SyncSender(allow_private=("127.0.0.0/8",))
    names = Names(s)
    names.answers[resolved] = ["127.0.0.1"]
    try:
        # The system cannot resolve these names: a 200 means the request went to the pin.
        assert s.send(_get(f"http://{host}:{target_server.port}/hook")).status == 200
        assert names.lookups == [resolved]
    finally:
        s.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost\\@93.184.216.34/",  # urlsplit: 93.184.216.34; reqwest: localhost
        "http://user:pw@crm.test/",
        "http://crm.test:99999/",
        "http://ex\u200dample.test/",
        "http://a..example.test/",
    ],
)
def test_urls_the_parsers_disagree_on_are_send_errors(url: str) -> None:
    s = SyncSender(allow_private=False)
    names = Names(s)
    names.answers.update({"localhost": ["127.0.0.1"], "crm.test": ["93.184.216.34"]})
    try:
        with pytest.raises(SendError):
            s.send(_get(url, timeout=1.0))
    finally:
        s.close()


def test_a_backslash_cannot_swap_an_allowed_literal_for_a_name(target_server: TargetServer) -> None:
    """urlsplit reads 93.184.216.34 (allowed); reqwest reads localhost: the latter must be vetted."""
    s = SyncSender(allow_private=False)
    names = Names(s)
    names.answers["localhost"] = ["127.0.0.1"]
    try:
        with pytest.raises(SendError) as info:
            s.send(_get(f"http://localhost:{target_server.port}\\@93.184.216.34/hook"))
        assert info.value.blocked
        assert target_server.requests_to("/hook") == []
    finally:
        s.close()


def test_a_name_with_a_dead_address_fails_over_to_its_next_vetted_one(target_server: TargetServer) -> None:
    s = SyncSender(allow_private=("127.0.0.0/8",))
    names = Names(s)
    # 127.0.0.2 is loopback too, but the target listens on 127.0.0.1 only: refused there.
    names.answers["crm.test"] = ["127.0.0.2", "127.0.0.1"]
    url = f"http://crm.test:{target_server.port}/hook"
    try:
        with pytest.raises(SendError) as info:
            s.send(_get(url))
        assert info.value.reason.startswith("cannot connect") and not info.value.blocked
        assert s.send(_get(url)).status == 200  # the next send goes to the next address
        # Looked up again after the TTL: the address that works is kept.
        s.sender._pins["crm.test"].expires = 0.0
        assert s.send(_get(url)).status == 200
        assert names.lookups == ["crm.test", "crm.test"]
        assert len(target_server.requests_to("/hook")) == 2
    finally:
        s.close()
