"""Cross-site form posts against a running server and in a real browser (Chromium through
Playwright): a page on another origin that posts to /avibe or /avision by itself gets the
refusal, while the console's own forms and a post without Origin/Referer (curl) are served;
also behind deploy/nginx.conf under a prefix (ROOT_PATH), whose `Host $host` drops the port
the browser used."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.browser import browser, open_tab
from tests.integration.test_nginx import Nginx, in_front
from tests.servers import ServerProcess, dev_server, free_port, serving

pytestmark = pytest.mark.integration
__all__ = ["browser"]  # the fixture, imported

ATTACK = """<!doctype html><html><body>
<form method="post" action="{action}" enctype="{enctype}">
<input name="{field}" value="Say 'pwned'"><input name="max_tokens" value="4">
</form><script>document.forms[0].submit()</script></body></html>"""


@dataclass
class OtherSite:
    """A second web server, on another port: the page at /{name} is pages[name]."""

    url: str
    pages: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def other_site() -> Iterator[OtherSite]:
    pages: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path.lstrip("/"), "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield OtherSite(f"http://127.0.0.1:{server.server_port}", pages)
    finally:
        server.shutdown()
        server.server_close()


def test_a_post_with_another_origin_is_refused_and_curl_is_served(
    embedded_server: ServerProcess,
) -> None:
    url = embedded_server.url + "/avibe"
    data = {"prompt": "Say hi", "max_tokens": "4"}
    refused = httpx.post(url, data=data, headers={"Origin": "http://evil.example"}, timeout=60)
    assert refused.status_code == 403
    assert "Форма отправлена с другого сайта" in refused.text
    assert refused.headers["x-request-id"] in refused.text
    assert 'id="avibe-answer"' not in refused.text
    served = httpx.post(url, data=data, timeout=60)  # curl -d prompt=...: no Origin, no Referer
    assert served.status_code == 200 and 'id="avibe-answer"' in served.text
    own = httpx.post(url, data=data, headers={"Origin": embedded_server.url}, timeout=60)
    assert own.status_code == 200 and 'id="avibe-answer"' in own.text


@pytest.mark.parametrize(
    ("form", "enctype", "field"),
    [("avibe", "application/x-www-form-urlencoded", "prompt"),
     ("avision", "multipart/form-data", "question")],
)  # fmt: skip
def test_a_page_on_another_origin_posting_the_form_is_refused_in_the_browser(
    browser: Any, embedded_server: ServerProcess, other_site: OtherSite,
    form: str, enctype: str, field: str,
) -> None:  # fmt: skip
    action = embedded_server.url + "/" + form
    other_site.pages[form] = ATTACK.format(action=action, enctype=enctype, field=field)
    page = browser.new_context().new_page()
    posts: list[dict[str, str]] = []
    page.on("request", lambda r: posts.append(r.headers) if r.method == "POST" else None)
    with page.expect_navigation(url=action):
        page.goto(f"{other_site.url}/{form}")  # it posts as soon as it loads
    page.wait_for_load_state()
    alert = page.locator("#page-error").inner_text()
    assert "Форма отправлена с другого сайта" in alert and "request id" in alert, alert
    assert page.locator(f"#{form}-answer").count() == 0
    assert posts and posts[0].get("origin") == other_site.url  # what Chromium sent


def test_the_consoles_own_forms_still_work_with_and_without_javascript(
    browser: Any, embedded_server: ServerProcess
) -> None:
    plain = open_tab(browser, embedded_server.url, java_script_enabled=False)
    plain.page.fill("#prompt", "What is the capital of France?")
    plain.page.click(".settings summary")
    plain.page.fill("#max_tokens", "8")
    plain.page.click("#avibe-form button[type=submit]")
    assert plain.page.locator("#avibe-answer pre").inner_text().strip()
    assert plain.page.locator("#page-error").count() == 0
    assert plain.outside == [] and plain.errors == [], (plain.outside, plain.errors)

    scripted = open_tab(browser, embedded_server.url)
    scripted.page.fill("#prompt", "What is the capital of France?")
    scripted.page.click("#avibe-send")
    meta = scripted.page.locator(".message.assistant .meta:not(:empty)")
    meta.wait_for(timeout=60_000)
    assert scripted.page.locator(".message.assistant .body").last.inner_text().strip()
    assert scripted.outside == [] and scripted.errors == [], (scripted.outside, scripted.errors)


@pytest.fixture(scope="module")
def behind_nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    folder = tmp_path_factory.mktemp("origin-nginx")
    env = {"AVIBE_BACKEND": "fake", "RATE_LIMIT_PER_MINUTE": "1000", "ROOT_PATH": "/ai"}
    with (
        serving(dev_server(env, folder / "service.log")) as service,
        in_front(folder, service, "/ai") as nginx,
    ):
        yield nginx


def test_behind_a_proxy_under_a_prefix_own_posts_pass_and_other_sites_do_not(
    browser: Any, behind_nginx: Nginx, other_site: OtherSite
) -> None:
    action = behind_nginx.url + "/ai/avibe"
    data = {"prompt": "hello there"}
    curl = httpx.post(action, data=data, timeout=30)
    assert curl.status_code == 200 and 'id="avibe-answer"' in curl.text
    # The other site is on the same host, another port: nginx's `Host $host` has no port.
    other = httpx.post(action, data=data, headers={"Origin": other_site.url}, timeout=30)
    assert other.status_code == 403 and "Форма отправлена с другого сайта" in other.text

    plain = open_tab(browser, behind_nginx.url, "/ai/", java_script_enabled=False)
    plain.page.fill("#prompt", "hello there")
    plain.page.click("#avibe-form button[type=submit]")
    assert plain.page.url == action
    assert "Echo: hello there" in plain.page.locator("#avibe-answer pre").inner_text()

    other_site.pages["prefixed"] = ATTACK.format(
        action=action, enctype="application/x-www-form-urlencoded", field="prompt"
    )
    page = browser.new_context().new_page()
    with page.expect_navigation(url=action):
        page.goto(other_site.url + "/prefixed")
    assert "Форма отправлена с другого сайта" in page.locator("#page-error").inner_text()
