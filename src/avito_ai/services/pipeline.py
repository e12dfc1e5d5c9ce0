"""One preparation for every dialect: a request → its ready engine and its checked
GenerationRequest.

Each dialect says what its client asked for in neutral terms (an `OutputSpec`: the answer's
format and the tools) and where its client wrote each of those fields (`FieldNames`, so an
error names the field as that dialect's client sent it), and gives a blocking `build` that
turns its conversation and sampling into a GenerationRequest. `prepare` then does, in this
one order for every dialect:

1. resolve the model name to a role (404 naming `model`);
2. wait for the role's engine to be ready (503): first, so a model that is down or
   loading never costs a schema compile or an image decode;
3. compile the output constraint (400 naming the format's field), cached per schema;
4. check the engine can honour it (400);
5. build the request off the event loop (it decodes images and validates the prompt,
   refusing what the engine does not take: images, a raw prompt);
6. check the tools and the tool_choice (400 naming `tools...` / `tool_choice`);
7. apply tool_choice: a required call becomes the answer's grammar on engines that do
   not apply it themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from avito_ai.engines.base import (
    Capabilities,
    Engine,
    GenerationRequest,
    OutputConstraint,
    Role,
    capabilities_of,
)
from avito_ai.services.constraints import check_supported, constraint_for
from avito_ai.services.images import off_loop
from avito_ai.services.models import resolve_role
from avito_ai.services.output import FieldNames, OutputSpec
from avito_ai.services.state import ServiceState
from avito_ai.services.tools import apply_tool_choice, check_tools


def with_output(
    request: GenerationRequest, output: OutputSpec, constraint: OutputConstraint | None = None
) -> GenerationRequest:
    """`request` with what `output` asks: its constraint (compiled) and its tools."""
    return dataclasses.replace(
        request,
        constraint=constraint,
        tools=output.tools,
        tool_choice=output.tool_choice,
        forced_tool=output.forced_tool,
        parallel_tool_calls=output.parallel_tool_calls,
    )


@dataclass(frozen=True)
class Prepared:
    """A request ready to run: its engine (ready) and its generation (checked)."""

    role: Role
    engine: Engine
    request: GenerationRequest


async def prepare(
    state: ServiceState,
    model: str,
    output: OutputSpec,
    names: FieldNames,
    build: Callable[[Role, Capabilities], GenerationRequest],
) -> Prepared:
    """The request's engine and generation, checked in the order this module gives.
    `build(role, capabilities)` is blocking (images decoded, prompt validated): it runs
    off the loop, and learns from the engine's capabilities what it takes (images, a raw
    prompt)."""
    role = resolve_role(model, state)
    engine = await state.generation.ready_engine(role)
    constraint = await constraint_for(output, names)
    check_supported(engine, constraint, names.format)
    request = with_output(await off_loop(build, role, capabilities_of(engine)), output, constraint)
    await check_tools(request, state.settings, names)
    request = await apply_tool_choice(engine, request, names)
    return Prepared(role, engine, request)
