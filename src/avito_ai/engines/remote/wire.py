"""The request an OpenAI-compatible upstream gets from the remote backend
(`upstream_payload`: chat or completions, images as JPEG data URIs, tools, constraints in
the upstream's own fields); events.py reads what it answers.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any, Literal

from avito_ai.engines.base import (
    ALL_CONSTRAINTS,
    Capabilities,
    ConstraintKind,
    GenerationRequest,
    ImagePart,
    OutputConstraint,
    TextPart,
)
from avito_ai.engines.images import fit_image


def api_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def image_data_uri(part: ImagePart, max_pixels: int = 1003520) -> str:
    """The image as the upstream gets it: at most `max_pixels` (AVISION_MAX_PIXELS, what
    the model would see anyway) and JPEG, not a full-size PNG (a 24 MP photo was a 39 MB
    request body and seconds of encoding)."""
    image = fit_image(part.image, max_pixels)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


Flavour = Literal["openai", "vllm", "sglang"]
# Constraints each kind of upstream takes: any OpenAI-compatible server takes
# response_format; regexes and grammars travel in vLLM's and SGLang's own fields.
CONSTRAINTS_OF: dict[Flavour, frozenset[ConstraintKind]] = {
    "openai": frozenset({"json_schema", "json_object"}),
    "vllm": ALL_CONSTRAINTS,
    "sglang": ALL_CONSTRAINTS,
}


# Requests an upstream works on at once: such servers batch far more than an in-process
# engine (vLLM's default max_num_seqs).
UPSTREAM_CAPACITY = 256


def upstream_capabilities(flavour: Flavour, *, images: bool) -> Capabilities:
    """What an OpenAI-compatible server of this kind honours: n > 1 travels as n (one
    prefill makes the choices), tools and tool_choice pass through to its parsers, whose
    parsed calls come back as they are (events.py). `images`: it serves a vision model
    (a chat model: no raw-prompt completions)."""
    return Capabilities(
        constraints=CONSTRAINTS_OF[flavour],
        logprobs=True,
        top_logprobs=20,
        choices=True,
        tools=True,
        images=images,
        completions=not images,
        capacity=UPSTREAM_CAPACITY,
        parses_tools=True,
    )


def constraint_fields(constraint: OutputConstraint, flavour: Flavour) -> dict[str, Any]:
    """The request fields that carry a constraint, in the upstream's own terms."""
    if constraint.kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if constraint.kind == "json_schema":
        spec: dict[str, Any] = {
            "name": constraint.name,
            "schema": constraint.schema,
            "strict": constraint.strict,
        }
        if constraint.description:
            spec["description"] = constraint.description
        return {"response_format": {"type": "json_schema", "json_schema": spec}}
    if flavour == "vllm":
        return {"structured_outputs": {constraint.kind: constraint.pattern}}
    return {"regex" if constraint.kind == "regex" else "ebnf": constraint.pattern}


def upstream_payload(
    request: GenerationRequest,
    model: str,
    max_pixels: int = 1003520,
    priority: bool = False,
    flavour: Flavour = "openai",
) -> tuple[str, dict[str, Any]]:
    """The OpenAI request (path, JSON body) for one of our GenerationRequests. `priority`:
    the upstream schedules by priority (vLLM's `priority` field, lower first); `flavour`:
    which server it is, for the fields beyond OpenAI's (constraints)."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if s.top_k:
        body["top_k"] = s.top_k
    if s.repetition_penalty != 1.0:
        body["repetition_penalty"] = s.repetition_penalty
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    if s.stop:
        body["stop"] = list(s.stop)
    if s.seed is not None:
        body["seed"] = s.seed
    if s.ignore_eos:
        body["ignore_eos"] = True
    if s.n > 1:
        body["n"] = s.n  # vLLM, SGLang and this service understand it
    if priority:
        body["priority"] = request.priority
    if request.constraint is not None:
        body.update(constraint_fields(request.constraint, flavour))
    chat = request.prompt is None
    if s.logprobs:  # chat: a switch and a count; completions: the count alone
        body.update(
            {"logprobs": True, "top_logprobs": s.top_logprobs}
            if chat
            else {"logprobs": s.top_logprobs}
        )
    if request.prompt is not None:
        body["prompt"] = request.prompt
        return "/completions", body
    messages = []
    for message in request.messages:
        if all(isinstance(p, TextPart) for p in message.content):
            content: Any = "".join(p.text for p in message.content if isinstance(p, TextPart))
        else:
            content = [
                {"type": "text", "text": p.text}
                if isinstance(p, TextPart)
                else {"type": "image_url", "image_url": {"url": image_data_uri(p, max_pixels)}}
                for p in message.content
            ]
        entry: dict[str, Any] = {"role": message.role, "content": content}
        if message.tool_calls:
            entry["content"] = content or None
            entry["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in message.tool_calls
            ]
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        messages.append(entry)
    body["messages"] = messages
    if request.tools:  # vLLM and SGLang run their Qwen3 tool parsers (docs/engines.md)
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "parameters": t.parameters,
                    **({"description": t.description} if t.description else {}),
                },
            }
            for t in request.tools
        ]
        body["tool_choice"] = (
            {"type": "function", "function": {"name": request.forced_tool}}
            if request.forced_tool is not None
            else request.tool_choice
        )
        if not request.parallel_tool_calls:
            body["parallel_tool_calls"] = False
    # Qwen3's chat template thinks by default on vLLM/SGLang; ours is off unless asked.
    body["chat_template_kwargs"] = {"enable_thinking": request.enable_thinking}
    return "/chat/completions", body


def error_kind(error: str | None) -> str:
    """An upstream's last error without its addresses ("ConnectError", "HTTP 503")."""
    if not error:
        return "unhealthy"
    return error.split(":", 1)[0]


def error_message(response_body: str | bytes) -> str:
    try:
        data = json.loads(response_body)
    except ValueError:
        head = response_body[:300]
        return head if isinstance(head, str) else head.decode(errors="replace")
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(data.get("message") or error)
