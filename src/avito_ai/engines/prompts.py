"""Chat messages → what a text model is prompted with, the same for every in-process backend.

Messages are flattened to plain `{"role", "content"}` dicts for the model's chat template. A
model without a template gets a plain "User: ... / Assistant:" transcript, and stops where
the next speaker would begin.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from avito_ai.engines.base import ChatMessage, GenerationRequest, ImagePart, TextPart
from avito_ai.errors import ValidationFailed

# Stops used with the plain fallback format (models without a chat template).
FALLBACK_STOPS = ("\nUser:", "\nSystem:")
_SPEAKERS = {"system": "System", "user": "User", "assistant": "Assistant"}
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
    for message in request.messages:
        total += TOKENS_PER_MESSAGE
        for part in message.content:
            if isinstance(part, TextPart):
                texts.append(part.text)
            elif isinstance(part, ImagePart):
                width, height = part.image.size
                total += min(width * height, max_pixels) // PIXELS_PER_IMAGE_TOKEN + 2
    return total + sum(math.ceil(len(t.encode("utf-8")) / BYTES_PER_TOKEN) for t in texts)
