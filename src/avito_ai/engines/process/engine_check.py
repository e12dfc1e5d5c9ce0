# mypy: ignore-errors
"""Run in vLLM's or SGLang's own environment (never imported by the service): command
lines checked by the engine's own parser. One JSON request on stdin, one JSON answer line
on stdout (check.py, `avito-ai config --check-engines`, tests/contract).

    {"engine": "vllm", "command_lines": [["serve", "model", "--dtype", "float16", ...]]}
    -> {"name": "vLLM", "version": "0.33.0", "command_lines": [{"accepted": true, ...}]}

vLLM: its `serve` parser built as `vllm` builds it, then its serve-argument validation
(`validate_parsed_serve_args`, `validate_api_server_args`), the engine arguments it makes
(`AsyncEngineArgs.from_cli_args`) and the configs they carry (structured outputs,
speculative decoding, the image limit). Without a GPU vLLM cannot infer its device and
builds no parser at all: the CPU platform is forced first, as vLLM's own `vllm bench`
does (vllm/entrypoints/cli/main.py). The flags do not depend on the platform.

SGLang: `prepare_server_args`, what `python -m sglang.launch_server` calls first, which
parses and validates the arguments into its ServerArgs.

Importable too (tests/contract's worker keeps one engine imported for many checks).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import typing


def _error_text(exc: BaseException, stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = [line for line in lines if "error" in line.lower()] or lines
    return " ".join(said[-3:]) or f"{type(exc).__name__}: {exc}"


class Vllm:
    name = "vLLM"

    def __init__(self) -> None:
        from vllm import platforms

        if platforms.current_platform.is_unspecified():  # no GPU: as `vllm bench` does
            from vllm.platforms.cpu import CpuPlatform

            platforms.current_platform = CpuPlatform()
        # The check is of the arguments: with HF_HUB_OFFLINE vLLM's engine arguments look the
        # model up in the local cache, which a machine that only checks has not got.
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = False
        import vllm
        from vllm.entrypoints.cli import serve
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        self.version = vllm.__version__
        parser = FlexibleArgumentParser(prog="vllm")
        subparsers = parser.add_subparsers(required=False, dest="subparser")
        self.serve = serve.cmd_init()[0]
        self.serve.subparser_init(subparsers).set_defaults(dispatch_function=self.serve.cmd)
        self.parser = parser

    def check(self, argv: list[str]) -> dict:
        import vllm
        from vllm.entrypoints.common.cli_args import validate_api_server_args
        from vllm.reasoning import ReasoningParserManager
        from vllm.tool_parsers import ToolParserManager

        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                args = self.parser.parse_args(argv)
            self.serve.validate(args)  # validate_parsed_serve_args
            validate_api_server_args(args)
            if args.reasoning_parser and (
                args.reasoning_parser not in ReasoningParserManager.list_registered()
            ):
                raise KeyError(f"invalid reasoning parser: {args.reasoning_parser}")
            if args.tool_call_parser and (
                args.tool_call_parser not in ToolParserManager.list_registered()
            ):
                raise KeyError(f"invalid tool call parser: {args.tool_call_parser}")
            if args.model_tag is not None:  # as `vllm serve` does before it starts
                args.model = args.model_tag
            engine = vllm.AsyncEngineArgs.from_cli_args(args)
            speculative = self._speculative(engine.speculative_config)
        except (SystemExit, Exception) as exc:  # argparse exits 2; validation raises
            return {"accepted": False, "error": _error_text(exc, stderr.getvalue())}
        structured = engine.structured_outputs_config
        return {
            "accepted": True,
            "model": engine.model,
            "served_model_name": engine.served_model_name,
            "dtype": engine.dtype,
            "gpu_memory_utilization": engine.gpu_memory_utilization,
            "tensor_parallel_size": engine.tensor_parallel_size,
            "max_model_len": engine.max_model_len,
            "scheduling_policy": engine.scheduling_policy,
            "structured_outputs": {
                "backend": structured.backend,
                "disable_any_whitespace": structured.disable_any_whitespace,
            },
            "speculative": speculative,
            "limit_mm_per_prompt": engine.limit_mm_per_prompt,
            "otlp_traces_endpoint": engine.otlp_traces_endpoint,
            "tool_call_parser": args.tool_call_parser,
            "enable_auto_tool_choice": args.enable_auto_tool_choice,
            "reasoning_parser": args.reasoning_parser,
            "host": args.host,
            "port": args.port,
            "enforce_eager": engine.enforce_eager,
        }

    @staticmethod
    def _speculative(config: dict | None) -> dict | None:
        """The draft's settings against SpeculativeConfig's own fields and methods (the
        config itself is built from the target model's, which needs the weights)."""
        if config is None:
            return None
        import dataclasses

        from vllm.config import SpeculativeConfig

        fields = {f.name for f in dataclasses.fields(SpeculativeConfig)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(f"SpeculativeConfig has no {unknown}")
        hints = typing.get_type_hints(SpeculativeConfig)
        methods = set(_literals(hints["method"]))
        if config.get("method") not in methods:
            raise ValueError(f"speculative method {config.get('method')} not in {methods}")
        return config


def _literals(hint: object) -> list[str]:
    found: list[str] = []
    for arg in typing.get_args(hint):
        if isinstance(arg, str):
            found.append(arg)
        else:
            found += _literals(arg)
    return found


class Sglang:
    name = "SGLang"

    def __init__(self) -> None:
        import sglang

        self.version = sglang.__version__

    def check(self, argv: list[str]) -> dict:
        from sglang.srt.server_args import prepare_server_args

        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                args = prepare_server_args(argv)
        except (SystemExit, Exception) as exc:
            return {"accepted": False, "error": _error_text(exc, stderr.getvalue())}
        names = (
            "model_path", "served_model_name", "dtype", "mem_fraction_static", "tp_size",
            "context_length", "host", "port", "enable_metrics", "tool_call_parser",
            "reasoning_parser", "constrained_json_disable_any_whitespace",
            "enable_priority_scheduling", "schedule_low_priority_values_first",
            "default_priority_value", "schedule_policy", "speculative_algorithm",
            "speculative_draft_model_path", "speculative_num_steps",
            "speculative_eagle_topk", "speculative_num_draft_tokens", "enable_trace",
            "otlp_traces_endpoint", "grammar_backend", "disable_cuda_graph",
        )  # fmt: skip
        return {"accepted": True, **{n: getattr(args, n, None) for n in names}}


ENGINES = {"vllm": Vllm, "sglang": Sglang}


def main() -> None:
    request = json.loads(sys.stdin.read())
    engine = ENGINES[request["engine"]]()
    results = [engine.check(list(argv)) for argv in request.get("command_lines", [])]
    answer = {"name": engine.name, "version": engine.version, "command_lines": results}
    sys.stdout.write("\n" + json.dumps(answer, default=str) + "\n")


if __name__ == "__main__":
    main()
