"""Real headless Chromium for end-to-end display tests (pytest plugin: register in conftest).

Debian's /usr/bin/chromium, driven by Playwright for Python. Never `playwright install`: the
machines have no internet, and the distro browser is the one the kiosk really runs.

Fixtures:
- `browser`: one Chromium per test module (module scope: starting one costs a second).
- `page_at`: `page_at(width, height)` opens a fresh page (own context, so own localStorage) at
  that viewport; all are closed after the test.
Without /usr/bin/chromium the tests skip, or fail when CI=true (a CI that silently skips the
browser tests would be a CI that tests nothing about the screen).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("VENDING_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page_at(browser):
    contexts = []

    def open_page(width: int = 800, height: int = 480):
        ctx = browser.new_context(viewport={"width": width, "height": height},
                                  device_scale_factor=1, locale="zh-CN")
        ctx.set_default_timeout(10_000)       # a hang-guard, not a performance claim
        contexts.append(ctx)
        return ctx.new_page()

    yield open_page
    for ctx in contexts:
        ctx.close()


def artifact(name: str) -> Path:
    """Where a test saves a screenshot for people to look at (git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name
