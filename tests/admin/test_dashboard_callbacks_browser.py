"""The Callbacks and Connect Acrobits pages in a real headless browser (Debian's chromium through
Selenium, as tests/admin/test_dashboard_browser.py; skipped where there is none): rejected
callbacks and what to change in the portal, the portal's values, a token rotation, and a test
callback seen with its deliveries. Screenshots go to `test-output/dashboard/` (09 to 14)."""

from __future__ import annotations

import html
from typing import Any

import httpx
import pytest
from redis import Redis

from gateway.admin.keys import create_key
from gateway.networks import token_digest
from gateway.store.events import Store
from tests.admin.dashboard_support import SESSION_SECRET
from tests.admin.test_dashboard_browser import browser, shot, text_of  # noqa: F401  (the fixture)
from tests.conftest import Gateway, TargetServer
from tests.e2e.e2e_support import SETTINGS, wait_until

FILE_TOKEN = "acme-file-token-browser-01"


def callback(base: str, token: str, invitee: str = "+15557771111") -> int:
    r = httpx.get(
        f"{base}/invitation_created/{token}",
        params={"invitee": invitee, "invitor": "dana", "network_id": "acme"},
        timeout=30,
    )
    return r.status_code


@pytest.mark.timeout(240)
def test_callbacks_and_connect_in_a_browser(
    browser: Any,  # noqa: F811  (the fixture imported above)
    gateway: Gateway,
    redis: Redis,
    target_server: TargetServer,
) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    gateway.write_config(
        SETTINGS
        + f"""
[[targets]]
name = "acme-crm"
networks = ["acme"]
url = "{target_server.url}/acme?invitee=%invitee%"
retry = []

[networks.acme]
tokens = ["${{ACME_FILE_TOKEN}}"]
"""
    )
    gateway.env.update(
        {
            "GATEWAY_SESSION_SECRET": SESSION_SECRET,
            "GATEWAY_OPEN_INGEST": "false",
            "ACME_FILE_TOKEN": FILE_TOKEN,
        }
    )
    base = gateway.start_web()
    gateway.start_worker()
    store = Store(redis)
    _, key = create_key(store, "acme", ["acme"])
    root = base + "/dashboard"

    # What a misconfigured portal sends: the invitee under another name, and an old token.
    r = httpx.post(
        f"{base}/invitation_created/{FILE_TOKEN}",
        json={"phone": "+15557770001", "invitor": "x", "network_id": "acme"},
    )
    assert r.status_code == 400
    assert callback(base, "an-old-token-of-last-year") == 401

    browser.get(root + "/login")
    browser.find_element(By.ID, "key").send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_until(lambda: "Overview" in browser.title, "the overview after sign-in")

    # Callbacks: the rejected ones, each with its reason and what to change in the portal.
    browser.find_element(By.LINK_TEXT, "Callbacks").click()
    wait_until(lambda: browser.title.startswith("Callbacks"), "the callbacks page")
    browser.find_element(By.ID, "tab-rejected").click()

    def both_rejected() -> bool:
        browser.refresh()
        page = text_of(browser)
        return (
            "invitationCreatedPostData has no %invitee%" in page and "token in invitationCreatedUrl" in page
        )

    wait_until(both_rejected, "the two rejected callbacks with their hints")
    page = text_of(browser)
    assert (
        "rejected 400" in page
        and "rejected 401" in page
        and "(the callback had: phone, invitor, network_id)" in page
    )
    assert FILE_TOKEN not in html.unescape(browser.page_source)
    shot(browser, "09-callbacks-rejected")
    browser.find_element(By.CSS_SELECTOR, "li.callback.rejected details summary").click()
    shot(browser, "10-callbacks-details")

    # Connect: the values to paste, the token as <TOKEN>; the file's token listed.
    browser.find_element(By.LINK_TEXT, "Connect").click()
    wait_until(lambda: browser.title.startswith("Connect"), "the connect page")
    url = browser.find_element(By.CSS_SELECTOR, "#portal-json input[aria-label=invitationCreatedUrl]")
    assert url.get_attribute("value") == f"{base}/invitation_created/<TOKEN>"
    assert "${ACME_FILE_TOKEN}" in text_of(browser, By.ID, "tokens")
    shot(browser, "11-connect")

    # A rotation: a new token, shown once, works at once; a second; the first removed: refused.
    def make_token(previous: str | None = None) -> str:
        browser.find_element(By.CSS_SELECTOR, "#make-token button").click()

        def shown() -> str | None:
            # The click returns before the next page is there: the previous token's page may still
            # be the one found (or be replaced while it is read).
            try:
                found = browser.find_elements(By.CSS_SELECTOR, "#new-token input")
                value = found[0].get_attribute("value") if found else None
            except WebDriverException:
                return None
            return str(value) if value and value != previous else None

        token = wait_until(shown, "the new token")
        pasted = browser.find_element(By.CSS_SELECTOR, "#portal-json input[aria-label=invitationCreatedUrl]")
        assert pasted.get_attribute("value") == f"{base}/invitation_created/{token}"
        return token

    first = make_token()
    shot(browser, "12-connect-new-token")
    assert callback(base, first) == 204
    second = make_token(first)
    assert callback(base, second) == 204 and callback(base, first) == 204
    [first_id] = [i for i, t in store.api_tokens().items() if t["digest"] == token_digest(first)]
    browser.get(root + "/connect")
    browser.find_element(By.CSS_SELECTOR, f"#token-{first_id} button").click()
    browser.switch_to.alert.accept()  # "Remove token ...?"
    wait_until(lambda: "removed" in text_of(browser), "the removal's summary")
    version = store.config_version()
    wait_until(lambda: httpx.get(base + "/healthz").json()["config_version"] == version, "the web reloaded")
    assert (
        callback(base, first) == 401 and callback(base, second) == 204 and callback(base, FILE_TOKEN) == 204
    )

    # A test callback: the box must be ticked; then seen here with its delivery.
    browser.find_element(By.ID, "test-confirm").click()
    browser.find_element(By.CSS_SELECTOR, "#test form button[type=submit]").click()
    wait_until(lambda: browser.find_elements(By.ID, "test-result"), "the test's result", timeout=30)
    assert "answered 204" in text_of(browser)

    def delivered() -> bool:
        browser.refresh()
        return "delivered acme-crm" in text_of(browser, By.ID, "test-deliveries")

    wait_until(delivered, "the test callback delivered to acme-crm", timeout=30)
    result = text_of(browser, By.ID, "test-result")
    assert "accepted" in result and "/invitation_created/****" in result
    shot(browser, "13-connect-test-callback")
    target_server.wait_for("/acme", 1)

    # On a phone's width both pages fit.
    browser.set_window_size(390, 844)
    for path in ("/callbacks", "/callbacks?view=rejected", "/connect"):
        browser.get(root + path)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"{path} scrolls sideways by {overflow}px on a phone"
    shot(browser, "14-connect-phone")
