"""Bounds and names every chat dialect's wire format shares (OpenAI's chat, Responses),
checked while the body is parsed, before any work: a 12 MB body of 600,000 empty messages
once held the event loop for 19 s."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictStr

MAX_MESSAGES = 256
MAX_PARTS = 32
MAX_TOOLS = 128
# OpenAI's rule for function names.
FunctionName = Annotated[StrictStr, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
