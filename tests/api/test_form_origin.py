"""The forms refuse a post from another site's page (what a browser writes: Origin, Referer,
Sec-Fetch-Site) and serve their own page's posts and posts without those headers (curl)."""

from __future__ import annotations

import pytest

from tests.conftest import isolated_settings

from .conftest import running

OWN = "http://testserver"


async def post(headers: dict[str, str], **settings: str) -> tuple[int, str, str]:
    async with running(isolated_settings(rate_limit_per_minute=1000, **settings)) as (_, client):
        r = await client.post("/avibe", data={"prompt": "hello there"}, headers=headers)
        return r.status_code, r.text, r.headers["x-request-id"]


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, as the original specification posts
        {"Origin": OWN},
        {"Origin": "http://TESTSERVER:80"},
        {"Referer": OWN + "/?q=1"},
        {"Origin": "null", "Sec-Fetch-Site": "same-origin"},  # the browser vouches for it
        {"Origin": "null", "Referer": OWN + "/"},
        {"Origin": "https://testserver"},  # TLS ended at a proxy that did not say so
    ],
    ids=["no-headers", "origin", "origin-default-port", "referer", "fetch-site", "null-referer",
         "https-page"],
)  # fmt: skip
async def test_the_services_own_posts_are_served(headers: dict[str, str]) -> None:
    status, text, _ = await post(headers)
    assert status == 200 and 'id="avibe-answer"' in text


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "http://evil.example", "Referer": OWN + "/"},  # Origin decides
        {"Referer": "http://evil.example/page.html"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://testserver.evil.example"},
        {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
    ],
    ids=["origin", "origin-over-referer", "referer", "null", "fetch-site", "suffix", "both"],
)
async def test_a_post_from_another_site_is_refused_with_the_page(headers: dict[str, str]) -> None:
    status, text, rid = await post(headers)
    assert status == 403
    assert 'id="page-error"' in text and "Форма отправлена с другого сайта" in text
    assert "cross_site_form" in text and rid in text
    assert 'id="avibe-answer"' not in text


async def test_an_origin_in_allowed_origins_may_post_but_a_star_opens_no_form() -> None:
    listed = {"allowed_origins": "https://app.example, https://other.example"}
    assert (await post({"Origin": "https://app.example"}, **listed))[0] == 200
    assert (await post({"Origin": "https://third.example"}, **listed))[0] == 403
    assert (await post({"Origin": "https://app.example"}, allowed_origins="*"))[0] == 403


async def test_a_cross_site_image_form_is_refused_before_anything_is_read() -> None:
    async with running(isolated_settings(rate_limit_per_minute=1000)) as (_, client):
        r = await client.post(
            "/avision",
            files={"image": ("a.png", b"not an image", "image/png")},
            headers={"Origin": "http://evil.example"},
        )
        assert r.status_code == 403 and "Форма отправлена с другого сайта" in r.text
        page = await client.get("/")
        assert page.headers["referrer-policy"] == "same-origin"  # own posts keep their Origin


async def test_the_port_counts_even_when_a_proxy_drops_it_from_host() -> None:
    """nginx's `proxy_set_header Host $host` sends the host without the port the browser
    used: a page on another port of that host is another origin all the same. (The
    proxy's own pages still pass: the browser says same-origin in Sec-Fetch-Site.)"""
    cases = [
        ({"Host": "example.com", "Origin": "http://example.com:8080"}, 403),
        ({"Host": "example.com:8085", "Origin": "http://example.com:9999"}, 403),
        ({"Host": "example.com", "Origin": "http://example.com"}, 200),
        ({"Host": "example.com", "Origin": "https://example.com"}, 200),
        ({"Host": "example.com", "Origin": "http://example.com:8080",
          "Sec-Fetch-Site": "same-origin"}, 200),
    ]  # fmt: skip
    for headers, status in cases:
        assert (await post(headers))[0] == status, headers
