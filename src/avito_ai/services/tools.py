"""Tool calls: the model's Hermes-format calls parsed out of its text, and the grammar that
makes a call certain when the client requires one.

A-Vibe (Qwen3) calls a tool by writing `<tool_call>{"name": ..., "arguments": {...}}
</tool_call>`; the embedded model is asked for the same format (engines/prompts.py). The
parser runs over the answer as it streams: text outside calls is content (whitespace
around calls dropped); once a call's name is known (a known tool, written before its
arguments' object) the call begins and its arguments are released as the model writes
them, to the end of their object (OpenAI's and vLLM's streams: one entry per call per
chunk). A call in another form (arguments as a JSON string, or before the name) is read
whole at its closing tag; one that does not parse there (unknown name, broken JSON) stays
content, as written. A call cut by max_tokens is a call with the arguments written so far
(its tool known, or certain by tool_choice); call markup is never released as content. vLLM and
SGLang parse calls themselves; the remote backend writes theirs back in this format, so
one parser serves every engine.

`tool_choice` `required` or a named function on an engine that cannot apply it itself
(OpenVINO, transformers) becomes a grammar: the answer must be one call (or several, when
parallel calls are allowed) whose arguments match the function's JSON Schema.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from avito_ai.config import Settings
from avito_ai.engines.base import (
    Engine,
    GenerationRequest,
    OutputConstraint,
    ToolCall,
    ToolCallPiece,
    ToolSpec,
    capabilities_of,
    new_call_id,
)
from avito_ai.engines.grammar import rename_rule
from avito_ai.engines.prompts import estimate_prompt_tokens
from avito_ai.engines.textstream import partial_suffix_len
from avito_ai.errors import ValidationFailed
from avito_ai.services.constraints import (
    check_supported,
    checked_schema,
    compiled,
    json_schema_problem,
)
from avito_ai.services.output import CHAT_FIELDS, FieldNames

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
MAX_TOOLS = 128
MAX_PARALLEL = 8  # calls a required choice may make at once
# A call's head, its name known and its arguments' object begun: they stream from there.
_HEAD = re.compile(
    r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)'
)
# A head cut short: the name as far as it came, and its closing quote if it came.
_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)("?)')
_HEAD_LIMIT = 4096  # a call's head longer than this: the call is read whole, at its end


def _decoded(raw: str, tools: dict[str, ToolSpec]) -> tuple[str, str]:
    """(name, arguments JSON) of one whole call's text; ValueError when it is not a call of
    a known tool. The arguments as the model wrote them when it wrote an object."""
    call = json.loads(raw.strip())
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
        return name, arguments
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
            return name, raw[start:end]
        at = raw.find(json.dumps(key), at + 1)
    return name, json.dumps(arguments, ensure_ascii=False)


def partial_object(arguments: str) -> dict[str, Any]:
    """What a call's arguments cut short (max_tokens) hold so far, as an object: the JSON
    text closed where it stops (an unfinished member dropped); {} when nothing holds."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
        return value if isinstance(value, dict) else {}
    except ValueError:
        pass
    # The longest prefix that closes into JSON: each prefix's open strings and brackets.
    stack: list[str] = []
    in_string = escape = False
    closings: list[tuple[int, str]] = []  # (prefix length, what closes it), ends of values
    for i, ch in enumerate(arguments):
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
                closings.append((i + 1, "".join(reversed(stack))))
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
            closings.append((i + 1, "".join(reversed(stack))))
        elif ch in "}]":
            if stack:
                stack.pop()
            closings.append((i + 1, "".join(reversed(stack))))
        elif ch not in " \t\r\n,:":
            closings.append((i + 1, "".join(reversed(stack))))
    if in_string:  # cut inside a string: closed where it stops
        closings.append((len(arguments) - escape, '"' + "".join(reversed(stack))))
    for length, closing in reversed(closings[-64:]):
        head = arguments[:length].rstrip().rstrip(",").rstrip()
        try:
            value = json.loads(head + closing)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


@dataclass
class _Open:
    """The call whose arguments are streaming: its place, its name, its JSON so far."""

    index: int
    id: str
    name: str
    dropped: bool  # a further call where one was asked for: read, never released
    arguments: list[str] = field(default_factory=list)
    depth: int = 0
    in_string: bool = False
    escape: bool = False
    closed: bool = False  # the arguments object ended; what follows to </tool_call> is read
    tail: str = ""  # after the object: text up to the closing tag


@dataclass
class ToolCallParser:
    """One choice's text → content deltas and tool calls, as it streams.

    A call's arguments are released as the model writes them, once its name is known (a
    known tool, written before its arguments' object). `forced`: the tool the answer must
    call (a named choice, or the only tool of a required one): a call cut short before
    its name is complete is still that tool's call. `required`: the answer must be calls,
    so even a cut opening tag is a call's beginning, never text."""

    tools: dict[str, ToolSpec]
    parallel: bool = True
    forced: str | None = None
    required: bool = False  # the answer is calls (tool_choice required): no text at all
    calls: list[ToolCall] = field(default_factory=list)
    _held: str = ""  # text that may begin a call (or its end), or whitespace before one
    _raw: str | None = None  # inside a call whose name is not known yet: its text
    _head: bool = True  # the call's head may still be read as it comes
    _open: _Open | None = None  # inside a call whose arguments stream
    _after_call: bool = False  # whitespace right after a call is dropped
    _gap: str = ""  # the whitespace before the call being read (kept if it is no call)

    def feed(self, text: str) -> tuple[str, list[ToolCallPiece]]:
        """Content released by `text`, and pieces of calls (one per call at most)."""
        content: list[str] = []
        pieces: list[ToolCallPiece] = []
        buf, self._held = self._held + text, ""
        while buf:
            if self._open is not None:
                buf = self._stream(buf, pieces)
                continue
            if self._raw is not None:
                buf = self._read_head(buf, content, pieces)
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
            self._raw, self._head = "", True
            buf = buf[start + len(CALL_OPEN) :]
        return "".join(content), merged_pieces(pieces)

    def _read_head(self, buf: str, content: list[str], pieces: list[ToolCallPiece]) -> str:
        """Inside a call, its name not known yet: its arguments stream once it is (a known
        tool); a call in any other form is read to its end and decided whole."""
        assert self._raw is not None
        raw = self._raw + buf
        if self._head:
            match = _HEAD.match(raw)
            if match is not None:
                name = json.loads(match.group(1))
                if isinstance(name, str) and name in self.tools:
                    self._raw = None
                    self._begin(name, pieces)
                    return raw[match.end() :]
                self._head = False
            elif len(raw) > _HEAD_LIMIT:
                self._head = False
        end = raw.find(CALL_CLOSE)
        if end < 0:
            self._raw = raw
            return ""
        self._raw = None
        released, completed = self._whole(raw[:end])
        content.append(released)
        pieces += completed
        return raw[end + len(CALL_CLOSE) :]

    def _begin(self, name: str, pieces: list[ToolCallPiece]) -> None:
        dropped = bool(self.calls) and not self.parallel  # one call asked for
        index = len(self.calls)
        self._open = _Open(index, new_call_id(), name, dropped)
        if not dropped:
            pieces.append(ToolCallPiece(index, self._open.id, name, ""))

    def _stream(self, buf: str, pieces: list[ToolCallPiece]) -> str:
        """The open call's arguments as they come, to the end of their object; then the
        rest of the call, to its closing tag (a closing tag outside a string ends a call
        whose object never closed)."""
        call = self._open
        assert call is not None
        if call.closed:
            tail = call.tail + buf
            end = tail.find(CALL_CLOSE)
            if end < 0:
                call.tail = tail[-len(CALL_CLOSE) :]
                return ""
            self._end()
            return tail[end + len(CALL_CLOSE) :]
        i, n = 0, len(buf)
        rest = ""
        while i < n:
            ch = buf[i]
            if call.in_string:
                if call.escape:
                    call.escape = False
                elif ch == "\\":
                    call.escape = True
                elif ch == '"':
                    call.in_string = False
            elif ch == '"':
                call.in_string = True
            elif ch in "{[":
                call.depth += 1
            elif ch in "}]":
                call.depth -= 1
                if call.depth <= 0:
                    call.closed = True
                    i += 1
                    rest = buf[i:]
                    break
            elif ch == "<":
                if buf.startswith(CALL_CLOSE, i):  # the call ended, its object unclosed
                    self._release(buf[:i], pieces)
                    self._end()
                    return buf[i + len(CALL_CLOSE) :]
                if CALL_CLOSE.startswith(buf[i:]):  # maybe the closing tag: wait
                    self._release(buf[:i], pieces)
                    self._held = buf[i:]
                    return ""
            i += 1
        self._release(buf[:i], pieces)
        return rest

    def _release(self, text: str, pieces: list[ToolCallPiece]) -> None:
        call = self._open
        assert call is not None
        if text:
            call.arguments.append(text)
            if not call.dropped:
                pieces.append(ToolCallPiece(call.index, None, None, text))

    def _end(self) -> None:
        """The open call is complete (or cut short): it joins the calls."""
        call, self._open = self._open, None
        assert call is not None
        self._after_call = True
        if not call.dropped:
            self.calls.append(ToolCall(call.id, call.name, "".join(call.arguments)))

    def _whole(self, raw: str) -> tuple[str, list[ToolCallPiece]]:
        """A call read whole (not in the streamed form): a call, or its text as written."""
        try:
            name, arguments = _decoded(raw, self.tools)
        except ValueError:
            return self._gap + CALL_OPEN + raw + CALL_CLOSE, []  # no call: the text as written
        self._after_call = True
        if self.calls and not self.parallel:
            return "", []  # one call asked for: the model's further calls are dropped
        call = ToolCall(new_call_id(), name, arguments)
        self.calls.append(call)
        return "", [ToolCallPiece(len(self.calls) - 1, call.id, name, arguments)]

    def finish(self) -> tuple[str, list[ToolCallPiece]]:
        """What is still held when the answer ends. A call cut short (max_tokens) is a call
        with the arguments written so far when its tool is known; no call markup is ever
        released as content."""
        held, self._held = self._held, ""
        pieces: list[ToolCallPiece] = []
        if self._open is not None:
            if not self._open.closed:
                self._release(held, pieces)  # (text that might have begun the closing tag)
            self._end()
            return "", merged_pieces(pieces)
        if self._raw is not None:
            raw, self._raw = self._raw, None
            name, arguments = self._cut_call(raw)
            if name is not None and not (self.calls and not self.parallel):
                call = ToolCall(new_call_id(), name, arguments)
                self.calls.append(call)
                pieces.append(ToolCallPiece(len(self.calls) - 1, call.id, name, arguments))
            return "", pieces
        if self.required and held.strip() and CALL_OPEN.startswith(held.strip()):
            self._raw = ""  # cut inside the opening tag of a call the answer must make
            return self.finish()
        return ("" if self.calls and not held.strip() else held), pieces

    def _cut_call(self, raw: str) -> tuple[str | None, str]:
        """The tool and arguments so far of a call cut before its arguments streamed: a
        known tool's name written whole, else the forced tool, else the only tool whose
        name begins as written; (None, "") when none is certain."""
        match = _NAME.match(raw)
        written = None
        if match is not None:
            try:
                written = json.loads('"' + match.group(1) + '"')
            except ValueError:
                written = None
        if match is not None and match.group(2) and written in self.tools:
            return written, ""  # (its arguments' object had not begun: they would stream)
        if self.forced is not None:
            return self.forced, ""
        if written is not None and match is not None and not match.group(2):
            begun = [name for name in self.tools if name.startswith(written)]
            if len(begun) == 1:
                return begun[0], ""
        return None, ""


def merged_pieces(pieces: list[ToolCallPiece]) -> list[ToolCallPiece]:
    """One piece per call: a call's name and the arguments that came with it together, as
    the streaming APIs send one entry per call in a chunk."""
    out: list[ToolCallPiece] = []
    for piece in pieces:
        last = out[-1] if out else None
        if last is not None and last.index == piece.index and piece.id is None:
            out[-1] = ToolCallPiece(
                last.index, last.id, last.name, last.arguments + piece.arguments
            )
        else:
            out.append(piece)
    return out


def parse_calls(
    text: str, tools: list[ToolSpec], parallel: bool = True
) -> tuple[str, list[ToolCall]]:
    """A whole answer's content and calls (the streaming parser, fed once)."""
    parser = ToolCallParser({t.name: t for t in tools}, parallel)
    content, _ = parser.feed(text)
    return content + parser.finish()[0], parser.calls


# --------------------------------------------------------------------- checking, grammar


async def check_tools(
    request: GenerationRequest, settings: Settings, names: FieldNames = CHAT_FIELDS
) -> None:
    """The request's tools and choice make sense, or ValidationFailed naming the field.
    The schemas are walked off the event loop, once per distinct schema."""
    param = names.tools
    if len(request.tools) > MAX_TOOLS:
        raise ValidationFailed(f"At most {MAX_TOOLS} tools per request", param=param)
    if request.tools:  # (engines count the rendered prompt exactly; this is a floor)
        least = estimate_prompt_tokens(request, settings.avision.max_pixels)
        if least > settings.avibe.max_prompt_tokens:
            raise ValidationFailed(
                f"The tools and messages are at least {least} tokens; the limit is "
                f"{settings.avibe.max_prompt_tokens} (MAX_PROMPT_TOKENS)",
                param=param,
            )
    seen: set[str] = set()
    for i, tool in enumerate(request.tools):
        if tool.name in seen:
            raise ValidationFailed(f"Two tools are named {tool.name!r}", param=f"{param}.{i}")
        seen.add(tool.name)
        problem = await json_schema_problem(tool.parameters)
        if problem is not None:
            raise ValidationFailed(
                f"The parameters of {tool.name!r} are not a JSON Schema: {problem}",
                param=f"{param}.{i}",
            )
    if request.forced_tool is not None and request.forced_tool not in seen:
        raise ValidationFailed(
            f"tool_choice names {request.forced_tool!r}, which is not in tools",
            param=names.tool_choice,
        )
    if request.tool_choice == "required" and not request.tools:
        raise ValidationFailed(
            "tool_choice requires a call, but there are no tools", param=names.tool_choice
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


async def tool_grammar(
    request: GenerationRequest, names: FieldNames = CHAT_FIELDS
) -> OutputConstraint:
    """The answer as one call of the named tool, or calls of any of them (several when
    parallel calls are allowed: up to one per tool), arguments valid against each tool's
    schema."""
    chosen = [t for t in request.tools if request.forced_tool in (None, t.name)]
    for i, tool in enumerate(request.tools):
        if tool in chosen:
            await checked_schema(tool.parameters, names.tool_parameters.format(i))
    schemas = [_call_schema(t) for t in chosen]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    compiled_call = await compiled("json_schema", json.dumps(schema), names.tools)
    call = rename_rule(compiled_call, "root", "call")
    one = f'"{CALL_OPEN}\\n" call "\\n{CALL_CLOSE}"'
    # Parallel calls: up to one per tool (MAX_PARALLEL at most). Unbounded, a small model
    # repeated its call until max_tokens.
    more = ""
    if request.parallel_tool_calls and request.forced_tool is None:
        for _ in range(min(len(chosen), MAX_PARALLEL) - 1):
            more = f' ("\\n" {one}{more})?'
    grammar = f"root ::= {one}{more}\n{call}"
    return OutputConstraint("grammar", grammar, pattern=grammar, name="tool_call")


async def apply_tool_choice(
    engine: Engine, request: GenerationRequest, names: FieldNames = CHAT_FIELDS
) -> GenerationRequest:
    """The request with a required (or named) call made certain: engines that apply
    tool_choice themselves (vLLM, SGLang, remote upstreams, the fake) get it as it is; the
    others a grammar. A response format sent with it is set aside: the answer is the call."""
    if not request.tools or request.tool_choice != "required":
        return request
    # The call answers: a response format sent with it (instructor's tool modes send both)
    # has no text to shape, and would contend with the call for the answer.
    if capabilities_of(engine).tools:
        return dataclasses.replace(request, constraint=None)
    grammar = await tool_grammar(request, names)
    check_supported(engine, grammar, names.tool_choice)
    return dataclasses.replace(request, constraint=grammar)
