"""Headless Chromium for the viewer's tests and benchmark: Debian's `chromium` driven by its `chromium-driver`
through Selenium, nothing downloaded (`.ci/run` installs both with apt). `browser()` is None when either is
missing, with the reason."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver", "chromium-driver")


def missing() -> str | None:
    """Why no browser test can run here (None when one can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not any(shutil.which(b) for b in CHROMIUM):
        return "no Chromium on PATH (Debian: apt-get install chromium chromium-driver; .ci/run does)"
    if not any(shutil.which(d) for d in DRIVER):
        return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return None


@contextmanager
def browser(width: int = 1280, height: int = 900):
    """A headless Chromium WebDriver, offline: no Selenium Manager (the driver's path is given), no network
    fetches of its own, the browser's console log kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = next(shutil.which(b) for b in CHROMIUM if shutil.which(b))
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--allow-file-access-from-files", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=next(shutil.which(d) for d in DRIVER if shutil.which(d)))
    driver = webdriver.Chrome(options=opts, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    """The browser console's SEVERE entries since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def wait_view(driver, view: str, timeout: float = 10.0) -> None:
    """Until the viewer says it rendered `view` (body[data-view])."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.body.getAttribute('data-view')") in (view, "error"))
    state = driver.execute_script("return document.body.getAttribute('data-view')")
    if state != view:
        raise AssertionError(f"the viewer showed an error instead of {view}: "
                             + driver.execute_script("return document.getElementById('app').innerText"))


def row(schema, **values) -> dict:
    """A record of `schema` with every field null but `values` (hand-written artifacts for the viewer's tests and
    benchmark)."""
    return {**{n: None for n in schema.names}, **values}
