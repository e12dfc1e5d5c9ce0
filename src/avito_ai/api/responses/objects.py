"""The Responses API's answer: the response object and its output items, field for field
as the official SDK's types (openai.types.responses) read them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from avito_ai.api.responses.protocol import (
    ReasoningConfig,
    ResponseFunctionTool,
    TextConfig,
    ToolChoiceFunction,
)

ItemStatus = Literal["in_progress", "completed", "incomplete"]
Status = Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]


class LogprobTopLogprob(BaseModel):
    token: str
    bytes: list[int]
    logprob: float


class Logprob(BaseModel):
    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[LogprobTopLogprob]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)  # no citations: always []
    logprobs: list[Logprob] = Field(default_factory=list)  # with include logprobs


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class OutputReasoning(BaseModel):
    """The model's thinking, as text (no summaries, nothing encrypted)."""

    id: str
    type: Literal["reasoning"] = "reasoning"
    summary: list[Any] = Field(default_factory=list)
    content: list[ReasoningText]
    status: ItemStatus


class OutputFunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str  # JSON text
    status: ItemStatus


OutputItem = OutputReasoning | OutputMessage | OutputFunctionCall


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    # Not counted apart from the answer's tokens (output_tokens holds both).
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(BaseModel):
    code: str
    message: str


class Response(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Status
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    temperature: float | None
    top_p: float | None
    tool_choice: Literal["auto", "none", "required"] | ToolChoiceFunction
    tools: list[ResponseFunctionTool]
    text: TextConfig
    reasoning: ReasoningConfig
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    top_logprobs: int = 0
    truncation: Literal["disabled"] = "disabled"
    background: bool = False
    store: bool = False
    previous_response_id: None = None
    service_tier: str = "default"
    usage: ResponseUsage | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
