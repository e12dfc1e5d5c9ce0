"""Grammar-constrained decoding on the transformers engines, with xgrammar.

Per engine, one `GrammarCompiler` over the model's vocabulary (built at load; it caches
every grammar it compiled). Per constrained sequence, one `TokenGrammar`: before each
token the matcher's bitmask sets every token the grammar forbids to -inf in that row's
logits, after it the chosen token advances the matcher. Rows without a constraint in the
same batch step are untouched (sampling.py applies the mask row by row). Once the answer
is complete the mask leaves only the end-of-sequence tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import torch

from avito_ai.engines import xgrammar_import
from avito_ai.errors import ValidationFailed

COMPILE_TIMEOUT_S = 10.0


class GrammarCompiler:
    """Compiles answer grammars (xgrammar EBNF) against one model's tokenizer."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int]) -> None:
        xgr = xgrammar_import.full()

        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids)
        )
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info, cache_enabled=True)

    async def compile(self, grammar: str) -> Any:
        """Off the event loop (and off the engine's step loop), bounded in time."""
        try:
            async with asyncio.timeout(COMPILE_TIMEOUT_S):
                return await asyncio.to_thread(self._compiler.compile_grammar, grammar)
        except TimeoutError:
            raise ValidationFailed(
                f"The constraint took longer than {COMPILE_TIMEOUT_S:g} s to compile",
                param="response_format",
            ) from None


class TokenGrammar:
    """One sequence's matcher: masks a row of logits, follows the chosen tokens."""

    __slots__ = ("_bitmask", "_matcher")

    def __init__(self, compiled: Any, vocab_size: int) -> None:
        xgr = xgrammar_import.full()

        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """A copy of one row of logits with the forbidden tokens at -inf."""
        xgr = xgrammar_import.full()

        self._matcher.fill_next_token_bitmask(self._bitmask)
        out = logits.clone()[None, :]
        xgr.apply_token_bitmask_inplace(out, self._bitmask.to(out.device))
        return out[0]

    def accept(self, token_id: int) -> None:
        if not self._matcher.is_terminated():
            self._matcher.accept_token(token_id)
