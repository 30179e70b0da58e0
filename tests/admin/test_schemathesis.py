"""schemathesis (a tool nobody here wrote) against the live /api/v1/openapi.json, with an operator key
and with a provider key.

A real `gateway web` and `gateway worker` with two providers' events and dead letters, so that
the links in the document (an event list to its events, dead letters to their deliveries, a made
target to its operations) lead schemathesis to real data. Bounded: a fixed number of examples per
operation, a fixed seed, and a time limit on the whole run.

Two things are left out, on purpose:
- the `positive_data_acceptance` check: a target is validated beyond what JSON Schema can say
  (its templates are rendered with hostile values and must parse as their content type), so a
  schema-valid target can rightly get 422;
- `DELETE /keys/{key_id}` (revokeKey): schemathesis finds key ids in `GET /keys` and would revoke
  the very key it runs with. tests/admin/test_api.py tests revocation.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from gateway.admin.openapi import SPEC
from tests.admin.api_support import Deployment, deploy
from tests.conftest import Gateway, TargetServer

pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra: pip install -e '.[dev]'")

RUN_SECONDS = 240


@pytest.fixture
def deployment(gateway: Gateway, redis: Redis, target_server: TargetServer) -> Iterator[Deployment]:
    d = deploy(gateway, redis, target_server)
    try:
        yield d
    finally:
        d.close()


@pytest.mark.timeout(RUN_SECONDS + 60)
@pytest.mark.parametrize("who", ["operator", "acme"])
def test_the_api_conforms_to_its_openapi_document(deployment: Deployment, tmp_path: Path, who: str) -> None:
    d = deployment
    args = [
        "run",
        f"{d.base}/api/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {d.keys[who]}",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        "10",
        "--seed",
        "20261126",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--exclude-operation-id",
        "revokeKey",
        "--exclude-checks",
        "positive_data_acceptance",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path / "schemathesis"),
    ]
    cli = "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"
    done = subprocess.run(
        [sys.executable, "-c", cli, *args],
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        check=False,
        env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        cwd=tmp_path,  # its .schemathesis/ cache stays in the test folder
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # Every operation but the document's own (which schemathesis does not count) and revokeKey.
    operations = sum(
        1
        for path, item in SPEC["paths"].items()
        for method in item
        if method != "parameters" and path != "/openapi.json"
    )
    assert f"{operations - 1} selected / {operations} total" in output, output
