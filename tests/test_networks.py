"""Per-network ingest policy (gateway/networks.py), the abuse-limit fields of the accept Lua
(gateway/store/ingest.py `limit_fields`) and who the ingest thinks the caller is (gateway/ingest/tokens.py).

All pure: no Redis, no processes. The same rules are exercised through real processes in
tests/e2e/test_ingest_*.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from gateway import networks
from gateway.config.load import load_config
from gateway.events import INVITATION_ACCEPTED, INVITATION_CREATED, InvitationEvent, make_event
from gateway.exceptions import ConfigError
from gateway.ingest.callback import Callback
from gateway.ingest.tokens import IngestAuth, presented_token
from gateway.networks import (
    Guard,
    Limit,
    NetworkPolicy,
    TokenTable,
    networks_from_dict,
    parse_duration,
    policy_from_dict,
    prefix_allowed,
    prefix_of,
    token_digest,
)
from gateway.store.ingest import limit_fields

DIGEST = token_digest("a-token-kept-as-its-digest")
NOW = 1_750_000_000_000  # ms, a fixed instant (not on any bucket edge used below)


def _error(network: str, data: object, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        policy_from_dict(network, data, environ)
    return info.value


# -- policy_from_dict: valid tables --------------------------------------------------------------


def test_a_full_table_is_read() -> None:
    policy = policy_from_dict(
        "mynetwork",
        {
            "tokens": ["${MYNETWORK_TOKEN}", DIGEST],
            "allow_from": ["203.0.113.0/24", "2001:db8::/32"],
            "allowed_prefixes": ["+1", "+44"],
            "limits": [
                {"per": "invitee", "max": 3, "window": "1d"},
                {"per": "invitor", "max": 20, "window": "1h"},
                {"per": "prefix", "max": 100, "window": 3600, "digits": 5},
                {"per": "network", "max": 1000, "window": "10m"},
            ],
            "cooldown": "10m",
            "guard": {
                "window": "2h",
                "min_created": 10,
                "max_accepted_ratio": 0.1,
                "hold": "1d",
                "digits": 3,
            },
            "default_region": "GB",
        },
        {"MYNETWORK_TOKEN": "s3cret"},
    )
    assert policy.default_region == "GB"
    assert policy.network == "mynetwork"
    assert policy.tokens == ("${MYNETWORK_TOKEN}", DIGEST)
    assert [str(n) for n in policy.networks()] == ["203.0.113.0/24", "2001:db8::/32"]
    assert policy.allowed_prefixes == ("+1", "+44")
    assert policy.limits == (
        Limit("invitee", 3, 86400),
        Limit("invitor", 20, 3600),
        Limit("prefix", 100, 3600, digits=5),
        Limit("network", 1000, 600),
        Limit("invitee", 1, 600, cooldown=True),  # one invitation per invitee per 10 minutes
    )
    assert policy.guard == Guard(window=7200, min_created=10, max_accepted_ratio=0.1, hold=86400, digits=3)


def test_an_empty_table_is_no_policy_and_guard_defaults_apply() -> None:
    assert policy_from_dict("n", {}) == NetworkPolicy("n")
    guard = policy_from_dict("n", {"guard": {}}).guard
    assert guard == Guard(window=3600, min_created=20, max_accepted_ratio=0.05, hold=6 * 3600, digits=4)


def test_without_environ_a_token_reference_is_not_checked() -> None:
    # The stored configuration is read by every process; only `apply` checks the variables.
    assert policy_from_dict("n", {"tokens": ["${NOT_SET_ANYWHERE}"]}).tokens == ("${NOT_SET_ANYWHERE}",)


def test_to_dict_round_trips_including_the_cooldown() -> None:
    data = {
        "tokens": ["${T}", DIGEST],
        "allow_from": ["10.0.0.0/8"],
        "allowed_prefixes": ["+1"],
        "limits": [
            {"per": "prefix", "max": 5, "window": "1h", "digits": 6},
            {"per": "network", "max": 9, "window": 60},
        ],
        "cooldown": "5m",
        "guard": {"min_created": 5, "max_accepted_ratio": 0.2},
        "default_region": "US",
    }
    policy = policy_from_dict("n", data)
    stored = json.loads(json.dumps(policy.to_dict()))  # as it travels through Redis
    assert policy_from_dict("n", stored) == policy
    assert NetworkPolicy("n").to_dict() == {}


def test_networks_from_dict_reads_every_table_including_the_star() -> None:
    policies = networks_from_dict({"a": {"tokens": [DIGEST]}, "*": {"cooldown": 60}})
    assert set(policies) == {"a", "*"}
    assert policies["*"].limits == (Limit("invitee", 1, 60, cooldown=True),)
    with pytest.raises(ConfigError) as info:
        networks_from_dict(["a"])
    assert "networks" in str(info.value)


# -- policy_from_dict: every error names the network and the key ----------------------------------

BAD: list[tuple[dict[str, Any], str]] = [
    ({"token": ["${T}"]}, "token"),
    ({"tokens": "${T}"}, "tokens"),
    ({"tokens": [""]}, "tokens"),
    ({"tokens": ["plain-secret-in-the-file"]}, "tokens"),
    ({"tokens": ["sha256:" + "A" * 64]}, "tokens"),
    ({"tokens": ["sha256:abc"]}, "tokens"),
    ({"tokens": ["${1BAD}"]}, "tokens"),
    ({"allow_from": "10.0.0.0/8"}, "allow_from"),
    ({"allow_from": ["10.0.0.300/8"]}, "allow_from"),
    ({"allow_from": ["example.com"]}, "allow_from"),
    ({"allowed_prefixes": ["44"]}, "allowed_prefixes"),
    ({"allowed_prefixes": ["+"]}, "allowed_prefixes"),
    ({"allowed_prefixes": ["+4a"]}, "allowed_prefixes"),
    ({"allowed_prefixes": ["+1234567890123456"]}, "allowed_prefixes"),
    ({"limits": {"per": "invitee"}}, "limits"),
    ({"limits": ["invitee"]}, "limits[0]"),
    ({"limits": [{"per": "invitee", "max": 1, "window": 60, "every": 2}]}, "limits[0].every"),
    ({"limits": [{"per": "caller", "max": 1, "window": 60}]}, "limits[0].per"),
    ({"limits": [{"max": 1, "window": 60}]}, "limits[0].per"),
    ({"limits": [{"per": "invitee", "window": 60}]}, "limits[0]"),
    ({"limits": [{"per": "invitee", "max": 1}]}, "limits[0]"),
    ({"limits": [{"per": "invitee", "max": 0, "window": 60}]}, "limits[0].max"),
    ({"limits": [{"per": "invitee", "max": True, "window": 60}]}, "limits[0].max"),
    ({"limits": [{"per": "invitee", "max": "3", "window": 60}]}, "limits[0].max"),
    ({"limits": [{"per": "invitee", "max": 1, "window": "1w"}]}, "limits[0].window"),
    ({"limits": [{"per": "invitee", "max": 1, "window": 0}]}, "limits[0].window"),
    ({"limits": [{"per": "prefix", "max": 1, "window": 60, "digits": 0}]}, "limits[0].digits"),
    ({"limits": [{"per": "prefix", "max": 1, "window": 60, "digits": 16}]}, "limits[0].digits"),
    (
        {"limits": [{"per": "invitee", "max": 1, "window": 60}, {"per": "invitor", "max": 1, "window": "x"}]},
        "limits[1].window",
    ),
    ({"cooldown": "soon"}, "cooldown"),
    ({"cooldown": -5}, "cooldown"),
    ({"guard": True}, "guard"),
    ({"guard": {"ratio": 0.1}}, "guard.ratio"),
    ({"guard": {"max_accepted_ratio": 1}}, "guard.max_accepted_ratio"),
    ({"guard": {"max_accepted_ratio": -0.1}}, "guard.max_accepted_ratio"),
    ({"guard": {"max_accepted_ratio": True}}, "guard.max_accepted_ratio"),
    ({"guard": {"max_accepted_ratio": "5%"}}, "guard.max_accepted_ratio"),
    ({"guard": {"min_created": 0}}, "guard.min_created"),
    ({"guard": {"window": "an hour"}}, "guard.window"),
    ({"guard": {"hold": "6 hours"}}, "guard.hold"),
    ({"guard": {"digits": 0}}, "guard.digits"),
    ({"default_region": "us"}, "default_region"),
    ({"default_region": "USA"}, "default_region"),
    ({"default_region": "+1"}, "default_region"),
    ({"default_region": "ZZ"}, "default_region"),
    ({"default_region": 1}, "default_region"),
]


@pytest.mark.parametrize(("data", "key"), BAD, ids=[f"{k}-{i}" for i, (_, k) in enumerate(BAD)])
def test_every_error_names_the_network_and_the_key(data: dict[str, Any], key: str) -> None:
    exc = _error("mynetwork", data)
    assert exc.key == f"networks.mynetwork.{key}", str(exc)
    assert f"networks.mynetwork.{key}" in str(exc)
    assert "target" not in str(exc), "a network is not a target"
    assert exc.reason


def test_a_table_that_is_not_a_table_names_the_network() -> None:
    exc = _error("mynetwork", ["tokens"])
    assert exc.key == "networks.mynetwork"
    assert "must be a table" in str(exc)


def test_the_star_network_is_named_as_in_the_file() -> None:
    exc = _error("*", {"cooldown": "later"})
    assert exc.key == 'networks."*".cooldown'


def test_a_literal_token_is_refused_without_echoing_it() -> None:
    exc = _error("mynetwork", {"tokens": ["plain-secret-in-the-file"]})
    assert "plain-secret-in-the-file" not in str(exc)
    assert "${ENV_VAR}" in str(exc) and "sha256:" in str(exc)


@pytest.mark.parametrize("environ", [{}, {"MYNETWORK_TOKEN": ""}, {"OTHER": "x"}])
def test_a_token_variable_must_be_set_and_not_empty_when_applied(environ: dict[str, str]) -> None:
    exc = _error("mynetwork", {"tokens": ["${MYNETWORK_TOKEN}"]}, environ)
    assert exc.key == "networks.mynetwork.tokens"
    assert "MYNETWORK_TOKEN" in str(exc)


def test_a_targets_file_error_names_the_file_the_network_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "targets.toml"
    path.write_text('[networks."acme"]\nlimits = [{ per = "invitee", max = 3, window = "1 day" }]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(path) in str(info.value)
    assert "networks.acme.limits[0].window" in str(info.value)


# -- parse_duration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(45, 45), ("90s", 90), ("10m", 600), ("1h", 3600), ("2d", 172800), ("1000000s", 1_000_000)],
)
def test_parse_duration(value: object, seconds: int) -> None:
    assert parse_duration(value, "n", "cooldown") == seconds


@pytest.mark.parametrize(
    "value", [0, -1, True, False, 1.5, None, "", "10", "0s", "01m", "1.5h", "10 m", "1w", "1H", "10mm", [60]]
)
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "n", "guard.hold")
    assert info.value.key == "networks.n.guard.hold"
    assert repr(value) in str(info.value)


# -- TokenTable -------------------------------------------------------------------------------------


def _table(environ: dict[str, str]) -> TokenTable:
    policies = {
        "alpha": NetworkPolicy("alpha", tokens=("${ALPHA}", "${ALPHA_NEXT}", DIGEST)),
        "beta": NetworkPolicy("beta", tokens=("${BETA}", "${SHARED}")),
        "gamma": NetworkPolicy("gamma", tokens=("${SHARED}", "${GAMMA_UNSET}")),
        "open": NetworkPolicy("open"),
    }
    return TokenTable(policies, environ)


ENVIRON = {
    "ALPHA": "alpha-1",
    "ALPHA_NEXT": "alpha-2",
    "BETA": "beta-1",
    "SHARED": "shared-1",
    "GAMMA_UNSET": "",
}


def test_token_table_resolves_variables_and_digests() -> None:
    table = _table(ENVIRON)
    assert table
    assert table.networks_of("alpha-1") == {"alpha"}
    assert table.networks_of("alpha-2") == {"alpha"}  # two at once: rotation
    assert table.networks_of("a-token-kept-as-its-digest") == {"alpha"}
    assert table.networks_of("beta-1") == {"beta"}
    assert table.networks_of("shared-1") == {"beta", "gamma"}
    assert table.networks_of("nope") == set()
    assert table.networks_of("") == set()
    # The digest itself is not a token (someone who read the file must not get in with it).
    assert table.networks_of(DIGEST) == set()
    assert table.networks_of(DIGEST.removeprefix("sha256:")) == set()


def test_token_table_records_missing_and_empty_variables() -> None:
    table = _table({"ALPHA": "alpha-1", "GAMMA_UNSET": ""})
    assert sorted(table.missing) == ["ALPHA_NEXT", "BETA", "GAMMA_UNSET", "SHARED", "SHARED"]
    assert table.networks_of("alpha-1") == {"alpha"}
    # An empty variable must not turn the empty string into a token.
    assert table.networks_of("") == set()
    empty = TokenTable({"n": NetworkPolicy("n", tokens=("${UNSET}",))}, {})
    assert not empty
    assert empty.missing == ["UNSET"]


def test_token_table_compares_every_digest_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(networks.hmac, "compare_digest", counting)
    table = _table(ENVIRON)
    entries = 3 + 2 + 1  # GAMMA_UNSET is empty: not an entry
    for token in ("alpha-1", "shared-1", "wrong", "x" * 1000):
        calls.clear()
        table.networks_of(token)
        # Never a short cut: a hit and a miss cost the same number of comparisons...
        assert len(calls) == entries, token
        # ...of digests of the same length, never of the presented token itself.
        presented = token_digest(token).encode()
        assert all(b == presented and len(a) == len(b) for a, b in calls)


def test_token_digest_is_the_sha256_hex_with_its_prefix() -> None:
    assert token_digest("abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert policy_from_dict("n", {"tokens": [token_digest("abc")]}).tokens == (token_digest("abc"),)


# -- prefixes -----------------------------------------------------------------------------------------


def test_prefix_of() -> None:
    assert prefix_of("+882161234567", 4) == "8821"
    assert prefix_of("882161234567", 4) == "8821"
    assert prefix_of("+15551234567", 1) == "1"
    assert prefix_of("+123", 6) == "123"


@pytest.mark.parametrize(
    ("invitee", "allowed", "expected"),
    [
        ("+15551234567", ["+1"], True),
        ("+447700900123", ["+1"], False),
        ("+447700900123", ["+1", "+44"], True),
        ("+447700900123", ["+447"], True),
        ("+447700900123", ["+4478"], False),
        ("+14155550100", ["+44"], False),
        ("447700900123", ["+44"], True),  # no +: matched on its digits as they are
        ("07700900123", ["+44"], False),  # a national number matches no country prefix
        ("+15551234567", [], False),
    ],
)
def test_prefix_allowed(invitee: str, allowed: list[str], expected: bool) -> None:
    assert prefix_allowed(invitee, allowed) is expected


# -- limit_fields: what the accept Lua is told --------------------------------------------------------


def _event(
    invitee: str = "+15551234567", invitor: str = "johnsnow", event_type: str = INVITATION_CREATED
) -> InvitationEvent:
    fields = {"invitee": invitee, "invitor": invitor, "network_id": "mynetwork"}
    return make_event(fields, event_type, "query", now=NOW / 1000)


def _policy(**data: Any) -> NetworkPolicy:
    return policy_from_dict("mynetwork", data)


def _keys(fields: dict[str, Any]) -> list[str]:
    keys = [lim[0] for lim in fields.get("lim", [])]
    if "g" in fields:
        keys += [fields["g"]["h"], fields["g"]["c"], fields["g"]["a"]]
    if "ga" in fields:
        keys.append(fields["ga"][0])
    return keys


def _assert_no_personal_data(fields: dict[str, Any], *values: str) -> None:
    blob = json.dumps(fields)
    for value in values:
        assert value not in blob, f"{value!r} in {blob}"
    for key in _keys(fields):
        assert key.split(":")[0] in ("lim", "hold", "guard"), key
        assert len(key.split(":")[1]) == 24 and all(c in "0123456789abcdef" for c in key.split(":")[1]), key


def test_no_policy_no_fields() -> None:
    assert limit_fields(_event(), NetworkPolicy("mynetwork"), NOW) == {}
    assert limit_fields(_event(event_type=INVITATION_ACCEPTED), NetworkPolicy("mynetwork"), NOW) == {}


@pytest.mark.parametrize("per", ["invitee", "invitor", "prefix", "network"])
def test_limit_fields_per_kind(per: str) -> None:
    policy = _policy(limits=[{"per": per, "max": 3, "window": "1h", "digits": 4}])
    fields = limit_fields(_event(), policy, NOW)
    assert set(fields) == {"lim"}
    [[key, most, window, reason, kind]] = fields["lim"]
    assert most == 3
    assert window == 3_600_000  # the log keeps what is younger than that
    assert reason == f"over 3 invitations per 3600 s for this {'4-digit prefix' if per == 'prefix' else per}"
    assert kind == ("prefix" if per == "prefix" else "limit")
    _assert_no_personal_data(fields, "15551234567", "5551234567", "johnsnow")
    # Which callbacks share a counter:
    same_invitee = limit_fields(_event(invitor="arya"), policy, NOW)["lim"][0][0]
    same_prefix = limit_fields(_event(invitee="+15559999999", invitor="arya"), policy, NOW)["lim"][0][0]
    same_invitor = limit_fields(_event(invitee="+447700900123"), policy, NOW)["lim"][0][0]
    unrelated = limit_fields(_event(invitee="+447700900123", invitor="arya"), policy, NOW)["lim"][0][0]
    assert (same_invitee == key) is (per in ("invitee", "prefix", "network"))
    assert (same_prefix == key) is (per in ("prefix", "network"))
    assert (same_invitor == key) is (per in ("invitor", "network"))
    assert (unrelated == key) is (per == "network")
    # Another network never shares a counter.
    other = make_event(
        {"invitee": "+15551234567", "invitor": "johnsnow", "network_id": "other"},
        INVITATION_CREATED,
        "query",
        now=NOW / 1000,
    )
    assert limit_fields(other, policy, NOW)["lim"][0][0] != key


def test_limit_keys_do_not_move_with_time() -> None:
    # A limit's log slides: the same key whenever the invitation comes.
    policy = _policy(limits=[{"per": "invitee", "max": 3, "window": "1h"}])
    key = limit_fields(_event(), policy, NOW)["lim"][0][0]
    assert limit_fields(_event(), policy, NOW + 3_600_000 * 7 + 1)["lim"][0][0] == key
    # A limit of one is a key, not a log: another name.
    one = _policy(limits=[{"per": "invitee", "max": 1, "window": "1h"}])
    assert limit_fields(_event(), one, NOW)["lim"][0][0].startswith("lim1:")
    assert key.startswith("lim:")


def test_the_cooldown_is_an_invitee_limit_of_one() -> None:
    fields = limit_fields(_event(), _policy(cooldown="10m"), NOW)
    [[_, most, window, reason, kind]] = fields["lim"]
    assert (most, window, kind) == (1, 600_000, "cooldown")
    assert reason == "another invitation to this number less than 600 s ago (cooldown)"


def test_the_cooldown_holds_across_a_window_edge() -> None:
    policy = _policy(cooldown="10m")
    edge = NOW - NOW % 600_000 + 600_000
    before = limit_fields(_event(), policy, edge - 1000)["lim"][0][0]
    after = limit_fields(_event(), policy, edge + 1000)["lim"][0][0]
    assert before == after


def test_two_limits_on_the_same_counter_count_it_once_with_the_lower_max() -> None:
    policy = _policy(
        limits=[{"per": "invitee", "max": 5, "window": "1d"}, {"per": "invitee", "max": 3, "window": "1d"}],
        cooldown="1d",
    )
    # The cooldown is a counter of its own (sliding), beside the lower of the two daily ones.
    assert sorted(lim[1] for lim in limit_fields(_event(), policy, NOW)["lim"]) == [1, 3]
    policy = _policy(
        limits=[{"per": "invitee", "max": 5, "window": "1d"}, {"per": "invitee", "max": 3, "window": "1d"}]
    )
    [[_, most, _, _, _]] = limit_fields(_event(), policy, NOW)["lim"]
    assert most == 3
    # Another window or another kind is another counter.
    policy = _policy(
        limits=[{"per": "invitee", "max": 5, "window": "1d"}, {"per": "invitee", "max": 3, "window": "1h"}],
        cooldown="10m",
    )
    assert len({lim[0] for lim in limit_fields(_event(), policy, NOW)["lim"]}) == 3


def test_every_spelling_of_one_number_counts_as_one() -> None:
    policy = _policy(
        limits=[{"per": "invitee", "max": 3, "window": "1h"}, {"per": "prefix", "max": 9, "window": "1h"}],
        cooldown="10m",
        guard={"min_created": 5},
        default_region="US",
    )

    def keys(invitee: str, region: str | None = "US") -> list[str]:
        fields = {"invitee": invitee, "invitor": "johnsnow", "network_id": "mynetwork"}
        event = make_event(fields, INVITATION_CREATED, "query", now=NOW / 1000, region_of=lambda n: region)
        return _keys(limit_fields(event, policy, NOW))

    first = keys("+15550100009")
    assert keys("15550100009") == first
    assert keys("5550100009") == first
    assert keys("(555) 010-0009") == first
    assert keys("0015550100009") == first  # 00 read as international, even where 011 is
    assert keys("0015550100009", "GB") == first
    assert keys("+1 555 010 0009", None) == first
    assert keys("15550100009", None) == first  # no region: counted on its digits, the same ones
    assert keys("+15550100008") != first


def test_a_refused_prefix_is_suppressed_without_counting() -> None:
    policy = _policy(
        allowed_prefixes=["+1"],
        limits=[{"per": "invitee", "max": 3, "window": "1h"}],
        guard={"min_created": 5},
    )
    fields = limit_fields(_event(invitee="+447700900123"), policy, NOW)
    assert fields == {"sup": "invitee prefix +44 not allowed for network mynetwork", "k": "allowlist"}
    # Named as finely as the allowlist is written.
    finer = _policy(allowed_prefixes=["+1", "+4477"])
    assert limit_fields(_event(invitee="+447810000000"), finer, NOW)["sup"].startswith(
        "invitee prefix +4478 not allowed"
    )
    assert set(limit_fields(_event(), policy, NOW)) == {"lim", "g"}


def test_guard_fields_and_accepted_invitations_count_on_the_same_key() -> None:
    policy = _policy(
        guard={"window": "1h", "min_created": 5, "max_accepted_ratio": 0.2, "hold": "6h", "digits": 4}
    )
    created = limit_fields(_event(invitee="+882161234567"), policy, NOW)
    g = created["g"]
    assert g["min"] == 5 and g["ratio"] == 0.2 and g["hold"] == 6 * 3600 and g["ttl"] == 2 * 3_600_000
    assert g["why"].startswith("prefix +8821 held")
    assert (g["n"], g["p"]) == ("mynetwork", "8821")  # for the list of holds
    assert len({g["h"], g["c"], g["a"], g["cp"], g["ap"]}) == 5
    # The previous window weighs as much of it as the sliding window still covers.
    assert g["w"] == 1 - (NOW % 3_600_000) / 3_600_000
    start = NOW - NOW % 3_600_000
    later = limit_fields(_event(invitee="+882161234567"), policy, start + 3_600_000)["g"]
    assert (later["cp"], later["ap"], later["w"]) == (g["c"], g["a"], 1.0)
    _assert_no_personal_data(created, "882161234567", "johnsnow")
    accepted = limit_fields(_event(invitee="+882169999999", event_type=INVITATION_ACCEPTED), policy, NOW)
    # An accepted invitation only counts towards its prefix's accepted share, on the key the
    # created ones read.
    assert accepted == {"ga": [g["a"], 2 * 3_600_000]}
    other_prefix = limit_fields(_event(invitee="+15551234567"), policy, NOW)["g"]
    assert other_prefix["h"] != g["h"] and other_prefix["c"] != g["c"]
    # Limits never apply to accepted invitations.
    limited = _policy(limits=[{"per": "network", "max": 1, "window": 60}], allowed_prefixes=["+1"])
    assert limit_fields(_event(invitee="+447700900123", event_type=INVITATION_ACCEPTED), limited, NOW) == {}


# -- who is calling (gateway/ingest/tokens.py) ---------------------------------------------------------


def _request(
    path: str = "/invitation_created",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    peer: str = "127.0.0.1",
    token: str | None = None,
) -> Callback:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": query,
        "headers": headers or [],
        "client": (peer, 40000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    return Callback(scope, receive, token)


def test_presented_token_from_path_query_or_bearer() -> None:
    assert presented_token(_request(token="p1")) == "p1"
    assert presented_token(_request(query=b"invitee=1&token=q%2B1")) == "q+1"
    assert presented_token(_request(headers=[(b"authorization", b"Bearer  b1 ")])) == "b1"
    assert presented_token(_request(headers=[(b"authorization", b"bearer b1")])) == "b1"
    assert presented_token(_request(headers=[(b"authorization", b"Basic Zm9vOmJhcg==")])) is None
    assert presented_token(_request(query=b"token=")) is None
    assert presented_token(_request(query=b"mytoken=x")) is None
    assert presented_token(_request()) is None
    # The path wins over the query, the query over the header.
    both = _request(query=b"token=q", headers=[(b"authorization", b"Bearer b")], token="p")
    assert presented_token(both) == "p"


def test_client_address_reads_x_forwarded_for_only_from_trusted_proxies() -> None:
    untrusting = IngestAuth(False, (), {})
    xff = [(b"x-forwarded-for", b"10.1.2.3")]
    assert untrusting.client_address(_request(headers=xff)) == "127.0.0.1"
    trusting = IngestAuth(False, ("127.0.0.1/32", "192.168.0.0/16"), {})
    assert trusting.client_address(_request(headers=xff)) == "10.1.2.3"
    assert trusting.client_address(_request()) == "127.0.0.1"
    # A peer that is not a trusted proxy: its X-Forwarded-For is ignored.
    assert trusting.client_address(_request(headers=xff, peer="203.0.113.9")) == "203.0.113.9"
    # The last hop a trusted proxy did not add, not the first (the client can write that one).
    chain = [(b"x-forwarded-for", b"10.9.9.9, 198.51.100.7, 192.168.1.1")]
    assert trusting.client_address(_request(headers=chain)) == "198.51.100.7"


def test_client_address_reads_every_x_forwarded_for_line() -> None:
    # A client sends its own (forged) line; the proxy adds the real address on a second line.
    trusting = IngestAuth(False, ("127.0.0.1/32",), {})
    lines = [(b"x-forwarded-for", b"10.1.2.3"), (b"x-forwarded-for", b"198.51.100.7")]
    assert trusting.client_address(_request(headers=lines)) == "198.51.100.7"
