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


# ------------------------------------------------------------ Regex(...) for OpenVINO

# xgrammar 0.2.9 writes a schema's `pattern` (and a native grammar may write) as a
# `Regex("...")` rule, which the xgrammar inside OpenVINO GenAI 2026.4 cannot parse ("Rule
# Regex is not defined"). `expand_regex_rules` writes each one out as plain rules, made by
# xgrammar's own regex converter (`Grammar.from_regex`); inside a JSON string
# (`json_string=true`) every character the pattern allows is written as JSON writes it.
_REGEX_CALL = re.compile(
    r'Regex\(("(?:[^"\\]|\\.)*")(?:\s*,\s*json_string\s*=\s*(true|false))?\s*\)'
)
_RULE_NAME = re.compile(r"^([\w-]+) ::=", re.MULTILINE)
_SIMPLE_ESCAPES = {
    "n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "f": "\f", "v": "\v",
    "a": "\a", "e": "\x1b",
}  # fmt: skip
MAX_CODE_POINT = 0x10FFFF
# What JSON cannot hold raw inside a string: the quote, the backslash, controls.
_JSON_UNSAFE = [(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]
_SHORT = {
    0x22: '\\"', 0x5C: "\\\\", 0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r", 0x08: "\\b", 0x0C: "\\f",
}  # fmt: skip


def _members(text: str) -> list[tuple[int, bool]]:
    """Code points of an xgrammar literal's or character class's body, each with whether
    it was escaped."""
    out: list[tuple[int, bool]] = []
    i = 0
    while i < len(text):
        if text[i] != "\\" or i + 1 == len(text):
            out.append((ord(text[i]), False))
            i += 1
            continue
        kind = text[i + 1]
        width = {"x": 2, "u": 4, "U": 8}.get(kind)
        if width is None:
            out.append((ord(_SIMPLE_ESCAPES.get(kind, kind)), True))
            i += 2
            continue
        digits = re.match(f"[0-9a-fA-F]{{1,{width}}}", text[i + 2 :])
        if digits is None:
            raise ValueError(f"a bad escape in {text!r}")
        out.append((int(digits.group(), 16), True))
        i += 2 + len(digits.group())
    return out


def _unescape(text: str) -> list[int]:
    return [point for point, _ in _members(text)]


def _class_ranges(body: str) -> list[tuple[int, int]]:
    """The code point ranges a character class (without its brackets) matches."""
    negated = body.startswith("^")
    members = _members(body[1:] if negated else body)
    ranges: list[tuple[int, int]] = []
    i = 0
    while i < len(members):
        if i + 2 < len(members) and members[i + 1] == (ord("-"), False):
            ranges.append((members[i][0], members[i + 2][0]))
            i += 3
        else:
            ranges.append((members[i][0], members[i][0]))
            i += 1
    ranges = _merge(ranges)
    return _complement(ranges) if negated else ranges


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start = 0
    for low, high in ranges:
        if low > start:
            out.append((start, low - 1))
        start = high + 1
    if start <= MAX_CODE_POINT:
        out.append((start, MAX_CODE_POINT))
    return out


def _minus(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    keep = _complement(_merge(cut))
    out = []
    for low, high in ranges:
        for k_low, k_high in keep:
            if max(low, k_low) <= min(high, k_high):
                out.append((max(low, k_low), min(high, k_high)))
    return out


def _class_char(point: int) -> str:
    ch = chr(point)
    if ch in '\\]-^["':
        return "\\" + ch
    if 0x20 < point < 0x7F:
        return ch
    return f"\\u{point:04x}" if point <= 0xFFFF else f"\\U{point:08x}"


def _literal(text: str) -> str:
    """An xgrammar string literal matching `text` exactly."""
    body = "".join(
        "\\" + ch if ch in '"\\' else ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text
    )
    return f'"{body}"'


def _json_escape(point: int) -> str:
    return _SHORT.get(point, f"\\u{point:04x}")


def _json_class(body: str) -> str:
    """A character class as what a JSON string holds for those characters."""
    ranges = _class_ranges(body)
    safe = _minus(ranges, _JSON_UNSAFE)
    options = []
    if safe:
        members = "".join(
            _class_char(low) if low == high else f"{_class_char(low)}-{_class_char(high)}"
            for low, high in safe
        )
        options.append(f"[{members}]")
    held = _minus(ranges, _complement(_JSON_UNSAFE))
    unsafe = [point for low, high in held for point in range(low, high + 1)]
    options += [_literal(_json_escape(p)) for p in unsafe]
    if not options:
        return '""'
    return options[0] if len(options) == 1 else "(" + " | ".join(options) + ")"


def _json_literal(body: str) -> str:
    points = _unescape(body)
    return _literal("".join(_json_escape(p) if p in _SHORT or p < 0x20 else chr(p) for p in points))


def _as_json_string(grammar: str) -> str:
    """`grammar` (from a regex) matching the JSON-escaped form of what it matched."""
    return "".join(
        _json_literal(piece[1:-1])
        if piece.startswith('"')
        else _json_class(piece[1:-1])
        if piece.startswith("[")
        else piece
        for piece in _PIECES.findall(grammar)
    )


def expand_regex_rules(grammar: str, from_regex: Callable[[str], str]) -> str:
    """`grammar` without `Regex("...")` calls: each becomes a rule of its own, written out
    by `from_regex` (xgrammar's `Grammar.from_regex`, as text)."""
    added: list[str] = []

    def replace(found: re.Match[str]) -> str:
        pattern = "".join(map(chr, _unescape(found.group(1)[1:-1])))
        rules = from_regex(pattern)
        if found.group(2) == "true":
            rules = _as_json_string(rules)
        prefix = f"regex_{len(added)}"
        for name in sorted(set(_RULE_NAME.findall(rules)), key=len, reverse=True):
            rules = rename_rule(rules, name, prefix if name == "root" else f"{prefix}_{name}")
        added.append(rules.strip())
        return prefix

    expanded = _REGEX_CALL.sub(replace, grammar)
    return "\n".join([expanded.rstrip(), *added]) if added else grammar


# ------------------------------------------------------------ a grammar matching nothing

_TOKENS = re.compile(
    r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[\w-]+\(|[\w-]+|::=|\{[^}]*\}|[()|*+?=,]|\S'
)


def matches_nothing(grammar: str) -> bool:
    """Whether the grammar's `root` can never finish (`root ::= root`, or rules that only
    lead to each other): an answer held to it could never end, and OpenVINO's compiler
    lets it through as free text. False where in doubt (a macro it does not read)."""
    rules: dict[str, list[str]] = {}
    for line in grammar.splitlines():
        name, sep, body = line.partition(" ::= ")
        if sep and re.fullmatch(r"[\w-]+", name):
            rules[name] = _TOKENS.findall(body)
    if "root" not in rules or any(t.endswith("(") and t != "(" for b in rules.values() for t in b):
        return False
    productive: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, tokens in rules.items():
            if name not in productive and _finite(tokens, productive):
                productive.add(name)
                changed = True
    return "root" not in productive


def _finite(tokens: list[str], productive: set[str]) -> bool:
    """Whether an expression's token list can match some finite text, given which rules
    can. Alternatives split on `|` at depth 0; an element followed by `*`, `?` or `{0,`
    may be absent; a lookahead `(= ...)` consumes nothing."""
    alternatives: list[list[str]] = [[]]
    depth = 0
    for token in tokens:
        if token == "|" and depth == 0:
            alternatives.append([])
            continue
        depth += token == "("
        depth -= token == ")"
        alternatives[-1].append(token)
    return any(_sequence_finite(alt, productive) for alt in alternatives)


def _sequence_finite(tokens: list[str], productive: set[str]) -> bool:
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "(":
            depth, j = 1, i + 1
            while depth:
                depth += (tokens[j] == "(") - (tokens[j] == ")")
                j += 1
            lookahead = tokens[i + 1 : i + 2] == ["="]
            ok = lookahead or _finite(tokens[i + 1 : j - 1], productive)
            i = j
        else:
            ok = token[0] in '"[' or token in productive
            i += 1
        optional = i < len(tokens) and (
            tokens[i] in ("*", "?") or re.fullmatch(r"\{\s*0\s*(,[^}]*)?\}", tokens[i]) is not None
        )
        if i < len(tokens) and (tokens[i] in ("*", "+", "?") or tokens[i].startswith("{")):
            i += 1
        if not ok and not optional:
            return False
    return True
