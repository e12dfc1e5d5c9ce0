"""A deterministic engine for API tests and UI work. Never a default: AVIBE_BACKEND=fake.

It answers by echoing the last user text ("Echo: ..."), one space-separated word per token
(line breaks kept), so tests can predict the text, token counts and finish reasons. With
thinking on it first thinks aloud ("The user wrote N words."); with tools, it calls one
(Hermes `<tool_call>` text, as Qwen3 writes it) when the choice requires a call or the user
names a tool, and echoes a tool's result when that is the last message.
`token_delay` slows it down to test streaming, timeouts and graceful shutdown; with it and
`ignore_eos` (the words repeat up to max_tokens) it is an ideal engine of fixed speed for
measuring the front door (benchmarks/bench_front_door.py --engine-env AVIBE_BACKEND=fake
FAKE_TOKEN_DELAY=0.02).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from avito_ai.engines.base import (
    Capabilities,
    Chunk,
    EngineState,
    EngineStatus,
    GenerationRequest,
    ImagePart,
    Role,
    SamplingParams,
    TextPart,
    TokenLogprob,
    final_chunk,
)
from avito_ai.engines.fake_json import example_json
from avito_ai.errors import ModelUnavailable, Overloaded, Timeout


class FakeEngine:
    def __init__(
        self,
        role: Role,
        *,
        token_delay: float = 0.0,
        load_delay: float = 0.0,
        max_concurrency: int = 64,
        fail_reason: str | None = None,
    ) -> None:
        self.role: Role = role
        self.token_delay = token_delay
        self.load_delay = load_delay
        self.max_concurrency = max_concurrency
        self.fail_reason = fail_reason
        self.active = 0
        self.cancelled = 0
        self._state = EngineState.LOADING

    async def start(self) -> None:
        await asyncio.sleep(self.load_delay)
        self._state = EngineState.FAILED if self.fail_reason else EngineState.READY

    async def stop(self) -> None:
        self._state = EngineState.STOPPED

    def status(self) -> EngineStatus:
        return EngineStatus(
            self.role,
            self._state,
            model_id=f"fake-{self.role}",
            device="cpu",
            dtype="float32",
            reason=self.fail_reason if self._state is EngineState.FAILED else None,
            engine="fake",
        )

    def capabilities(self) -> Capabilities:
        return Capabilities(
            constraints=frozenset({"json_schema", "json_object"}),
            logprobs=True,
            top_logprobs=20,
            tools=True,
            images=self.role == "avision",  # the fake stands in for each role's model
            completions=self.role != "avision",
        )

    @staticmethod
    def _logprobs(piece: str, sampling: SamplingParams) -> tuple[TokenLogprob, ...] | None:
        """A deterministic model is certain of each piece: log probability 0, and it is its
        own only alternative."""
        if not sampling.logprobs:
            return None
        raw = tuple(piece.encode())
        top = ((piece, 0.0, raw),) if sampling.top_logprobs else ()
        return (TokenLogprob(piece, 0.0, raw, top),)

    @staticmethod
    def answer_for(request: GenerationRequest) -> tuple[list[str], int]:
        """The words the fake answers with (under a JSON constraint: the schema's simplest
        instance, in pieces of 4 characters), and the input token count it reports."""
        if request.prompt is not None:
            text, images = request.prompt, 0
        else:
            user = [m for m in request.messages if m.role in ("user", "tool")]
            parts = user[-1].content if user else ()
            text = " ".join(p.text for p in parts if isinstance(p, TextPart))
            images = sum(isinstance(p, ImagePart) for p in parts)
        input_tokens = sum(len(m.content) for m in request.messages) + len(text.split())
        call = FakeEngine._tool_call(request, text)
        if call is not None:
            return [call[i : i + 4] for i in range(0, len(call), 4)], input_tokens
        constraint = request.constraint
        if constraint is not None and constraint.schema is not None:
            answer = example_json(constraint.schema)
            return [answer[i : i + 4] for i in range(0, len(answer), 4)], input_tokens
        # Split on spaces only: line breaks stay inside words, so Markdown survives the echo.
        words = ["Echo:", *(word for word in text.strip(" ").split(" ") if word)]
        if images:
            words.append(f"[{images} image(s)]")
        return words, input_tokens

    @staticmethod
    def _tool_call(request: GenerationRequest, text: str) -> str | None:
        """The call the fake makes, as Hermes text; None: it answers in words."""
        if not request.tools or request.tool_choice == "none":
            return None
        if request.messages and request.messages[-1].role == "tool":
            return None  # a result came back: the fake answers (echoes it)
        named = [t for t in request.tools if t.name == request.forced_tool]
        mentioned = [t for t in request.tools if t.name in text]
        chosen = named or mentioned or (request.tools if request.tool_choice == "required" else ())
        if not chosen:
            return None
        tool = chosen[0]
        call = {"name": tool.name, "arguments": json.loads(example_json(tool.parameters))}
        return f"<tool_call>\n{json.dumps(call, ensure_ascii=False)}\n</tool_call>"

    def prompt_tokens(self, request: GenerationRequest) -> int:
        return self.answer_for(request)[1]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if self._state is not EngineState.READY:
            raise ModelUnavailable(f"Model for {self.role} is {self._state.value}")
        if self.active >= self.max_concurrency:
            raise Overloaded("Server is overloaded, retry later")
        self.active += 1
        started = time.monotonic()
        words, input_tokens = self.answer_for(request)
        sampling = request.sampling
        produced: list[str] = []
        finish: str = "stop"
        first: float | None = None
        if sampling.ignore_eos:  # no end of its own: the words repeat up to max_tokens
            words = [words[i % len(words)] for i in range(sampling.max_tokens)]
            finish = "length"
        joiner = "" if request.constraint is not None or words[0].startswith("<") else " "
        try:
            if request.enable_thinking and request.prompt is None:
                yield Chunk("", reasoning=f"The user wrote {len(words) - 1} words.")
            for i, word in enumerate(words):
                if len(produced) >= sampling.max_tokens:
                    finish = "length"
                    break
                if request.deadline is not None and time.monotonic() > request.deadline:
                    raise Timeout("Request timed out")
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                piece = word if i == 0 else joiner + word
                joined = "".join(produced) + piece
                hit = next((s for s in sampling.stop if s in joined), None)
                if hit is not None:
                    keep = joined[: joined.index(hit)]
                    delta = keep[len("".join(produced)) :]
                    if delta:
                        yield Chunk(
                            delta,
                            generated_tokens=len(produced) + 1,
                            logprobs=self._logprobs(delta, sampling),
                        )
                    produced.append(delta)
                    finish = "stop"
                    break
                produced.append(piece)
                first = first or time.monotonic()
                yield Chunk(
                    piece, generated_tokens=len(produced), logprobs=self._logprobs(piece, sampling)
                )
            yield final_chunk(
                "length" if finish == "length" else "stop",
                input_tokens=input_tokens,
                generated_tokens=len(produced),
                created=request.created,
                scheduled=started,
                first_token=first,
                finished=time.monotonic(),
            )
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
