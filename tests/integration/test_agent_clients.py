"""Third-party agent libraries against the embedded model (SmolLM2-135M on OpenVINO, the
session's shared server): instructor (streamed partial extraction over chat tool calls,
and its RESPONSES_TOOLS mode), the OpenAI Agents SDK (Responses and chat completions
models, whole and streamed) and pydantic-ai (a function tool, then structured output).

The model is too small to choose tools well on its own; every call here is forced (a
named tool, or `required` with one tool), which constrained decoding makes a valid call.
The tests check what a user of each library sees: its run completes and gives back a
valid object or the tool's result, never a parse error."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from pydantic import BaseModel, Field

from tests.servers import ServerProcess, openai_client

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "Sell my used red bicycle for 15000 roubles."}]


class Listing(BaseModel):
    """An item put up for sale."""

    title: str = Field(max_length=40)
    price_rub: int = Field(ge=0, le=1_000_000)


def async_client(srv: ServerProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)


# ---------------------------------------------------------------- instructor


def test_instructor_streams_a_partial_object_to_a_valid_one(
    embedded_server: ServerProcess,
) -> None:
    """Mode.TOOLS with create_partial: a named tool call streamed, read as it grows."""
    import instructor

    client = instructor.from_openai(openai_client(embedded_server), mode=instructor.Mode.TOOLS)
    partials = list(
        client.chat.completions.create_partial(
            model="avibe", response_model=Listing, messages=ASK, max_tokens=120, temperature=0
        )
    )
    assert len(partials) > 3  # it grew as the arguments came
    final = Listing.model_validate(partials[-1].model_dump())
    assert final.title and final.price_rub >= 0


def test_instructor_responses_tools_mode_gets_its_object(embedded_server: ServerProcess) -> None:
    """RESPONSES_TOOLS sends a named tool and `text.format` together: the call answers."""
    import instructor

    client = instructor.from_openai(
        openai_client(embedded_server), mode=instructor.Mode.RESPONSES_TOOLS
    )
    listing = client.responses.create(
        model="avibe", response_model=Listing, input=ASK, max_output_tokens=120, temperature=0
    )
    assert isinstance(listing, Listing) and listing.title


# ---------------------------------------------------------------- OpenAI Agents SDK


def _agents_run(srv: ServerProcess, kind: str) -> tuple[Any, Any, list[str]]:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # (its exporter would post traces to OpenAI)
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        asked.append(city)
        return f"Sunny, 21 C in {city}"

    client = async_client(srv)
    model: Any = (
        OpenAIResponsesModel(model="avibe", openai_client=client)
        if kind == "responses"
        else OpenAIChatCompletionsModel(model="avibe", openai_client=client)
    )
    agent = Agent(
        name="weather",
        instructions="Answer with the weather tool.",
        tools=[get_weather],
        model=model,
        model_settings=ModelSettings(tool_choice="get_weather", max_tokens=60, temperature=0),
        tool_use_behavior="stop_on_first_tool",  # the tool's result is the answer
    )

    async def both() -> tuple[Any, Any]:
        whole = await Runner.run(agent, "What is the weather in Paris?")
        streamed = Runner.run_streamed(agent, "What is the weather in Paris?")
        async for _ in streamed.stream_events():
            pass
        return whole.final_output, streamed.final_output

    whole, streamed = asyncio.run(both())
    return whole, streamed, asked


@pytest.mark.parametrize("kind", ["responses", "chat"])
def test_the_agents_sdk_runs_a_tool_whole_and_streamed(
    embedded_server: ServerProcess, kind: str
) -> None:
    whole, streamed, asked = _agents_run(embedded_server, kind)
    assert len(asked) == 2 and all(isinstance(city, str) for city in asked)
    assert whole == f"Sunny, 21 C in {asked[0]}"
    assert streamed == f"Sunny, 21 C in {asked[1]}"


# ---------------------------------------------------------------- pydantic-ai


def test_pydantic_ai_calls_a_tool_then_gives_structured_output(
    embedded_server: ServerProcess,
) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    @dataclass
    class PriceFirst(AbstractCapability[None]):
        """The documented way to force a tool on the first step: that tool first, then
        the output tool (tool_choice "none" leaves only the output)."""

        def get_model_settings(self) -> Any:
            return lambda ctx: {"tool_choice": ["market_price"] if ctx.run_step == 1 else "none"}

    provider = OpenAIProvider(base_url=embedded_server.url + "/v1", api_key="unused")
    agent = Agent(
        OpenAIChatModel("avibe", provider=provider),
        output_type=Listing,
        capabilities=[PriceFirst()],
        model_settings={"max_tokens": 80, "temperature": 0},
    )
    priced: list[str] = []

    @agent.tool_plain
    def market_price(item: str) -> int:
        """The market price of an item, in roubles."""
        priced.append(item)
        return 15000

    async def both() -> tuple[Listing, Listing]:
        whole = await agent.run("Sell my used red bicycle at the market price.")
        async with agent.run_stream("Sell my used red bicycle at the market price.") as run:
            streamed = await run.get_output()
        return whole.output, streamed

    whole, streamed = asyncio.run(both())
    assert isinstance(whole, Listing) and isinstance(streamed, Listing)
    assert len(priced) == 2  # the tool ran in each run, before the answer
