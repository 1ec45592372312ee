"""The abuse desk's console in a real browser: Debian's headless chromium, driven by
Selenium through /usr/bin/chromedriver (nothing downloaded at test time), against a
real gateway whose admin listener speaks HTTPS, with a recording MTA downstream.

A screenshot of each page is saved under the test's artifact directory
(PORTCULLIS_ARTIFACTS, default build/artifacts/console); with
PORTCULLIS_REFRESH_DOCS=1 they are also copied to docs/img/ (so a test run leaves the
work tree clean unless asked to refresh the docs' screenshots)."""

from __future__ import annotations

import http.client
import os
import shutil
import smtplib
import time
from pathlib import Path

import pytest

from tests.support.admin import hold_one, start_gateway, tokens
from tests.support.reply_ids import ID

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("PORTCULLIS_ARTIFACTS", ROOT / "build" / "artifacts")) / "console"
OPERATOR = tokens()["operator"][0]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMEDRIVER.exists() or not CHROMIUM.exists(),
                       reason="needs Debian's chromium and chromium-driver (scripts/setup.sh)"),
]


@pytest.fixture
def gw(tmp_path, downstream, cert_files, password_hash):
    gateway = start_gateway(tmp_path, downstream, cert_files, password_hash)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    # The test CA is not the system's: accept the gateway's certificate, and only here.
    options.accept_insecure_certs = True
    # An explicit driver path: Selenium Manager is never asked to download one.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000
    if os.environ.get("PORTCULLIS_REFRESH_DOCS") == "1":
        shutil.copy(path, ROOT / "docs" / "img" / f"console-{name}.png")


def submit(driver, form_xpath: str) -> None:
    """Press the form's button and wait for the page that answers it."""
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.XPATH, form_xpath + "//button").click()
    try:
        driver.switch_to.alert.accept()  # console.js asks before a delete
    except NoAlertPresentException:
        pass
    WebDriverWait(driver, 15).until(lambda d: _stale(old))


def _stale(element) -> bool:
    try:
        element.tag_name  # noqa: B018 - raises once the page it belonged to is gone
        return False
    except Exception:
        return True


def click(driver, by, what) -> None:
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(by, what).click()
    WebDriverWait(driver, 15).until(lambda d: _stale(old))


def log_in(driver, base: str, token: str) -> None:
    driver.get(base + "/console/login")
    field = driver.find_element(By.ID, "token")
    assert driver.find_element(By.CSS_SELECTOR, "label[for=token]").text == "Admin token"
    field.send_keys(token)
    submit(driver, "//main//form")


def test_the_abuse_desk_works_a_case_in_a_real_browser(gw, browser, downstream):
    base = f"https://127.0.0.1:{gw.gateway.admin.bound_port}"
    # A suspended account and a held message, as the gateway makes them.
    gw.run(gw.runtime.metering.suspend("bob@acme.example", time.time(),
                                       "complaints: 4 in 7 days", by="compromise"))
    held = hold_one(gw)
    # A real refusal whose id a customer would paste from a bounce.
    with smtplib.SMTP("127.0.0.1", gw.ports["inbound"], timeout=20) as c:
        c.ehlo("client.example")
        c.mail("news@sender.example")
        code, text = c.rcpt("victim@elsewhere.example")
    assert code == 550
    txid = ID.search(text).group(1).decode()

    browser.get(base + "/console/")
    assert browser.current_url.endswith("/console/login")  # no session: the login page
    shot(browser, "login")
    log_in(browser, base, "desk.not-the-secret")
    assert "That token is not valid." in browser.page_source
    log_in(browser, base, OPERATOR)
    assert browser.current_url == base + "/console/"
    cookie = browser.get_cookie("__Host-portcullis-session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"

    # Suspended accounts with their evidence; the account page with usage bars.
    row = browser.find_element(By.XPATH, "//tr[td/a[text()='bob@acme.example']]")
    assert "complaints: 4 in 7 days" in row.text and "by: compromise" in row.text
    shot(browser, "suspended")
    click(browser, By.LINK_TEXT, "bob@acme.example")
    meters = browser.find_elements(By.TAG_NAME, "meter")
    assert meters and all(browser.find_element(By.CSS_SELECTOR, f"label[for={m.get_attribute('id')}]")
                          for m in meters)
    shot(browser, "account")
    submit(browser, "//form[contains(@action, '/unsuspend')]")
    assert "The account was unsuspended" in browser.page_source
    assert "No account is suspended." in browser.page_source
    assert gw.run(gw.runtime.metering.store.suspension("bob@acme.example")) is None

    # The hold queue, a message's preview as text, release to the downstream.
    click(browser, By.LINK_TEXT, "Held mail")
    shot(browser, "held")
    click(browser, By.LINK_TEXT, held.id)
    preview = browser.find_elements(By.TAG_NAME, "pre")[1].text
    assert "Hello friend" in preview and "steal" not in preview
    assert "<script>alert(1)</script>" in browser.find_elements(By.TAG_NAME, "pre")[0].text
    assert browser.find_elements(By.TAG_NAME, "script")[0].get_attribute("src").endswith("console.js")
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 1  # none from the message
    shot(browser, "held-message")
    submit(browser, f"//form[@action='/console/held/{held.id}/release']")
    assert "The message was released" in browser.page_source
    assert downstream.messages[-1].rcpt_tos == ["friend@elsewhere.example"]
    assert b"quarterly figures" in downstream.messages[-1].content

    # The search box: the id from the refusal, to its decision trail.
    search = browser.find_element(By.ID, "q")
    search.send_keys(f"550 5.7.1 relaying denied (id {txid})")
    submit(browser, "//form[@role='search']")
    trail = browser.find_element(By.TAG_NAME, "pre").text
    assert f"transaction {txid} on inbound" in trail and "rule relay" in trail
    shot(browser, "explain")

    click(browser, By.LINK_TEXT, "Audit")
    audit = browser.find_element(By.TAG_NAME, "tbody").text
    assert "release" in audit and "unsuspend" in audit and "desk" in audit
    shot(browser, "audit")

    # Log out: the session is gone, and the cookie replayed is refused.
    submit(browser, "//form[@action='/console/logout']")
    assert browser.current_url.startswith(base + "/console/login")
    assert "You are logged out." in browser.page_source
    browser.get(base + "/console/held")
    assert browser.current_url.startswith(base + "/console/login")
    conn = http.client.HTTPSConnection("127.0.0.1", gw.gateway.admin.bound_port,
                                       context=_insecure(), timeout=10)
    conn.request("GET", "/console/held", headers={"Cookie": f"{cookie['name']}={cookie['value']}"})
    assert conn.getresponse().status == 303
    conn.close()


def test_a_change_without_the_csrf_token_is_refused(gw, browser):
    base = f"https://127.0.0.1:{gw.gateway.admin.bound_port}"
    held = hold_one(gw)
    log_in(browser, base, OPERATOR)
    browser.get(base + "/console/held")
    form = f"//form[@action='/console/held/{held.id}/delete']"
    # A forged form: the same action, the session cookie sent, a CSRF token that is not ours.
    browser.execute_script("arguments[0].value = 'forged'",
                           browser.find_element(By.XPATH, form + "/input[@name='csrf']"))
    submit(browser, form)
    assert "This change was refused" in browser.page_source
    shot(browser, "csrf-refused")
    browser.get(base + "/console/held")
    assert held.id in browser.page_source  # still held
    cookie = browser.get_cookie("__Host-portcullis-session")
    # Without any CSRF token, from outside the browser, with the session cookie: refused too.
    conn = http.client.HTTPSConnection("127.0.0.1", gw.gateway.admin.bound_port,
                                       context=_insecure(), timeout=10)
    conn.request("POST", f"/console/held/{held.id}/release", body="",
                 headers={"Cookie": f"{cookie['name']}={cookie['value']}",
                          "Content-Type": "application/x-www-form-urlencoded"})
    assert conn.getresponse().status == 403
    conn.close()


def _insecure():
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
