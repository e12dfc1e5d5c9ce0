"""Anthropic's Messages API against a running server, through the official `anthropic` SDK:
the embedded model (OpenVINO) behind a chat template that opens `<think>` when thinking is
on, and a tiny random-weight Qwen2.5-VL as A-Vision, in one server for the module.

The 135M model is weak and the vision model random: a required call is valid because
constrained decoding could produce nothing else; everything else checks shapes and
agreement (streamed and whole, counted and used), never words."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import pytest

from tests.ggufs import with_chat_template
from tests.images import encoded
from tests.servers import ServerProcess, dev_server, serving
from tests.tiny_vision_models import build_tiny_qwen2_5_vl

pytestmark = pytest.mark.integration

# SmolLM2's turns; thinking on opens a `<think>` block in the prompt (as DeepSeek-R1's
# template does), so what the model says is thinking until it closes the block.
THINK_ON_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor -%}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking %}\n<think>\n{% else %}\n{% endif %}"
    "{%- endif %}"
)
ENV = {
    "RATE_LIMIT_PER_MINUTE": "100000",
    "RATE_LIMIT_PER_HOUR": "100000",
    "MAX_TOKENS_AVIBE": "400",
    "MAX_TOKENS_AVISION": "16",
}
WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def blocks(message: Any) -> list[dict[str, Any]]:
    """A message's content as data (a streamed one's blocks are the SDK's Parsed* kind)."""
    return [b.model_dump(exclude={"parsed_output"}, exclude_none=True) for b in message.content]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("anthropic")
    model = with_chat_template(root / "think-on.gguf", THINK_ON_TEMPLATE)
    vision = build_tiny_qwen2_5_vl(root / "qwen2_5_vl")
    env = {**ENV, "AVIBE_MODEL": str(model), "AVISION_MODEL": str(vision)}
    with serving(dev_server(env, root / "server.log"), ready_within=180) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)


def test_a_tool_loop_with_a_required_call_then_auto(client: anthropic.Anthropic) -> None:
    asked: dict[str, Any] = {
        "model": "avibe",
        "max_tokens": 120,
        "extra_body": {"temperature": 0},  # greedy (not in the 2.x signature)
        "tools": [WEATHER],
    }
    first = client.messages.create(**asked, messages=ASK, tool_choice={"type": "any"})
    assert first.stop_reason == "tool_use", first
    call = first.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather"
    jsonschema.validate(call.input, WEATHER["input_schema"])
    with client.messages.stream(**asked, messages=ASK, tool_choice={"type": "any"}) as stream:
        kinds = {e.type for e in stream}
        streamed = stream.get_final_message()
    assert "input_json" in kinds and streamed.stop_reason == "tool_use"
    assert [(b.type, b.input) for b in streamed.content if b.type == "tool_use"] == [
        ("tool_use", call.input)  # greedy: the same call
    ]
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "18 C and sunny"}
    history = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [result]},
    ]
    second = client.messages.create(**asked, messages=history, tool_choice={"type": "auto"})
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert second.content and 0 < second.usage.output_tokens <= 120
    with client.messages.stream(**asked, messages=history) as stream:  # auto by default
        text = "".join(stream.text_stream)
        again = stream.get_final_message()
    assert blocks(again) == blocks(second)  # greedy: streamed as answered
    assert text == "".join(b.text for b in again.content if b.type == "text")
    counted = client.messages.count_tokens(model="avibe", tools=[WEATHER], messages=history)
    assert counted.input_tokens == second.usage.input_tokens


def test_thinking_is_its_own_block_whole_and_streamed(client: anthropic.Anthropic) -> None:
    """The template opens `<think>` when thinking is on; the small model does not close it,
    so what it says is thinking, and the answer text (empty) stays apart from it."""
    asked: dict[str, Any] = {
        "model": "avibe",
        "max_tokens": 24,
        "extra_body": {"temperature": 0},  # greedy (not in the 2.x signature)
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    whole = client.messages.create(**asked)
    assert [b.type for b in whole.content] == ["thinking", "text"], whole
    thinking, text = whole.content
    assert thinking.type == "thinking" and thinking.thinking.strip()
    assert text.type == "text" and thinking.thinking not in text.text
    assert whole.stop_reason in ("end_turn", "max_tokens") and whole.usage.output_tokens > 3
    with client.messages.stream(**asked) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert kinds.count("thinking") > 3  # token by token
    assert blocks(final) == blocks(whole) and final.usage == whole.usage
    off = client.messages.create(**{**asked, "thinking": {"type": "disabled"}})
    assert [b.type for b in off.content] == ["text"] and off.content[0].text  # type: ignore[union-attr]
    assert off.usage.input_tokens < whole.usage.input_tokens  # no "<think>" in its prompt
    counted = client.messages.count_tokens(
        model="avibe", messages=asked["messages"], thinking=asked["thinking"]
    )
    assert counted.input_tokens == whole.usage.input_tokens


def test_an_image_block_on_the_tiny_vision_model(client: anthropic.Anthropic) -> None:
    data = base64.b64encode(encoded(size=(96, 64))).decode()
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "text", "text": "What is in the picture?"},
    ]
    asked: dict[str, Any] = {
        "model": "avision",
        "max_tokens": 8,
        "extra_body": {"temperature": 0},  # greedy (not in the 2.x signature)
        "messages": [{"role": "user", "content": content}],
    }
    whole = client.messages.create(**asked)
    assert [b.type for b in whole.content] == ["text"]
    assert whole.stop_reason in ("end_turn", "max_tokens")
    assert 0 < whole.usage.output_tokens <= 8 and whole.usage.input_tokens > 10
    with client.messages.stream(**asked) as stream:
        final = stream.get_final_message()
    assert blocks(final) == blocks(whole) and final.usage == whole.usage
    # The vision engine cannot count before it runs: an estimate (docs/anthropic.md).
    estimate = client.messages.count_tokens(model="avision", messages=asked["messages"])
    assert estimate.input_tokens > 0
    with pytest.raises(anthropic.BadRequestError, match="avision"):
        client.messages.create(**{**asked, "model": "avibe"})
