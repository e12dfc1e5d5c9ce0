"""Tiny random-weight vision-language models, saved to a folder like a real checkpoint.

They exist so the vision engine can be tested through the exact production loading path
(`AVISION_MODEL=<folder>` -> AutoProcessor / AutoModelForImageTextToText.from_pretrained)
without network access or gigabytes of weights. The answers are gibberish: these models
prove the code path (chat template, image tokens, generation, streaming), never quality.

Two families:
- `build_tiny_qwen2_5_vl`: Qwen2_5_VLForConditionalGeneration + Qwen2_5_VLProcessor
  (Qwen2VL image AND video processor, Qwen2.5-VL chat template) - the production family.
- `build_tiny_idefics3`: Idefics3ForConditionalGeneration + Idefics3Processor
  (Idefics3 / SmolVLM style, image splitting into tiles plus a global image).

Tokenizers are trained offline: a byte-level BPE on a few English and Russian lines, plus
the special tokens each processor looks up by name. Byte-level BPE on Cyrillic produces
tokens that end in the middle of a UTF-8 character, which exercises the streaming hold-back.

Special-token rows of the output head are zeroed so greedy decoding never picks them
(random logits are tiny but some normal token always scores above 0): the models then
produce visible text and never stop early on EOS, which keeps `max_tokens`/`stop` tests
deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.tiny_models import bpe_tokenizer

# Qwen2-VL / Qwen2.5-VL chat template (as shipped with Qwen/Qwen2.5-VL-7B-Instruct).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Idefics3 chat template (as shipped with HuggingFaceM4/Idefics3-8B-Llama3).
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A photo of a red car parked near a small house with a green door.",
    "Describe the image: a cat sits on a wooden table next to a cup of tea.",
    "Selling a bicycle in good condition, price is negotiable, call me today.",
    "Продаю велосипед в хорошем состоянии, цена договорная, звоните сегодня.",
    "На фотографии красная машина у маленького дома с зелёной дверью.",
    "Кошка сидит на деревянном столе рядом с чашкой чая.",
    "Опишите изображение подробно и кратко. Что изображено на картинке?",
    "one two three four five six seven eight nine ten 0123456789 ,.!?:;-()",
]

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

IDEFICS3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *[f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)],
]


def _train_tokenizer(specials: list[str], vocab_size: int = 320) -> Any:
    """A byte-level BPE with `specials` appended as special added tokens (ids after BPE)."""
    return bpe_tokenizer(_CORPUS, specials, vocab_size)


def _fast_tokenizer(tok: Any, **special: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def _silence_special_tokens(model: Any, ids: list[int]) -> None:
    """Zero the output-head rows of special tokens: greedy then never emits them."""
    import torch

    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight[ids] = 0.0


def _write_generation_config(folder: Path, **values: Any) -> None:
    (folder / "generation_config.json").write_text(json.dumps(values, indent=2))


def build_tiny_qwen2_5_vl(folder: Path, *, seed: int = 0) -> Path:
    """Save a tiny Qwen2.5-VL (model + processor + tokenizer + template) into `folder`."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(QWEN_SPECIALS)
    tokenizer = _fast_tokenizer(
        tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIALS}
    vocab_size = tok.get_vocab_size(with_added_tokens=True)

    # 112x112 at most -> (112/28)^2 = 16 image tokens per image after the 2x2 merge.
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    )
    video_processor = Qwen2VLVideoProcessor(
        size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )

    hidden, heads = 64, 4
    head_dim = hidden // heads  # 16 -> mrope sections must sum to head_dim // 2 = 8
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "max_window_layers": 2,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "out_hidden_size": hidden,
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    assert head_dim == 16
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    _silence_special_tokens(model, list(ids.values()))

    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    _write_generation_config(
        folder,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        # Like the real Qwen2.5-VL generation_config: the engine must override all of these.
        do_sample=True,
        temperature=0.1,
        top_k=1,
        top_p=0.001,
        repetition_penalty=1.05,
    )
    return folder


def build_tiny_idefics3(folder: Path, *, seed: int = 0) -> Path:
    """Save a tiny Idefics3 (SmolVLM-style) model + processor into `folder`."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(IDEFICS3_SPECIALS)
    tokenizer = _fast_tokenizer(
        tok,
        bos_token="<|begin_of_text|>",
        eos_token="<end_of_utterance>",
        pad_token="<|end_of_text|>",
        unk_token=None,
    )
    ids = {t: tok.token_to_id(t) for t in IDEFICS3_SPECIALS}
    vocab_size = tok.get_vocab_size(with_added_tokens=True)

    # Vision tower sees 32x32 tiles of 8x8 patches -> 16 patches -> 4 tokens after the
    # 2x pixel shuffle. Images are resized to <= 64 px, i.e. at most 2x2 tiles + 1 global.
    image_size, patch, scale = 32, 8, 2
    image_seq_len = (image_size // patch) ** 2 // scale**2
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 2 * image_size},
        max_image_size={"longest_edge": image_size},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )

    hidden = 64
    config = Idefics3Config(
        text_config={
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "bos_token_id": ids["<|begin_of_text|>"],
            "eos_token_id": ids["<end_of_utterance>"],
            "pad_token_id": ids["<|end_of_text|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch,
        },
        scale_factor=scale,
        image_token_id=ids["<image>"],
        pad_token_id=ids["<|end_of_text|>"],
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    _silence_special_tokens(model, list(ids.values()))

    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    _write_generation_config(
        folder,
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=[ids["<end_of_utterance>"], ids["<|end_of_text|>"]],
        pad_token_id=ids["<|end_of_text|>"],
    )
    return folder


BUILDERS = {"qwen2_5_vl": build_tiny_qwen2_5_vl, "idefics3": build_tiny_idefics3}


if (
    __name__ == "__main__"
):  # pragma: no cover - manual helper: python tests/tiny_vision_models.py DIR
    import sys

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-vision-models")
    for name, build in BUILDERS.items():
        print(build(root / name))
