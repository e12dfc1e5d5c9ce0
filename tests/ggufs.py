"""GGUF files for tests, made from the embedded model: another chat template, a truncated
copy, an architecture OpenVINO GenAI cannot serve. Needs the `gguf` package (test extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from avito_ai.engines.models import embedded_gguf_path

# SmolLM2's own turns, plus Qwen3's switch: thinking off opens a `<think>` block in the
# prompt itself (as some reasoning templates do), so the answer is reasoning to hide.
THINKING_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor -%}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking %}\n{% else %}\n<think>\n{% endif %}"
    "{%- endif %}"
)


def with_chat_template(out: Path, template: str) -> Path:
    """A copy of the embedded GGUF whose chat template is `template`."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gguf.scripts.gguf_new_metadata",
            str(embedded_gguf_path()),
            str(out),
            "--chat-template",
            template,
            "--force",
        ],
        check=True,
        capture_output=True,
    )
    return out


def truncated(out: Path, size: int = 1_000_000) -> Path:
    """The first `size` bytes of the embedded GGUF: a download cut short."""
    with open(embedded_gguf_path(), "rb") as src:
        out.write_bytes(src.read(size))
    return out


def unsupported_architecture(out: Path) -> Path:
    """A well-formed GGUF of an architecture OpenVINO GenAI does not serve."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(out), arch="mamba")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
