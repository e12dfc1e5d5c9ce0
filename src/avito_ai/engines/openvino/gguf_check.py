"""A GGUF file's header, read and checked before OpenVINO GenAI is given the file.

OpenVINO GenAI 2026.4 crashes the whole process (SIGSEGV) on a truncated GGUF, and answers
an architecture it cannot build with `unordered_map::at`. Both are found here first, from the
header alone (no tensor data is read): the architecture, and whether the file is as long as
its tensor table says. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

# Architectures OpenVINO GenAI builds from GGUF (SmolLM2 and Mistral files say "llama").
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")

# ggml type id -> (elements per block, bytes per block)
_BLOCKS: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8),
    28: (1, 8), 30: (1, 2),
}  # fmt: skip
# metadata value type -> struct format of a scalar (8: string, 9: array)
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}


class GGUFProblem(Exception):
    """What is wrong with the file, in words for the operator."""


@dataclass(frozen=True)
class GGUFHeader:
    architecture: str
    tensors: int
    needed_bytes: int  # the file must be at least this long
    context_length: int | None  # tokens the model was trained for


class _Reader:
    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh, self.size = fh, size

    def take(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise GGUFProblem("the file ends inside its header: it is truncated")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.unpack("Q")
        if length > self.size:
            raise GGUFProblem("a header string is longer than the file: it is corrupt")
        return self.take(length).decode("utf-8", "replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            item, count = self.unpack("I"), self.unpack("Q")
            if count > self.size:
                raise GGUFProblem("a header array is longer than the file: it is corrupt")
            if item in _SCALARS:  # skip numbers in one read
                self.take(count * struct.calcsize(_SCALARS[item]))
                return None
            for _ in range(count):
                self.value(item)
            return None
        raise GGUFProblem(f"unknown metadata type {kind}: the file is corrupt")


def read_header(path: Path) -> GGUFHeader:
    """Read and check the header. Raises GGUFProblem."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        r = _Reader(fh, size)
        if r.take(4) != b"GGUF":
            raise GGUFProblem("it is not a GGUF file (no GGUF magic)")
        version = r.unpack("I")
        if version < 2:
            raise GGUFProblem(f"GGUF version {version} is too old")
        tensors, entries = r.unpack("Q"), r.unpack("Q")
        meta: dict[str, Any] = {}
        for _ in range(entries):
            key = r.string()
            meta[key] = r.value(r.unpack("I"))
        end = 0
        for _ in range(tensors):
            r.string()
            dims = [r.unpack("Q") for _ in range(r.unpack("I"))]
            kind, offset = r.unpack("I"), r.unpack("Q")
            elements = 1
            for d in dims:
                elements *= d
            per_block, block_bytes = _BLOCKS.get(kind, (1, 0))
            end = max(end, offset + elements // per_block * block_bytes)
        alignment = int(meta.get("general.alignment") or 32)
        data_start = -(-fh.tell() // alignment) * alignment
    architecture = str(meta.get("general.architecture") or "unknown")
    context = meta.get(f"{architecture}.context_length")
    return GGUFHeader(architecture, tensors, data_start + end, int(context) if context else None)


def check_gguf(path: Path) -> GGUFHeader:
    """The header of a GGUF that OpenVINO GenAI can serve. Raises GGUFProblem."""
    header = read_header(path)
    if header.architecture not in SUPPORTED_ARCHITECTURES:
        raise GGUFProblem(
            f"its architecture is {header.architecture!r}; OpenVINO GenAI reads "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} GGUF files"
        )
    size = path.stat().st_size
    if size < header.needed_bytes:
        raise GGUFProblem(
            f"it is truncated: {size:,} bytes, its tensors need {header.needed_bytes:,}"
        )
    return header
