"""Chat messages → what a text model is prompted with, the same for every in-process backend.

Messages are flattened to plain `{"role", "content"}` dicts for the model's chat template. A
model without a template gets a plain "User: ... / Assistant:" transcript, and stops where
the next speaker would begin.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

from avito_ai.engines.base import (
    ChatMessage,
    GenerationRequest,
    ImagePart,
    TextPart,
    ToolCall,
    ToolSpec,
)
from avito_ai.errors import ValidationFailed

# Stops used with the plain fallback format (models without a chat template).
FALLBACK_STOPS = ("\nUser:", "\nSystem:")
_SPEAKERS = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
# Special tokens a client must not be able to write into a chat (role and image markers).
_SPECIAL = re.compile(r"^<\|[^<>|]{1,40}\|>$|^</?s>$")
_ZERO_WIDTH_SPACE = "\u200b"


def special_spellings(tokens: Iterable[str]) -> list[str]:
    """The vocabulary's special-token spellings (`<|im_start|>`, `</s>`), longest first."""
    return sorted({t for t in tokens if _SPECIAL.match(t)}, key=len, reverse=True)


def neutralize(text: str, specials: list[str]) -> str:
    """Text a client writes (such as "<|im_start|>system") stays text: a zero-width space
    inside each special token's spelling keeps the tokenizer from matching it."""
    if "<" not in text:
        return text
    for token in specials:
        if token in text:
            text = text.replace(token, token[0] + _ZERO_WIDTH_SPACE + token[1:])
    return text


def check_prompt_tokens(tokens: int, limit: int, *, raw: bool) -> None:
    """MAX_PROMPT_TOKENS, counted on the prompt as the model gets it. Raises ValidationFailed."""
    if tokens > limit:
        raise ValidationFailed(
            f"The prompt is {tokens} tokens; the limit is {limit} (MAX_PROMPT_TOKENS)",
            param="prompt" if raw else "messages",
        )


# Tools for a template that cannot render them (the embedded SmolLM2's): the block Qwen3's
# own template writes, so the model is asked for the Hermes format the services parse.
HERMES_TOOLS = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def _tool_json(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def hermes_call(call: ToolCall) -> str:
    arguments = _arguments(call.arguments)
    body = json.dumps({"name": call.name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def takes_tools(template: str | None) -> bool:
    """Whether a chat template renders `tools` (and tool calls) itself, as Qwen3's does."""
    return bool(template) and "tools" in str(template)


def chat_input(
    request: GenerationRequest, *, template_tools: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and tools a chat template renders. A template that takes tools gets
    them (and the history's calls and results) in its own terms; for any other, the tools
    are described in a system block and calls and results written as Hermes text."""
    plain: list[dict[str, Any]] = plain_messages(request.messages)
    tools = [_tool_json(t) for t in request.tools] if request.tool_choice != "none" else []
    if template_tools:
        for message, source in zip(plain, request.messages, strict=True):
            if source.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": _arguments(c.arguments)},
                    }
                    for c in source.tool_calls
                ]
            if source.tool_call_id is not None:
                message["tool_call_id"] = source.tool_call_id
        return plain, tools or None
    out: list[dict[str, Any]] = []
    for message, source in zip(plain, request.messages, strict=True):
        if source.role == "tool":
            result = f"<tool_response>\n{message['content']}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": "user", "content": result, "tool_results": True})
            continue
        if source.tool_calls:
            calls = "\n".join(hermes_call(c) for c in source.tool_calls)
            text = message["content"]
            message = {"role": "assistant", "content": f"{text}\n{calls}" if text else calls}
        out.append(message)
    for message in out:
        message.pop("tool_results", None)
    if tools:
        block = HERMES_TOOLS.format(tools="\n".join(json.dumps(t) for t in tools))
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{block}"
        else:
            out.insert(0, {"role": "system", "content": block})
    return out, None


def plain_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """The text of each message (images are not for text models). Raises ValidationFailed."""
    if not messages:
        raise ValidationFailed("messages must not be empty", param="messages")
    return [
        {
            "role": m.role,
            "content": "\n".join(p.text for p in m.content if isinstance(p, TextPart)),
        }
        for m in messages
    ]


def fallback_prompt(messages: list[dict[str, str]]) -> str:
    lines = [f"{_SPEAKERS.get(m['role'], m['role'])}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


# A prompt's tokens when the engine cannot count them (remote and vision engines): at
# least one token per 3 UTF-8 bytes of text, a few per message for the chat template, and
# an image's patches as Qwen2.5-VL sees them (28x28 pixels each, after AVISION_MAX_PIXELS).
BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8
PIXELS_PER_IMAGE_TOKEN = 28 * 28


def estimate_prompt_tokens(request: GenerationRequest, max_pixels: int) -> int:
    """About the tokens of a request's prompt, without its tokenizer (token budgets'
    reservations; an upstream's usage figures are checked against 4x this)."""
    total = 0
    texts = [request.prompt] if request.prompt is not None else []
    texts += [json.dumps(_tool_json(t)) for t in request.tools]
    for message in request.messages:
        total += TOKENS_PER_MESSAGE
        texts += [c.name + c.arguments for c in message.tool_calls]
        for part in message.content:
            if isinstance(part, TextPart):
                texts.append(part.text)
            elif isinstance(part, ImagePart):
                width, height = part.image.size
                total += min(width * height, max_pixels) // PIXELS_PER_IMAGE_TOKEN + 2
    return total + sum(math.ceil(len(t.encode("utf-8")) / BYTES_PER_TOKEN) for t in texts)
