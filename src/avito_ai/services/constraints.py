"""Structured output: a wire `response_format` → an `OutputConstraint` every engine honours.

The constraint is compiled here, once per distinct schema (cached), to a compact grammar in
xgrammar's EBNF: the answer grammar the in-process engines enforce token by token
(OpenVINO GenAI through `StructuredOutputConfig(grammar=...)`, transformers through an
xgrammar matcher). Compact: xgrammar's JSON grammar with `any_whitespace=False` allows no
free whitespace (separators are exactly `", "` and `": "`), so a weak model cannot fill its
`max_tokens` with spaces, which OpenVINO's own `json_schema` grammar let it do.

Checked before anything runs (400 `validation_error` naming the field): the schema is a
JSON Schema (Draft 2020-12), at most 64 kB and 32 levels deep, and uses only keywords the
grammar compiler honours (`not`, `if`, `uniqueItems`... it would silently ignore, so an
answer could break them); regexes and grammars parse. Compiling runs off the event loop,
bounded in time.

xgrammar is imported without torch (engines/xgrammar_import.py says why).
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cachetools import LRUCache

from avito_ai.engines import xgrammar_import
from avito_ai.engines.base import (
    ConstraintKind,
    Engine,
    OutputConstraint,
    capabilities_of,
)
from avito_ai.engines.grammar import expand_regex_rules, matches_nothing, openvino_dialect
from avito_ai.errors import ValidationFailed
from avito_ai.services.output import FieldNames, OutputSpec

MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
COMPILE_TIMEOUT_S = 5.0

# What xgrammar's JSON Schema converter enforces (0.2.9). Annotations are allowed; any
# other keyword is refused, since the grammar would not hold the answer to it.
ENFORCED = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "prefixItems",
        "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
        "definitions", "pattern", "format", "minLength", "maxLength", "minimum", "maximum",
        "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minProperties",
        "maxProperties", "patternProperties",
    }
)  # fmt: skip
ANNOTATIONS = frozenset(
    {
        "title", "description", "default", "examples", "$schema", "$id", "$comment",
        "deprecated", "readOnly", "writeOnly", "discriminator", "nullable",
    }
)  # fmt: skip
FORMATS = frozenset(
    {
        "date", "time", "date-time", "duration", "email", "uuid", "uri", "uri-reference",
        "ipv4", "ipv6", "hostname",
    }
)  # fmt: skip
# Keywords whose value is a schema, a list of schemas, or a map of name -> schema.
_ONE = ("items", "additionalProperties")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "$defs", "definitions", "patternProperties")


SCHEMA_CACHE_SIZE = 512
# (check, the schema's canonical JSON) -> None (fine) or why not: a repeated schema costs a
# lookup, a new one a walk off the event loop (a 60 kB schema took 0.75 s of loop time).
_SCHEMA_VERDICTS: LRUCache[tuple[str, str], str | None] = LRUCache(SCHEMA_CACHE_SIZE)


async def _schema_verdict(check: Callable[[Any], str | None], schema: Any) -> str | None:
    key = (check.__name__, json.dumps(schema, sort_keys=True))
    if key in _SCHEMA_VERDICTS:
        return _SCHEMA_VERDICTS[key]
    problem = await asyncio.get_running_loop().run_in_executor(_COMPILER, check, schema)
    _SCHEMA_VERDICTS[key] = problem
    return problem


async def checked_schema(schema: Any, param: str) -> None:
    """`check_schema` off the event loop, once per distinct schema. Raises
    ValidationFailed naming `param`."""
    if not isinstance(schema, dict):
        raise ValidationFailed("The schema must be a JSON object", param=param)
    problem = await _schema_verdict(_enforceable_problem, schema)
    if problem is not None:
        raise ValidationFailed(problem, param=param)


async def json_schema_problem(schema: Any) -> str | None:
    """Why `schema` is not a JSON Schema (Draft 2020-12), or None; off the event loop,
    once per distinct schema."""
    return await _schema_verdict(_draft_problem, schema)


def _enforceable_problem(schema: Any) -> str | None:
    try:
        check_schema(schema, "")
    except ValidationFailed as exc:
        return exc.message
    return None


def _draft_problem(schema: Any) -> str | None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return str(exc.message)
    return None


def check_schema(schema: Any, param: str) -> None:
    """A JSON Schema the grammar can hold an answer to, or ValidationFailed naming why.
    Blocking: on the event loop, `checked_schema`."""
    if not isinstance(schema, dict):
        raise ValidationFailed("The schema must be a JSON object", param=param)
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise ValidationFailed(
            f"The schema is larger than {MAX_SCHEMA_BYTES // 1024} kB", param=param
        )
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the top level"
        raise ValidationFailed(
            f"Not a JSON Schema: {exc.message} (at {where})", param=param
        ) from None
    _check_keywords(schema, param, "#", 0)


def _check_keywords(node: Any, param: str, where: str, depth: int) -> None:
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        return
    if depth > MAX_SCHEMA_DEPTH:
        raise ValidationFailed(
            f"The schema is nested deeper than {MAX_SCHEMA_DEPTH} levels", param=param
        )
    for key, value in node.items():
        if key in ANNOTATIONS:
            continue
        if key not in ENFORCED:
            raise ValidationFailed(
                f"The schema keyword '{key}' (at {where}) cannot be enforced while "
                "generating; supported: " + ", ".join(sorted(ENFORCED)),
                param=param,
            )
        if key == "format" and value not in FORMATS:
            raise ValidationFailed(
                f"The string format '{value}' (at {where}) cannot be enforced; supported: "
                + ", ".join(sorted(FORMATS)),
                param=param,
            )
        if key == "allOf" and len(value) > 1:
            raise ValidationFailed(
                f"allOf with more than one schema (at {where}) cannot be enforced",
                param=param,
            )
        if key in _ONE:
            _check_keywords(value, param, f"{where}/{key}", depth + 1)
        elif key in _MANY:
            for i, item in enumerate(value):
                _check_keywords(item, param, f"{where}/{key}/{i}", depth + 1)
        elif key in _MAP:
            for name, item in value.items():
                _check_keywords(item, param, f"{where}/{key}/{name}", depth + 1)


# ------------------------------------------------------------------------ compiling


@functools.cache
def _grammar_class() -> Any:
    """xgrammar's `Grammar`: its compiler alone, not its matcher (xgrammar_import)."""
    return xgrammar_import.grammar_class()


def _clean(exc: Exception) -> str:
    """xgrammar's message without its timestamp and source file."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[[\d:]+\] \S+?\.cc:\d+: ", "", text)


def _compile(kind: ConstraintKind, source: str) -> str:
    grammar = _grammar_class()
    if kind in ("json_schema", "json_object"):
        compiled = grammar.from_json_schema(source, any_whitespace=False)
    elif kind == "regex":
        compiled = grammar.from_regex(source)
    else:
        compiled = grammar.from_ebnf(source)
    # Regex(...) rules written out: OpenVINO's grammar parser does not know them.
    plain = expand_regex_rules(str(compiled), lambda pattern: str(grammar.from_regex(pattern)))
    if matches_nothing(plain):  # xgrammar accepts it; an answer held to it never ends
        raise RuntimeError("it matches no text: its root rule can never end")
    return openvino_dialect(plain)


_COMPILER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grammar")
CACHE_SIZE = 512
_CACHE: LRUCache[tuple[ConstraintKind, str], str] = LRUCache(CACHE_SIZE)


def warm_compiler() -> None:
    """Import the grammar compiler in the background at start-up, so that the first schema
    does not wait for it; a failure here is the first compile's to report. Not where that
    import would bring torch into a process that does not otherwise load it (torch
    installed, an OpenVINO or remote engine): seconds of CPU and hundreds of MB that every
    start would pay, and many starts never see a schema; there the first schema waits."""
    if xgrammar_import.imports_torch():
        return
    future = asyncio.get_running_loop().run_in_executor(_COMPILER, _grammar_class)
    future.add_done_callback(lambda done: done.cancelled() or done.exception())


async def compiled(kind: ConstraintKind, source: str, param: str) -> str:
    """The answer grammar, cached per distinct source (a repeated schema costs a dict
    lookup); compiled off the event loop, at most COMPILE_TIMEOUT_S. Raises
    ValidationFailed naming `param`."""
    key = (kind, source)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    loop = asyncio.get_running_loop()
    what = kind.replace("_", " ")
    # The compiler's first import (with torch installed, torch's too) takes seconds on a
    # busy machine: not the schema's cost, so not inside its time limit.
    await loop.run_in_executor(_COMPILER, _grammar_class)
    try:
        async with asyncio.timeout(COMPILE_TIMEOUT_S):
            grammar = await loop.run_in_executor(_COMPILER, _compile, kind, source)
    except TimeoutError:
        raise ValidationFailed(
            f"The {what} is too complex to compile in {COMPILE_TIMEOUT_S:g} s", param=param
        ) from None
    except RuntimeError as exc:
        raise ValidationFailed(
            f"The {what} cannot be compiled: {_clean(exc)}", param=param
        ) from None
    _CACHE[key] = grammar
    return grammar


# ------------------------------------------------------------------------ the request


async def constraint_for(output: OutputSpec, names: FieldNames) -> OutputConstraint | None:
    """What the client asked of the answer's format as a compiled constraint (None: text);
    errors name the dialect's own field (`names`)."""
    if output.format == "text":
        return None
    if output.format == "json_object":
        schema: dict[str, Any] = {"type": "object"}
        grammar = await compiled("json_object", json.dumps(schema), names.format)
        return OutputConstraint("json_object", grammar, schema=schema)
    if output.format == "json_schema":
        schema = {} if output.schema is None else output.schema  # none: any JSON value
        await checked_schema(schema, names.schema)
        source = json.dumps(schema)  # (its order is the answer's order)
        return OutputConstraint(
            "json_schema",
            await compiled("json_schema", source, names.schema),
            schema=schema,
            name=output.name,
            strict=output.strict,
            description=output.description,
        )
    kind: ConstraintKind = "regex" if output.format == "regex" else "grammar"
    source = output.pattern or ""
    where = names.regex if kind == "regex" else names.grammar
    return OutputConstraint(kind, await compiled(kind, source, where), pattern=source)


def check_supported(engine: Engine, constraint: OutputConstraint | None, param: str) -> None:
    """Refuse (400) before anything runs a constraint the engine cannot honour."""
    if constraint is None:
        return
    kinds = capabilities_of(engine).constraints
    if constraint.kind not in kinds:
        backend = engine.status().engine or "this"
        raise ValidationFailed(
            f"The {engine.role} engine ({backend}) cannot constrain its answer to a "
            f"{constraint.kind.replace('_', ' ')}"
            + (f"; it can: {', '.join(sorted(kinds))}" if kinds else ""),
            param=param,
        )
