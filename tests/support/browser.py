"""Headless Debian chromium driven by Playwright with the system browser (nothing downloads a
browser), shared by the browser tests (tests/e2e/test_browser.py, test_dashboard.py)."""

import contextlib
import os

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Skipped only when the browser is absent (.ci/run installs it).
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")


@contextlib.contextmanager
def chromium():
    """A launched playwright Browser, closed (with its driver) on exit."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=20000)
        try:
            yield browser
        finally:
            browser.close()
