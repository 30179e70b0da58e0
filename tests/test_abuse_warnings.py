"""`gateway check` and `gateway web` warn about a network that routes invitations to a target that
sends SMS or email (`sends`, set by the twilio-sms and sendgrid presets) without a per-number
limit or a per-network cap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.checks import abuse_warnings
from gateway.config.load import load_config
from gateway.exceptions import ConfigError

ROOT = Path(__file__).resolve().parent.parent

SMS = """
[[targets]]
name = "sms"
preset = "twilio-sms"
networks = [{networks}]
vars = {{ account_sid = "AC1", auth_token = "t", from = "+15017122661" }}
"""
MAIL = """
[[targets]]
name = "mail"
networks = ["n1"]
url = "https://mail.example.com/send"
sends = "email"
"""
PLAIN = """
[[targets]]
name = "crm"
networks = ["*"]
url = "https://crm.example.com/hook"
"""
SAFE = """
[networks.{name}]
cooldown = "1h"
limits = [{{ per = "network", max = 500, window = "1h" }}]
"""


def _warnings(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "targets.toml"
    path.write_text(text)
    return abuse_warnings(load_config(path))


def test_the_sms_and_email_presets_say_what_they_send(tmp_path: Path) -> None:
    path = tmp_path / "targets.toml"
    sendgrid = (
        '[[targets]]\nname = "mail"\npreset = "sendgrid"\nnetworks = ["n1"]\n'
        'vars = { api_key = "k", to = "a@example.com", from = "b@example.com" }\n'
    )
    path.write_text(SMS.format(networks='"n1"') + sendgrid + PLAIN)
    assert [t.sends for t in load_config(path).targets] == ["sms", "email", None]


@pytest.mark.parametrize(
    ("policy", "lacking"),
    [
        ("", ["a per-number limit", "a per-network cap"]),
        ('[networks.n1]\ncooldown = "10m"\n', ["a per-network cap"]),
        ('[networks.n1]\nlimits = [{ per = "invitee", max = 3, window = "1d" }]\n', ["a per-network cap"]),
        ('[networks.n1]\nlimits = [{ per = "network", max = 9, window = "1h" }]\n', ["a per-number limit"]),
        ("[networks.n1]\nguard = { min_created = 5 }\n", ["a per-number limit", "a per-network cap"]),
    ],
)
def test_each_missing_limit_is_named(tmp_path: Path, policy: str, lacking: list[str]) -> None:
    [line] = _warnings(tmp_path, SMS.format(networks='"n1"') + policy)
    assert line.startswith("network n1 sends SMS through target 'sms' without ")
    for what in lacking:
        assert what in line
    assert "recommended policy" in line and "min_created" in line


def test_no_warning_with_both_or_for_targets_that_send_nothing(tmp_path: Path) -> None:
    assert _warnings(tmp_path, SMS.format(networks='"n1"') + SAFE.format(name="n1")) == []
    assert _warnings(tmp_path, PLAIN) == []  # a CRM webhook: nothing to pump
    # Only invitations created send: a target of accepted ones only is not warned about.
    accepted = SMS.format(networks='"n1"') + 'events = ["invitation_accepted"]\n'
    assert _warnings(tmp_path, accepted) == []


def test_every_network_a_star_target_serves_is_checked(tmp_path: Path) -> None:
    text = SMS.format(networks='"*"') + MAIL + SAFE.format(name="n1") + '[networks.n2]\ncooldown = "1h"\n'
    lines = _warnings(tmp_path, text)
    assert len(lines) == 2, lines
    assert lines[0].startswith("every network without its own [networks] table sends SMS")
    assert lines[1].startswith("network n2 sends SMS") and "a per-network cap" in lines[1]
    # With a "*" table that is safe, only n2 is left; the email target serves n1, which is safe.
    lines = _warnings(tmp_path, text + SAFE.format(name='"*"'))
    assert [line.split(" sends")[0] for line in lines] == ["network n2"]


def test_sends_takes_sms_or_email(tmp_path: Path) -> None:
    path = tmp_path / "targets.toml"
    path.write_text(MAIL.replace('"email"', '"fax"'))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "target 'mail', key 'sends'" in str(info.value) and "sms, email" in str(info.value)


def test_gateway_check_prints_the_warning(tmp_path: Path) -> None:
    path = tmp_path / "targets.toml"
    path.write_text(SMS.format(networks='"n1"') + '[networks.n1]\ntokens = ["sha256:' + "0" * 64 + '"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--no-env", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr  # a warning, not an error
    assert "warning: network n1 sends SMS through target 'sms' without a per-number limit" in result.stderr
