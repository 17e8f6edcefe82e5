"""Debian's Chromium under Selenium, and the two ways the browser tests read and click a live page."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A headless Chromium with a fresh profile in ``profile``, quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    assert Path(binary).exists() and Path(driver_path).exists(), (
        "the dashboard tests need Debian's chromium and chromium-driver (make test installs them as root)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1800",
        f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def texts(browser: Any, selector: str) -> list[str]:
    """The text of every element matching ``selector``, read in one go (the page re-renders live, so
    element handles go stale between a find and a read)."""
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)"
    return list(browser.execute_script(script, selector))


def click(browser: Any, selector: str, containing: str = "") -> None:
    """Click the first element matching ``selector`` whose text contains ``containing``, found and clicked
    in one script (a live re-render between a find and a click would leave a stale handle)."""
    script = (
        "const all = [...document.querySelectorAll(arguments[0])];"
        "const hit = all.find(e => e.innerText.includes(arguments[1]));"
        "if (!hit) throw new Error('nothing to click: ' + arguments[0]); hit.click();"
    )
    browser.execute_script(script, selector, containing)
