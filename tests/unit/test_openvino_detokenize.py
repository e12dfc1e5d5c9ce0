"""The OpenVINO engine's detokenizers, on the embedded model's real tokenizer."""

from __future__ import annotations

import random
from typing import Any

import pytest

from avito_ai.engines.models import embedded_gguf_path
from avito_ai.engines.openvino.detokenize import (
    ByteDetokenizer,
    StreamerDetokenizer,
    byte_table,
    detokenizers,
)

TEXT = "Продаю велосипед 🚲 — почти новый!\n\nBike for sale: `price = 12 500 ₽` 東京 "


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    import openvino_genai as genai

    return genai.Tokenizer(str(embedded_gguf_path()))


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]


def test_byte_level_vocabularies_get_the_byte_table(tokenizer: Any) -> None:
    assert isinstance(detokenizers(tokenizer)[0](), ByteDetokenizer)


@pytest.mark.parametrize("kind", ["bytes", "streamer"])
def test_streams_join_to_the_decode_and_never_split_a_character(tokenizer: Any, kind: str) -> None:
    table = byte_table(tokenizer)
    assert table is not None
    ids = ids_of(tokenizer, TEXT * 3)
    assert len(ids) < len(TEXT * 3)  # real merges, and split characters among them
    detok = ByteDetokenizer(table) if kind == "bytes" else StreamerDetokenizer(tokenizer)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == TEXT * 3
    assert not any("\ufffd" in d for d in deltas)


def test_special_tokens_are_skipped_and_a_cut_character_dropped(tokenizer: Any) -> None:
    table = byte_table(tokenizer)
    assert table is not None
    eos = int(tokenizer.get_eos_token_id())
    emoji = ids_of(tokenizer, "🚲")
    assert len(emoji) > 1  # a character split across byte tokens
    detok = ByteDetokenizer(table)
    text = "".join(detok.push(i) for i in [*ids_of(tokenizer, "ok"), eos, emoji[0]])
    assert text + detok.flush() == "ok"


def test_random_ids_match_the_decode_up_to_replacement_characters(tokenizer: Any) -> None:
    """Invalid byte runs may be replaced by a different number of U+FFFD; text never differs."""
    table = byte_table(tokenizer)
    assert table is not None
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(len(table)) for _ in range(rng.randrange(1, 30))]
        detok = ByteDetokenizer(table)
        ours = "".join(detok.push(i) for i in ids) + detok.flush()
        theirs = tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")
        assert ours.replace("\ufffd", "") == theirs.replace("\ufffd", "")
