"""Token ids → text deltas for the OpenVINO engine.

Byte-level BPE vocabularies (GPT-2 style: Qwen, SmolLM, Llama 3) map every token to bytes,
which `Tokenizer.get_vocab()` returns as they are. `ByteDetokenizer` joins those bytes through
an incremental UTF-8 decoder: about a microsecond per token, against ~280 µs for
OpenVINO GenAI's `TextStreamer` (one detokenizer inference per token), which matters when
32 streams each take a token every step. The byte table is checked once at load against
the tokenizer's own `decode`; a vocabulary it does not reproduce exactly (SentencePiece
style, say) is served by `StreamerDetokenizer` instead.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Any

from avito_ai.engines.textstream import REPLACEMENT, Detokenizer

# Checked at load: the byte table must decode this exactly as the tokenizer does.
_SAMPLE = (
    "Продаю велосипед в хорошем состоянии, торг уместен. Bicycle for sale, barely used!\n"
    "Доставка 🚲 — звоните после 18:00; цена 12 500 ₽. 東京 «кавычки» café\t\tend  "
)


class ByteDetokenizer:
    """Bytes per token through an incremental UTF-8 decoder: whole characters only."""

    __slots__ = ("_table", "_utf8")

    def __init__(self, table: list[bytes]) -> None:
        self._table = table
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, token_id: int) -> str:
        if 0 <= token_id < len(self._table):
            text: str = self._utf8.decode(self._table[token_id])
            return text
        return ""

    def flush(self) -> str:
        tail: str = self._utf8.decode(b"", final=True)
        return tail.rstrip(REPLACEMENT)


class StreamerDetokenizer:
    """OpenVINO GenAI's `TextStreamer`: holds back bytes that do not form whole characters
    yet, and calls back with each delta."""

    __slots__ = ("_out", "_running", "_streamer")

    def __init__(self, tokenizer: Any) -> None:
        import openvino_genai as genai

        self._out: list[str] = []
        self._running = genai.StreamingStatus.RUNNING
        self._streamer = genai.TextStreamer(tokenizer, self._collect, {"skip_special_tokens": True})

    def _collect(self, text: str) -> Any:
        self._out.append(text)
        return self._running

    def _take(self) -> str:
        text = "".join(self._out)
        self._out.clear()
        return text

    def push(self, token_id: int) -> str:
        self._streamer.write(token_id)
        return self._take() if self._out else ""

    def flush(self) -> str:
        self._streamer.end()
        return self._take().rstrip(REPLACEMENT)


def byte_table(tokenizer: Any) -> list[bytes] | None:
    """Each token id's bytes (special tokens: none), or None when the vocabulary is not
    byte-level BPE as the tokenizer decodes it."""
    vocab = tokenizer.get_vocab()
    if not vocab:
        return None
    size = max(vocab.values()) + 1
    table = [b""] * size
    for token, index in vocab.items():
        table[index] = token if isinstance(token, bytes) else str(token).encode()
    # A token that has text of its own yet decodes to nothing is special: skipped, as
    # decode(skip_special_tokens=True) skips it. (Lone bytes of a split character also
    # decode to nothing alone, but they are not valid UTF-8 by themselves.)
    alone = tokenizer.decode([[i] for i in range(size)], skip_special_tokens=True)
    for index, text in enumerate(alone):
        raw = table[index]
        if text == "" and raw and _is_text(raw):
            table[index] = b""
    ids = [int(i) for i in tokenizer.encode(_SAMPLE, add_special_tokens=False).input_ids.data[0]]
    detok = ByteDetokenizer(table)
    ours = "".join(detok.push(i) for i in ids) + detok.flush()
    return table if ours == tokenizer.decode(ids, skip_special_tokens=True) else None


def _is_text(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def detokenizers(tokenizer: Any) -> tuple[Callable[[], Detokenizer], Callable[[int], bytes]]:
    """A new detokenizer per sequence (bytes when the vocabulary allows, else
    TextStreamer), and each token's own bytes (for logprobs)."""
    table = byte_table(tokenizer)
    if table is not None:
        size = len(table)
        return (
            lambda: ByteDetokenizer(table),
            lambda token: table[token] if 0 <= token < size else b"",
        )
    return (
        lambda: StreamerDetokenizer(tokenizer),
        lambda token: str(tokenizer.decode([token], skip_special_tokens=False)).encode(),
    )
