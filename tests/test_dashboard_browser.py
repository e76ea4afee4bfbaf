"""The dashboard in a real browser: Debian's chromium, driven by its chromium-driver through selenium, against
the real API and a real worker. They fail, saying what to install, where chromium or chromium-driver is missing
(`make test` installs them as root: scripts/system_packages.sh).

With BATCHERY_SCREENSHOTS=1 the tests also write docs/dashboard.png and docs/job-page.png.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from app import create_app
from app.model import status
from tests.services import ROOT, served

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

PAGE_BUDGET_BYTES = 150 * 1024
TOKEN = "tok-dash-browser-5b2d"
WAIT = 90  # generous: a busy 2-core machine


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    # No skip: a test that needs a browser fails loudly without one (a skip would count as a pass).
    needs = "the dashboard tests need Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"
    assert CHROMIUM and CHROMEDRIVER, needs
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,1400",
    ):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield browser
    browser.quit()


# The pages re-render every poll: an element found a moment ago may be gone (stale); look again.
STALE = (StaleElementReferenceException,)


def wait(driver, condition, what: str, timeout: float = WAIT):
    waiting = WebDriverWait(driver, timeout, ignored_exceptions=STALE)
    return waiting.until(condition, message=f"waited {timeout}s for {what}")


def text_of(driver, selector: str) -> str:
    for _ in range(10):
        try:
            found = driver.find_elements(By.CSS_SELECTOR, selector)
            return found[0].text if found else ""
        except StaleElementReferenceException:
            continue
    return ""


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def page_weight(driver) -> int:
    """Bytes of what the page loaded: the document, its stylesheet and its script (not its polls)."""
    return driver.execute_script(
        "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
        ".filter(function (e) { return e.initiatorType !== 'fetch'; })"
        ".reduce(function (sum, e) { return sum + e.decodedBodySize; }, 0);"
    )


def screenshot(driver, name: str) -> None:
    if os.environ.get("BATCHERY_SCREENSHOTS"):
        driver.save_screenshot(str(ROOT / "docs" / name))


def submit(api: str, body: dict, url: str) -> str:
    answer = requests.post(f"{url}/batch/{api}", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["job_id"]


def job_status(url: str, api: str, job_id: str, headers: dict | None = None) -> dict:
    return requests.get(f"{url}/batch/{api}?jobID={job_id}", headers=headers, timeout=30).json()["job_status"]


def test_the_dashboard_lists_two_apis_and_a_jobs_progress_moves_to_the_end(driver, live_url, worker, probe_config):
    items = [{"sleep": 0.4}] * 12
    running = submit(
        "probe", {"workers": 1, "config": probe_config, "item_list": {"items": items, "batch_size": 1}}, live_url
    )
    other = submit(
        "minimal", {"workers": 1, "config": probe_config, "item_list": {"items": [1, 2], "batch_size": 1}}, live_url
    )
    driver.get(f"{live_url}/")
    row = f'#api-probe tr[data-job="{running}"] .count'
    wait(driver, lambda d: text_of(d, f'#api-minimal tr[data-job="{other}"]'), "the minimal API's job")
    # moving without a reload: seen part done, then done
    wait(driver, lambda d: text_of(d, row) and 0 < int(text_of(d, row).split(" / ")[0]) < 12, "progress in between")
    screenshot(driver, "dashboard.png")
    wait(driver, lambda d: text_of(d, row) == "12 / 12", "the job's progress to reach the end")
    badge = f'#api-probe tr[data-job="{running}"] .badge'
    wait(driver, lambda d: text_of(d, badge) == "succeeded", "the job's badge to say it succeeded")
    assert console_errors(driver) == []
    assert page_weight(driver) < PAGE_BUDGET_BYTES


def test_the_job_page_shows_the_chart_a_dead_letter_and_a_printed_line(driver, live_url, worker, probe_config):
    config = dict(probe_config, prints=True)
    items = [1, {"fail": "always"}, 3]
    job_id = submit("probe", {"workers": 1, "config": config, "item_list": {"items": items, "batch_size": 1}}, live_url)
    driver.get(f"{live_url}/jobs/probe/{job_id}")
    wait(driver, lambda d: "probe prints batch" in text_of(d, "#log"), "the predictor's printed line in the log")
    wait(driver, lambda d: text_of(d, "#dead tr td") == "1", "batch 1's dead letter")
    assert "ValueError" in text_of(driver, "#dead tr")
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#chart polyline").get_attribute("points"), "the chart")
    wait(driver, lambda d: "completed_with_failures" in text_of(d, "#status"), "the job's end")
    screenshot(driver, "job-page.png")
    assert console_errors(driver) == []
    assert page_weight(driver) < PAGE_BUDGET_BYTES


def click_and_confirm(driver, action: str) -> None:
    button = f'button[data-action="{action}"]'
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, button).click() or True, f"a click on {action}")
    wait(driver, expected_conditions.alert_is_present(), f"the {action} confirmation", timeout=30)
    driver.switch_to.alert.accept()


def test_pause_resume_and_stop_clicked_on_the_page_take_effect(driver, live_url, worker, probe_config):
    items = [{"sleep": 0.5}] * 200
    job_id = submit(
        "probe", {"workers": 1, "config": probe_config, "item_list": {"items": items, "batch_size": 1}}, live_url
    )
    driver.get(f"{live_url}/jobs/probe/{job_id}")
    wait(driver, lambda d: text_of(d, "#status") in ("running", "enqueuing"), "the job to run")
    for action, expected in (("pause", status.PAUSED), ("resume", status.RUNNING), ("stop", status.STOPPED)):
        click_and_confirm(driver, action)
        wait(
            driver,
            lambda d, e=expected: job_status(live_url, "probe", job_id)["status"] == e,
            f"{action} to take effect",
        )
        wait(
            driver,
            lambda d, e=expected: text_of(d, "#status") == e.replace("status_", ""),
            f"the page to show {action}",
        )
    assert console_errors(driver) == []


@pytest.fixture(scope="module")
def token_url(settings):
    token_app = create_app({"SETTINGS": dataclasses.replace(settings, api_token=TOKEN, watchdog_seconds=0)})
    with served(token_app, "dashboard-token-api") as url:
        yield url


def test_with_a_token_the_page_shows_no_job_data_and_no_action_works_without_it(
    driver, token_url, worker, probe_config
):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    items = [{"sleep": 0.5}] * 100
    body = {"workers": 1, "config": probe_config, "item_list": {"items": items, "batch_size": 1}}
    answer = requests.post(f"{token_url}/batch/probe", json=body, headers=headers, timeout=30)
    job_id = answer.json()["job_id"]
    driver.get(f"{token_url}/")
    driver.execute_script("sessionStorage.clear()")  # no token kept from an earlier test
    driver.refresh()
    wait(driver, lambda d: d.find_element(By.ID, "signin").is_displayed(), "the dashboard's sign-in form")
    assert job_id not in driver.page_source and text_of(driver, "#apis") == ""
    driver.get(f"{token_url}/jobs/probe/{job_id}")
    wait(driver, lambda d: d.find_element(By.ID, "signin").is_displayed(), "the sign-in form")
    assert not driver.find_element(By.ID, "content").is_displayed()
    assert text_of(driver, "#log") == "" and text_of(driver, "#spec") == ""
    # the page's own calls without the token: refused, and the job goes on
    refused = driver.execute_script(
        f"return fetch('/batch/probe/{job_id}/pause', {{method: 'POST'}}).then(function (r) {{ return r.status; }});"
    )
    assert refused == 401
    assert job_status(token_url, "probe", job_id, headers)["status"] in (status.RUNNING, status.ENQUEUING)
    driver.get_log("browser")  # that refused call is logged as an error: the test made it on purpose
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()
    wait(driver, lambda d: '"job_id"' in text_of(d, "#spec"), "the job's data once signed in")
    requests.delete(f"{token_url}/batch/probe?jobID={job_id}", headers=headers, timeout=30)
    assert console_errors(driver) == []
