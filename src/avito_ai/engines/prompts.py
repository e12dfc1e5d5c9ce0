"""Chat messages → what a text model is prompted with, the same for every in-process backend.

Messages are flattened to plain `{"role", "content"}` dicts for the model's chat template. A
model without a template gets a plain "User: ... / Assistant:" transcript, and stops where
the next speaker would begin.
"""

from __future__ import annotations

from avito_ai.engines.base import ChatMessage, TextPart
from avito_ai.errors import ValidationFailed

# Stops used with the plain fallback format (models without a chat template).
FALLBACK_STOPS = ("\nUser:", "\nSystem:")
_SPEAKERS = {"system": "System", "user": "User", "assistant": "Assistant"}


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
