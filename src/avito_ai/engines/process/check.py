"""A command line checked by the installed engine itself, without a GPU and without
starting it: `engine_check.py` runs in the engine's own environment (its Python, found next
to VLLM_COMMAND / SGLANG_COMMAND's program) and hands the arguments to vLLM's own CLI
parser and serve-argument validation, or to SGLang's `prepare_server_args`. Nothing of vLLM
or SGLang is imported here. `avito-ai config --check-engines` and tests/contract use it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from avito_ai.engines.process.commands import EngineSpec

CHECKER = Path(__file__).with_name("engine_check.py")
CHECK_TIMEOUT_S = 300.0  # importing vLLM on a cold disk takes a while


def engine_python(program: str) -> Path | None:
    """The Python an engine's program runs on: the program itself when it is a Python,
    else its script's `#!` line (a console script such as `vllm`); None if not found."""
    found = shutil.which(program)
    if found is None:
        return None
    path = Path(found)
    if path.name.startswith("python"):
        return path
    try:
        with path.open("rb") as script:
            first = script.readline(400)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    interpreter = first[2:].decode(errors="replace").split()
    if not interpreter:
        return None
    if Path(interpreter[0]).name == "env" and len(interpreter) > 1:
        located = shutil.which(interpreter[1])
        return Path(located) if located else None
    return Path(interpreter[0]) if Path(interpreter[0]).exists() else None


def engine_arguments(spec: EngineSpec) -> list[str]:
    """The arguments the engine's parser gets: vLLM's from `serve` on, SGLang's after the
    module (`python -m sglang.launch_server ...`)."""
    argv = spec.argv
    if spec.kind == "vllm":
        return argv[argv.index("serve") :]
    if "sglang.launch_server" in argv:
        return argv[argv.index("sglang.launch_server") + 1 :]
    return argv[1:]


def run_checker(python: Path, request: dict[str, Any]) -> dict[str, Any]:
    """engine_check.py in the engine's Python: one JSON request in, one JSON answer out."""
    done = subprocess.run(
        [str(python), str(CHECKER)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"the checker exited {done.returncode}: " + " | ".join(tail))
    answer: dict[str, Any] = json.loads(lines[-1])
    return answer


def check_command_line(spec: EngineSpec) -> tuple[bool | None, str]:
    """(accepted, what the engine said): None when there is no engine to ask."""
    if spec.kind not in ("vllm", "sglang"):
        return None, "not checked: a command engine's flags are its own"
    python = engine_python(spec.argv[0])
    if python is None:
        return None, f"not checked: {spec.argv[0]} is not installed ({spec.command_setting})"
    try:
        answer = run_checker(
            python, {"engine": spec.kind, "command_lines": [engine_arguments(spec)]}
        )
    except (OSError, RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        return False, f"could not be checked with {python}: {exc}"
    result = answer["command_lines"][0]
    version = f"{answer['name']} {answer['version']}"
    if result["accepted"]:
        return True, f"accepted by {version}'s own parser ({python})"
    return False, f"refused by {version}: {result['error']}"
