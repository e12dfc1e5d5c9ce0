"""Tool calls: the model's Hermes-format calls parsed out of its text, and the grammar that
makes a call certain when the client requires one.

A-Vibe (Qwen3) calls a tool by writing `<tool_call>{"name": ..., "arguments": {...}}
</tool_call>`; the embedded model is asked for the same format (engines/prompts.py). The
parser runs over the answer as it streams: text outside calls is content (whitespace
around calls dropped), a call that parses (a known name, arguments a JSON object) becomes
a ToolCall, its arguments released in the pieces the model wrote them in; anything else
(unknown name, broken JSON, a call cut by max_tokens) stays content, as written. vLLM and
SGLang parse calls themselves; the remote backend writes theirs back in this format, so
one parser serves every engine.

`tool_choice` `required` or a named function on an engine that cannot apply it itself
(OpenVINO, transformers) becomes a grammar: the answer must be one call (or several, when
parallel calls are allowed) whose arguments match the function's JSON Schema.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from avito_ai.config import Settings
from avito_ai.engines.base import (
    DeclaresCapabilities,
    Engine,
    GenerationRequest,
    OutputConstraint,
    ToolCall,
    ToolCallPiece,
    ToolSpec,
)
from avito_ai.engines.grammar import rename_rule
from avito_ai.engines.prompts import estimate_prompt_tokens
from avito_ai.engines.textstream import partial_suffix_len
from avito_ai.errors import ValidationFailed
from avito_ai.services.constraints import check_schema, check_supported, compiled

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
MAX_TOOLS = 128
MAX_PARALLEL = 8  # calls a required choice may make at once


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _decoded(raw: str, tools: dict[str, ToolSpec]) -> tuple[str, str, tuple[int, int] | None]:
    """(name, arguments JSON, where the arguments lie in `raw` when written as an object)
    of one call's text; ValueError when it is not a call of a known tool."""
    body = raw.strip()
    call = json.loads(body)
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ValueError("not a call")
    name = call["name"]
    if name not in tools:
        raise ValueError(f"unknown tool {name}")
    key = "arguments" if "arguments" in call else "parameters"
    arguments = call.get(key, {})
    if isinstance(arguments, str):  # written as a JSON string holding the object
        if not isinstance(json.loads(arguments), dict):
            raise ValueError("arguments must be an object")
        return name, arguments, None
    if not isinstance(arguments, dict):
        raise ValueError("arguments must be an object")
    # The object as the model wrote it: find it after its key, decode exactly its span.
    decoder = json.JSONDecoder()
    at = raw.find(json.dumps(key))
    while at >= 0:
        colon = raw.find(":", at + len(key) + 2)
        start = colon + 1
        while start < len(raw) and raw[start] in " \t\r\n":
            start += 1
        try:
            value, end = decoder.raw_decode(raw, start)
        except ValueError:
            value, end = None, start
        if value == arguments:
            return name, raw[start:end], (start, end)
        at = raw.find(json.dumps(key), at + 1)
    return name, json.dumps(arguments, ensure_ascii=False), None


@dataclass
class ToolCallParser:
    """One choice's text → content deltas and tool calls, as it streams."""

    tools: dict[str, ToolSpec]
    parallel: bool = True
    calls: list[ToolCall] = field(default_factory=list)
    _held: str = ""  # text that may begin a call, or whitespace before one
    _raw: list[str] | None = None  # inside a call: its text, in the deltas it came in
    _after_call: bool = False  # whitespace right after a call is dropped
    _gap: str = ""  # the whitespace before the call being read (kept if it is no call)

    def feed(self, text: str) -> tuple[str, list[ToolCallPiece]]:
        """Content released by `text`, and pieces of the calls it completed."""
        content: list[str] = []
        pieces: list[ToolCallPiece] = []
        buf, self._held = self._held + text, ""
        while buf:
            if self._raw is not None:
                self._raw.append(buf)
                joined = "".join(self._raw)
                end = joined.find(CALL_CLOSE)
                if end < 0:
                    break
                deltas, offset = [], 0
                for delta in self._raw:  # the deltas cut at the closing tag
                    if offset < end:
                        deltas.append(delta[: end - offset])
                    offset += len(delta)
                self._raw = deltas
                released, completed = self._close()
                content.append(released)
                pieces += completed
                buf = joined[end + len(CALL_CLOSE) :]
                continue
            if self._after_call:
                buf = buf.lstrip()
                if not buf:
                    break
                self._after_call = False
            start = buf.find(CALL_OPEN)
            if start < 0:
                partial = partial_suffix_len(buf, (CALL_OPEN,))
                head = buf[: len(buf) - partial]
                keep = partial + len(head) - len(head.rstrip())
                content.append(buf[: len(buf) - keep])
                self._held = buf[len(buf) - keep :]
                break
            before = buf[:start]
            content.append(before.rstrip())
            self._gap = before[len(before.rstrip()) :]
            self._raw = []
            buf = buf[start + len(CALL_OPEN) :]
        return "".join(content), pieces

    def _close(self) -> tuple[str, list[ToolCallPiece]]:
        assert self._raw is not None
        deltas, self._raw = [d for d in self._raw if d], None
        raw = "".join(deltas)
        try:
            name, arguments, span = _decoded(raw, self.tools)
        except ValueError:
            return self._gap + CALL_OPEN + raw + CALL_CLOSE, []  # no call: the text as written
        self._after_call = True
        if self.calls and not self.parallel:
            return "", []  # one call asked for: the model's further calls are dropped
        index = len(self.calls)
        call = ToolCall(new_call_id(), name, arguments)
        self.calls.append(call)
        pieces = [ToolCallPiece(index, call.id, name, "")]
        if span is None:
            pieces.append(ToolCallPiece(index, None, None, arguments))
            return "", pieces
        offset = 0
        for delta in deltas:  # the arguments in the pieces the model wrote them in
            lo, hi = max(span[0], offset), min(span[1], offset + len(delta))
            if lo < hi:
                pieces.append(ToolCallPiece(index, None, None, raw[lo:hi]))
            offset += len(delta)
        return "", pieces

    def finish(self) -> str:
        """The content still held when the answer ends (a call cut short stays text)."""
        held, self._held = self._held, ""
        if self._raw is not None:
            raw, self._raw = "".join(self._raw), None
            return held + self._gap + CALL_OPEN + raw
        return "" if self.calls and not held.strip() else held


def parse_calls(
    text: str, tools: list[ToolSpec], parallel: bool = True
) -> tuple[str, list[ToolCall]]:
    """A whole answer's content and calls (the streaming parser, fed once)."""
    parser = ToolCallParser({t.name: t for t in tools}, parallel)
    content, _ = parser.feed(text)
    return content + parser.finish(), parser.calls


# --------------------------------------------------------------------- checking, grammar


def check_tools(request: GenerationRequest, settings: Settings, param: str = "tools") -> None:
    """The request's tools and choice make sense, or ValidationFailed naming the field."""
    if len(request.tools) > MAX_TOOLS:
        raise ValidationFailed(f"At most {MAX_TOOLS} tools per request", param=param)
    if request.tools:  # (engines count the rendered prompt exactly; this is a floor)
        least = estimate_prompt_tokens(request, settings.avision_max_pixels)
        if least > settings.max_prompt_tokens:
            raise ValidationFailed(
                f"The tools and messages are at least {least} tokens; the limit is "
                f"{settings.max_prompt_tokens} (MAX_PROMPT_TOKENS)",
                param=param,
            )
    names: set[str] = set()
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    for i, tool in enumerate(request.tools):
        if tool.name in names:
            raise ValidationFailed(f"Two tools are named {tool.name!r}", param=f"{param}.{i}")
        names.add(tool.name)
        try:
            Draft202012Validator.check_schema(tool.parameters)
        except SchemaError as exc:
            raise ValidationFailed(
                f"The parameters of {tool.name!r} are not a JSON Schema: {exc.message}",
                param=f"{param}.{i}",
            ) from None
    if request.forced_tool is not None and request.forced_tool not in names:
        raise ValidationFailed(
            f"tool_choice names {request.forced_tool!r}, which is not in tools",
            param="tool_choice",
        )
    if request.tool_choice == "required" and not request.tools:
        raise ValidationFailed(
            "tool_choice requires a call, but there are no tools", param="tool_choice"
        )
    called = {c.id for m in request.messages for c in m.tool_calls}
    for i, message in enumerate(request.messages):
        if message.role == "tool" and message.tool_call_id not in called:
            raise ValidationFailed(
                f"The tool result's tool_call_id {message.tool_call_id!r} answers no call "
                "of an earlier assistant message",
                param=f"messages.{i}.tool_call_id",
            )


def _call_schema(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


async def tool_grammar(request: GenerationRequest, param: str = "tools") -> OutputConstraint:
    """The answer as one call of the named tool, or calls of any of them (several when
    parallel calls are allowed: up to one per tool), arguments valid against each tool's
    schema."""
    chosen = [t for t in request.tools if request.forced_tool in (None, t.name)]
    for i, tool in enumerate(request.tools):
        if tool in chosen:
            check_schema(tool.parameters, f"{param}.{i}.function.parameters")
    schemas = [_call_schema(t) for t in chosen]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    call = rename_rule(await compiled("json_schema", json.dumps(schema), param), "root", "call")
    one = f'"{CALL_OPEN}\\n" call "\\n{CALL_CLOSE}"'
    # Parallel calls: up to one per tool (MAX_PARALLEL at most). Unbounded, a small model
    # repeated its call until max_tokens.
    more = ""
    if request.parallel_tool_calls and request.forced_tool is None:
        for _ in range(min(len(chosen), MAX_PARALLEL) - 1):
            more = f' ("\\n" {one}{more})?'
    grammar = f"root ::= {one}{more}\n{call}"
    return OutputConstraint("grammar", grammar, pattern=grammar, name="tool_call")


async def apply_tool_choice(engine: Engine, request: GenerationRequest) -> None:
    """Make a required (or named) call certain: engines that apply tool_choice themselves
    (vLLM, SGLang, remote upstreams, the fake) get it as it is; the others a grammar."""
    if not request.tools or request.tool_choice != "required":
        return
    caps = engine.capabilities() if isinstance(engine, DeclaresCapabilities) else None
    if caps is not None and caps.tools:
        return
    if request.constraint is not None:
        raise ValidationFailed(
            "A required tool call and a response format cannot both hold the answer",
            param="tool_choice",
        )
    request.constraint = await tool_grammar(request)
    check_supported(engine, request.constraint, "tool_choice")
