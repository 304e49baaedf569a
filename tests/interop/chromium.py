"""Debian's headless Chromium driven through Selenium (chromium, chromium-driver, selenium).

``available()`` says why a browser cannot run here (None when it can); ``browser()`` starts
a headless Chromium with a fixed window size through Debian's ``chromedriver`` (no
download: Selenium is told where the driver and the browser are).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Any

__all__ = ["available", "browser", "CHROMIUM", "CHROMEDRIVER"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def available() -> str | None:
    """None when a headless Chromium can be driven here; otherwise the reason."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not installed (Debian package chromium)"
    if not os.access(CHROMEDRIVER, os.X_OK):
        return f"{CHROMEDRIVER} not installed (Debian package chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install selenium: the test extra)"
    return None


def browser(width: int = 1200, height: int = 700) -> Any:
    """A headless Chromium (``selenium.webdriver.Chrome``); the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-extensions", f"--window-size={width},{height}"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
