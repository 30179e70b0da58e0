"""Every problem of a file at once, and target addresses refused as written (gateway/config/load.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway.cli.config import private_target_warnings
from gateway.config.addresses import AddressNotAllowed, check_address, host_refusal
from gateway.config.load import config_from_dict, load_config
from gateway.delivery.netguard import resolved_refusals
from gateway.exceptions import ConfigError, ConfigErrors, config_problems

SEVERAL = """
[settings]
limited_status = 500

[[targets]]
name = "crm"
networks = ["n"]
url = "https://crm.example.com/${CRM_PATH}"
headers = { Authorization = "Bearer ${CRM_TOKEN}", X-Other = "${OTHER}" }
retry = ["5s"]
urls = "typo"

[[targets]]
name = "sms"
networks = ["n"]
url = "https://sms.example.com/%nope%"
timeout = 600

[[targets]]
name = "ok"
networks = ["n"]
url = "https://ok.example.com/"
"""


def _problems(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> list[ConfigError]:
    path = tmp_path / "targets.toml"
    path.write_text(text)
    with pytest.raises(ConfigErrors) as info:
        load_config(path, {} if environ is None else environ)
    assert all(line.startswith(f"{path}: ") for line in info.value.lines())
    return config_problems(info.value)


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    found = {(e.target, e.key, e.reason.split(" (")[0]) for e in _problems(SEVERAL, tmp_path)}
    assert found == {
        (None, "settings.limited_status", "must be 204 or 429, got 500"),
        ("crm", "url", "environment variable CRM_PATH is not set"),
        ("crm", "headers.Authorization", "environment variable CRM_TOKEN is not set"),
        ("crm", "headers.X-Other", "environment variable OTHER is not set"),
        ("crm", "retry", "must be a list of whole seconds between retries, e.g. [5, 300, 1800]"),
        ("crm", "urls", "unknown key"),
        ("sms", "url", "unknown placeholder %nope%"),
        ("sms", "timeout", "must be a number of seconds above 0 and at most 60"),
    }


def test_a_single_problem_is_still_one_line_naming_file_target_and_key(tmp_path: Path) -> None:
    [problem] = _problems('[[targets]]\nname = "a"\nnetworks = ["n"]\nurl = "ftp://x/"\n', tmp_path)
    assert (problem.target, problem.key) == ("a", "url")


def test_duplicate_names_and_a_missing_alert_target_are_reported_with_the_rest(tmp_path: Path) -> None:
    text = (
        '[settings]\nalert_target = "nobody"\n'
        '[[targets]]\nname = "a"\nnetworks = ["n"]\nurl = "https://a.example.com/"\n'
        '[[targets]]\nname = "a"\nnetworks = ["n"]\nurl = "https://a.example.com/"\n'
    )
    keys = {(e.target, e.key) for e in _problems(text, tmp_path)}
    assert keys == {("a", "name"), (None, "settings.alert_target")}


# -- addresses, as written ----------------------------------------------------------------------

PRIVATE = ["127.0.0.1", "[::1]", "10.1.2.3", "192.168.0.10", "169.254.169.254", "[fd00::1]", "localhost"]


@pytest.mark.parametrize("host", PRIVATE)
def test_a_literal_private_target_is_refused_naming_target_and_key(host: str, tmp_path: Path) -> None:
    text = f'[[targets]]\nname = "crm"\nnetworks = ["n"]\nurl = "http://{host}:8080/hook"\n'
    [problem] = _problems(text, tmp_path)
    assert (problem.target, problem.key) == ("crm", "url")
    assert "allow_private_targets" in problem.reason


def test_a_literal_private_lookup_url_is_refused_too(tmp_path: Path) -> None:
    text = (
        '[[targets]]\nname = "crm"\nnetworks = ["n"]\nurl = "https://crm.example.com/"\n'
        '[targets.lookups.contact]\nurl = "http://10.0.0.7/contacts?phone=%invitee%"\n'
        'fields = { email = "email" }\n'
    )
    [problem] = _problems(text, tmp_path)
    assert (problem.target, problem.key) == ("crm", "lookups.contact.url")


@pytest.mark.parametrize("host", PRIVATE)
def test_allow_private_targets_true_allows_them(host: str, tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        f'[settings]\nallow_private_targets = true\n[[targets]]\nname = "crm"\nnetworks = ["n"]\n'
        f'url = "http://{host}:8080/hook"\n'
    )
    assert load_config(path, {}).allow_private_targets is True


def test_allow_private_targets_takes_a_list_of_networks(tmp_path: Path) -> None:
    base = '[settings]\nallow_private_targets = ["10.1.2.0/24", "fd00::/8"]\n'
    target = '[[targets]]\nname = "{name}"\nnetworks = ["n"]\nurl = "http://{host}/hook"\n'
    path = tmp_path / "t.toml"
    path.write_text(
        base + target.format(name="a", host="10.1.2.3") + target.format(name="b", host="[fd12::5]")
    )
    config = load_config(path, {})
    assert config.allow_private_targets == ("10.1.2.0/24", "fd00::/8")
    assert config.to_dict()["settings"]["allow_private_targets"] == ["10.1.2.0/24", "fd00::/8"]
    # Round trip through Redis' JSON.
    assert config_from_dict(config.to_dict()).allow_private_targets == ("10.1.2.0/24", "fd00::/8")

    path.write_text(
        base + target.format(name="a", host="10.1.3.3") + target.format(name="b", host="127.0.0.1")
    )
    problems = _problems(path.read_text(), tmp_path)
    assert {(e.target, e.key) for e in problems} == {("a", "url"), ("b", "url")}
    assert "list its network in allow_private_targets" in problems[0].reason


def test_a_bad_network_in_allow_private_targets_is_named(tmp_path: Path) -> None:
    [problem] = _problems('[settings]\nallow_private_targets = ["10.1.2.0/33"]\n', tmp_path)
    assert problem.key == "settings.allow_private_targets"
    assert "10.1.2.0/33" in problem.reason


def test_check_address_with_a_network_list() -> None:
    allow = ("10.1.2.0/24", "fd00::/8")
    check_address("10.1.2.3", allow)
    check_address("::ffff:10.1.2.3", allow)
    check_address("fd00::1", allow)
    check_address("93.184.216.34", allow)
    for refused in ("10.1.3.1", "127.0.0.1", "169.254.169.254", "fe80::1%eth0", "0.0.0.0"):
        with pytest.raises(AddressNotAllowed):
            check_address(refused, allow)


def test_host_refusal_reads_literals_and_localhost_only() -> None:
    assert host_refusal("127.0.0.1", False) is not None
    assert host_refusal("LOCALHOST.", False) is not None
    assert host_refusal("api.localhost", False) is not None
    assert host_refusal("localhost", ("127.0.0.0/8",)) is not None  # ::1 is not in the list
    assert host_refusal("localhost", ("127.0.0.0/8", "::1/128")) is None
    assert host_refusal("crm.example.com", False) is None  # names are resolved elsewhere
    assert host_refusal("93.184.216.34", False) is None


def _loopback_name() -> str:
    """A name other than localhost that /etc/hosts (or DNS) maps to a loopback address here."""
    for name in (socket.gethostname(), "vm", "runsc"):
        try:
            infos = socket.getaddrinfo(name, None)
        except OSError:
            continue
        if name != "localhost" and infos and all(str(i[4][0]).startswith("127.") for i in infos):
            return name
    pytest.skip("no host name other than localhost resolves to loopback on this machine")


def test_a_name_that_resolves_to_a_private_address_now_is_a_warning(tmp_path: Path) -> None:
    name = _loopback_name()
    assert name in resolved_refusals([name, "no-such-host.invalid"], False)
    assert resolved_refusals([name], ("127.0.0.0/8", "::1/128")) == {}
    path = tmp_path / "t.toml"
    path.write_text(f'[[targets]]\nname = "crm"\nnetworks = ["n"]\nurl = "http://{name}:8080/"\n')
    config = load_config(path, {})  # not an error: DNS can change
    [warning] = private_target_warnings(config, {})
    assert "target 'crm', key 'url'" in warning and name in warning
    assert private_target_warnings(config, {"GATEWAY_ALLOW_PRIVATE_TARGETS": "1"}) == []
