"""Swagger UI's Authorize button with access control on, in a real headless Chromium (the
distribution's, driven by its ChromeDriver): without a key "Try it out" gets a 401, after
Authorize the same call is a 200 sent with the key as a bearer token."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from testkit.debian import ensure_command
from tests.e2e_stack import Stack, StartService
from tests.test_access_control_e2e import KeysFile, auth_gateway

# Flags that keep Chromium off the network it cannot reach here and out of a sandbox that
# needs privileges a test runner (root) does not give it.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    binary = ensure_command("chromium", "chromium", "chromium-driver")
    driver_binary = ensure_command("chromedriver", "chromium-driver")
    options = Options()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_binary), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: WebDriver, css: str, timeout: float = 20) -> WebElement:
    element: WebElement = WebDriverWait(driver, timeout).until(
        expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, css))
    )
    return element


def _try_listing(driver: WebDriver) -> str:
    """Runs "Try it out" on `GET /api/v1/audits` and returns the status Swagger UI shows."""
    operation = _wait(driver, "#operations-audits-list_audits .opblock-summary")
    if "is-open" not in (operation.find_element(By.XPATH, "..").get_attribute("class") or ""):
        operation.click()
    try_out = driver.find_elements(By.CSS_SELECTOR, "#operations-audits-list_audits .try-out__btn")
    if try_out and "cancel" not in (try_out[0].get_attribute("class") or ""):
        try_out[0].click()
    # The previous answer goes first, so that the one read below is this call's.
    for clear in driver.find_elements(By.CSS_SELECTOR, "#operations-audits-list_audits .btn-clear"):
        clear.click()
    WebDriverWait(driver, 10).until(
        lambda d: (
            not d.find_elements(
                By.CSS_SELECTOR, "#operations-audits-list_audits .live-responses-table"
            )
        )
    )
    _wait(driver, "#operations-audits-list_audits .execute").click()
    cells = "#operations-audits-list_audits .live-responses-table .response-col_status"

    def shown(d: WebDriver) -> str | None:
        texts = [cell.text.strip() for cell in d.find_elements(By.CSS_SELECTOR, cells)]
        return next((text for text in texts if text[:3].isdigit()), None)

    status = WebDriverWait(driver, 20).until(shown)
    assert status is not None
    return status


def test_authorize_then_try_it_out(
    stack: Stack, start_service: StartService, tmp_path: Path, browser: WebDriver
) -> None:
    keys = KeysFile(tmp_path / "keys.json")
    _, key = keys.add(["audits:read"])
    gateway = auth_gateway(stack, start_service, keys)
    browser.get(f"{gateway.url}/docs")

    assert _try_listing(browser).startswith("401")

    _wait(browser, ".auth-wrapper .authorize").click()
    field = _wait(browser, ".modal-ux input[type=text], .modal-ux input[type=password]")
    field.send_keys(key)
    _wait(browser, ".modal-ux .auth-btn-wrapper .authorize").click()
    _wait(browser, ".modal-ux .btn-done").click()

    assert _try_listing(browser).startswith("200")
    curl = browser.find_element(By.CSS_SELECTOR, "#operations-audits-list_audits .curl").text
    assert f"Authorization: Bearer {key}" in curl
