"""Debian's headless Chromium under Selenium, for the tests that open a real browser
(tests/test_browser.py: the chat page; tests/test_locust_web_ui.py: Locust's web UI).

The `chromium` fixture (tests/conftest.py) installs it when missing. Every browser
started here is ended by its own profile directory, pass or fail.
"""

import os
import signal
import subprocess
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service

PROJECT = Path(__file__).resolve().parent.parent
INSTALL = PROJECT / "tests" / "browser" / "install-chromium.sh"
ARTIFACTS = PROJECT / "results" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The machines that run this reach no network but the Debian mirror: without the
# background-networking flags Chromium's own connections are refused, noisily.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # as root, and in containers, Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def install() -> None:
    """Debian's Chromium and chromedriver, installed when missing (about a minute)."""
    result = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=600, check=False)
    if result.returncode:
        pytest.fail(f"{INSTALL.name} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def start_chromium(profile: Path, window_size: str = "1000,800") -> webdriver.Chrome:
    """A headless Chromium on its own --user-data-dir, its console log kept."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--window-size={window_size}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    except Exception:  # Selenium quits chromedriver itself; a Chromium may be left
        end_processes_using(profile)
        raise


def quit_chromium(driver: webdriver.Chrome, profile: Path) -> None:
    """Quit the browser and chromedriver; then end any Chromium process of this
    profile that outlived them."""
    try:
        driver.quit()
    finally:
        end_processes_using(profile)


def save_evidence(driver: webdriver.Chrome, base: Path) -> list[Path]:
    """Screenshot, console log and DOM of a page, as base.png, base.console.log, base.html."""
    base.parent.mkdir(parents=True, exist_ok=True)
    saved = []
    try:
        if driver.save_screenshot(str(base.with_suffix(".png"))):
            saved.append(base.with_suffix(".png"))
        console = "\n".join(
            f"{entry['timestamp']} {entry['level']} {entry['message']}" for entry in driver.get_log("browser")
        )
        base.with_suffix(".console.log").write_text(console + "\n")
        base.with_suffix(".html").write_text(driver.page_source)
        saved += [base.with_suffix(".console.log"), base.with_suffix(".html")]
    except WebDriverException as error:  # a browser that died has nothing more to give
        base.with_suffix(".error.txt").write_text(f"evidence not saved: {error}\n")
        saved.append(base.with_suffix(".error.txt"))
    return saved


def end_processes_using(profile: Path) -> None:
    """SIGKILL the processes started with this --user-data-dir: this session's Chromium only."""
    marker = f"--user-data-dir={profile}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:  # ended meanwhile (ProcessLookupError too)
            continue
