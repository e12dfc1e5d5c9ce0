"""Turning a stream of token ids into the text a client sees, one delta at a time.

Three small state machines, chained per sequence by `TextPipeline`:

1. a detokenizer - token ids -> text deltas, never half of a multi-byte character. Each
   backend brings the fastest its tokenizer allows (transformers/detokenize.py,
   openvino/detokenize.py); `IncrementalDetokenizer` here works with any `decode`
   function (it re-decodes a short window per token).
2. `ThinkFilter` - takes `<think>...</think>` blocks (reasoning models) out of the answer:
   kept apart as the reasoning when the client asked for thinking, else dropped; holds
   back text that could be the start of a tag.
3. `StopMatcher` - cuts the answer before the first stop string; holds back text that could
   be the start of a stop string until it is decided.

The deltas are the answer: a client that streams sees exactly what a client that waits for
the whole answer sees, and that is the tokenizer's decode of the generated ids (minus
thinking and stop strings, and minus a trailing half character when max_tokens cut one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
REPLACEMENT = "\ufffd"


def partial_suffix_len(text: str, needles: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `needles`."""
    best = 0
    for needle in needles:
        for k in range(min(len(needle) - 1, len(text)), best, -1):
            if text.endswith(needle[:k]):
                best = k
                break
    return best


class Detokenizer(Protocol):
    def push(self, token_id: int) -> str:
        """Add one token; return the text that became final (often "")."""
        ...

    def flush(self) -> str:
        """Whatever is still held back, at the end of the sequence."""
        ...


class IncrementalDetokenizer:
    """Token ids -> text deltas, safe for multi-byte characters.

    Uses the prefix/read offsets scheme (as in TGI/vLLM): decode a window that starts at the
    previous emission point, so tokenizers that depend on the preceding token (leading
    spaces, byte fallback) still render correctly, and emit only the part that is new.
    """

    __slots__ = ("_decode", "_prefix", "_read", "ids")

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became final (often "", never a broken char)."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return new_text[len(prefix_text) :]

    def flush(self) -> str:
        """Whatever is still held back, at the end of the sequence.

        A trailing U+FFFD is dropped: it is a character cut in half by max_tokens (or a
        stray byte), never something the model meant to say.
        """
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        tail = new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""
        return tail.rstrip(REPLACEMENT)


class ThinkFilter:
    """Takes `<think>...</think>` blocks out of a text stream, and whitespace right after one.

    `inside=True` starts in a block: some chat templates open `<think>` in the prompt
    itself, so the model's output only contains the closing tag. `keep=True` keeps what
    the blocks held (the reasoning, `take_reasoning()`); otherwise it is dropped.
    """

    __slots__ = ("_after_block", "_buf", "_inside", "_keep", "_thought")

    def __init__(self, *, inside: bool = False, keep: bool = False) -> None:
        self._inside = inside
        self._keep = keep
        self._after_block = False
        self._buf = ""
        self._thought: list[str] = []

    def _think(self, text: str) -> None:
        if self._keep and text:
            self._thought.append(text)

    def feed(self, text: str) -> str:
        buf = self._buf + text
        out: list[str] = []
        while True:
            if self._inside:
                i = buf.find(THINK_CLOSE)
                if i < 0:
                    k = partial_suffix_len(buf, (THINK_CLOSE,))
                    self._think(buf[: len(buf) - k])
                    buf = buf[len(buf) - k :]
                    break
                self._think(buf[:i])
                buf = buf[i + len(THINK_CLOSE) :]
                self._inside = False
                self._after_block = True
                continue
            if self._after_block:
                buf = buf.lstrip()
                if not buf:
                    break
                self._after_block = False
            i = buf.find(THINK_OPEN)
            if i < 0:
                k = partial_suffix_len(buf, (THINK_OPEN,))
                out.append(buf[: len(buf) - k])
                buf = buf[len(buf) - k :]
                break
            out.append(buf[:i])
            buf = buf[i + len(THINK_OPEN) :]
            self._inside = True
        self._buf = buf
        return "".join(out)

    def finish(self) -> str:
        """Release held text at the end (an unfinished block is reasoning, or dropped)."""
        rest, self._buf = self._buf, ""
        if self._inside:
            self._think(rest)
            return ""
        return rest.lstrip() if self._after_block else rest

    def take_reasoning(self) -> str:
        """The reasoning since the last call (always "" unless `keep`)."""
        taken = "".join(self._thought)
        self._thought.clear()
        return taken


class StopMatcher:
    """Ends the text before the first occurrence of any stop string."""

    __slots__ = ("_buf", "_stops", "stopped")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._buf = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buf = self._buf + text
        hits = [i for i in (buf.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            self._buf = ""
            return buf[: min(hits)]
        k = partial_suffix_len(buf, self._stops)
        self._buf = buf[len(buf) - k :]
        return buf[: len(buf) - k]

    def finish(self) -> str:
        rest = "" if self.stopped else self._buf
        self._buf = ""
        return rest


class TextPipeline:
    """Detokenizer -> think filter -> stop matcher, for one sequence.

    `keep_thinking`: the reasoning is kept apart (`take_reasoning()`), else dropped;
    `thinking_open`: the prompt opened a `<think>` block. Stop strings end the answer,
    never the reasoning."""

    __slots__ = ("_detok", "_stop", "_think")

    def __init__(
        self,
        detokenizer: Detokenizer,
        *,
        stop: Sequence[str] = (),
        keep_thinking: bool = False,
        thinking_open: bool = False,
    ) -> None:
        self._detok = detokenizer
        self._think = ThinkFilter(inside=thinking_open, keep=keep_thinking)
        self._stop = StopMatcher(stop)

    @property
    def stopped(self) -> bool:
        """True once a stop string was seen: the sequence must end now."""
        return self._stop.stopped

    def _through(self, text: str) -> str:
        if text:
            text = self._think.feed(text)
        return self._stop.feed(text) if text else ""

    def push(self, token_id: int) -> str:
        return self._through(self._detok.push(token_id))

    def take_reasoning(self) -> str:
        return self._think.take_reasoning()

    def finish(self) -> str:
        """Flush everything still held; call once when the sequence ends for any reason."""
        text = self._through(self._detok.flush())
        if not self._stop.stopped:
            tail = self._think.finish()
            text += self._stop.feed(tail) if tail else ""
        return text + self._stop.finish()
