"""`gateway check`, `targets apply` and startup report every problem of a file at once (issue 8)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from e2e_support import run_gateway, store_for, wait_until

if TYPE_CHECKING:
    from conftest import Gateway
    from redis import Redis

BROKEN = """
[[targets]]
name = "crm"
networks = ["mynetwork"]
url = "https://crm.example.com/hook/${CRM_PATH}"
headers = { Authorization = "Bearer ${CRM_TOKEN}" }
auth = { username = "api", password = "${CRM_PASSWORD}" }
retry = ["5s"]

[[targets]]
name = "slack"
networks = ["*"]
url = "https://hooks.slack.com/services/%nope%"
content_type = "application/json"
post_data = '{"text": %message%}'
rate = "fast"

[[targets]]
name = "onprem"
networks = ["*"]
url = "http://10.1.2.3:8080/invite"
urls = "typo"

[[targets]]
name = "fine"
networks = ["*"]
url = "https://fine.example.com/"
"""

EXPECTED = [
    ("crm", "url", "CRM_PATH is not set"),
    ("crm", "headers.Authorization", "CRM_TOKEN is not set"),
    ("crm", "auth", "CRM_PASSWORD is not set"),
    ("crm", "retry", "whole seconds"),
    ("slack", "url", "unknown placeholder %nope%"),
    ("slack", "post_data", "not valid JSON"),
    ("slack", "rate", "must be like"),
    ("onprem", "urls", "unknown key"),
    ("onprem", "url", "10.1.2.3 is private"),
]


def _assert_all_reported(stderr: str, path: Path) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    for target, key, words in EXPECTED:
        assert any(
            f"target {target!r}, key {key!r}" in line and words in line and str(path) in line
            for line in lines
        ), (target, key, stderr)
    assert len(lines) == len(EXPECTED), stderr
    assert f"{len(EXPECTED)} problems" in stderr


def test_check_reports_every_problem_of_the_file_at_once(gateway: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    result = run_gateway("check", str(path), env=gateway.environ())
    assert result.returncode == 1, (result.stdout, result.stderr)
    _assert_all_reported(result.stderr, path)
    assert "Traceback" not in result.stderr


def test_check_no_env_still_refuses_a_literal_private_target(gateway: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "private.toml"
    path.write_text('[[targets]]\nname = "local"\nnetworks = ["*"]\nurl = "http://127.0.0.1:9/x"\n')
    result = run_gateway("check", "--no-env", str(path), env=gateway.environ())
    assert result.returncode == 1
    assert "target 'local', key 'url'" in result.stderr and "allow_private_targets" in result.stderr
    # Allowed by the file, or by a network list that holds it.
    path.write_text('[settings]\nallow_private_targets = ["127.0.0.0/8"]\n' + path.read_text())
    ok = run_gateway("check", "--no-env", str(path), env=gateway.environ())
    assert ok.returncode == 0, ok.stderr


def test_apply_reports_every_problem_and_keeps_the_running_configuration(
    gateway: Gateway, redis: Redis, tmp_path: Path
) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[[targets]]\nname = "fine"\nnetworks = ["*"]\nurl = "https://fine.example.com/"\n')
    assert run_gateway("targets", "apply", str(good), env=gateway.environ()).returncode == 0
    before = store_for(redis).load_config()
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    result = run_gateway("targets", "apply", str(path), env=gateway.environ())
    assert result.returncode == 1, (result.stdout, result.stderr)
    _assert_all_reported(result.stderr, path)
    assert store_for(redis).load_config() == before


def test_a_web_process_refuses_to_start_listing_every_problem(gateway: Gateway, tmp_path: Path) -> None:
    path = gateway.write_config(BROKEN)
    proc = gateway.start_process(
        [sys.executable, "-m", "gateway", "web", "--host", "127.0.0.1", "--port", "0"], "web-broken"
    )
    wait_until(lambda: proc.proc.poll() is not None, "gateway web to exit", timeout=30)
    assert proc.proc.returncode == 1
    out = proc.output()
    for target, key, _ in EXPECTED:
        assert f"target {target!r}, key {key!r}" in out, out
    assert str(path) in out
