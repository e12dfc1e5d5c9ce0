"""What a client asked of the answer, in no dialect's terms (`OutputSpec`), and where its
dialect wrote each part of it (`FieldNames`): what services/pipeline.py prepares from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from avito_ai.engines.base import ToolChoice, ToolSpec

OutputFormat = Literal["text", "json_object", "json_schema", "regex", "grammar"]


@dataclass(frozen=True)
class OutputSpec:
    """What the client asked of the answer, in no dialect's terms: its format (a JSON
    Schema, any JSON object, a regex or an EBNF grammar; text by default) and the tools it
    may call, with the choice among them."""

    format: OutputFormat = "text"
    schema: Any = None  # json_schema: the schema (None: any JSON value)
    name: str = "answer"
    strict: bool = False
    description: str | None = None
    pattern: str | None = None  # regex, grammar: the source as given
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    forced_tool: str | None = None  # tool_choice naming one function
    parallel_tool_calls: bool = True


@dataclass(frozen=True)
class FieldNames:
    """Where a dialect's client wrote each part of its OutputSpec: the names its errors
    carry as `param`. `tool_parameters` takes the tool's index."""

    format: str = "response_format"
    schema: str = "response_format.json_schema.schema"
    regex: str = "response_format.regex"
    grammar: str = "response_format.grammar"
    tools: str = "tools"
    tool_parameters: str = "tools.{}.function.parameters"
    tool_choice: str = "tool_choice"


CHAT_FIELDS = FieldNames()


def with_tools(
    output: OutputSpec,
    tools: tuple[ToolSpec, ...],
    choice: tuple[ToolChoice, str | None],
    parallel: bool,
) -> OutputSpec:
    """`output` with the tools a client offered and its choice among them (`choice`: ours,
    and the function it names)."""
    return dataclasses.replace(
        output,
        tools=tools,
        tool_choice=choice[0],
        forced_tool=choice[1],
        parallel_tool_calls=parallel,
    )
