"""Token ids → text deltas with OpenVINO GenAI's own `TextStreamer` (C++), per sequence."""

from __future__ import annotations

from typing import Any


class StreamerDetokenizer:
    """`TextStreamer` holds back bytes that do not form whole characters yet, as the
    `Detokenizer` protocol (engines/textstream.py) asks; it calls back with each delta."""

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
        if not self._out:
            return ""
        text = "".join(self._out)
        self._out.clear()
        return text

    def push(self, token_id: int) -> str:
        self._streamer.write(token_id)
        return self._take()

    def flush(self) -> str:
        self._streamer.end()
        return self._take().rstrip("\ufffd")
