"""The targets' ${VARS} are the workers': workers report the names they have (never the values),
`targets apply` says which live worker lacks which, and `gateway web` does not need them.
Also: /healthz shows the configuration version right after an apply."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from e2e_support import SETTINGS, http_call, wait_until
from redis import Redis

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer

SECRET_VALUE = "tok-abcdef-123456"


def _file(target_server: TargetServer, extra: str = "") -> str:
    return (
        SETTINGS
        + f"""
[[targets]]
name = "crm"
networks = ["mynetwork"]
url = "{target_server.url}/crm?to=%invitee%"
headers = {{ Authorization = "Bearer ${{CRM_TOKEN}}" }}
{extra}
"""
    )


def _apply(gateway: Gateway, path: str, *flags: str) -> subprocess.CompletedProcess[str]:
    env = gateway.environ()
    env.pop("CRM_TOKEN", None)  # the operator's shell does not have the workers' secrets
    return subprocess.run(
        [sys.executable, "-m", "gateway", "targets", "apply", path, *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(120)
def test_apply_names_the_live_workers_lacking_a_variable(
    gateway: Gateway, target_server: TargetServer, redis: Redis
) -> None:
    path = gateway.write_config(_file(target_server))
    # The web starts without CRM_TOKEN: only the workers use it.
    base = gateway.start_web()
    good = gateway.start_worker(CRM_TOKEN=SECRET_VALUE)
    lacking = gateway.start_worker()
    for w in (good, lacking):
        wait_until(lambda w=w: "Listening on" in w.output(), "worker up", timeout=30)  # type: ignore[misc]
    lacking_name = lacking.proc.args[-1]  # type: ignore[index]
    good_name = good.proc.args[-1]  # type: ignore[index]

    done = _apply(gateway, str(path))
    assert done.returncode == 0, done.stderr
    assert f"warning: worker {lacking_name} lacks CRM_TOKEN" in done.stderr
    assert good_name not in done.stderr
    assert "1 targets" in done.stdout

    strict = _apply(gateway, str(path).replace("targets.toml", "targets2.toml"), "--strict")
    assert strict.returncode == 1 and "cannot read" in strict.stderr  # no such file, said first
    changed = path.with_name("changed.toml")
    changed.write_text(_file(target_server, "timeout = 7"))
    refused = _apply(gateway, str(changed), "--strict")
    assert refused.returncode == 1
    assert f"error: worker {lacking_name} lacks CRM_TOKEN" in refused.stderr
    assert "not applied (--strict)" in refused.stderr
    assert http_call(base, "GET", "/healthz").json()["config_version"] == 1  # unchanged

    # Only names are in Redis, never values.
    for key in redis.scan_iter("gw:env:*"):
        kind = redis.type(key)
        dump = str(
            redis.hgetall(key)
            if kind == b"hash"
            else redis.zrange(key, 0, -1)
            if kind == b"zset"
            else redis.smembers(key)
        )
        assert SECRET_VALUE not in dump

    # Once the lacking worker is gone (and its report has expired), --strict applies.
    lacking.stop()
    redis.delete(f"gw:env:worker:{lacking_name}")
    redis.zrem("gw:env:workers", lacking_name)
    applied = _apply(gateway, str(changed), "--strict")
    assert applied.returncode == 0, applied.stderr
    assert "lacks" not in applied.stderr
    # /healthz shows the new version at once, without waiting for a callback.
    assert http_call(base, "GET", "/healthz").json()["config_version"] == 2


def test_apply_without_live_workers_warns_which_names_they_need(
    gateway: Gateway, target_server: TargetServer
) -> None:
    path = gateway.write_config(_file(target_server))
    done = _apply(gateway, str(path), "--strict")
    assert done.returncode == 0, done.stderr  # a release phase runs before any worker is up
    assert "warning: no live worker reported its environment; each needs CRM_TOKEN" in done.stderr


def test_web_refuses_to_start_without_an_ingest_token_variable(
    gateway: Gateway, target_server: TargetServer
) -> None:
    gateway.write_config(_file(target_server) + '\n[networks.mynetwork]\ntokens = ["${INGEST_TOKEN}"]\n')
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "web", "--port", "0"],
        env=gateway.environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "network 'mynetwork', key 'tokens': environment variable INGEST_TOKEN is not set" in done.stderr
    assert "CRM_TOKEN" not in done.stderr
