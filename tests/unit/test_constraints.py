"""Constraint compiling and checking: compact grammars, the thinking wrapper, the cache."""

from __future__ import annotations

import json

import pytest

from avito_ai.engines.grammar import after_thinking, rename_rule
from avito_ai.errors import ValidationFailed
from avito_ai.services import constraints


async def test_json_grammars_are_compact_and_in_openvinos_dialect() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "array", "items": {"type": "integer"}}},
    }
    grammar = await constraints.compiled("json_schema", json.dumps(schema), "p")
    assert "{0, -1}" not in grammar and "{1, -1}" not in grammar  # written * and +
    assert "[ \\n\\t]*" not in grammar.split("basic_string_sub")[0]  # no free whitespace
    assert '": "' in grammar and '", "' in grammar  # the one separator each


async def test_a_repeated_schema_compiles_once() -> None:
    source = json.dumps({"type": "object", "properties": {"unique-8f3": {"type": "string"}}})
    calls: list[str] = []
    original = constraints._compile

    def counting(kind, text):  # type: ignore[no-untyped-def]
        calls.append(text)
        return original(kind, text)

    constraints._compile = counting  # type: ignore[assignment]
    try:
        first = await constraints.compiled("json_schema", source, "p")
        again = await constraints.compiled("json_schema", source, "p")
    finally:
        constraints._compile = original  # type: ignore[assignment]
    assert first == again and calls == [source]


def test_rules_are_renamed_outside_string_literals_only() -> None:
    grammar = 'root ::= "{" "\\"root\\"" ": " root_1 "}"\nroot_1 ::= [root]'
    renamed = rename_rule(grammar, "root", "answer_root")
    assert renamed.startswith("answer_root ::=") and '"\\"root\\""' in renamed
    assert "root_1 ::= [root]" in renamed  # another rule, and a character class, untouched


def test_the_thinking_wrapper_parses_and_starts_where_the_prompt_left_off() -> None:
    import xgrammar as xgr

    for opened in (False, True):
        wrapped = after_thinking('root ::= "ok"', opened=opened)
        xgr.Grammar.from_ebnf(wrapped)  # parses
        assert wrapped.startswith('root ::= "<think>"') is not opened


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "array", "contains": {"type": "string"}}, "'contains'"),
        ({"type": "object", "dependentRequired": {"a": ["b"]}}, "'dependentRequired'"),
        ({"allOf": [{"type": "object"}, {"required": ["a"]}]}, "allOf"),
        ({"type": "string", "format": "regex"}, "format"),
        ({"type": "object", "properties": {"a": {"if": {}}}}, "#/properties/a"),
    ],
)
def test_keywords_the_grammar_would_ignore_are_refused(schema: dict, words: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        constraints.check_schema(schema, "response_format.json_schema.schema")
    assert words in refused.value.message
    assert refused.value.param == "response_format.json_schema.schema"


def test_the_whole_package_follows_the_grammar_compiler_in_one_process() -> None:
    """The services import xgrammar's compiler alone (not its Hugging Face glue, which
    imports transformers); a transformers engine in the same process later gets the whole
    package, the same `Grammar` class included."""
    import subprocess
    import sys

    script = """
import sys
from avito_ai.engines import xgrammar_import
grammar = xgrammar_import.grammar_class()
assert 'transformers' not in sys.modules and 'xgrammar.matcher' not in sys.modules
xgr = xgrammar_import.full()
assert xgr.Grammar is grammar and 'xgrammar.matcher' in sys.modules
assert xgr.GrammarMatcher and xgr.TokenizerInfo and xgrammar_import.full() is xgr
print('ok')
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_grammars_compile_without_torch_as_on_the_light_install() -> None:
    """`make serve` installs xgrammar without torch (its package imports torch; its grammar
    compiler does not need it): the service compiles through the grammar module alone."""
    import subprocess
    import sys

    script = (
        "import importlib.util, sys"
        + NO_TORCH
        + """
import asyncio
from avito_ai.services.constraints import compiled
grammar = asyncio.run(compiled('json_schema', '{"type": "object"}', 'p'))
assert 'root ::=' in grammar and 'torch' not in sys.modules
print('ok')
"""
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


WARM_UP = """
import asyncio, importlib.util, sys
{block}
from avito_ai.services import constraints

async def start() -> None:
    constraints.warm_compiler()

asyncio.run(start())
constraints._COMPILER.shutdown(wait=True)  # the warm-up, if it was started, is over
print('torch' in sys.modules, 'xgrammar.grammar' in sys.modules)
"""

NO_TORCH = """
real = importlib.util.find_spec
importlib.util.find_spec = lambda n, *a: None if n.split('.')[0] == 'torch' else real(n, *a)
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torch':
            raise ImportError('no torch on the light install')
sys.meta_path.insert(0, NoTorch())
"""


@pytest.mark.parametrize(
    ("block", "after"),
    [
        # Torch installed, no engine of the process loads it (OpenVINO, remote, fake): a
        # start does not pay seconds of CPU for it; the first schema does.
        ("", "False False"),
        # The light install (no torch): the compiler alone, at start.
        (NO_TORCH, "False True"),
        # Torch there already (a transformers engine): nothing more to pay, so at start.
        ("import torch", "True True"),
    ],
    ids=["torch-installed-unused", "light-install", "torch-loaded"],
)
def test_the_start_up_warms_the_compiler_only_where_it_costs_no_torch(
    block: str, after: str
) -> None:
    import subprocess
    import sys

    script = WARM_UP.format(block=block)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == after, done.stderr[-2000:]
