"""/docs and /redoc render in a real browser with every request outside the service blocked,
under the page's CSP, with no console errors (Chromium driven by Playwright)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser import browser, open_tab
from tests.servers import ServerProcess, dev_server, serving

pytestmark = pytest.mark.integration
__all__ = ["browser"]  # the fixture, imported


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("docs") / "server.log"
    with serving(dev_server({"AVIBE_BACKEND": "fake"}, log)) as srv:
        yield srv


def open_offline(
    browser: Any, server: ServerProcess, path: str
) -> tuple[Any, list[str], list[str]]:
    """The page with the network cut off outside the service: (page, outside requests
    attempted, console errors)."""
    tab = open_tab(browser, server.url, path)
    return tab.page, tab.outside, tab.errors


def test_swagger_ui_renders_every_operation_offline(browser: Any, server: ServerProcess) -> None:
    page, outside, errors = open_offline(browser, server, "/docs")
    page.wait_for_selector(".opblock", timeout=20_000)
    summaries = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/api/v1/text/generate" in " ".join(summaries)
    assert "/v1/chat/completions" in " ".join(summaries)
    assert outside == [] and errors == [], (outside, errors)


def test_redoc_renders_offline(browser: Any, server: ServerProcess) -> None:
    page, outside, errors = open_offline(browser, server, "/redoc")
    page.wait_for_selector("h2:has-text('Generate text with A-Vibe')", timeout=20_000)
    assert page.locator("h1").first.inner_text().startswith("Avito AI API")
    # ReDoc's "API docs by Redocly" footer shows a logo from cdn.redoc.ly: the CSP blocks
    # it before any request leaves (hence `outside` stays empty), and says so in the console.
    logo = "https://cdn.redoc.ly/redoc/logo-mini.svg"
    assert outside == [], outside
    assert [e for e in errors if logo not in e] == [], errors
