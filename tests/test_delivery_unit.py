"""The pure parts of a delivery (gateway/delivery/request.py) and the address policy (config/addresses.py)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import random
import time
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from gateway.config.addresses import AddressNotAllowed, check_address
from gateway.config.load import target_from_dict
from gateway.config.targets import Target
from gateway.delivery.outcomes import due_after
from gateway.delivery.request import Response, build_request, classify, parse_retry_after, retry_delay, sign
from gateway.events import INVITATION_CREATED, InvitationEvent, make_event
from gateway.exceptions import ConfigError, PermanentDelivery, RetryableDelivery

KEY = bytes(range(100, 132))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
NOW = 1_700_000_000.0
ENV = {"TOKEN": "tok+/=en", "SIGNING": SECRET, "USER": "AC123", "PW": "p:w@rd"}


def _event(**fields: str) -> InvitationEvent:
    base = {"invitee": "+1 (555) 123-1234", "invitor": "john.snow@example.com", "network_id": "mynetwork*"}
    return make_event({**base, **fields}, INVITATION_CREATED, "json", now=NOW)


def _target(**data: Any) -> Target:
    return target_from_dict({"name": "t1", "networks": ["*"], "url": "https://api.example.com/hook", **data})


def _headers(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    names = [name.lower() for name, _ in headers]
    assert len(names) == len(set(names)), f"duplicate headers: {headers}"
    return {name.lower(): value for name, value in headers}


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """An independent Standard Webhooks verifier: HMAC-SHA256 over `{id}.{timestamp}.{body}`."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = headers["webhook-id"].encode() + b"." + headers["webhook-timestamp"].encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


# -- build_request --------------------------------------------------------------------------------


def test_get_request() -> None:
    event = _event()
    target = _target(
        url="https://api.example.com/hook/%network_id%?invitee=%invitee%&by=%invitor%", timeout=4
    )
    request = build_request(target, event, {}, now=NOW)
    assert request.method == "GET"
    assert request.body is None
    assert request.timeout == 4.0
    headers = _headers(request.headers)
    assert headers == {"idempotency-key": f"{event.id}-t1"}
    parts = urlsplit(request.url)
    assert parts.netloc == "api.example.com"
    assert parts.path == "/hook/mynetwork%2A"
    assert parse_qsl(parts.query, strict_parsing=True) == [
        ("invitee", "+15551231234"),
        ("by", "john.snow@example.com"),
    ]
    assert "+" not in parts.query  # a raw + would read back as a space


def test_idempotency_key_is_the_delivery_id_and_stable() -> None:
    event = _event()
    target = _target(post_data='{"d": "%delivery_id%", "e": "%event_id%"}', content_type="application/json")
    first = build_request(target, event, {}, now=NOW)
    again = build_request(target, event, {}, now=NOW + 3600)
    other = build_request(_target(name="t2", post_data="d=%delivery_id%"), event, {}, now=NOW)
    key = _headers(first.headers)["idempotency-key"]
    assert key == f"{event.id}-t1"
    assert _headers(again.headers)["idempotency-key"] == key
    assert _headers(other.headers)["idempotency-key"] == f"{event.id}-t2"
    assert json.loads(first.body or b"") == {"d": key, "e": event.id}


@pytest.mark.parametrize(
    ("content_type", "post_data"),
    [
        ("application/json", '{"invitee": "%invitee%", "raw": "%invitee_raw%", "by": "%invitor%"}'),
        (
            "application/json; charset=utf-8",
            '{"invitee": "%invitee%", "raw": "%invitee_raw%", "by": "%invitor%"}',
        ),
        ("application/x-www-form-urlencoded", "invitee=%invitee%&raw=%invitee_raw%&by=%invitor%"),
        ("application/xml", "<r><invitee>%invitee%</invitee><raw>%invitee_raw%</raw><by a='%invitor%'/></r>"),
    ],
)
def test_post_request_body_and_content_type(content_type: str, post_data: str) -> None:
    invitor = '"O\'Brien" <ob@x.com> & ü€ +1'
    event = _event(invitor=invitor)
    request = build_request(_target(post_data=post_data, content_type=content_type), event, {}, now=NOW)
    assert request.method == "POST"
    assert _headers(request.headers)["content-type"] == content_type
    assert request.body is not None
    text = request.body.decode("utf-8")
    if "json" in content_type:
        assert json.loads(text) == {"invitee": "+15551231234", "raw": "+1 (555) 123-1234", "by": invitor}
    elif "xml" in content_type:
        from lxml import etree

        root = etree.fromstring(request.body)
        assert root.findtext("invitee") == "+15551231234"
        assert root.findtext("raw") == "+1 (555) 123-1234"
        assert root.find("by").get("a") == invitor  # type: ignore[union-attr]
    else:
        assert parse_qsl(text, strict_parsing=True) == [
            ("invitee", "+15551231234"),
            ("raw", "+1 (555) 123-1234"),
            ("by", invitor),
        ]


def test_headers_escape_values_but_insert_env_as_is() -> None:
    # make_event refuses control characters; build_request must not rely on it.
    event = dataclasses.replace(_event(), invitor="jo\u00e9\r\nX-Evil: 1")
    target = _target(
        headers={"Authorization": "Bearer ${TOKEN}", "X-Invitor": "%invitor%", "RAMEN_API_KEY": "k"}
    )
    headers = _headers(build_request(target, event, ENV, now=NOW).headers)
    assert headers["authorization"] == "Bearer tok+/=en"
    assert headers["x-invitor"] == "jo%C3%A9%0D%0AX-Evil: 1"
    assert headers["ramen_api_key"] == "k"
    assert all("\r" not in v and "\n" not in v for v in headers.values())


def test_basic_auth() -> None:
    target = _target(auth={"username": "${USER}", "password": "${PW}"})
    headers = _headers(build_request(target, _event(), ENV, now=NOW).headers)
    scheme, _, token = headers["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token).decode() == "AC123:p:w@rd"


def test_missing_env_at_delivery_is_a_config_error() -> None:
    target = _target(headers={"Authorization": "Bearer ${TOKEN}"})
    with pytest.raises(ConfigError, match="TOKEN"):
        build_request(target, _event(), {"OTHER": "x"}, now=NOW)


@pytest.mark.parametrize(
    ("secret_template", "environ"),
    [(SECRET, {}), ("${SIGNING}", ENV)],
)
@pytest.mark.parametrize(
    ("post_data", "content_type"),
    [
        ('{"invitee": "%invitee%", "by": "%invitor%"}', "application/json"),
        (None, "application/x-www-form-urlencoded"),
    ],
)
def test_standard_webhooks_signature_verifies(
    secret_template: str, environ: dict[str, str], post_data: str | None, content_type: str
) -> None:
    event = _event(invitor="jos\u00e9 \U0001f600")
    data: dict[str, Any] = {"signing_secret": secret_template, "content_type": content_type}
    if post_data is not None:
        data["post_data"] = post_data
    request = build_request(_target(**data), event, environ, now=NOW + 0.9)
    headers = _headers(request.headers)
    assert headers["webhook-id"] == f"{event.id}-t1" == headers["idempotency-key"]
    assert headers["webhook-timestamp"] == str(int(NOW))
    assert headers["webhook-signature"].startswith("v1,")
    body = request.body or b""
    assert _verify(SECRET, headers, body)
    # The signature covers the body, the id and the timestamp: change any and it fails.
    assert not _verify(SECRET, headers, body + b" ")
    assert not _verify(SECRET, {**headers, "webhook-timestamp": str(int(NOW) + 1)}, body)
    assert not _verify(SECRET, {**headers, "webhook-id": headers["webhook-id"] + "x"}, body)
    other = "whsec_" + base64.b64encode(bytes(32)).decode()
    assert not _verify(other, headers, body)


def test_retry_keeps_webhook_id_and_resigns_with_new_timestamp() -> None:
    event = _event()
    target = _target(signing_secret=SECRET, post_data="a=%invitee%")
    first = _headers(build_request(target, event, {}, now=NOW).headers)
    retry = _headers(build_request(target, event, {}, now=NOW + 300).headers)
    assert retry["webhook-id"] == first["webhook-id"]
    assert retry["webhook-timestamp"] == str(int(NOW) + 300)
    assert retry["webhook-signature"] != first["webhook-signature"]


def test_no_signature_headers_without_secret() -> None:
    headers = _headers(build_request(_target(post_data="a=1"), _event(), {}, now=NOW).headers)
    assert not any(name.startswith("webhook-") for name in headers)


def test_sign_known_vector() -> None:
    # Computed independently: base64(HMAC-SHA256(KEY, b"msg_1.1700000000.{}")).
    expected = base64.b64encode(hmac.new(KEY, b"msg_1.1700000000.{}", hashlib.sha256).digest()).decode()
    assert sign(SECRET, "msg_1", 1_700_000_000, b"{}") == "v1," + expected
    assert sign(SECRET, "msg_1", 1_700_000_001, b"{}") != "v1," + expected


# -- classify -------------------------------------------------------------------------------------


def _response(status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(status, headers or {}, b"", 12.5)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_classify_2xx_is_success(status: int) -> None:
    assert classify(_target(), _response(status), NOW) is None


def test_classify_custom_success_codes_ramen() -> None:
    ramen = _target(success_codes=[200, 404])
    assert classify(ramen, _response(200), NOW) is None
    assert classify(ramen, _response(404), NOW) is None
    with pytest.raises(PermanentDelivery):
        classify(_target(), _response(404), NOW)
    with pytest.raises(PermanentDelivery):
        classify(ramen, _response(400), NOW)
    with pytest.raises(RetryableDelivery):
        classify(ramen, _response(503), NOW)


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_classify_retryable(status: int) -> None:
    with pytest.raises(RetryableDelivery) as info:
        classify(_target(), _response(status), NOW)
    assert info.value.status == status
    assert info.value.retry_after is None
    assert str(status) in info.value.reason


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"Retry-After": formatdate(NOW + 90, usegmt=True)}, 90.0),
        ({"Retry-After": "soon"}, None),
    ],
)
@pytest.mark.parametrize("status", [429, 503])
def test_classify_retry_after(status: int, headers: dict[str, str], expected: float | None) -> None:
    with pytest.raises(RetryableDelivery) as info:
        classify(_target(), _response(status, headers), NOW)
    assert info.value.retry_after == expected


@pytest.mark.parametrize("name", ["retry-after", "RETRY-AFTER"])
def test_classify_retry_after_header_name_is_case_insensitive(name: str) -> None:
    # Header names are case-insensitive (RFC 9110 5.1). HTTP/2 and proxies such as Envoy send them
    # lower-case, and the sender builds Response.headers with dict(resp.headers), keeping the
    # case that came over the wire.
    with pytest.raises(RetryableDelivery) as info:
        classify(_target(), _response(429, {name: "120"}), NOW)
    assert info.value.retry_after == 120.0


def test_classify_location_header_name_is_case_insensitive() -> None:
    with pytest.raises(PermanentDelivery) as info:
        classify(_target(), _response(302, {"location": "https://elsewhere.example/"}), NOW)
    assert "https://elsewhere.example/" in info.value.reason


@pytest.mark.parametrize("status", [300, 301, 302, 303, 307, 308])
def test_classify_redirect_is_permanent(status: int) -> None:
    with pytest.raises(PermanentDelivery) as info:
        classify(_target(), _response(status, {"Location": "https://elsewhere.example/"}), NOW)
    assert info.value.status == status
    assert "https://elsewhere.example/" in info.value.reason
    assert not isinstance(info.value, RetryableDelivery)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 410, 413, 422])
def test_classify_other_4xx_is_permanent(status: int) -> None:
    with pytest.raises(PermanentDelivery) as info:
        classify(_target(), _response(status, {"Retry-After": "10"}), NOW)
    assert info.value.status == status
    assert not isinstance(info.value, RetryableDelivery)


@pytest.mark.parametrize("status", [100, 199])
def test_classify_informational_is_not_success(status: int) -> None:
    with pytest.raises(PermanentDelivery):
        classify(_target(), _response(status), NOW)


# -- retry_delay --------------------------------------------------------------------------------


def test_retry_delay_follows_schedule_with_jitter() -> None:
    target = _target(retry=[10, 1000, 50000])
    for attempt, base in [(1, 10), (2, 1000), (3, 50000)]:
        delays = [retry_delay(target, attempt, None, random.Random(seed)) for seed in range(300)]
        assert all(d is not None and round(base * 0.9) <= d <= round(base * 1.1) for d in delays), (
            base,
            delays,
        )
        if base >= 1000:
            assert min(d for d in delays if d is not None) < base < max(d for d in delays if d is not None)


def test_retry_delay_none_when_schedule_used_up() -> None:
    target = _target(retry=[5, 300])
    rng = random.Random(1)
    assert retry_delay(target, 2, None, rng) is not None
    assert retry_delay(target, 3, None, rng) is None
    assert retry_delay(target, 10, 5.0, rng) is None
    assert retry_delay(_target(retry=[]), 1, None, rng) is None


def test_retry_delay_default_schedule() -> None:
    target = _target()
    rng = random.Random(3)
    assert [retry_delay(target, 1, None, rng) is not None for _ in range(3)] == [True] * 3
    delay = retry_delay(target, 2, None, rng)
    assert delay is not None and 270 <= delay <= 330  # 5 min +-10%
    assert retry_delay(target, len(target.retry), None, rng) is not None
    assert retry_delay(target, len(target.retry) + 1, None, rng) is None


@pytest.mark.parametrize(
    # Whole seconds, rounded up: never before the target asked.
    ("retry_after", "low", "high"),
    [(5000.0, 5000, 5000), (4999.2, 5000, 5000), (10.0, 900, 1100), (0.0, 900, 1100)],
)
def test_retry_delay_retry_after_is_a_floor(retry_after: float, low: int, high: int) -> None:
    target = _target(retry=[1000])
    for seed in range(50):
        delay = retry_delay(target, 1, retry_after, random.Random(seed))
        assert delay is not None and low <= delay <= high


def test_retry_delay_zero_is_immediate() -> None:
    target = _target(retry=[0, 0])
    assert retry_delay(target, 1, None, random.Random(0)) == 0
    assert retry_delay(target, 2, 7.4, random.Random(0)) == 8  # ceil(7.4)


def test_retry_delay_is_whole_seconds() -> None:
    delay = retry_delay(_target(retry=[7]), 1, 2.6, random.Random(5))
    assert isinstance(delay, int)


@pytest.mark.parametrize("seconds", [0.0, 0.001, 1.0, 2.5])
def test_due_after_is_never_early(seconds: float) -> None:
    """The due millisecond is rounded up: a retry claimed at `due` is at least `seconds` late.

    A due time rounded down let a "Retry-After: 1" retry start 0.999 s after the answer.
    """
    for _ in range(2000):
        before = time.time()
        due = due_after(seconds)
        assert isinstance(due, int)
        assert due / 1000 >= before + seconds - 1e-9
        assert due / 1000 <= time.time() + seconds + 0.002


# -- parse_retry_after --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("  30 ", 30.0),
        ("86400", 86400.0),
        ("999999999", 86400.0),  # capped at a day
        (formatdate(NOW + 60, usegmt=True), 60.0),
        (formatdate(NOW + 3600), 3600.0),  # numeric zone
        (formatdate(NOW - 3600, usegmt=True), 0.0),  # in the past: now
        (formatdate(NOW + 5 * 86400, usegmt=True), 86400.0),
        ("Tue, 14 Nov 2023 22:14:20", 60.0),  # no zone: read as UTC
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("Wed, 99 Foo 2015 99:99:99 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


# -- addresses -------------------------------------------------------------------------------------


PRIVATE = [
    "127.0.0.1",
    "127.1.2.3",
    "::1",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "100.64.0.1",  # carrier-grade NAT
    "100.127.255.254",
    "fe80::1",
    "fe80::1%eth0",
    "fc00::1",
    "fd12:3456::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:7f00:1",
    "64:ff9b::7f00:1",  # NAT64
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    "240.0.0.1",  # reserved
    "255.255.255.255",
]
ALWAYS_REFUSED = [
    "0.0.0.0",
    "::",
    "::ffff:0.0.0.0",
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",
    "::ffff:224.0.0.1",
]
GLOBAL = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
]


@pytest.mark.parametrize("address", PRIVATE)
def test_private_addresses_refused_by_default(address: str) -> None:
    with pytest.raises(AddressNotAllowed, match="allow_private_targets"):
        check_address(address, allow_private=False)


@pytest.mark.parametrize("address", PRIVATE)
def test_private_addresses_allowed_when_configured(address: str) -> None:
    assert check_address(address, allow_private=True) is None


@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize("address", ALWAYS_REFUSED)
def test_unspecified_and_multicast_always_refused(address: str, allow_private: bool) -> None:
    with pytest.raises(AddressNotAllowed):
        check_address(address, allow_private=allow_private)


@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize("address", GLOBAL)
def test_global_addresses_allowed(address: str, allow_private: bool) -> None:
    assert check_address(address, allow_private=allow_private) is None


@pytest.mark.parametrize("address", ["localhost", "example.com", "", "256.1.1.1", "1.2.3", "http://1.2.3.4"])
def test_not_an_ip_is_refused(address: str) -> None:
    with pytest.raises(AddressNotAllowed, match="not an IP"):
        check_address(address, allow_private=True)


def test_address_not_allowed_is_an_oserror() -> None:
    # Raised where the sender's resolving raises OSError; a caller catching those catches it too.
    assert issubclass(AddressNotAllowed, OSError)


# -- the engine's fast paths encode exactly what the general path does ----------------------------


@pytest.mark.parametrize("response", ["ok", "", 'quo"te \\ é 😀\n\x01</x>'])
@pytest.mark.parametrize("latency", [0.1, 12.34, 1234567.0])
def test_first_delivered_encodes_as_finish_does(response: str, latency: float) -> None:
    from gateway.delivery import outcomes
    from gateway.records import Attempt, Delivery, DeliveryStatus, Outcome

    attempt = Attempt("t-1_x", 1, 1764125000123, Outcome.DELIVERED, 200, latency, None, response)
    fast = outcomes.first_delivered(attempt, 1764125000456)
    assert fast is not None
    state = Delivery().to_dict()
    state.update(waiting=None, status=DeliveryStatus.DELIVERED, updated_at=1764125000456)
    state.update(next_attempt_at=None, attempts=1, last_status_code=200, last_error=None)
    assert fast == (outcomes.dumps_record(attempt.to_dict()), outcomes.dumps_record(state))
    assert outcomes.first_delivered(attempt, 1764125000456) == fast  # its second known: the same
    other = dataclasses.replace(attempt, response=None)
    assert outcomes.first_delivered(other, 1) is None  # unusual: the general path encodes it


def test_new_states_are_recognised_without_decoding() -> None:
    from gateway.delivery import outcomes
    from gateway.records import Delivery, DeliveryStatus

    assert outcomes.is_new(outcomes.dumps_record(Delivery().to_dict()))
    assert outcomes.is_new(outcomes.dumps_record(Delivery(updated_at=1764125000123).to_dict()))
    assert outcomes.is_new("")
    assert not outcomes.is_new(outcomes.dumps_record(Delivery(replays=1, updated_at=5).to_dict()))
    assert not outcomes.is_new(outcomes.dumps_record(Delivery(status=DeliveryStatus.RETRYING).to_dict()))
    assert not outcomes.is_new(outcomes.dumps_record(Delivery(attempts=1).to_dict()))


def test_stored_events_decode_as_from_dict() -> None:
    from gateway.delivery import outcomes

    event = _event()
    data = event.to_dict()
    assert outcomes.decode_event(json.dumps(data)) == InvitationEvent.from_dict(data) == event
    assert outcomes.decode_event(json.dumps({**data, "unknown": 1})) == event
    partial = {k: v for k, v in data.items() if k != "client"}
    assert outcomes.decode_event(json.dumps(partial)) == InvitationEvent.from_dict(partial)


@pytest.mark.parametrize(
    "post_data",
    [
        '{"a":"%invitor%","b":"%invitee%"}',
        '"%invitee%"',
        "%invitee%",
        '{"a":"x\\"%invitee%"}',  # an escaped quote before it: still the same text
        '{"a":"%invitor%%invitee%","b":["%network_id%"]}',
        '""%invitee%""',
        '{"a":"%invitee%"%invitor%"}',
        '{"a":"pre %invitee% post","n":%invitee%,"d":"%delivery_id%"}',
    ],
)
def test_a_plan_renders_json_as_the_template_does(post_data: str) -> None:
    # The plan renders a JSON placeholder between quotes as one JSON string (quotes included):
    # the same text as the template language's own rendering, escape by escape.
    from gateway.delivery.request import RequestPlan
    from gateway.templating import Template, escape_json

    # Some are not valid JSON bodies (the configuration refuses them): the plan renders them too.
    target = dataclasses.replace(
        _target(post_data="{}", content_type="application/json"), post_data=post_data
    )
    hostile = '"quo\'te" \\ \n\t\u0001 ü€😀 %41'
    event = dataclasses.replace(_event(), invitee=hostile, invitor='a"b')
    values = {**event.placeholders(), "delivery_id": f"{event.id}-t1"}
    expected = Template.parse(post_data).render(values, escape_json, {})
    assert RequestPlan(target, {}).render(event, NOW).body == expected.encode()


def test_a_plan_renders_as_build_request() -> None:
    from gateway.delivery.request import RequestPlan

    target = _target(
        url="https://example.com/h/%invitee%?n=%network_id%&k=${TOKEN}&p=100%25&v=%myvar%",
        post_data='{"a":"%invitor%","m":"%message%","id":"%delivery_id%","v":"%myvar%","pc":"50%"}',
        content_type="application/json",
        headers={"X-Who": "%invitee% ${TOKEN}"},
        vars={"myvar": 'va%l"ue'},
        signing_secret="${SECRET}",
    )
    env = {"TOKEN": "tok", "SECRET": "whsec_" + base64.b64encode(b"k" * 24).decode()}
    hostile = '"quo\'te" & <b>x</b> +1 555/../12?a=1&b=2#h;%41 \\ ]]> ü€😀'
    event = dataclasses.replace(_event(), invitee=hostile, invitor=hostile)
    plan = RequestPlan(target, env)
    for _ in range(2):
        assert plan.render(event, NOW) == build_request(target, event, env, now=NOW)
    with pytest.raises(ConfigError):
        RequestPlan(target, {"TOKEN": "tok"})
