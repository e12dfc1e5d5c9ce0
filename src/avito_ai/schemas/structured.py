"""`response_format`, as OpenAI's API reference defines it (chat and completions), and the
native API's two more kinds (a regex, an EBNF grammar)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr


class ResponseFormatText(BaseModel):
    type: Literal["text"]


class ResponseFormatJSONObject(BaseModel):
    """Any JSON object."""

    type: Literal["json_object"]


class JSONSchemaSpec(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: Annotated[StrictStr, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(
        None, alias="schema", description="a JSON Schema (Draft 2020-12) the answer matches"
    )
    strict: StrictBool | None = False


class ResponseFormatJSONSchema(BaseModel):
    """An answer valid against `json_schema.schema`."""

    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


class ResponseFormatRegex(BaseModel):
    """Native API only: an answer matching the regular expression."""

    type: Literal["regex"]
    regex: Annotated[StrictStr, Field(min_length=1, max_length=4096)]


class ResponseFormatGrammar(BaseModel):
    """Native API only: an answer in the language of an EBNF grammar (xgrammar's dialect,
    start rule `root`)."""

    type: Literal["grammar"]
    grammar: Annotated[StrictStr, Field(min_length=1, max_length=4096)]


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema,
    Field(discriminator="type"),
]
NativeResponseFormat = Annotated[
    ResponseFormatText
    | ResponseFormatJSONObject
    | ResponseFormatJSONSchema
    | ResponseFormatRegex
    | ResponseFormatGrammar,
    Field(discriminator="type"),
]
