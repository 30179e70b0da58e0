"""The dashboard in a real headless browser: Debian's chromium driven by Selenium.

No browser is downloaded: the test uses `chromium` and `chromedriver` from PATH (Debian's
`chromium` and `chromium-driver` packages, which `scripts/browser` installs where it may). Where
either is missing the test is SKIPPED, with the reason in pytest's summary. Screenshots go to
`test-output/dashboard/`.
"""

from __future__ import annotations

import html
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from gateway.store.events import Store
from tests.admin.dashboard_support import Deployment, deploy
from tests.conftest import ROOT, Gateway, TargetServer
from tests.e2e.e2e_support import wait_until

SHOTS = ROOT / "test-output" / "dashboard"


def _browser_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "dashboard browser test skipped: no headless browser on this machine "
            f"(chromium: {browser or 'missing'}, chromedriver: {driver or 'missing'}); "
            "install Debian's chromium and chromium-driver (scripts/browser does it as root)"
        )
    return browser, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="dashboard browser test skipped: selenium is not installed"
    )
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # What this machine's chromium needs headless and offline (no calls home, no sandbox as root).
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    # A click that submits a form returns before the next page is there: look for up to 10 s.
    driver.implicitly_wait(10)
    try:
        yield driver
    finally:
        driver.quit()  # ends chromedriver and the browser it started


def shot(driver: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    # The whole page, not only the window: the body's height decides.
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, 600)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(width, max(600, min(int(height) + 140, 4000)))
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def text_of(driver: Any, by: str = "tag name", what: str = "body") -> str:
    """The visible text of an element; "" while the page is being replaced (a wait asks again).

    A form's submit returns before the next page is there, so the element found can belong to
    the page being replaced: chromedriver then answers stale element, no such element, or a
    bare inspector error ("Node with given id does not belong to the document").
    """
    from selenium.common.exceptions import WebDriverException

    try:
        return str(driver.find_element(by, what).text)
    except WebDriverException:
        return ""


@pytest.mark.timeout(240)
def test_dashboard_in_a_browser(
    browser: Any, gateway: Gateway, redis: Redis, target_server: TargetServer
) -> None:
    from selenium.webdriver.common.by import By

    d: Deployment = deploy(gateway, redis, target_server)
    store = Store(redis)
    root = d.base + "/dashboard"

    # Sign in with acme's provider key: any page leads to the form first.
    browser.get(root + "/events")
    assert browser.current_url.endswith("/dashboard/login")
    shot(browser, "01-sign-in")
    browser.find_element(By.ID, "key").send_keys(d.acme_key)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_until(lambda: "Overview" in browser.title, "the overview after sign-in")
    page = text_of(browser)
    assert "acme-crm" in page and "globex-crm" not in page
    cookie = browser.get_cookie("gw_dashboard")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    # Create a target: first with mistakes, each shown next to its field, then right.
    browser.find_element(By.LINK_TEXT, "Targets").click()
    wait_until(lambda: browser.title.startswith("Targets"), "the targets page")
    browser.find_element(By.LINK_TEXT, "New target").click()
    browser.find_element(By.ID, "f-name").send_keys("acme-hook")
    browser.find_element(By.ID, "f-url").send_keys("ftp://wrong")
    browser.find_element(By.ID, "f-rate").send_keys("fast")
    browser.find_element(By.CSS_SELECTOR, ".target-form button[type=submit]").click()
    url_error = browser.find_element(By.ID, "err-url").text
    rate_error = browser.find_element(By.ID, "err-rate").text
    assert "http:// or https://" in url_error and "1/s" in rate_error
    shot(browser, "02-target-form-errors")
    url = browser.find_element(By.ID, "f-url")
    url.clear()
    url.send_keys(f"{target_server.url}/hook?invitee=%invitee%")
    browser.find_element(By.ID, "f-rate").clear()
    browser.find_element(By.ID, "f-post_data").send_keys('{"invitee": "%invitee%", "by": "%invitor%"}')
    browser.find_element(By.ID, "f-content_type").send_keys("application/json")
    browser.find_element(By.CSS_SELECTOR, ".target-form button[type=submit]").click()
    wait_until(lambda: "Target acme-hook created." in text_of(browser), "the target created")
    # The page shows the request a sample event renders; "Send test" has a worker send it.
    preview = browser.find_element(By.CSS_SELECTOR, "#test pre").text
    assert f"POST {target_server.url}/hook?invitee=%2B15551231234" in preview
    assert '"invitee": "+15551231234"' in preview
    browser.find_element(By.CSS_SELECTOR, "#test form button").click()
    wait_until(
        lambda: "HTTP 200" in text_of(browser, By.ID, "test-result"),
        "the test send's result",
        timeout=30,
    )
    result = browser.find_element(By.ID, "test-result").text
    assert "delivered" in result and "/hook?invitee=%2B15551231234" in result
    target_server.wait_for("/hook", 1)
    shot(browser, "02b-test-send")
    hooks_before = len(target_server.requests_to("/hook"))

    # An invitation for acme reaches the new target; its attempt shows on the event's page.
    r = httpx.get(
        d.base + "/invitation_created",
        params={"invitee": "+15550003333", "invitor": "carol", "network_id": "acme"},
    )
    assert r.status_code == 204
    target_server.wait_for("/hook", hooks_before + 1, timeout=30)
    browser.find_element(By.LINK_TEXT, "Events").click()
    wait_until(lambda: browser.title.startswith("Events"), "the events page")
    browser.find_element(By.NAME, "invitee").send_keys("+15550003333")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait_until(lambda: "invitee=%2B15550003333" in browser.current_url, "the search's results")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.list tbody tr")
    assert len(rows) == 1 and "carol" in rows[0].text
    shot(browser, "03a-events-search")
    rows[0].find_element(By.TAG_NAME, "a").click()

    def delivered() -> bool:
        browser.refresh()
        section = text_of(browser, By.ID, "delivery-acme-hook")
        return "HTTP 200" in section and "delivered" in section

    wait_until(delivered, "the attempt to acme-hook on the event page", timeout=30)
    shot(browser, "03-event-timeline")

    # Replay the failure: the target answers 200 now.
    target_server.script("/acme", [200])
    browser.find_element(By.LINK_TEXT, "Failures").click()
    wait_until(lambda: browser.title.startswith("Failures"), "the failures page")
    failed_row = browser.find_element(By.ID, f"failure-{d.acme_event}-acme-crm")
    assert "HTTP 500" in failed_row.text
    assert "globex" not in text_of(browser)
    shot(browser, "04-failures")
    failed_row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_until(lambda: "1 replayed." in text_of(browser), "the replay's summary")
    wait_until(
        lambda: (store.get_delivery(d.acme_event, "acme-crm") or {}).get("status") == "delivered",
        "the replayed delivery delivered",
        timeout=30,
        explain=gateway.logs,
    )
    browser.get(f"{root}/events/{d.acme_event}")
    timeline = browser.find_element(By.ID, "delivery-acme-crm").text
    assert "HTTP 500" in timeline and "HTTP 200" in timeline and "replayed 1" in timeline

    # Another provider's data is not there, even by its address.
    browser.get(f"{root}/events/{d.globex_event}")
    assert "Not found" in browser.title and "15550002222" not in text_of(browser)
    browser.get(f"{root}/targets/globex-crm")
    assert "Not found" in browser.title
    browser.get(root + "/events")
    assert "15550002222" not in text_of(browser)

    # Pause from the list; the overview flags it.
    browser.get(root + "/targets")
    browser.find_element(By.CSS_SELECTOR, "#target-acme-hook button").click()
    wait_until(lambda: "acme-hook paused" in text_of(browser), "the pause's summary")
    shot(browser, "04b-targets")
    browser.find_element(By.LINK_TEXT, "Overview").click()
    wait_until(lambda: "Overview" in browser.title, "the overview")
    card = browser.find_element(By.ID, "target-acme-hook")
    assert "paused (by hand)" in card.text
    assert card.find_elements(By.CSS_SELECTOR, "svg.chart rect.delivered")
    shot(browser, "05-overview")

    # On a phone's width the navigation and the tables still fit.
    browser.set_window_size(390, 844)
    for path in ("/", "/events", f"/events/{d.acme_event}", "/targets", "/targets/acme-hook", "/failures"):
        browser.get(root + path)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"{path} scrolls sideways by {overflow}px on a phone"
    browser.get(root + "/")
    shot(browser, "06-overview-phone")
    browser.get(root + "/failures")
    shot(browser, "07-failures-phone")

    # The same pages in a dark colour scheme (prefers-color-scheme: dark).
    browser.set_window_size(1280, 900)
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    )
    browser.get(f"{root}/events/{d.acme_event}")
    shot(browser, "08-event-dark")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    # Sign out: the pages send to the sign-in form again.
    browser.set_window_size(1280, 900)
    browser.get(root + "/")
    browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
    wait_until(lambda: browser.current_url.endswith("/dashboard/login"), "the sign-in form")
    browser.get(root + "/events")
    assert browser.current_url.endswith("/dashboard/login")
    assert html.unescape(browser.page_source).count("15550001111") == 0
