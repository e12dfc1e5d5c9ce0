"""Chromium driven by Playwright for Python, on Debian's chromium (`make chromium`):
Playwright's own browser download cannot work on these machines."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed: `make chromium` (make test does it)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield instance
        finally:
            instance.close()


@dataclass
class Tab:
    """A page whose every request outside `base` is blocked and recorded, with the
    console's errors and the page's uncaught exceptions collected."""

    page: Any
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def open_tab(browser: Any, base: str, path: str = "/", **context: Any) -> Tab:
    page = browser.new_context(**context).new_page()
    tab = Tab(page)

    def route(r: Any) -> None:
        url = r.request.url
        if url.startswith(base) or url.startswith(("blob:", "data:")):
            r.continue_()
        else:
            tab.outside.append(url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: tab.errors.append(str(e)))
    page.goto(base + path)
    return tab


def wait_in_page(tab: Tab, expression: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript expression until it is truthy. (Playwright's wait_for_function
    evaluates its predicate with eval inside the page, which the page's CSP refuses.) The
    pause between polls is Playwright's own, so the page's events keep being served."""
    deadline = time.monotonic() + timeout
    while not tab.page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {timeout} s: {expression}"
        tab.page.wait_for_timeout(50)
