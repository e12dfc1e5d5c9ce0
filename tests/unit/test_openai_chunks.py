"""The content-only delta's shortcut gives the very frames the chunk models give."""

from __future__ import annotations

import json

import pytest

from avito_ai.api.openai.chunks import ChatChunks, _frame
from avito_ai.engines.base import Chunk, ToolCallPiece


@pytest.mark.parametrize(
    "chunk",
    [
        Chunk(text=" word"),
        Chunk(text=""),
        Chunk(text='quotes " and \\ and \n and </script> and ünïcödé and 🙂'),
        Chunk(text="second choice", index=1),
        Chunk(text="last", finish_reason="stop", generated_tokens=3),
        Chunk(text="with thinking", reasoning="hmm"),
        Chunk(
            text="",
            tool_calls=(ToolCallPiece(index=0, id="call_1", name="f", arguments='{"a": 1}'),),
        ),
    ],
)
def test_a_delta_frame_is_the_models_frame(chunk: Chunk) -> None:
    chunks = ChatChunks("4f08e3af-85e6-4046-9c28-0c6f11b2c455", "avibe", n=2, created=1)
    for _ in range(2):  # the first call makes the choice's frame, the second reuses it
        assert chunks.delta(chunk) == [_frame(chunks.delta_chunk(chunk))]
    (frame,) = chunks.delta(chunk)
    body = json.loads(frame.removeprefix("data: "))
    assert body["choices"][0]["index"] == chunk.index
    if not (chunk.reasoning or chunk.tool_calls):
        assert body["choices"][0]["delta"] == {"content": chunk.text}
