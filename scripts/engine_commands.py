"""The engine command lines the service runs, generated from its own code for
docs/engines.md (between the `engine-commands` markers). A unit test keeps the doc and the
code in step: after changing commands.py, run

    .venv/bin/python scripts/engine_commands.py --write
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "engines.md"
BEGIN = "<!-- engine-commands:begin (scripts/engine_commands.py --write) -->"
END = "<!-- engine-commands:end -->"
ENVS = "~/.cache/avito-ai/engines"  # ENGINE_ENVS_DIR's default, as a reader's shell has it


def _settings(**values: Any) -> Any:
    from avito_ai.config import Settings

    return Settings.given(**values)  # the values given and the defaults: no .env, no environment


def _shown(argv: list[str]) -> str:
    """One flag (and its values) a line, as a shell reads it."""
    lines: list[list[str]] = [[]]
    for part in argv:
        if part.startswith("--") and lines[-1]:
            lines.append([])
        lines[-1].append(part)
    shown = " \\\n  ".join(shlex.join(line) for line in lines)
    home = argv[0].split("/", 1)[0] == "~"  # `~` left for the reader's shell to expand
    return shown.replace(shlex.quote(argv[0]), argv[0], 1) if home else shown


def cases() -> list[tuple[str, str, dict[str, Any], dict[str, str]]]:
    from avito_ai.config import ENGINE_VERSIONS

    vllm = f"{ENVS}/vllm-{ENGINE_VERSIONS['vllm']}/bin/vllm"
    sglang = f"{ENVS}/sglang-{ENGINE_VERSIONS['sglang']}/bin/python -m sglang.launch_server"
    both = {
        "avibe_model": "AvitoTech/avibe",
        "avibe_draft_model": "AvitoTech/avibe-eagle",
        "avision_model": "AvitoTech/avision",
        "dtype": "bfloat16",
        "vllm_command": vllm,
        "sglang_command": sglang,
    }
    tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    return [
        ("vLLM, A-Vibe with its EAGLE-3 draft", "avibe", {**both, "avibe_backend": "vllm",
         "avision_backend": "vllm"}, {}),
        ("vLLM, A-Vision beside it on the same GPU", "avision", {**both, "avibe_backend": "vllm",
         "avision_backend": "vllm"}, {}),
        ("SGLang, A-Vibe with its EAGLE-3 draft", "avibe", {**both, "avibe_backend": "sglang",
         "avision_backend": "sglang"}, {}),
        ("SGLang, A-Vision beside it on the same GPU", "avision", {**both,
         "avibe_backend": "sglang", "avision_backend": "sglang"}, {}),
        ("vLLM, A-Vibe the only engine, tracing on, 32k context, TP 2, "
         "AVIBE_ENGINE_ARGS=--enforce-eager",
         "avibe", {**both, "avibe_backend": "vllm", "avibe_max_model_len": 32768,
         "avibe_tensor_parallel_size": 2, "avibe_engine_args": "--enforce-eager"}, tracing),
        ("SGLang, A-Vibe the only engine, tracing on", "avibe", {**both, "avibe_backend": "sglang"},
         tracing),
    ]  # fmt: skip


def generated() -> str:
    from avito_ai.config import ENGINE_VERSIONS
    from avito_ai.engines.process.commands import engine_spec

    out = [
        BEGIN,
        "",
        f"Checked against vLLM {ENGINE_VERSIONS['vllm']} and SGLang "
        f"{ENGINE_VERSIONS['sglang']} by their own parsers (tests/contract). `DTYPE=bfloat16`, "
        "`AVIBE_MODEL=AvitoTech/avibe`, `AVIBE_DRAFT_MODEL=AvitoTech/avibe-eagle`, "
        "`AVISION_MODEL=AvitoTech/avision`; the port is a free one (`*_ENGINE_PORT` fixes it: "
        "41234 here).",
        "",
    ]
    for title, role, values, environ in cases():
        saved = {name: os.environ.pop(name, None) for name in
                 ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                  "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER")}  # fmt: skip
        os.environ.update(environ)
        try:
            spec = engine_spec(role, _settings(**values).engines, 41234)  # type: ignore[arg-type]
        finally:
            for name in environ:
                os.environ.pop(name, None)
            os.environ.update({k: v for k, v in saved.items() if v is not None})
        out += [f"{title}:", "", "```bash"]
        if environ:
            out.append(" ".join(f"{k}={v}" for k, v in environ.items()) + "  # the service's")
            out.append(" ".join(f"{k}={v}" for k, v in spec.environment.items()) + " \\")
        out += [_shown(spec.argv), "```", ""]
    out.append(END)
    return "\n".join(out)


def current(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    text = DOC.read_text()
    block = generated()
    if "--write" in sys.argv:
        DOC.write_text(text.replace(current(text), block))
    elif current(text) != block:
        print("docs/engines.md is out of date: scripts/engine_commands.py --write")
        raise SystemExit(1)
    else:
        print(block)


if __name__ == "__main__":
    main()
