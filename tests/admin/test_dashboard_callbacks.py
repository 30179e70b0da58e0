"""The Callbacks and Connect pages over plain HTTP (httpx as the browser): each provider sees its
own callbacks, the unroutable ones are the operator's, a token is shown once and never put in a
URL or a cookie, a test callback needs its box ticked. The browser test drives the same pages."""

from __future__ import annotations

import html
from contextlib import closing

import httpx
import pytest
from redis import Redis

from tests.admin.dashboard_support import Deployment, deploy, sign_in
from tests.conftest import Gateway, TargetServer
from tests.e2e.e2e_support import wait_until


def follow(client: httpx.Client, r: httpx.Response) -> str:
    """The page a POST's 303 leads to, as a browser shows it."""
    assert r.status_code == 303, r.text
    page = client.get(r.headers["location"].removeprefix("/dashboard"))
    assert page.status_code == 200, page.text
    return html.unescape(page.text)


@pytest.fixture
def deployment(gateway: Gateway, redis: Redis, target_server: TargetServer) -> Deployment:
    return deploy(gateway, redis, target_server)


@pytest.mark.timeout(180)
def test_the_callbacks_page_shows_each_key_its_own(deployment: Deployment) -> None:
    d = deployment
    # A rejected callback for acme (no invitee), one for a network nobody knows (unroutable).
    r = httpx.get(
        d.base + "/invitation_created", params={"phone": "+15557770001", "invitor": "x", "network_id": "acme"}
    )
    assert r.status_code == 400
    r = httpx.post(d.base + "/invitation_accepted", json={"invitee": "+15557770002", "invitor": "x"})
    assert r.status_code == 400
    acme, _ = sign_in(d.base, d.acme_key)
    operator, _ = sign_in(d.base, d.operator_key)
    with closing(acme), closing(operator):

        def page(client: httpx.Client, **params: str) -> str:
            r = client.get("/callbacks", params=params)
            assert r.status_code == 200, r.text
            return html.unescape(r.text)

        wait_until(
            lambda: "network unknown" in page(operator, view="unroutable"), "the unroutable one listed"
        )
        mine = page(acme)
        assert "invitee is missing: your invitationCreatedUrl has no %invitee%" in mine
        assert "phone, invitor, network_id" in mine and "15550001111" in mine  # acme's accepted one
        assert "15550002222" not in mine and "network unknown" not in mine  # globex's, the unroutable
        rejected = page(acme, view="rejected")
        assert "invitee is missing" in rejected and "15550001111" not in rejected
        # A provider asking for the unroutable ones gets its own list, never the operator's.
        assert "network unknown" not in page(acme, view="unroutable")
        assert 'id="tab-unroutable"' not in mine and 'id="tab-unroutable"' in page(operator)
        everything = page(operator)
        assert "15550002222" in everything and "network unknown" in everything
        assert "network_id is missing: your invitationAcceptedPostData has no %network_id%" in everything


@pytest.mark.timeout(180)
def test_the_connect_page_makes_a_token_once_and_sends_a_test(
    deployment: Deployment, target_server: TargetServer
) -> None:
    d = deployment
    acme, csrf = sign_in(d.base, d.acme_key)
    with closing(acme):
        page = acme.get("/connect")  # one network: it is the one shown
        assert page.status_code == 200
        text = html.unescape(page.text)
        assert f"{d.base}/invitation_created/<TOKEN>" in text and "No token opens acme yet" in text
        # Made: on the page this POST answers (no redirect: in no URL, no cookie), once.
        made = acme.post("/connect/tokens", data={"csrf": csrf, "network": "acme"})
        assert made.status_code == 200
        token = made.text.split('id="new-token"')[1].split('readonly value="')[1].split('"')[0]
        assert token and f"{d.base}/invitation_created/{token}" in made.text
        assert token not in str(made.headers) and token not in acme.get("/connect").text
        # It opens acme's ingest at once.
        r = httpx.get(
            f"{d.base}/invitation_created/{token}",
            params={"invitee": "+15557770003", "invitor": "y", "network_id": "acme"},
        )
        assert r.status_code == 204
        # Another provider cannot make one for acme.
        globex, globex_csrf = sign_in(d.base, d.globex_key)
        with closing(globex):
            assert globex.get("/connect", params={"network": "acme"}).status_code == 404
            refused = globex.post("/connect/tokens", data={"csrf": globex_csrf, "network": "acme"})
            assert "no network acme" in follow(globex, refused)
        # A test callback: not without the box ticked; then through the real ingest to acme-crm.
        before = len(target_server.requests_to("/acme"))
        r = acme.post("/connect/test", data={"csrf": csrf, "network": "acme", "format": "get"})
        assert r.status_code == 303 and "Tick the box first" in html.unescape(
            acme.get(r.headers["location"]).text
        )
        assert len(target_server.requests_to("/acme")) == before
        r = acme.post("/connect/test", data={"csrf": csrf, "network": "acme", "confirm": "yes"})
        assert "&test=" in r.headers["location"]
        result = follow(acme, r)
        assert "answered 204" in result and "acme-crm" in result and 'id="test-result"' in result
        target_server.wait_for("/acme", before + 1)
