"""`Regex("...")` rules written out for OpenVINO's older grammar parser, and grammars that
match nothing, checked against xgrammar 0.2.9's own matcher (the service's compiler)."""

from __future__ import annotations

import json
import random

import pytest
import xgrammar
from xgrammar.testing import _is_grammar_accept_string as accepts

from avito_ai.engines.grammar import expand_regex_rules, matches_nothing, openvino_dialect


def _from_regex(pattern: str) -> str:
    return str(xgrammar.Grammar.from_regex(pattern))


PATTERNS = [
    r"^\d{2}[a-z]+$",
    r"[^x]+",
    r".{2,3}",
    r"[ -~]{1,4}",
    r"\w+@\w+\.com",
    r"a\"b\\c.",
    r"[\"\\]x?",
    r"(ab|c\.d)*",
    r"[^a-c\]]{0,3}",
    r"[а-я]{2}-é",
    r"[0-9]{3}-[A-Z]{2}",
]
ALPHABET = ["a", "b", "c", "x", "0", "9", '"', "\\", "\n", "é", "д", " ", "~", ".", "@", "-", "]"]


def test_most_patterns_are_regex_rules_openvino_cannot_parse() -> None:
    schema = json.dumps({"type": "string", "pattern": "[0-9]{3}-[A-Z]{2}"})
    assert "Regex(" in str(xgrammar.Grammar.from_json_schema(schema, any_whitespace=False))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_pattern_inside_a_json_string_means_what_xgrammars_regex_rule_means(
    pattern: str,
) -> None:
    """Every string both grammars judge alike, except that ours also takes the JSON escapes
    of a quote, a backslash or a control the pattern allows (xgrammar's rule refuses any
    escape): the decoded string still matches the pattern, as JSON Schema means it."""
    schema = json.dumps({"type": "string", "pattern": pattern})
    original = str(xgrammar.Grammar.from_json_schema(schema, any_whitespace=False))
    # (xgrammar writes most patterns as a Regex rule, which OpenVINO's parser does not know;
    # a few, such as plain literals, as rules of its own)
    written = openvino_dialect(expand_regex_rules(original, _from_regex))
    assert "Regex(" not in written
    theirs, ours = xgrammar.Grammar.from_ebnf(original), xgrammar.Grammar.from_ebnf(written)
    rng = random.Random(pattern)
    for _ in range(300):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 5)))
        encoded = json.dumps(text, ensure_ascii=False)
        escapes = any(c in text for c in '"\\') or any(ord(c) < 0x20 for c in text)
        if escapes:  # ours may take it; then the decoded text matches the pattern
            if accepts(ours, encoded):
                assert accepts(xgrammar.Grammar.from_regex(pattern), text)
        else:
            assert accepts(theirs, encoded) == accepts(ours, encoded), encoded


def test_a_grammar_regex_outside_a_string_is_the_regex_itself() -> None:
    written = expand_regex_rules('root ::= "id-" Regex("[0-9]{3}")', _from_regex)
    grammar = xgrammar.Grammar.from_ebnf(written)
    assert accepts(grammar, "id-042") and not accepts(grammar, "id-42")


@pytest.mark.parametrize(
    ("grammar", "nothing"),
    [
        ("root ::= root", True),
        ("root ::= a\na ::= b\nb ::= a", True),
        ('root ::= "x" root', True),
        ('root ::= a | "x"\na ::= a', False),
        ('root ::= "x" root?', False),
        ('root ::= ("a" | "b"){2,}', False),
        ("root ::= a*\na ::= a", False),
    ],
)
def test_a_grammar_that_can_never_end_is_found(grammar: str, nothing: bool) -> None:
    assert matches_nothing(str(xgrammar.Grammar.from_ebnf(grammar))) is nothing
