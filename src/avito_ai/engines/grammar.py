"""Answer grammars around a thinking block, for the engines that enforce grammars in process.

The services compile a constraint to the answer's grammar (services/constraints.py). With
thinking on (Qwen3's switch) the model first writes `<think> ... </think>`, and the
constraint holds for what follows: the grammar becomes "a thinking block, a little
whitespace, then the answer". The block's text is anything without `</think>`.
"""

from __future__ import annotations

import re

THINK_TEXT = (
    'think_text ::= ([^<] | "<" [^/] | "</" [^t] | "</t" [^h] | "</th" [^i] | "</thi" [^n]'
    ' | "</thin" [^k] | "</think" [^>])*'
)
# Between the block and the answer: what Qwen3 writes ("\n\n"), bounded.
AFTER_BLOCK = "[ \\n]{0, 4}"
# A rule name outside quoted strings and character classes.
_PIECES = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[^"\[]+')


def rename_rule(grammar: str, old: str, new: str) -> str:
    """`grammar` with the rule `old` called `new`, its references included (never inside
    a string literal: a JSON property may be named like a rule)."""
    word = re.compile(rf"(?<![\w-]){re.escape(old)}(?![\w-])")
    return "".join(
        piece if piece[:1] in ('"', "[") else word.sub(new, piece)
        for piece in _PIECES.findall(grammar)
    )


def after_thinking(grammar: str, *, opened: bool) -> str:
    """The answer grammar preceded by a thinking block. `opened`: the prompt already ends
    with `<think>` (some templates open it), so the model starts inside the block."""
    answer = rename_rule(grammar, "root", "answer_root")
    start = "" if opened else '"<think>" '
    return (
        f'root ::= {start}think_text "</think>" {AFTER_BLOCK} answer_root\n{THINK_TEXT}\n{answer}'
    )
