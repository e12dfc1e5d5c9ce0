"""A tiny random-weight Qwen3 causal LM, saved to a folder like a real checkpoint.

It exists so the text engine is tested through the exact production loading path
(`AVIBE_MODEL=<folder>` -> AutoTokenizer / AutoModelForCausalLM.from_pretrained) without
network access: the architecture is production's (Qwen3), only the sizes are tiny
(hidden 64, 2 layers, vocabulary ~500). Answers are gibberish; they prove the code path.

The tokenizer is a byte-level BPE trained offline on a few English and Russian lines, with
Qwen's special tokens and `<think>`/`</think>` as ordinary added tokens, exactly like Qwen3.
Byte-level BPE on Cyrillic yields tokens that end inside a UTF-8 character, so random
outputs exercise the streaming hold-back. The chat template is a faithful subset of
Qwen3's, including its `enable_thinking` switch.

Output-head rows of special tokens are zeroed so greedy decoding never picks them: random
logits are tiny, and some ordinary token always scores above 0. The model then never stops
early on EOS, which keeps `max_tokens`/`stop` tests deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The parts of Qwen3's template that matter here: ChatML turns and, with
# enable_thinking=False, an empty think block opened and closed in the prompt.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Selling a bicycle in good condition, price is negotiable, call me today.",
    "A cosy two-room flat near the metro, with a balcony and a new kitchen.",
    "Продаю велосипед в хорошем состоянии, цена договорная, звоните сегодня.",
    "Уютная двухкомнатная квартира рядом с метро, балкон, новая кухня.",
    "Столица Франции — Париж. Ёлка, щука, съезд, объявление, Авито.",
    "one two three four five six seven eight nine ten 0123456789 ,.!?:;-()",
]

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINK_TOKENS = ["<think>", "</think>"]


def bpe_tokenizer(
    corpus: list[str],
    specials: list[str],
    vocab_size: int,
    plain_tokens: tuple[str, ...] | list[str] = (),
) -> Any:
    """A byte-level BPE trained offline on `corpus`, with `specials` appended as special
    tokens (ids right after the BPE vocabulary) and `plain_tokens` as normal added ones."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    tok.add_special_tokens(specials)
    if plain_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain_tokens])
    return tok


def train_tokenizer(vocab_size: int = 480) -> Any:
    """Byte-level BPE + Qwen3's special and thinking tokens (a `tokenizers.Tokenizer`)."""
    return bpe_tokenizer(CORPUS, SPECIALS, vocab_size, THINK_TOKENS)


def build_tiny_qwen3(folder: Path, *, seed: int = 0, silence_specials: bool = True) -> Path:
    """Save a tiny Qwen3ForCausalLM + tokenizer + chat template into `folder`."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=QWEN3_CHAT_TEMPLATE,
    )
    ids = {t: tok.token_to_id(t) for t in SPECIALS + THINK_TOKENS}
    config = Qwen3Config(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()  # type: ignore[no-untyped-call]
    if silence_specials:
        with torch.no_grad():
            head = model.get_output_embeddings().weight
            head[[ids[t] for t in SPECIALS + THINK_TOKENS]] = 0.0
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    (folder / "generation_config.json").write_text(
        json.dumps(
            {
                "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
                "pad_token_id": ids["<|endoftext|>"],
            },
            indent=2,
        )
    )
    return folder
