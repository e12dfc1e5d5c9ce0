"""The console's Batches section in Chromium, desktop and phone: upload a JSONL file, a
progress bar per batch, cancel, download the output and the errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import Tab, browser, open_tab
from tests.integration.batch_helpers import chat_line, jsonl
from tests.servers import ServerProcess, dev_server, serving

pytestmark = pytest.mark.integration
__all__ = ["browser"]  # the fixture, imported


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The fake engine, 40 ms a token."""
    folder = tmp_path_factory.mktemp("batch-console")
    env = {
        "AVIBE_BACKEND": "fake",
        "FAKE_TOKEN_DELAY": "0.04",
        "RATE_LIMIT_PER_MINUTE": "1000",
        "BATCH_DATABASE_URL": f"sqlite:///{folder / 'batches.sqlite3'}",
        "BATCH_LINES_IN_FLIGHT": "2",
    }
    with serving(dev_server(env, folder / "server.log")) as srv:
        yield srv


def wait_until(tab: Tab, expression: str, timeout: float = 60.0) -> None:
    """Poll a JavaScript expression until truthy (wait_for_function's eval is refused by
    the page's CSP)."""
    deadline = time.monotonic() + timeout
    while not tab.page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {timeout} s: {expression}"
        tab.page.wait_for_timeout(50)


def submit(tab: Tab, lines: list[dict[str, Any]]) -> str:
    """The batch's id, from the page's own POST /v1/batches, once the list shows it (the
    list's length says nothing: the page may still be loading the batches made before)."""
    page = tab.page
    page.set_input_files(
        "#batch-file",
        files=[{"name": "in.jsonl", "mimeType": "application/jsonl", "buffer": jsonl(lines)}],
    )
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/v1/batches")
    ) as created:
        page.click("#batch-send")
    batch_id = str(created.value.json()["id"])
    wait_until(tab, f"{item(batch_id)} !== null")
    return batch_id


def item(batch_id: str) -> str:
    return f"document.querySelector('#batch-list > li[data-id=\"{batch_id}\"]')"


def test_upload_progress_and_downloads_on_the_desktop(
    browser: Any, server: ServerProcess, tmp_path: Path
) -> None:
    tab = open_tab(
        browser, server.url, viewport={"width": 1280, "height": 900}, accept_downloads=True
    )
    lines = [chat_line(f"d{i}", max_tokens=3) for i in range(4)] + [
        chat_line("bad", model="gpt-nope")
    ]
    batch_id = submit(tab, lines)
    wait_until(tab, f"{item(batch_id)}.dataset.status === 'completed'")
    bar = tab.page.locator(f'#batch-list > li[data-id="{batch_id}"] progress')
    assert (bar.get_attribute("value"), bar.get_attribute("max")) == ("5", "5")
    counts = tab.page.locator(f'#batch-list > li[data-id="{batch_id}"] .batch-counts').inner_text()
    assert "4 готово" in counts and "1 с ошибкой" in counts
    row = tab.page.locator(f'#batch-list > li[data-id="{batch_id}"]')
    with tab.page.expect_download() as output:
        row.locator(".batch-output").click()
    out = [json.loads(line) for line in Path(output.value.path()).read_text().splitlines()]
    assert sorted(line["custom_id"] for line in out) == ["d0", "d1", "d2", "d3"]
    with tab.page.expect_download() as errors:
        row.locator(".batch-errors-file").click()
    failed = [json.loads(line) for line in Path(errors.value.path()).read_text().splitlines()]
    assert [line["custom_id"] for line in failed] == ["bad"]
    assert failed[0]["response"]["status_code"] == 404
    assert tab.errors == [] and tab.outside == [], (tab.errors, tab.outside)


def test_cancel_on_a_phone(browser: Any, server: ServerProcess) -> None:
    tab = open_tab(browser, server.url, viewport={"width": 390, "height": 844}, is_mobile=True)
    # The fake engine echoes the prompt: 30 words at 40 ms a token make a line of 1.2 s, and
    # 60 lines two at a time half a minute of work, so the batch is still running when a busy
    # machine's browser gets to the button.
    words = " ".join(f"w{n}" for n in range(30))
    batch_id = submit(tab, [chat_line(f"p{i}", words, max_tokens=30) for i in range(60)])
    wait_until(tab, f"{item(batch_id)}.querySelector('progress').value >= 1")
    # The list refreshes every second while the batch runs; the button stays the same node,
    # so a click begun as it refreshes is not lost.
    tab.page.evaluate(f"{item(batch_id)}.querySelector('.batch-cancel').dataset.seen = 'yes'")
    seen = int(tab.page.evaluate(f"{item(batch_id)}.querySelector('progress').value"))
    wait_until(tab, f"{item(batch_id)}.querySelector('progress').value > {seen}")
    assert tab.page.evaluate(f"{item(batch_id)}.querySelector('.batch-cancel').dataset.seen")
    tab.page.locator(f'#batch-list > li[data-id="{batch_id}"] .batch-cancel').click()
    wait_until(tab, f"{item(batch_id)}.dataset.status === 'cancelled'")
    bar = tab.page.locator(f'#batch-list > li[data-id="{batch_id}"] progress')
    done = int(bar.get_attribute("value") or 0)
    assert done == 60  # every line accounted for: finished, or cancelled into the errors
    counts = tab.page.locator(f'#batch-list > li[data-id="{batch_id}"] .batch-counts').inner_text()
    assert "с ошибкой" in counts and not counts.startswith("60 готово")
    assert tab.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    box = tab.page.locator("#batches").bounding_box()
    assert box is not None and box["width"] <= 390
    assert tab.errors == [], tab.errors
