"""Every image's base has a Python that satisfies the project's requires-python.

The specification's base, nvidia/cuda:12.1.0-runtime-ubuntu22.04, installs Ubuntu 22.04's
python3, 3.10, and `pip install` of a project that requires 3.11 stopped there; nothing
noticed, since no image was built. The bases cannot be pulled here (no registry), so their
Python is known from their release's own package (the sources below), and the stand-in
builds (tests/integration/test_container_image.py) run python3 in a Debian bookworm and an
Ubuntu 24.04 made from those releases' archives, which checks this table's two entries.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [
    ROOT / "Dockerfile",
    ROOT / "deploy" / "Dockerfile.cpu",
    ROOT / "deploy" / "Dockerfile.vllm",
]

# python3 of each base's release, major.minor:
# - Ubuntu: packages.ubuntu.com, python3 in jammy (3.10.6) and noble (3.12.3);
# - Debian: packages.debian.org, python3 in bookworm (3.11.2);
# - vLLM's image: vllm-project/vllm docker/Dockerfile, ARG PYTHON_VERSION=3.12 (v0.33.0).
RELEASE_PYTHON = {"ubuntu22.04": "3.10", "ubuntu24.04": "3.12", "bookworm": "3.11"}
IMAGE_PYTHON = {"vllm/vllm-openai:v0.33.0": "3.12"}


def requires_python() -> SpecifierSet:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return SpecifierSet(project["requires-python"])


def base_of(dockerfile: Path) -> str:
    bases = re.findall(r"^FROM (\S+)", dockerfile.read_text(), re.M)
    assert len(bases) == 1, (dockerfile.name, bases)  # one stage: its base is the runtime
    return bases[0]


def python_of(base: str) -> str:
    if base in IMAGE_PYTHON:
        return IMAGE_PYTHON[base]
    release = re.search(r"(ubuntu\d\d\.\d\d|bookworm)", base)
    assert release, f"{base}: which Python? add its release to RELEASE_PYTHON, with a source"
    return RELEASE_PYTHON[release.group(1)]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_bases_python_satisfies_requires_python(dockerfile: Path) -> None:
    base = base_of(dockerfile)
    version = python_of(base)
    assert requires_python().contains(f"{version}.0"), (
        f"{dockerfile.name}: {base} has Python {version}, the project requires {requires_python()}"
    )


def test_the_check_refuses_the_specifications_base() -> None:
    assert python_of("nvidia/cuda:12.1.0-runtime-ubuntu22.04") == "3.10"
    assert not requires_python().contains("3.10.0")


def test_the_cuda_base_goes_with_torchs_cuda() -> None:
    """The CUDA major.minor of the base is the one torch's pinned wheel is built for."""
    text = (ROOT / "Dockerfile").read_text()
    cuda = re.search(r"^FROM nvidia/cuda:(\d+\.\d+)\.\d+-runtime-", text, re.M)
    torch = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert cuda and torch
    assert f"torch {torch.group(1)} (pyproject.toml" in text
    assert f"CUDA {cuda.group(1)} build" in text
