"""The web console in a real browser (Chromium via Playwright) against running servers.

`real`: the embedded SmolLM2 through OpenVINO for A-Vibe and a tiny random-weight
Qwen2.5-VL for A-Vision (its answers are noise: this proves the path, not the answers).
`slow`: the fake engine at 50 ms a token, so Stop lands mid-generation every time.
`limited`: two requests a minute, to see 429 as a person would.

Every request the pages make outside the service is blocked and fails the test.
`make screenshots` runs this module with SCREENSHOTS_DIR=docs to refresh the README's images.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import Tab, browser, open_tab, wait_in_page
from tests.images import encoded, noisy_png
from tests.servers import ServerProcess, dev_server, serving
from tests.tiny_vision_ir import TINY_VISION_IR
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
__all__ = ["browser"]  # the fixture, imported

CHAT = "/v1/chat/completions"


def screenshot(tab: Tab, name: str) -> None:
    folder = os.environ.get("SCREENSHOTS_DIR")
    if folder:
        tab.page.screenshot(path=str(Path(folder) / name), full_page=True)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("console")
    env = {
        # Both models as `make serve` serves them on a CPU: on OpenVINO (A-Vision from the
        # tiny Qwen2.5-VL's IR; tests/integration/test_anthropic_sdk.py serves its checkpoint
        # on transformers).
        "AVISION_MODEL": str(TINY_VISION_IR),
        "RATE_LIMIT_PER_MINUTE": "1000",
        "RATE_LIMIT_PER_HOUR": "10000",
        "MAX_IMAGE_SIZE_MB": "1",
        "MAX_TOKENS_AVIBE": "300",
        "MAX_TOKENS_AVISION": "24",
    }
    with serving(dev_server(env, root / "server.log"), ready_within=180) as srv:
        yield srv


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("console-slow") / "server.log"
    env = {
        "AVIBE_BACKEND": "fake",
        "FAKE_TOKEN_DELAY": "0.05",
        "RATE_LIMIT_PER_MINUTE": "1000",
        "TOKENS_PER_MINUTE": "100000",
    }
    with serving(dev_server(env, log)) as srv:
        yield srv


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("console-limited") / "server.log"
    with serving(dev_server({"AVIBE_BACKEND": "fake", "RATE_LIMIT_PER_MINUTE": "2"}, log)) as srv:
        yield srv


def chat_bodies(tab: Tab) -> list[dict[str, Any]]:
    """The JSON bodies the page posts to the chat endpoint, as they are sent."""
    bodies: list[dict[str, Any]] = []
    tab.page.on(
        "request",
        lambda r: bodies.append(r.post_data_json) if r.url.endswith(CHAT) else None,
    )
    return bodies


def ask(tab: Tab, text: str) -> str:
    """Send a chat turn and wait for its figures line; the answer's text."""
    page = tab.page
    done = page.locator(".message.assistant .meta:not(:empty)").count()
    page.fill("#prompt", text)
    page.click("#avibe-send")
    wait_in_page(
        tab,
        f"document.querySelectorAll('.message.assistant .meta:not(:empty)').length > {done}",
        timeout=60,
    )
    return str(page.locator(".message.assistant .body").last.inner_text())


def dashboard_figures(server: ServerProcess) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(server.url + "/api/metrics/dashboard").json()
    return body


def test_page_loads_clean_with_everything_from_the_service(
    browser: Any, real: ServerProcess
) -> None:
    tab = open_tab(browser, real.url)
    wait_in_page(
        tab, "document.querySelector('.model[data-role=avision]').textContent.includes('готова')"
    )
    assert tab.page.locator("#avision-notice").is_hidden()
    assert tab.page.locator("#chat").count() == 1 and tab.page.locator("#avibe-new").is_visible()
    assert tab.outside == [] and tab.errors == [], (tab.outside, tab.errors)


def test_badges_follow_the_models_without_a_reload(
    browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    log = tmp_path_factory.mktemp("console-loading") / "server.log"
    # Loading lasts long enough for the browser to start and draw the page on a busy machine.
    env = {"AVIBE_BACKEND": "fake", "FAKE_LOAD_DELAY": "10"}
    server = dev_server(env, log)
    try:
        server.wait_live()
        tab = open_tab(browser, server.url)
        badge = tab.page.locator('.model[data-role="avibe"]')
        assert "loading" in str(badge.get_attribute("class"))
        # A-Vision is not configured: the section says why before any upload.
        notice = tab.page.locator("#avision-notice")
        assert notice.is_visible() and "AVISION_MODEL" in notice.inner_text()
        assert tab.page.locator("#avision-send").is_disabled()
        wait_in_page(
            tab, "document.querySelector('.model[data-role=avibe]').classList.contains('ready')", 30
        )
        assert "готова" in badge.inner_text()
        assert tab.errors == [], tab.errors
    finally:
        server.stop()


def test_an_answer_streams_in_and_shows_its_figures(browser: Any, real: ServerProcess) -> None:
    tab = open_tab(browser, real.url)
    page = tab.page
    page.click(".settings summary")
    page.fill("#max_tokens", "100")  # long enough to be seen growing, not MAX_TOKENS_AVIBE's 300
    page.fill("#prompt", "Write a long story about a cat who travels around the world.")
    page.click("#avibe-send")
    lengths: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        streaming = page.locator(".message.assistant.streaming").count() > 0
        if not streaming and page.locator(".message.assistant .meta:not(:empty)").count():
            break
        if streaming:  # (once done the answer is drawn as markdown: its text may be shorter)
            lengths.append(len(page.locator(".message.assistant .body").last.inner_text()))
        page.wait_for_timeout(30)
    growth = sorted(set(lengths))
    # Seen at several sizes while it was being generated, never shrinking meanwhile.
    assert len(growth) >= 4 and lengths == sorted(lengths), lengths
    meta = page.locator(".message.assistant .meta").last.inner_text()
    assert "ток/с" in meta and "токенов:" in meta and "request id" in meta, meta
    assert tab.outside == [] and tab.errors == [], (tab.outside, tab.errors)


def test_a_second_turn_sends_the_history_and_new_chat_clears_it(
    browser: Any, real: ServerProcess
) -> None:
    tab = open_tab(browser, real.url)
    bodies = chat_bodies(tab)
    tab.page.click(".settings summary")
    tab.page.fill("#max_tokens", "60")
    first = ask(tab, "What is the capital of France?")
    second = ask(tab, "And what is the capital of Italy?")
    assert first.strip() and second.strip()
    assert [m["role"] for m in bodies[1]["messages"]] == ["user", "assistant", "user"]
    assert bodies[1]["messages"][0]["content"] == "What is the capital of France?"
    assert bodies[1]["messages"][1]["content"].strip()
    assert bodies[1]["max_tokens"] == 60 and bodies[1]["stream"] is True
    screenshot(tab, "console-chat.png")

    # The settings outlive the page; New chat forgets the conversation.
    tab.page.reload()
    assert tab.page.input_value("#max_tokens") == "60"
    tab.page.click("#avibe-new")
    assert tab.page.locator(".message").count() == 0
    ask(tab, "Hello")
    assert [m["role"] for m in bodies[-1]["messages"]] == ["user"]
    assert tab.outside == [] and tab.errors == [], (tab.outside, tab.errors)


def test_answers_render_as_markdown_with_nothing_active(browser: Any, slow: ServerProcess) -> None:
    """The fake engine echoes the prompt, so the "model" here writes hostile HTML."""
    tab = open_tab(browser, slow.url)
    hostile = (
        '**bold** <img src=x onerror="window.pwned=1"> <script>window.pwned=2</script>'
        ' <a href="javascript:window.pwned=3">link</a> <b style="color:red">styled</b>'
        " [click](javascript:window.pwned=4) ![pixel](http://tracker.example/p.png)\n\n"
        "```\nprint('hi')\n```"
    )
    ask(tab, hostile)
    answer = tab.page.locator(".message.assistant .body").last
    assert answer.locator("strong").first.inner_text() == "bold"
    assert answer.locator("img, script, b, [style], [onerror]").count() == 0
    assert "<script>window.pwned=2</script>" in answer.inner_text()  # shown, as text
    assert answer.locator("a[href^='javascript']").count() == 0
    assert "[pixel]" in answer.inner_text()  # an image shows as its description
    assert answer.locator("pre code").inner_text().strip() == "print('hi')"
    assert answer.locator("pre button.copy").count() == 1
    assert tab.page.evaluate("window.pwned === undefined")
    # The client sees its use of its token budget after an answer.
    wait_in_page(tab, "document.getElementById('usage').textContent.includes('из 100000')")
    assert "токенов в минуту" in tab.page.inner_text("#usage")
    assert tab.outside == [] and tab.errors == [], (tab.outside, tab.errors)


def test_the_page_fits_a_phone(browser: Any, slow: ServerProcess) -> None:
    tab = open_tab(browser, slow.url, viewport={"width": 390, "height": 844}, is_mobile=True)
    ask(tab, "A long line: " + "word " * 80)
    page = tab.page
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # The two sections stack: A-Vision is below A-Vibe, not beside it.
    vibe, vision = (page.locator(s).bounding_box() for s in ("#avibe", "#avision"))
    assert vibe is not None and vision is not None and vision["y"] >= vibe["y"] + vibe["height"]
    assert tab.errors == [], tab.errors


def test_stop_cancels_the_generation_on_the_server(browser: Any, slow: ServerProcess) -> None:
    before = dashboard_figures(slow)["cancelled"]
    tab = open_tab(browser, slow.url)
    page = tab.page
    # The fake engine echoes the prompt at 50 ms a token: this one takes ~10 s.
    page.fill("#prompt", " ".join(["word"] * 200))
    page.click("#avibe-send")
    wait_in_page(tab, "document.querySelector('.message.assistant .body').textContent.length > 20")
    assert dashboard_figures(slow)["running"] == 1
    page.click("#avibe-stop")
    page.wait_for_selector(".message.assistant .meta:has-text('остановлено')")
    figures = wait_until(
        lambda: (
            (f := dashboard_figures(slow))["cancelled"] == before + 1 and f["running"] == 0 and f
        ),
        10,
        lambda: f"cancelled {before + 1}, none running: {dashboard_figures(slow)}",
    )
    assert figures["cancelled"] == before + 1 and figures["running"] == 0, figures
    assert page.locator("#avibe-send").is_enabled()
    assert tab.errors == [], tab.errors


def test_an_image_shows_a_preview_and_gets_a_streamed_answer(
    browser: Any, real: ServerProcess
) -> None:
    tab = open_tab(browser, real.url)
    page = tab.page
    bodies = chat_bodies(tab)
    page.set_input_files(
        "#image", files=[{"name": "red.png", "mimeType": "image/png", "buffer": encoded("PNG")}]
    )
    wait_in_page(tab, "document.getElementById('preview').naturalWidth === 64")
    assert str(page.get_attribute("#preview", "src")).startswith("blob:")
    page.fill("#question", "What colour is it?")
    page.click("#avision-send")
    page.wait_for_selector("#avision-live small:not(:empty)", timeout=60_000)
    assert "токенов:" in page.inner_text("#avision-live small")
    content = bodies[0]["messages"][0]["content"]
    assert bodies[0]["model"] == "avision"
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert content[1] == {"type": "text", "text": "What colour is it?"}
    assert tab.outside == [] and tab.errors == [], (tab.outside, tab.errors)


def test_a_too_large_or_wrong_file_is_refused_before_upload(
    browser: Any, real: ServerProcess
) -> None:
    tab = open_tab(browser, real.url)  # MAX_IMAGE_SIZE_MB=1
    page = tab.page
    bodies = chat_bodies(tab)
    big = noisy_png(1.3)
    page.set_input_files(
        "#image", files=[{"name": "big.png", "mimeType": "image/png", "buffer": big}]
    )
    info = page.locator("#image-info")
    assert "слишком большое" in info.inner_text() and "до 1 MB" in info.inner_text()
    assert "error" in str(info.get_attribute("class")) and page.locator("#preview").is_hidden()
    page.set_input_files(
        "#image", files=[{"name": "a.txt", "mimeType": "text/plain", "buffer": b"hi"}]
    )
    assert "не подходит" in info.inner_text()
    page.click("#avision-send")  # nothing chosen: the browser's own "select a file"
    page.wait_for_timeout(300)
    assert bodies == [] and tab.errors == [], (bodies, tab.errors)


def test_rate_limit_reads_as_a_message_with_the_wait(browser: Any, limited: ServerProcess) -> None:
    tab = open_tab(browser, limited.url)  # two requests a minute
    ask(tab, "one")
    ask(tab, "two")
    tab.page.fill("#prompt", "three")
    tab.page.click("#avibe-send")
    status = tab.page.locator("#avibe-status.error")
    status.wait_for()
    text = status.inner_text()
    assert "Слишком много запросов" in text and "Повторите через" in text, text
    assert tab.page.input_value("#prompt") == "three"  # the question is not lost

    # The same without JavaScript: the form's answer page says it as plainly.
    plain = open_tab(browser, limited.url, java_script_enabled=False)
    plain.page.fill("#prompt", "four")
    plain.page.click("#avibe-form button[type=submit]")
    alert = plain.page.locator("#page-error").inner_text()
    assert "Слишком много запросов" in alert and "Повторите через" in alert, alert
    # The browser logs the 429 of the request itself as a console error; nothing else.
    assert [e for e in tab.errors if "429" not in e] == [], tab.errors


def test_the_forms_still_work_without_javascript(browser: Any, real: ServerProcess) -> None:
    tab = open_tab(browser, real.url, java_script_enabled=False)
    page = tab.page
    assert page.locator("#chat").is_hidden()
    page.fill("#prompt", "What is the capital of France?")
    page.click(".settings summary")
    page.fill("#max_tokens", "20")
    page.click("#avibe-form button[type=submit]")
    assert page.locator("#avibe-answer pre").inner_text().strip()
    assert page.input_value("#max_tokens") == "20"  # the settings stay as set
    page.set_input_files(
        "#image",
        files=[
            {"name": "blue.jpg", "mimeType": "image/jpeg", "buffer": encoded("JPEG", color="blue")}
        ],
    )
    page.click("#avision-form button[type=submit]")
    assert "токенов:" in page.locator("#avision-answer small").inner_text()
    assert tab.outside == [] and tab.errors == [], (tab.outside, tab.errors)


def test_the_dashboard_draws_live_charts_from_the_traffic(
    browser: Any, real: ServerProcess
) -> None:
    tab = open_tab(browser, real.url, "/dashboard")
    page = tab.page
    wait_in_page(tab, "window.avitoDashboard && window.avitoDashboard.times.length >= 1")

    # For the README's screenshot, a longer, busier stretch than the test needs.
    rounds = 12 if os.environ.get("SCREENSHOTS_DIR") else 3

    def traffic() -> None:
        for _ in range(rounds):
            httpx.post(
                real.url + "/api/v1/text/generate",
                json={"prompt": "Count from one to ten.", "max_tokens": 40},
                timeout=60,
            )
            time.sleep(0.5)  # the behaviour under test: traffic spread over the charts' ticks

    senders = [threading.Thread(target=traffic) for _ in range(2 if rounds > 3 else 1)]
    for sender in senders:
        sender.start()
    # Waiting inside Playwright: the page's requests pass through this process's route
    # handler (which blocks the outside ones), served only while Playwright is called.
    while any(sender.is_alive() for sender in senders):
        page.wait_for_timeout(100)
    wait_in_page(
        tab,
        """(() => {
          const s = window.avitoDashboard.series;
          const any = (xs) => (xs || []).some((v) => v > 0);
          return any(s.rps['запросов/с']) && any(s.tps['токенов/с']) && any(s.latency.p50)
            && any(s.ttft.p95);
        })()""",
        timeout=20,
    )
    assert page.locator("canvas").count() >= 6
    screenshot(tab, "dashboard.png")
    assert tab.outside == [] and tab.errors == [], (tab.outside, tab.errors)


COLOUR = {
    "type": "object",
    "properties": {"colour": {"enum": ["red", "green", "blue"]}, "bright": {"type": "boolean"}},
    "required": ["colour", "bright"],
}


def test_a_json_schema_in_the_settings_gives_json_shown_indented(
    browser: Any, real: ServerProcess
) -> None:
    tab = open_tab(browser, real.url)
    page = tab.page
    bodies = chat_bodies(tab)
    page.click("#avibe-form details.settings summary")
    page.fill("#json_schema", json.dumps(COLOUR))
    shown = ask(tab, "What colour is the sky?")
    answer = json.loads(shown)
    assert set(answer) == {"colour", "bright"} and answer["colour"] in ("red", "green", "blue")
    assert "\n  " in shown  # indented for reading
    assert page.locator(".message.assistant .body pre.json").count() == 1
    assert bodies[-1]["response_format"]["json_schema"]["schema"] == COLOUR
    # A-Vision too: an image in, JSON out (the tiny random model: valid because it must be).
    page.set_input_files(
        "#image", files=[{"name": "red.png", "mimeType": "image/png", "buffer": encoded("PNG")}]
    )
    short = {"type": "object", "properties": {"c": {"enum": ["red", "blue"]}}, "required": ["c"]}
    page.click("#avision-form details.settings summary")
    page.fill("#avision_json_schema", json.dumps(short))  # (MAX_TOKENS_AVISION is 24 here)
    page.click("#avision-send")
    page.wait_for_selector("#avision-live small:not(:empty)", timeout=60_000)
    assert json.loads(page.inner_text("#avision-live pre.json"))["c"] in ("red", "blue")
    assert tab.outside == [] and tab.errors == [], (tab.outside, tab.errors)


def test_a_schema_box_that_is_not_json_is_said_in_place(browser: Any, real: ServerProcess) -> None:
    tab = open_tab(browser, real.url)
    page = tab.page
    bodies = chat_bodies(tab)
    page.click("#avibe-form details.settings summary")
    page.fill("#json_schema", "{not json")
    page.fill("#prompt", "Hi")
    page.click("#avibe-send")
    wait_in_page(tab, "document.getElementById('avibe-status').textContent.includes('JSON-схема')")
    assert bodies == [] and page.input_value("#prompt") == "Hi"
