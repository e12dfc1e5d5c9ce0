"""Incremental detokenizing, thinking removal and stop strings, split at every boundary."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from avito_ai.engines.textstream import (
    Detokenizer,
    IncrementalDetokenizer,
    StopMatcher,
    TextPipeline,
    ThinkFilter,
    partial_suffix_len,
)
from avito_ai.engines.transformers.detokenize import StreamDetokenizer, detokenizer_factory
from tests.tiny_models import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(), eos_token="<|im_end|>")


def decoder(tokenizer: Any) -> Any:
    return lambda ids: tokenizer.decode(
        ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )


@pytest.fixture(params=["decode-stream", "window"])
def new_detok(request: pytest.FixtureRequest, tokenizer: Any) -> Callable[[], Detokenizer]:
    """Both detokenizers: tokenizers' DecodeStream (fast tokenizers) and the fallback."""
    if request.param == "decode-stream":
        return lambda: StreamDetokenizer(tokenizer.backend_tokenizer)
    return lambda: IncrementalDetokenizer(decoder(tokenizer))


def test_fast_tokenizers_get_decode_stream(tokenizer: Any) -> None:
    assert isinstance(detokenizer_factory(tokenizer)(), StreamDetokenizer)


def test_partial_suffix_len() -> None:
    assert partial_suffix_len("abc <thi", ("<think>",)) == 4
    assert partial_suffix_len("abc", ("<think>",)) == 0
    assert partial_suffix_len("x STO", ("STOP", "TOP!")) == 3


def test_random_token_streams_join_to_the_full_decode(tokenizer: Any, new_detok: Any) -> None:
    """Arbitrary ids (byte tokens included) must never lose or garble text."""
    decode = decoder(tokenizer)
    rng = random.Random(0)
    vocab = len(tokenizer)
    for _ in range(200):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        detok = new_detok()
        parts = [detok.push(t) for t in ids]
        parts.append(detok.flush())
        # Exactly the full decode, except a half character left at the very end.
        assert "".join(parts) == decode(ids).rstrip("\ufffd")


def test_a_character_cut_by_the_end_is_dropped(tokenizer: Any, new_detok: Any) -> None:
    ids = tokenizer("Щука", add_special_tokens=False)["input_ids"]
    raw = tokenizer.backend_tokenizer.decode
    byte_level = [t for t in range(len(tokenizer)) if raw([t]) == "\ufffd"]
    detok = new_detok()
    parts = [detok.push(t) for t in [*ids, byte_level[0]]] + [detok.flush()]
    assert "".join(parts) == "Щука"


def test_cyrillic_text_streams_without_broken_characters(tokenizer: Any, new_detok: Any) -> None:
    text = "Продаю велосипед в хорошем состоянии — ёлка, щука, съезд. Париж! 😀"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = new_detok()
    parts = [detok.push(t) for t in ids] + [detok.flush()]
    assert "".join(parts) == text
    assert all("\ufffd" not in p for p in parts)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>hmm</think>\n\nParis.", "Paris."),
        ("Before <think>x</think> after", "Before after"),
        ("no thinking at all <thin", "no thinking at all <thin"),
        ("<think>never closed", ""),
        ("a<think>1</think>b<think>2</think>c", "abc"),
    ],
)
def test_think_filter_at_every_split(text: str, expected: str) -> None:
    for cut in range(len(text) + 1):
        f = ThinkFilter()
        assert f.feed(text[:cut]) + f.feed(text[cut:]) + f.finish() == expected
    f = ThinkFilter()
    assert "".join(f.feed(ch) for ch in text) + f.finish() == expected


def test_think_filter_opened_by_the_prompt() -> None:
    f = ThinkFilter(inside=True)
    assert f.feed("reasoning</think>\n") + f.feed("Answer") + f.finish() == "Answer"


@pytest.mark.parametrize(
    ("text", "stops", "expected", "stopped"),
    [
        ("Hello END world", ("END",), "Hello ", True),
        ("Hello EN", ("END",), "Hello EN", False),
        ("a\nUser: b", ("\nUser:", "\nSystem:"), "a", True),
        ("xxSTOP yySTO", ("TOP", "STOP"), "xx", True),
        ("plain", (), "plain", False),
    ],
)
def test_stop_matcher_at_every_split(
    text: str, stops: tuple[str, ...], expected: str, stopped: bool
) -> None:
    for cut in range(len(text) + 1):
        m = StopMatcher(stops)
        out = m.feed(text[:cut]) + m.feed(text[cut:]) + m.finish()
        assert (out, m.stopped) == (expected, stopped)


def test_pipeline_holds_back_a_possible_stop_prefix(tokenizer: Any) -> None:
    ids = tokenizer("Paris. ST", add_special_tokens=False)["input_ids"]
    pipe = TextPipeline(IncrementalDetokenizer(decoder(tokenizer)), stop=("STOP",))
    emitted = "".join(pipe.push(t) for t in ids)
    assert emitted == "Paris. "  # "ST" may still become "STOP"
    assert pipe.finish() == "ST"  # the answer ended: it was text after all
