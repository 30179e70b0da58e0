"""`python -m gateway check` and `python -m gateway targets apply`, as an operator runs them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from e2e_support import SETTINGS, http_call, run_gateway, store_for, the_event_id, wait_final, wait_until

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer
    from redis import Redis

CALLBACK = "/invitation_created/?invitee=15551231234&invitor=johnsnow&network_id=mynetwork"

VALID = (
    SETTINGS
    + """
[[targets]]
name = "crm"
networks = ["mynetwork"]
url = "https://crm.example.com/invite?to=%invitee%"

[[targets]]
name = "ramen"
networks = ["*"]
url = "https://ramen.example.com/api/v1/invitations"
content_type = "application/json"
post_data = '{"recipient_email": "%invitee%@example.com", "invitation_type": "org_team"}'
success_codes = [200, 404]
"""
)


def test_check_accepts_a_valid_file(gateway: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "valid.toml"
    path.write_text(VALID)
    result = run_gateway("check", str(path), env=gateway.environ())
    assert result.returncode == 0, result.stderr
    assert "crm" in result.stdout and "ramen" in result.stdout
    assert "2 targets, valid" in result.stdout


BROKEN = {
    "json-placeholder-outside-string": (
        '[[targets]]\nname = "crm"\nnetworks = ["n"]\nurl = "https://crm.example.com/"\n'
        'content_type = "application/json"\npost_data = \'{"invitee": %invitee%}\'\n',
        "crm",
        "post_data",
    ),
    "unknown-placeholder": (
        '[[targets]]\nname = "slack"\nnetworks = ["n"]\nurl = "https://hooks.example.com/%nope%"\n',
        "slack",
        "url",
    ),
    "bad-retry": (
        '[[targets]]\nname = "twilio"\nnetworks = ["n"]\nurl = "https://api.example.com/"\nretry = ["5s"]\n',
        "twilio",
        "retry",
    ),
    "unknown-key": (
        '[[targets]]\nname = "hubspot"\nnetworks = ["n"]\nurl = "https://api.example.com/"\nurls = "x"\n',
        "hubspot",
        "urls",
    ),
}


@pytest.mark.parametrize(("text", "target", "key"), BROKEN.values(), ids=BROKEN.keys())
def test_check_rejects_a_broken_file_naming_target_and_key(
    gateway: Gateway, tmp_path: Path, text: str, target: str, key: str
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    result = run_gateway("check", str(path), env=gateway.environ())
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"target {target!r}" in result.stderr
    assert f"key {key!r}" in result.stderr
    assert str(path) in result.stderr


def test_targets_apply_reaches_running_web_and_worker(
    gateway: Gateway, target_server: TargetServer, redis: Redis, tmp_path: Path
) -> None:
    url = target_server.url
    gateway.write_config(
        SETTINGS + f'[[targets]]\nname = "a"\nnetworks = ["mynetwork"]\nurl = "{url}/a"\nretry = [1]\n'
    )
    base = gateway.start_web()
    gateway.start_worker()
    store = store_for(redis)

    # Before: the first configuration is in use.
    assert http_call(base, "GET", CALLBACK).status == 204
    first = the_event_id(store)
    assert wait_final(store, first, ["a"])["a"]["status"] == "delivered"
    target_server.wait_for("/a", 1)

    # Apply a new file while both processes run: "a" moves to a new URL, "b" is new.
    new = tmp_path / "new-targets.toml"
    new.write_text(
        SETTINGS
        + f'[[targets]]\nname = "a"\nnetworks = ["mynetwork"]\nurl = "{url}/a-v2"\nretry = [1]\n'
        + f'\n[[targets]]\nname = "b"\nnetworks = ["mynetwork"]\nurl = "{url}/b?to=%invitee%"\nretry = [1]\n'
    )
    result = run_gateway("targets", "apply", str(new), env=gateway.environ())
    assert result.returncode == 0, result.stderr
    assert "2 targets applied" in result.stdout
    again = run_gateway("targets", "apply", str(new), env=gateway.environ())
    assert again.returncode == 0, again.stderr
    assert "2 targets unchanged" in again.stdout

    assert http_call(base, "GET", CALLBACK.replace("johnsnow", "aryastark")).status == 204
    second = wait_until(lambda: next((e for e in store.recent_events(10) if e != first), None), "event 2")
    deliveries = wait_final(store, second, ["a", "b"])
    assert {n: d["status"] for n, d in deliveries.items()} == {"a": "delivered", "b": "delivered"}, (
        deliveries,
        gateway.logs(),
    )
    [b] = target_server.wait_for("/b", 1)
    assert b.query == [("to", "15551231234")]
    assert b.headers["idempotency-key"] == f"{second}-b"
    [a2] = target_server.wait_for("/a-v2", 1)
    assert a2.headers["idempotency-key"] == f"{second}-a"
    assert len(target_server.requests_to("/a")) == 1  # only the callback from before the apply


def test_targets_apply_refuses_a_broken_file_and_keeps_the_running_one(
    gateway: Gateway, target_server: TargetServer, redis: Redis, tmp_path: Path
) -> None:
    gateway.write_config(
        SETTINGS + f'[[targets]]\nname = "a"\nnetworks = ["mynetwork"]\nurl = "{target_server.url}/a"\n'
    )
    gateway.start_web()
    before = store_for(redis).load_config()
    broken = tmp_path / "broken.toml"
    broken.write_text(BROKEN["bad-retry"][0])
    result = run_gateway("targets", "apply", str(broken), env=gateway.environ())
    assert result.returncode == 1
    assert "target 'twilio'" in result.stderr and "key 'retry'" in result.stderr
    assert store_for(redis).load_config() == before
