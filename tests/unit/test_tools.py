"""Tool calls out of the model's text (every split of a stream), the prompt for templates
without tools, the grammar that makes a required call certain, and the history checks."""

from __future__ import annotations

import json

import pytest

from avito_ai.config import Settings
from avito_ai.engines.base import (
    ChatMessage,
    Chunk,
    GenerationRequest,
    SamplingParams,
    TextPart,
    ToolCall,
    ToolSpec,
    final_chunk,
)
from avito_ai.engines.prompts import chat_input, takes_tools
from avito_ai.engines.remote.events import tool_call_deltas
from avito_ai.errors import ValidationFailed
from avito_ai.services.answers import AnswerCollector
from avito_ai.services.tools import (
    ToolCallParser,
    check_tools,
    parse_calls,
    partial_object,
    tool_grammar,
)
from tests.conftest import isolated_settings

WEATHER = ToolSpec(
    "get_weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "The weather in a city",
)
TIME = ToolSpec("get_time", {"type": "object", "properties": {}})
TOOLS = {t.name: t for t in (WEATHER, TIME)}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TWO = (
    f'Let me look.\n\n{CALL}\n<tool_call>\n{{"name": "get_time", "arguments": {{}}}}\n</tool_call>'
)


def streamed(
    text: str, cut: int, parallel: bool = True, forced: str | None = None
) -> tuple[str, dict[int, str], list]:
    """The text fed in two pieces split at `cut`: content, each call's arguments joined."""
    parser = ToolCallParser(TOOLS, parallel, forced)
    content, arguments = "", {}
    for piece in (text[:cut], text[cut:], None):
        released, pieces = parser.feed(piece) if piece is not None else parser.finish()
        content += released
        assert len({p.index for p in pieces}) == len(pieces)  # one piece per call a feed
        for p in pieces:
            arguments[p.index] = arguments.get(p.index, "") + p.arguments
    return content, arguments, parser.calls


def test_calls_come_out_of_the_text_whatever_the_split() -> None:
    content, calls = parse_calls(TWO, [WEATHER, TIME])
    assert content == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    assert calls[0].id.startswith("call_") and calls[0].id != calls[1].id
    for cut in range(len(TWO) + 1):
        text, arguments, found = streamed(TWO, cut)
        assert text == content, cut
        assert arguments == {0: '{"city": "Paris"}', 1: "{}"}, cut
        assert [c.arguments for c in found] == [c.arguments for c in calls]


def test_the_arguments_stream_as_the_model_writes_them_once_the_name_is_known() -> None:
    parser = ToolCallParser(TOOLS)
    tokens = ["<tool_call>\n", '{"name": "get_weather", ', '"arguments": {"ci', 'ty": "Ro']
    released = [parser.feed(token)[1] for token in [*tokens, 'me"}}', "\n</tool_call>"]]
    assert released[:2] == [[], []]  # the name is not known before its arguments begin
    first = released[2]
    assert len(first) == 1  # the name and the first arguments in one piece
    assert (first[0].id, first[0].name) == (parser.calls[0].id, "get_weather")
    assert [p.arguments for ps in released[2:] for p in ps] == ['{"ci', 'ty": "Ro', 'me"}']
    assert released[5] == []  # the call's own closing brace and tag are not arguments


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "delete_all", "arguments": {}}\n</tool_call>',  # unknown tool
        '<tool_call>\n{"name": "get_weather", "arguments": [1]}\n</tool_call>',  # not an object
        '<tool_call>\n{"arguments": {}, "name": "nope"}\n</tool_call>',  # name last, unknown
        "a <tool_ca",  # only the start of a tag
    ],
)
def test_what_is_not_a_call_stays_content_as_written(text: str) -> None:
    for cut in range(len(text) + 1):
        content, arguments, calls = streamed(text, cut)
        assert (content, arguments, calls) == (text, {}, []), cut


@pytest.mark.parametrize(
    ("text", "forced", "name", "written"),
    [
        ('Sure <tool_call>\n{"name": "get_weather", "arguments": {"city": "Ro', None,
         "get_weather", '{"city": "Ro'),
        ('Sure <tool_call>\n{"name": "get_weather", "argu', None, "get_weather", ""),
        ('Sure <tool_call>\n{"name": "get_wea', None, "get_weather", ""),  # one tool begins so
        ('Sure <tool_call>\n{"name": "get_', "get_time", "get_time", ""),  # the forced one
        ("Sure <tool_call>\n", "get_time", "get_time", ""),
        ('Sure <tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>',
         None, "get_weather", '{"city": \n'),  # closed before its object: what was written
    ],
)  # fmt: skip
def test_a_call_cut_short_is_a_call_with_what_was_written_and_no_markup(
    text: str, forced: str | None, name: str, written: str
) -> None:
    for cut in range(len(text) + 1):
        content, arguments, calls = streamed(text, cut, forced=forced)
        assert content == "Sure", cut
        assert [(c.name, c.arguments) for c in calls] == [(name, written)], cut
        assert arguments == {0: written}, cut


def test_a_call_cut_before_its_tool_is_certain_is_dropped_not_shown() -> None:
    for text in ('<tool_call>\n{"name": "get_', "<tool_call>\n{", "<tool_call>"):
        assert streamed(text, len(text) // 2)[:2] == ("", {})
    # A required answer cut inside its first opening tag: the forced call, or nothing.
    for forced, calls in ((None, []), ("get_time", [("get_time", "")])):
        parser = ToolCallParser(TOOLS, forced=forced, required=True)
        assert parser.feed("<tool_")[0] == ""
        content, _ = parser.finish()
        assert (content, [(c.name, c.arguments) for c in parser.calls]) == ("", calls)
    assert partial_object('{"city": "Ro') == {"city": "Ro"}
    assert partial_object('{"a": [1, {"b": tr') == {"a": [1, {}]}
    assert partial_object('{"a": 1, "b') == {"a": 1}
    assert partial_object("") == {} and partial_object("[1]") == {}


def test_arguments_written_as_a_json_string_and_the_parameters_key() -> None:
    quoted = (
        '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}</tool_call>'
    )
    _, calls = parse_calls(quoted, [WEATHER])
    assert json.loads(calls[0].arguments) == {"city": "Oslo"}
    _, calls = parse_calls('<tool_call>{"name": "get_time", "parameters": {}}</tool_call>', [TIME])
    assert calls[0].arguments == "{}"


def test_one_call_when_parallel_calls_are_off() -> None:
    content, arguments, calls = streamed(TWO, 20, parallel=False)
    assert content == "Let me look." and [c.name for c in calls] == ["get_weather"]
    assert arguments == {0: '{"city": "Paris"}'}


def test_an_upstreams_parsed_calls_pass_through_as_they_are() -> None:
    """An engine that parses calls itself (an upstream's parser) hands its pieces over:
    they reach the client as sent and make the answer's calls, with no re-parse."""
    pieces = tool_call_deltas(
        [
            {"index": 0, "id": "call_up", "function": {"name": "get_weather", "arguments": ""}},
            {"index": 0, "function": {"arguments": '{"city": '}},
            {"index": 0, "function": {"arguments": '"Paris"}'}},
            {"index": 1, "function": {"name": "get_time"}},
        ]
    )
    request = _request(tools=(WEATHER, TIME))
    collector = AnswerCollector(request, parses_tools=True)
    deltas, _ = collector.add(Chunk("", tool_calls=pieces))
    final = final_chunk(
        "stop",
        input_tokens=1,
        generated_tokens=2,
        created=0,
        scheduled=0,
        first_token=0,
        finished=1,
    )
    more, answer = collector.add(final)
    assert next(p for d in deltas + more for p in d.tool_calls).id == "call_up"
    assert answer is not None and answer.text == "" and answer.finish_reason == "tool_calls"
    assert [(c.name, json.loads(c.arguments)) for c in answer.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),  # no arguments sent: an empty object
    ]


def _request(**fields: object) -> GenerationRequest:
    messages = fields.pop("messages", [ChatMessage.text("user", "Weather in Paris?")])
    return GenerationRequest("r", SamplingParams(max_tokens=8), messages=messages, **fields)  # type: ignore[arg-type]


def test_a_template_without_tools_gets_them_described_and_the_history_as_text() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    request = _request(
        tools=(WEATHER,),
        messages=[
            ChatMessage.text("system", "Be brief."),
            ChatMessage.text("user", "Weather in Paris?"),
            ChatMessage("assistant", (), tool_calls=(call,)),
            ChatMessage("tool", (TextPart("sunny"),), tool_call_id="call_1"),
        ],
    )
    messages, tools = chat_input(request, template_tools=False)
    assert tools is None
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("Be brief.")
    assert '"name": "get_weather"' in messages[0]["content"] and "<tools>" in messages[0]["content"]
    assert messages[2] == {"role": "assistant", "content": CALL}
    assert messages[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    # A template that renders tools gets them, and the history, in its own terms.
    messages, tools = chat_input(request, template_tools=True)
    assert tools == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER.parameters,
                "description": WEATHER.description,
            },
        }
    ]
    assert messages[2]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    assert messages[3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    # tool_choice none: the history, but no tools offered.
    assert (
        chat_input(_request(tools=(WEATHER,), tool_choice="none"), template_tools=True)[1] is None
    )
    assert takes_tools("{% if tools %}...{% endif %}") and not takes_tools("{{ messages }}")


async def test_the_grammar_makes_a_call_of_a_named_or_any_tool() -> None:
    named = await tool_grammar(
        _request(tools=(WEATHER, TIME), tool_choice="required", forced_tool="get_time")
    )
    assert (
        named.kind == "grammar"
        and "get_time" in named.grammar
        and "get_weather" not in named.grammar
    )
    assert "?" not in named.grammar.split("\n")[0]  # exactly one call
    both = await tool_grammar(_request(tools=(WEATHER, TIME), tool_choice="required"))
    assert "get_time" in both.grammar and "get_weather" in both.grammar
    assert both.grammar.split("\n")[0].count("?") == 1  # up to one call per tool
    single = await tool_grammar(
        _request(tools=(WEATHER, TIME), tool_choice="required", parallel_tool_calls=False)
    )
    assert "?" not in single.grammar.split("\n")[0]


async def test_bad_tools_and_history_are_refused_naming_the_field() -> None:
    settings: Settings = isolated_settings(max_prompt_tokens=200)
    cases = [
        (_request(tools=(WEATHER, WEATHER)), "tools.1"),
        (_request(tools=(ToolSpec("f", {"type": "nope"}),)), "tools.0"),
        (_request(tools=(WEATHER,), forced_tool="other", tool_choice="required"), "tool_choice"),
        (_request(tool_choice="required"), "tool_choice"),
        (_request(tools=tuple(ToolSpec(f"t{i}", {}) for i in range(129))), "tools"),
        (_request(tools=(ToolSpec("big", {"description": "x" * 2000}),)), "tools"),
        (
            _request(
                messages=[
                    ChatMessage.text("user", "hi"),
                    ChatMessage("tool", (TextPart("r"),), tool_call_id="x"),
                ]
            ),
            "messages.1.tool_call_id",
        ),
    ]
    for request, param in cases:
        with pytest.raises(ValidationFailed) as info:
            await check_tools(request, settings)
        assert info.value.param == param, info.value.message
