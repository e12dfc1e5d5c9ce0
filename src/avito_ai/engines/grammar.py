"""Answer grammars around a thinking block, for the engines that enforce grammars in process.

The services compile a constraint to the answer's grammar (services/constraints.py). With
thinking on (Qwen3's switch) the model first writes `<think> ... </think>`, and the
constraint holds for what follows: the grammar becomes "a thinking block, a little
whitespace, then the answer". The block's text is anything without `</think>`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

THINK_TEXT = (
    'think_text ::= ([^<] | "<" [^/] | "</" [^t] | "</t" [^h] | "</th" [^i] | "</thi" [^n]'
    ' | "</thin" [^k] | "</think" [^>])*'
)
# Between the block and the answer: what Qwen3 writes ("\n\n"), bounded.
AFTER_BLOCK = "[ \\n]{0, 4}"
# A rule name outside quoted strings and character classes.
_PIECES = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[^"\[]+')


def outside_literals(grammar: str, change: Callable[[str], str]) -> str:
    """`grammar` with `change` applied to its text outside string literals and character
    classes (a JSON property may be named like a rule, or hold `{2, -1}`)."""
    return "".join(
        piece if piece[:1] in ('"', "[") else change(piece) for piece in _PIECES.findall(grammar)
    )


def rename_rule(grammar: str, old: str, new: str) -> str:
    """`grammar` with the rule `old` called `new`, its references included."""
    word = re.compile(rf"(?<![\w-]){re.escape(old)}(?![\w-])")
    return outside_literals(grammar, lambda text: word.sub(new, text))


_OPEN_REPEAT = re.compile(r"([\w-]+)\{(\d+), -1\}")
_BOUNDED = re.compile(r"([\w-]+)\{(\d+), (\d+)\}")
_CLASS_RULE = re.compile(r"^([\w-]+) ::= \(\(\[[^\n]*\]\)\)$", re.MULTILINE)


def openvino_dialect(grammar: str) -> str:
    """OpenVINO GenAI bundles an older xgrammar grammar parser: an unbounded repetition
    `x{n, -1}` is written `*`, `+`, or `x{n, n} x*` there."""

    def rewrite(text: str) -> str:
        def one(found: re.Match[str]) -> str:
            element, low = found.group(1), int(found.group(2))
            if low == 0:
                return f"{element}*"
            if low == 1:
                return f"{element}+"
            return f"{element}{{{low}, {low}}} {element}*"

        return _OPEN_REPEAT.sub(one, text)

    return outside_literals(grammar, rewrite)


def bounded_character_runs(grammar: str) -> int:
    """How many `c{m, n}` (n > m) repeat a single character class: what OpenVINO's grammar
    compiler is slow at (0.15 to 0.75 s each, measured on its bundled xgrammar; a string's
    maxLength, or a minLength below its maxLength, is one)."""
    classes = set(_CLASS_RULE.findall(grammar))
    runs = 0

    def count(text: str) -> str:
        nonlocal runs
        for name, low, high in _BOUNDED.findall(text):
            runs += name in classes and int(high) > int(low)
        return text

    outside_literals(grammar, count)
    return runs


def after_thinking(grammar: str, *, opened: bool) -> str:
    """The answer grammar preceded by a thinking block. `opened`: the prompt already ends
    with `<think>` (some templates open it), so the model starts inside the block."""
    answer = rename_rule(grammar, "root", "answer_root")
    start = "" if opened else '"<think>" '
    return (
        f'root ::= {start}think_text "</think>" {AFTER_BLOCK} answer_root\n{THINK_TEXT}\n{answer}'
    )
