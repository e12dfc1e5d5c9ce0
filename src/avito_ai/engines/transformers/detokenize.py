"""Detokenizers for transformers tokenizers, and what the chat template opened."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from avito_ai.engines.textstream import (
    REPLACEMENT,
    THINK_OPEN,
    Detokenizer,
    IncrementalDetokenizer,
)


class StreamDetokenizer:
    """tokenizers' `DecodeStream`: the same prefix/read-offset scheme, done in Rust.

    `step` returns None while the pending bytes do not form whole characters yet, so a
    character split across byte-level tokens is emitted once, whole. `flush` decodes the
    whole answer once and releases what `DecodeStream` still held (it can hold text after
    a stray invalid byte), minus a trailing half character, as the fallback does.
    """

    __slots__ = ("_emitted", "_ids", "_step", "_tokenizer")

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer  # a tokenizers.Tokenizer (the Rust object)
        self._step = DecodeStream(skip_special_tokens=True).step
        self._ids: list[int] = []
        self._emitted = 0  # characters released so far

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text: str | None = self._step(self._tokenizer, token_id)
        if not text:
            return ""
        self._emitted += len(text)
        return text

    def flush(self) -> str:
        full: str = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        tail = full[self._emitted :].rstrip(REPLACEMENT)
        self._emitted += len(tail)
        return tail


def detokenizer_factory(tokenizer: Any) -> Callable[[], Detokenizer]:
    """A new detokenizer per sequence for a transformers tokenizer.

    The caller passes a tokenizer of its own (a deep copy): a Rust tokenizer shared between
    the event loop (encoding prompts) and the worker thread can fail with "Already borrowed".
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return lambda: StreamDetokenizer(backend)

    def decode(ids: list[int]) -> str:
        text: str = tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return text

    return lambda: IncrementalDetokenizer(decode)


def prompt_opens_thinking(tokenizer: Any, prompt_ids: Sequence[int]) -> bool:
    """True when the chat template itself opened `<think>`: the answer then only closes it."""
    tail: str = tokenizer.decode(list(prompt_ids[-8:]), skip_special_tokens=False)
    return tail.rstrip().endswith(THINK_OPEN)
