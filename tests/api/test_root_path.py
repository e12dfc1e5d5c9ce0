"""The pages behind a proxy that mounts the service under a prefix (ASGI root_path, as
uvicorn --root-path sets it): every URL a page names into the service (assets, links, form
actions) starts with the prefix, and the page hands it to its scripts in <html data-root>.
At the root, the pages are as they always were."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request

from avito_ai.api.errors import kind_of
from avito_ai.api.forms.page import error_page
from avito_ai.app import STATIC_DIR
from avito_ai.config import Settings
from avito_ai.errors import ValidationFailed
from tests.conftest import isolated_settings

from .conftest import running

PREFIX = "/prefix"


class _Links(HTMLParser):
    """Every href, src and action of a page, in order; and <html data-root>."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.actions: list[str] = []
        self.root: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if tag == "html" and name == "data-root":
                self.root = value
            if name in ("href", "src") and value is not None:
                self.urls.append(value)
            if name == "action" and value is not None:
                self.actions.append(value)


def links(html: str) -> _Links:
    parser = _Links()
    parser.feed(html)
    return parser


@asynccontextmanager
async def behind(
    prefix: str, settings: Settings | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app as a proxy that mounts it under `prefix` reaches it (paths carry the
    prefix, as uvicorn --root-path makes them)."""
    async with running(settings) as (app, client):
        transport = client._transport
        assert isinstance(transport, httpx.ASGITransport)
        transport.root_path = prefix
        yield app, client


@pytest.mark.parametrize("page", ["/", "/dashboard"])
async def test_a_page_names_every_url_under_the_prefix(page: str) -> None:
    async with running() as (_, plain):
        at_root = await plain.get(page)
    # With the default limits (10 a minute): static files and pages are free reads under
    # the prefix as at the root.
    async with behind(PREFIX) as (_, client):
        r = await client.get(PREFIX + page)
        assert r.status_code == 200, r.text
        found = links(r.text)
        assert found.root == PREFIX
        assert found.urls, "no links found: this test would prove nothing"
        for url in found.urls + found.actions:
            assert url.startswith(PREFIX + "/"), url
        # Nothing else changed: the same URLs as at the root, the prefix in front.
        plain_found = links(at_root.text)
        assert plain_found.root == ""
        assert found.urls == [PREFIX + url for url in plain_found.urls]
        assert found.actions == [PREFIX + url for url in plain_found.actions]
        # And each link and asset answers under the prefix.
        for url in found.urls:
            answer = await client.get(url)
            assert answer.status_code == 200, (url, answer.status_code)


async def test_at_the_root_the_pages_are_as_before(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    assert '<html lang="ru" data-root="">' in page
    assert '<form method="post" action="/avibe" id="avibe-form">' in page
    assert 'action="/avision" enctype="multipart/form-data"' in page
    assert '<script src="/static/app.js" defer></script>' in page
    assert '<a href="/dashboard">Мониторинг</a>' in page
    dashboard = (await client.get("/dashboard")).text
    assert '<script src="/static/dashboard.js" defer></script>' in dashboard
    assert '<a href="/">Консоль</a>' in dashboard
    for url in links(page).urls + links(page).actions + links(dashboard).urls:
        assert url.startswith("/") and not url.startswith("//"), url


async def test_the_docs_pages_under_the_prefix() -> None:
    async with behind(PREFIX) as (_, client):
        for page in ("/docs", "/redoc"):
            r = await client.get(PREFIX + page)
            assert r.status_code == 200
            for url in links(r.text).urls:
                assert url.startswith(PREFIX + "/static/"), url
        assert (
            f'data-openapi-url="{PREFIX}/openapi.json"' in (await client.get(PREFIX + "/docs")).text
        )


def test_the_scripts_build_every_request_from_the_pages_prefix() -> None:
    """app.js and dashboard.js read <html data-root> once and put it in front of every
    fetch: a fetch of a bare path would leave the prefix."""
    for name in ("app.js", "dashboard.js"):
        source = (STATIC_DIR / name).read_text()
        assert 'const root = document.documentElement.dataset.root || "";' in source, name
        calls = re.findall(r"fetch\(([^,)]*)", source)
        assert calls, name
        for call in calls:
            assert re.fullmatch(r'root \+ "/[^"]+"', call), (name, call)


async def test_an_error_page_names_every_url_under_the_prefix() -> None:
    """The page with a form's refusal in it, as api/errors.py renders it."""
    async with running() as (app, _):
        scope = {
            "type": "http",
            "app": app,
            "method": "POST",
            "path": PREFIX + "/avibe",
            "root_path": PREFIX,
            "headers": [],
            "query_string": b"",
            "state": {"request_id": "rid-1"},
        }
        error = ValidationFailed("Prompt must not be empty")
        response = error_page(Request(scope), error, kind_of(error.code), prompt="")
    html = bytes(response.body).decode()
    assert response.status_code == 400
    assert "Prompt must not be empty" in html and "rid-1" in html
    found = links(html)
    assert found.root == PREFIX and found.urls and found.actions
    for url in found.urls + found.actions:
        assert url.startswith(PREFIX + "/"), url


# Under a prefix scope["path"] carries it: the path table (avito_ai/paths.py) must be read
# without it (paths.app_path), or every path gets the default policy.


async def test_a_forms_refusal_under_the_prefix_is_the_page() -> None:
    async with behind(PREFIX) as (_, client):
        r = await client.post(PREFIX + "/avibe", data={"prompt": ""})
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("text/html"), r.text
    found = links(r.text)
    assert found.root == PREFIX
    for url in found.urls + found.actions:
        assert url.startswith(PREFIX + "/"), url


async def test_keys_and_limits_apply_under_the_prefix_as_at_the_root() -> None:
    settings = isolated_settings(api_keys="k" * 32, rate_limit_per_minute=2)
    async with behind(PREFIX, settings) as (_, client):
        chat = {"model": "avibe", "messages": [{"role": "user", "content": "hi"}]}
        r = await client.post(PREFIX + "/v1/chat/completions", json=chat)
        assert r.status_code == 401, r.text
        # Static files and the page are free reads, as at the root.
        for _ in range(4):
            assert (await client.get(PREFIX + "/static/style.css")).status_code == 200
            assert (await client.get(PREFIX + "/")).status_code == 200
