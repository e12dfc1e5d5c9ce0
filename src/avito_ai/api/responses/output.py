"""An Answer → the response object: its output items (reasoning, message, function calls),
status, usage, and the request's settings echoed as OpenAI echoes them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from avito_ai.api.responses.objects import (
    IncompleteDetails,
    Logprob,
    LogprobTopLogprob,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputReasoning,
    OutputText,
    ReasoningText,
    Response,
    ResponseError,
    ResponseUsage,
    Status,
)
from avito_ai.api.responses.protocol import (
    FormatText,
    ReasoningConfig,
    ResponseFunctionTool,
    ResponsesRequest,
    TextConfig,
)
from avito_ai.engines.base import GenerationRequest, TokenLogprob
from avito_ai.services.answers import Answer


def status_of(finish_reason: str) -> Status:
    if finish_reason == "length":
        return "incomplete"
    return "cancelled" if finish_reason == "cancelled" else "completed"


def usage(answer: Answer) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=answer.input_tokens,
        output_tokens=answer.generated_tokens,
        total_tokens=answer.input_tokens + answer.generated_tokens,
    )


def logprobs(tokens: Sequence[TokenLogprob] | None) -> list[Logprob]:
    """Each token of the text with its bytes and alternatives (`include` asked for them)."""
    return [
        Logprob(
            token=t.token,
            bytes=list(t.bytes),
            logprob=t.logprob,
            top_logprobs=[
                LogprobTopLogprob(token=token, bytes=list(raw), logprob=logprob)
                for token, logprob, raw in t.top
            ],
        )
        for t in tokens or ()
    ]


@dataclass
class ResponseFrame:
    """What every response object of one request shares: its id and creation time, the
    ids of its items, and the request's settings echoed back."""

    request_id: str
    body: ResponsesRequest
    generation: GenerationRequest
    created_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def _hex(self) -> str:
        return self.request_id.replace("-", "")[:32]

    @property
    def id(self) -> str:
        """OpenAI-style id, derived from the request id so logs and answers line up."""
        return "resp_" + self._hex

    def item_id(self, prefix: str, index: int) -> str:
        """The id of output item `index` (`rs`, `msg` or `fc`): the same in every event."""
        return f"{prefix}_{self._hex}{index:02d}"

    def response(
        self,
        status: Status,
        output: list[OutputItem],
        answer: Answer | None = None,
        error: ResponseError | None = None,
    ) -> Response:
        body = self.body
        text = body.text or TextConfig()
        tools = [t for t in body.tools or () if isinstance(t, ResponseFunctionTool)]
        return Response(
            id=self.id,
            created_at=self.created_at,
            status=status,
            completed_at=int(time.time()) if status == "completed" else None,
            error=error,
            incomplete_details=(
                IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None
            ),
            instructions=body.instructions,
            metadata=body.metadata or {},
            model=body.model,
            output=output,
            parallel_tool_calls=self.generation.parallel_tool_calls,
            temperature=self.generation.sampling.temperature,
            top_p=self.generation.sampling.top_p,
            tool_choice=body.tool_choice or "auto",
            tools=tools,
            text=TextConfig(
                format=text.format or FormatText(type="text"),
                verbosity=text.verbosity or "medium",
            ),
            reasoning=body.reasoning or ReasoningConfig(),
            max_output_tokens=body.max_output_tokens,
            max_tool_calls=body.max_tool_calls,
            top_logprobs=body.top_logprobs or 0,
            usage=usage(answer) if answer is not None else None,
            user=body.user,
            safety_identifier=body.safety_identifier,
            prompt_cache_key=body.prompt_cache_key,
        )

    def whole(self, answer: Answer) -> Response:
        """The whole answer's response: reasoning, then the message, then the calls."""
        items: list[OutputItem] = []
        if answer.reasoning:
            items.append(
                OutputReasoning(
                    id=self.item_id("rs", len(items)),
                    content=[ReasoningText(text=answer.reasoning)],
                    status="completed",
                )
            )
        if answer.text or not (answer.tool_calls or answer.reasoning):
            text = OutputText(text=answer.text, logprobs=logprobs(answer.logprobs))
            items.append(
                OutputMessage(
                    id=self.item_id("msg", len(items)), status="completed", content=[text]
                )
            )
        for call in answer.tool_calls:
            items.append(
                OutputFunctionCall(
                    id=self.item_id("fc", len(items)),
                    call_id=call.id,
                    name=call.name,
                    arguments=call.arguments,
                    status="completed",
                )
            )
        status = status_of(answer.finish_reason)
        if status == "incomplete":
            items[-1].status = "incomplete"  # what max_output_tokens cut
        return self.response(status, items, answer)
