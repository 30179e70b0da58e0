"""A rejected callback's body is logged for the provider to debug, and no secret it holds is:
a real `gateway web` with ingest tokens, callbacks rejected for another reason (no invitee), and
its log file read as it is on disk."""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING

import pytest
from e2e_support import SETTINGS, http_call, wait_until

if TYPE_CHECKING:
    from conftest import Gateway, TargetServer

JSON = {"Content-Type": "application/json"}


def _config(target_server: TargetServer) -> str:
    return (
        SETTINGS
        + f'[[targets]]\nname = "crm"\nnetworks = ["mynet"]\nurl = "{target_server.url}/crm"\n'
        + '\n[networks.mynet]\ntokens = ["${E2E_MASK_TOKEN}"]\n'
    )


def _cut_in_the_middle(secret: str) -> bytes:
    """A JSON body whose `api_key` value starts 10 bytes before the logged 1 KiB ends."""
    head = '{"network_id": "mynet", "padding": "'
    tail = '", "api_key": "'
    padding = "p" * (1024 - 10 - len(head) - len(tail))
    body = f'{head}{padding}{tail}{secret}"}}'.encode()
    assert body.index(secret.encode()) == 1014
    return body


@pytest.mark.timeout(90)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_of_a_rejected_body_reaches_the_log(
    gateway: Gateway, target_server: TargetServer, log_format: str
) -> None:
    token = secrets.token_urlsafe(32)  # as `gateway tokens new` makes them; fresh per run
    # Secrets the gateway does not know, masked by the name of their field.
    in_json, in_xml, in_form, cut = (f"gwsec{secrets.token_hex(12)}" for _ in range(4))
    gateway.write_config(_config(target_server))
    base = gateway.start_web(GATEWAY_OPEN_INGEST="false", E2E_MASK_TOKEN=token, GATEWAY_LOG_FORMAT=log_format)
    web = gateway.processes[-1]
    bodies: list[tuple[str, bytes, dict[str, str]]] = [
        # The case: a JSON body with a token field, rejected for a missing invitee.
        (
            f"/invitation_created/{token}",
            json.dumps({"token": in_json, "invitor": "alice", "network_id": "mynet"}).encode(),
            JSON,
        ),
        # JSON sent as a form (the portal's default content type), the ingest token in a field
        # whose name says nothing: masked because the gateway knows it (it was presented).
        (
            f"/invitation_created?token={token}",
            json.dumps({"note": token, "access_token": in_form, "network_id": "mynet"}).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
        (
            "/invitation_created",
            f"<invitation><network_id>mynet</network_id><password>{in_xml}</password></invitation>".encode(),
            {"Content-Type": "application/xml", "Authorization": f"Bearer {token}"},
        ),
        # A secret the 1 KiB cut falls in the middle of.
        (f"/invitation_created/{token}", _cut_in_the_middle(cut), JSON),
    ]
    for path, body, headers in bodies:
        answer = http_call(base, "POST", path, body, headers)
        assert answer.status == 400 and b"invitee" in answer.body, (path, answer.status, answer.body)

    def rejections() -> list[str] | None:
        found = [line for line in web.output().splitlines() if "rejected invitation_created" in line]
        return found if len(found) == len(bodies) else None

    lines = wait_until(rejections, "the rejections logged")
    log = web.log_path.read_bytes().decode("utf-8", "replace")
    for secret in (token, in_json, in_xml, in_form, cut):
        assert secret not in log, secret
        assert secret[:12] not in log, secret  # not even the part before a cut
    # The bodies were logged all the same, masked field by field.
    text = (
        "\n".join(json.loads(line)["message"] for line in lines) if log_format == "json" else "\n".join(lines)
    )
    assert '"token": "****"' in text and '"note": "****"' in text and '"access_token": "****"' in text
    assert "<password>****</password>" in text and '"api_key": "****' in text
    assert '"invitor": "alice"' in text and "<network_id>mynet</network_id>" in text
