"""The light install (no torch, no transformers) as a person meets it with A-Vision not
configured: the page's notice, in Russian only, points to an OpenVINO IR folder and
`make export-avision`, not to a hub id it cannot serve; the health API says the same in
English; DEVICE=cuda in front of an A-Vibe that is not transformers' leaves readiness alone.
On the full install the notice may name a hub id, and stays Russian after the page's script
has read the models' states (Chromium)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser import browser, open_tab, wait_in_page
from tests.servers import ServerProcess, dev_server
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
__all__ = ["browser"]  # the fixture, imported

LIGHT = """
import importlib.util, sys
HEAVY = {"torch", "torchvision", "transformers", "tokenizers", "accelerate"}
real = importlib.util.find_spec
importlib.util.find_spec = lambda n, *a, **k: None if n.split(".")[0] in HEAVY else real(n, *a, **k)
class LightInstall:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, LightInstall())
"""
LATIN_WORDS = re.compile(r"\b(?!A\b|Vision\b|AVISION_MODEL\b|OpenVINO\b|IR\b|make\b|export)"
                         r"(?!avision\b|Hugging\b|Face\b)[A-Za-z]{2,}\b")  # fmt: skip


def notice_of(html: str) -> str:
    found = re.search(r'<p class="notice" id="avision-notice"[^>]*>([^<]*)</p>', html)
    assert found, html
    return found.group(1)


@pytest.fixture(scope="module")
def light(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("light")
    (folder / "sitecustomize.py").write_text(LIGHT)
    env = {"AVIBE_BACKEND": "fake", "DEVICE": "cuda", "PYTHONPATH": str(folder)}
    srv = dev_server(env, folder / "server.log")
    try:
        srv.wait_live()  # (ready or not is the first test's question)
        wait_until(
            lambda: (
                httpx.get(srv.url + "/api/health/models", timeout=5).json()["models"]["avibe"][
                    "state"
                ]
                != "loading"
            ),
            30,
            "the model's load over",
        )
        yield srv
    finally:
        srv.stop()


def test_the_light_install_is_ready_with_cuda_set_and_no_transformers_engine(
    light: ServerProcess,
) -> None:
    r = httpx.get(light.url + "/api/health/ready", timeout=10)
    assert r.status_code == 200, r.text
    assert not any("transformers" in p for p in r.json()["problems"])


def test_the_light_installs_notice_points_to_an_ir_folder_in_one_language(
    light: ServerProcess,
) -> None:
    notice = notice_of(httpx.get(light.url + "/", timeout=10).text)
    assert "OpenVINO IR" in notice and "make export-avision" in notice
    assert "Hugging Face" not in notice and "id" not in notice.split()
    assert notice.startswith("A-Vision не настроена") and not LATIN_WORDS.search(notice)
    reason = httpx.get(light.url + "/api/health/models", timeout=10).json()["models"]
    reason = reason["avision"]["reason"]
    assert "make export-avision" in reason and "hub id" not in reason


def test_the_full_installs_notice_stays_russian_after_the_script_runs(
    browser: Any, embedded_server: ServerProcess
) -> None:
    notice = notice_of(httpx.get(embedded_server.url + "/", timeout=10).text)
    assert "Hugging Face" in notice and not LATIN_WORDS.search(notice)
    tab = open_tab(browser, embedded_server.url)
    badge = "document.querySelector('.model[data-role=avision]').textContent"
    wait_in_page(tab, f"{badge}.includes('не настроена')")  # the script has read the states
    shown = tab.page.locator("#avision-notice")
    assert shown.is_visible() and shown.inner_text() == notice
    assert tab.errors == [], tab.errors
