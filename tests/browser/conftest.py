"""Headless Chromium for the browser tests, and the sample day they render.

Chromium is the Debian package (/usr/bin/chromium), driven by Playwright for Python; no
browser is downloaded. When either is missing the tests FAIL with the command that
installs it: CI installs both, and a silently skipped browser test checks nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from harness import (
    CHROMIUM_ARGS,
    INSTALL,
    LETTER_HEIGHT,
    LETTER_WIDTH,
    chromium_path,
    plan_sample_day,
)

from previsit.plan import DayPlan


@pytest.fixture(scope="session")
def sample_day() -> DayPlan:
    return plan_sample_day()


@pytest.fixture(scope="module")
def browser(sample_day: DayPlan) -> Iterator[Any]:
    # sample_day first: it runs its own asyncio loop, which must not nest inside Playwright's.
    # Module scope: while Playwright's sync API is open it keeps an event loop running on this
    # thread, so every later test that calls asyncio.run() (the CLI does) would fail.
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.fail(f"Playwright for Python is not installed: {INSTALL}", pytrace=False)
    executable = chromium_path()
    if executable is None:
        pytest.fail(f"Chromium was not found: {INSTALL}", pytrace=False)
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=executable,
                                                  args=CHROMIUM_ARGS)
        except Error as exc:
            pytest.fail(f"Chromium at {executable} did not start ({exc}): {INSTALL}",
                        pytrace=False)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": LETTER_WIDTH, "height": LETTER_HEIGHT},
                                  java_script_enabled=False, offline=True)
    yield context.new_page()
    context.close()
