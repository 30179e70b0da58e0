"""The dashboard over plain HTTP: sessions, CSRF, cookie flags, and each provider's isolation.

A real `gateway web` and `gateway worker`, real Redis, a real loopback target; httpx as the browser.
"""

from __future__ import annotations

import html
import re
import time
from contextlib import closing

import httpx
import pytest
from redis import Redis

from gateway.admin.keys import revoke_key
from gateway.admin.sessions import COOKIE_NAME, Session, SessionCodec
from gateway.store.events import Store
from tests.admin.dashboard_support import SESSION_SECRET, Deployment, csrf_of, deploy, sign_in
from tests.conftest import Gateway, TargetServer
from tests.e2e.e2e_support import wait_until
from tests.seeding import hold_prefix


@pytest.fixture
def deployment(gateway: Gateway, redis: Redis, target_server: TargetServer) -> Deployment:
    return deploy(gateway, redis, target_server)


def set_cookie_of(response: httpx.Response) -> str:
    header = response.headers.get("set-cookie")
    assert header and header.startswith(COOKIE_NAME + "="), response.headers
    return header


def test_sign_in_cookie_flags_and_sign_out(deployment: Deployment) -> None:
    base = deployment.base + "/dashboard"
    # Not signed in: every page sends to the sign-in form.
    r = httpx.get(base + "/events", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    assert httpx.get(deployment.base + "/dashboard", follow_redirects=False).status_code in (307, 308)
    page = httpx.get(base + "/login")
    assert page.status_code == 200 and "Sign in" in page.text
    cookie = set_cookie_of(page).lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/dashboard" in cookie
    assert "secure" not in cookie  # plain http, no trusted proxy
    # Pages are not cached, framed, or allowed inline script.
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    # The stylesheet and script come from the app itself, cacheable.
    css = httpx.get(base + "/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "no-store" not in css.headers.get("cache-control", "")
    assert httpx.get(base + "/static/dashboard.js").status_code == 200

    with httpx.Client(base_url=base, follow_redirects=False) as client:
        token = csrf_of(client.get("/login").text)
        # No token, a wrong token: refused before the key is even looked at.
        assert client.post("/login", data={"key": deployment.acme_key}).status_code == 403
        assert client.post("/login", data={"key": deployment.acme_key, "csrf": "x" * 32}).status_code == 403
        wrong = client.post("/login", data={"key": "gwk_000000000000_" + "A" * 43, "csrf": token})
        assert wrong.status_code == 401 and "Unknown or revoked key" in wrong.text
        ok = client.post("/login", data={"key": deployment.acme_key, "csrf": token})
        assert ok.status_code == 303 and ok.headers["location"] == "/dashboard/"
        assert "httponly" in set_cookie_of(ok).lower()
        home = client.get("/")
        assert home.status_code == 200 and "acme-crm" in home.text and "globex-crm" not in home.text
        new_token = csrf_of(home.text)
        assert new_token != token  # a fresh token at sign-in
        # Sign out needs the token too; afterwards the pages send to the sign-in form again.
        assert client.post("/logout", data={}).status_code == 403
        out = client.post("/logout", data={"csrf": new_token})
        assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
        assert client.get("/").status_code == 303


def test_secure_cookie_behind_a_trusted_proxy(
    gateway: Gateway, redis: Redis, target_server: TargetServer
) -> None:
    gateway.write_config(
        '[settings]\nallow_private_targets = true\n[[targets]]\nname = "t"\nnetworks = ["n"]\n'
        f'url = "{target_server.url}/t"\n'
    )
    base = gateway.start_web(GATEWAY_TRUSTED_PROXIES="127.0.0.1/32", GATEWAY_SESSION_SECRET=SESSION_SECRET)
    plain = httpx.get(base + "/dashboard/login")
    assert "secure" not in set_cookie_of(plain).lower()
    proxied = httpx.get(base + "/dashboard/login", headers={"X-Forwarded-Proto": "https"})
    assert "; secure" in set_cookie_of(proxied).lower()


def test_untrusted_forwarded_proto_is_ignored(deployment: Deployment) -> None:
    r = httpx.get(deployment.base + "/dashboard/login", headers={"X-Forwarded-Proto": "https"})
    assert "secure" not in set_cookie_of(r).lower()


def test_every_form_needs_the_csrf_token(deployment: Deployment) -> None:
    client, token = sign_in(deployment.base, deployment.acme_key)
    with closing(client):
        did = f"{deployment.acme_event}-acme-crm"
        posts = [
            ("/targets/new", {"name": "x", "networks": "acme", "url": "https://example.com/"}),
            ("/targets/acme-crm/pause", {}),
            ("/targets/acme-crm/resume", {}),
            ("/targets/acme-crm/delete", {}),
            ("/targets/acme-crm", {"url": "https://example.com/"}),
            ("/failures/replay", {"id": did}),
            ("/logout", {}),
        ]
        for path, data in posts:
            for bad in ({}, {"csrf": token[:-1] + ("A" if token[-1] != "A" else "B")}):
                r = client.post(path, data={**data, **bad})
                assert r.status_code == 403, (path, bad, r.status_code)
                assert "CSRF" in html.unescape(r.text)
        # Nothing happened: still paused? no, still active; the failure still failed.
        targets = client.get("/targets").text
        assert "Pause" in targets and "Resume" not in targets
        store_page = client.get(f"/events/{deployment.acme_event}").text
        assert "failed" in store_page
        # With the token, the same replay works.
        r = client.post("/failures/replay", data={"id": did, "csrf": token})
        assert r.status_code == 303
        assert "1 replayed" in html.unescape(client.get("/failures").text)


def test_a_provider_sees_only_its_networks(deployment: Deployment, redis: Redis) -> None:
    client, token = sign_in(deployment.base, deployment.acme_key)
    store = Store(redis)
    with closing(client):
        # Events: the list and the search hold only acme's; globex's event page is a 404.
        events = client.get("/events").text
        assert "15550001111" in events and "15550002222" not in events
        assert "No events match." in client.get("/events", params={"invitee": "+15550002222"}).text
        assert "No events match." in client.get("/events", params={"network": "globex"}).text
        assert client.get(f"/events/{deployment.acme_event}").status_code == 200
        bad = html.unescape(client.get("/events", params={"since": "yesterday"}).text)
        assert "since: 'yesterday' is neither a duration ago" in bad
        assert "15550001111" in client.get("/events", params={"since": "1h", "state": "failed"}).text
        other = client.get(f"/events/{deployment.globex_event}")
        assert other.status_code == 404 and "15550002222" not in other.text
        # Targets: globex's target is not listed, and its page, pause and resume are 404s.
        assert "globex-crm" not in client.get("/targets").text
        assert client.get("/targets/globex-crm").status_code == 404
        assert client.post("/targets/globex-crm/pause", data={"csrf": token}).status_code == 404
        assert client.post("/targets/globex-crm/delete", data={"csrf": token}).status_code == 404
        assert store.redis.sismember("gw:held", "globex-crm") == 0
        # Failures: only acme's; replaying globex's delivery by id changes nothing.
        failures = client.get("/failures").text
        assert "acme-crm" in failures and "globex-crm" not in failures
        globex_did = f"{deployment.globex_event}-globex-crm"
        r = client.post("/failures/replay", data={"id": globex_did, "csrf": token})
        assert r.status_code == 303
        assert "1 unknown" in html.unescape(client.get("/failures").text)
        assert store.get_delivery(deployment.globex_event, "globex-crm")["status"] == "failed"  # type: ignore[index]
        # A target for another provider's network is refused, next to the networks field.
        made = client.post(
            "/targets/new",
            data={
                "csrf": token,
                "name": "sneaky",
                "networks": "globex",
                "url": "https://example.com/x",
                "events": "invitation_created",
            },
        )
        assert made.status_code == 422 and 'id="err-networks"' in made.text
    # The operator sees both.
    client, _ = sign_in(deployment.base, deployment.operator_key)
    with closing(client):
        events = client.get("/events").text
        assert "15550001111" in events and "15550002222" in events
        assert client.get(f"/events/{deployment.globex_event}").status_code == 200


def test_holds_are_listed_and_lifted_per_provider(deployment: Deployment, redis: Redis) -> None:
    store = Store(redis)
    hold_prefix(store, "acme", "acme-crm")
    hold_prefix(store, "globex", "globex-crm")
    globex_id = next(
        k.decode().removeprefix("hold:") for k, v in redis.hgetall("gw:holds").items() if b'"globex"' in v
    )
    client, token = sign_in(deployment.base, deployment.acme_key)
    with closing(client):
        page = html.unescape(client.get("/holds").text)
        assert "+8821" in page and "acme" in page and "globex" not in page
        # Another provider's hold: 404, and it stays; a lift needs the CSRF token.
        assert client.post(f"/holds/{globex_id}/lift", data={"csrf": token}).status_code == 404
        [acme_id] = re.findall(r'id="hold-([0-9a-f]{24})"', page)
        assert client.post(f"/holds/{acme_id}/lift", data={}).status_code == 403
        r = client.post(f"/holds/{acme_id}/lift", data={"csrf": token})
        assert r.status_code == 303
        after = html.unescape(client.get("/holds").text)
        assert (
            "The hold on +8821 for acme is lifted" in after and "No prefix is held for your networks" in after
        )
    client, _ = sign_in(deployment.base, deployment.operator_key)
    with closing(client):
        page = client.get("/holds").text
        assert f'id="hold-{globex_id}"' in page and "acme" not in page.split("<h1>")[1].split("</table>")[0]


def test_target_form_shows_each_message_next_to_its_field(deployment: Deployment) -> None:
    client, token = sign_in(deployment.base, deployment.acme_key)
    with closing(client):
        r = client.post(
            "/targets/new",
            data={
                "csrf": token,
                "name": "bad name",
                "networks": "acme",
                "url": "ftp://example.com/",
                "rate": "fast",
                "timeout": "soon",
                "post_data": '{"who": "%nobody%"}',
                "content_type": "application/json",
                "events": "invitation_created",
            },
        )
        assert r.status_code == 422
        page = html.unescape(r.text)
        for field, words in (
            ("name", "letters, digits"),
            ("url", "http:// or https://"),
            ("rate", '"1/s"'),
            ("timeout", "must be a number"),
            ("post_data", "unknown placeholder %nobody%"),
        ):
            start = page.index(f'id="field-{field}"')
            end = (
                page.index('<div class="field', start + 10)
                if '<div class="field' in page[start + 10 :]
                else len(page)
            )
            block = page[start:end]
            assert 'class="field-error"' in block and words in block, (field, block)
        # What was typed is kept.
        assert 'value="fast"' in page and "ftp://example.com/" in page
        # A good one is created, listed, and its edit page previews the request.
        ok = client.post(
            "/targets/new",
            data={
                "csrf": token,
                "name": "acme-sms",
                "networks": "acme",
                "url": "https://sms.example.com/send",
                "post_data": '{"to": "%invitee%"}',
                "content_type": "application/json",
                "headers": "X-Api-Key: hunter2-secret",
                "events": "invitation_created",
            },
        )
        assert ok.status_code == 303 and ok.headers["location"] == "/dashboard/targets/acme-sms"
        edit = html.unescape(client.get("/targets/acme-sms").text)
        assert "Target acme-sms created." in edit
        assert "POST https://sms.example.com/send" in edit and '"to": "+15551231234"' in edit
        assert "hunter2-secret" not in edit  # the header is a secret: masked in form and preview
        # Pause and resume from the list.
        assert client.post("/targets/acme-sms/pause", data={"csrf": token}).status_code == 303
        listed = client.get("/targets").text
        assert "paused (by hand)" in listed
        assert client.post("/targets/acme-sms/resume", data={"csrf": token}).status_code == 303
        # The file-declared target is shown read-only.
        assert "Declared in the configuration file" in client.get("/targets/acme-crm").text


def test_forged_expired_and_revoked_sessions_end(deployment: Deployment, redis: Redis) -> None:
    base = deployment.base + "/dashboard"
    client, _ = sign_in(deployment.base, deployment.acme_key)
    with closing(client):
        key_id = deployment.acme_key.split("_")[1]
        codec = SessionCodec(SESSION_SECRET.encode())
        # A cookie signed with another secret, and one past its age: signed out.
        forged = SessionCodec(b"x" * 40).dumps(Session.new(key_id))
        old = codec.dumps(Session.new(key_id, now=time.time() - 13 * 3600))
        for value in (forged, old, codec.dumps(Session.new(key_id))[:-2] + "AA"):
            r = httpx.get(base + "/", cookies={COOKIE_NAME: value}, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"].endswith("/login")
        # The real one works until its key is revoked.
        assert client.get("/").status_code == 200
        revoke_key(Store(redis), key_id)
        assert client.get("/").status_code == 303


def test_events_page_through_older_ones(deployment: Deployment, redis: Redis) -> None:
    store = Store(redis)
    for n in range(55):
        r = httpx.get(
            deployment.base + "/invitation_created",
            params={"invitee": f"1555000{n:04d}", "invitor": "pager", "network_id": "acme"},
        )
        assert r.status_code == 204
    wait_until(lambda: len(store.recent_events(100, network="acme")) >= 56, "the events stored")
    client, _ = sign_in(deployment.base, deployment.acme_key)
    with closing(client):
        first = client.get("/events", params={"invitor": "pager"})
        rows = first.text.count('<tr>\n      <td data-label="Received">')
        assert rows == 50
        link = re.search(r'href="(/dashboard/events\?[^"]+)">Older events', first.text)
        assert link, "no link to older events"
        second = client.get(html.unescape(link[1]).removeprefix("/dashboard"))
        assert second.text.count('<td data-label="Received">') == 5
        assert "Older events" not in second.text
        shown = set(re.findall(r"1555000\d{4}", first.text + second.text))
        assert len(shown) == 55
