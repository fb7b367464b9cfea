"""Fixtures of the browser tests (this folder): a real headless Chromium (Debian's
/usr/bin/chromium) driven by Playwright.

Playwright's Python package talks to the browser over the DevTools protocol; pointing it at
the system Chromium (`executable_path`) means no browser download. Skipped when either is
missing, except under CI (env CI set), where that fails: the browser tests must run there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} but CI is set: the browser tests must run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module (new pages/contexts per test are cheap)."""
    if CHROMIUM is None:
        _unavailable("chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox",
                              "--disable-gpu", "--disable-background-networking",
                              "--disable-component-update", "--disable-sync"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page_errors() -> list[str]:
    """Collects JavaScript errors of the pages a test opens with `watch(page, errors)`."""
    return []


def watch(page: Any, errors: list[str]) -> Any:
    """Record uncaught page errors and console errors into `errors`; return the page."""
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error"
            else None)
    return page
