"""An OpenAI-compatible upstream that misbehaves on request: the last user message names
what it does wrong (see CASES; anything else is a good answer). It records what it was sent
(`GET /recorded`, `GET /traceparents`) and how it was started (`GET /argv`).

`python tests/hostile_upstream.py PORT`, or as a stand-in for vLLM started by the service:
`VLLM_COMMAND="python tests/hostile_upstream.py vllm"` (then `serve <model> --port N ...`)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def chunk(**choice: Any) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, **choice}]}


def good(text: str = "fine") -> list[Any]:
    return [
        chunk(delta={"role": "assistant", "content": text}, finish_reason=None),
        chunk(delta={}, finish_reason="stop"),
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}},
        "[DONE]",
    ]


def with_usage(usage: Any) -> list[Any]:
    events = good()
    events[2] = {"choices": [], "usage": usage}
    return events


# case -> the events of its stream (or a special answer, below)
CASES: dict[str, list[Any]] = {
    "good": good(),
    "negative_usage": with_usage({"prompt_tokens": 5, "completion_tokens": -3}),
    "string_usage": with_usage("lots"),
    "list_usage": with_usage([1, 2]),
    "huge_prompt_tokens": with_usage({"prompt_tokens": 10**15, "completion_tokens": 1}),
    "float_usage": with_usage({"prompt_tokens": 1e15, "completion_tokens": 1}),
    "choices_7": [{"choices": [7]}, *good()[1:]],
    "string_delta": [chunk(delta="hi", finish_reason=None), *good()[1:]],
    "list_finish": [good()[0], chunk(delta={}, finish_reason=["stop"]), *good()[2:]],
    "numeric_content": [chunk(delta={"content": 42}, finish_reason=None), *good()[1:]],
    "no_finish": [good()[0]],
    "no_done": good()[:-1],
    "late_garbage": [good()[0], {"choices": [7]}, *good()[1:]],
}


RECORDED: list[dict[str, Any]] = []
TRACEPARENTS: list[str | None] = []  # each request's W3C traceparent header
SERVED = "hostile"


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": SERVED, "object": "model"}]})


async def recorded(request: Request) -> Response:
    return JSONResponse(RECORDED)


async def traceparents(request: Request) -> Response:
    return JSONResponse(TRACEPARENTS)


async def argv(request: Request) -> Response:
    return JSONResponse(sys.argv)


async def health(request: Request) -> Response:
    return Response("ok")


def tool_call(name: str) -> list[Any]:
    """What vLLM with --tool-call-parser hermes --reasoning-parser qwen3 streams: the
    thinking as reasoning_content, then the call, its arguments in pieces."""

    def call(**fields: Any) -> dict[str, Any]:
        return chunk(delta={"tool_calls": [{"index": 0, **fields}]}, finish_reason=None)

    return [
        chunk(delta={"role": "assistant", "reasoning_content": "Weather: a tool."}),
        call(id="call_up", type="function", function={"name": name, "arguments": ""}),
        call(function={"arguments": '{"city": '}),
        call(function={"arguments": '"Paris"}'}),
        chunk(delta={}, finish_reason="tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12}},
        "[DONE]",
    ]


async def chat(request: Request) -> Response:
    body = await request.json()
    RECORDED.append(body)
    TRACEPARENTS.append(request.headers.get("traceparent"))
    messages = body.get("messages") or [{"content": body.get("prompt")}]
    last = messages[-1]["content"]
    case = last if isinstance(last, str) and last in (*CASES, "not_sse", "long_line") else "good"
    if body.get("tools") and messages[-1].get("role") != "tool":  # a call, parsed by vLLM
        name = body["tools"][0]["function"]["name"]
        CASES["tools"] = tool_call(name)
        case = "tools"
    if case == "not_sse":
        return JSONResponse({"choices": [{"message": {"content": "a whole answer"}}]})
    if case == "long_line":

        async def endless() -> AsyncIterator[bytes]:
            yield b"data: " + b"x" * (1 << 20)
            for _ in range(100):  # 100 MB more, never a newline
                yield b"x" * (1 << 20)

        return StreamingResponse(endless(), media_type="text/event-stream")

    async def events() -> AsyncIterator[bytes]:
        for event in CASES[case]:
            payload = event if isinstance(event, str) else json.dumps(event)
            yield f"data: {payload}\n\n".encode()

    return StreamingResponse(events(), media_type="text/event-stream")


app = Starlette(
    routes=[
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", chat, methods=["POST"]),
        Route("/recorded", recorded),
        Route("/traceparents", traceparents),
        Route("/argv", argv),
        Route("/health", health),
    ]
)

if __name__ == "__main__":
    if sys.argv[1] == "vllm":  # as `vllm serve <model> --port N --served-model-name S ...`
        port = int(sys.argv[sys.argv.index("--port") + 1])
        SERVED = sys.argv[sys.argv.index("--served-model-name") + 1]
    else:
        port = int(sys.argv[1])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
