"""Command line: argv → settings → run. Nothing else in the package touches argv."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from avito_ai import __version__
from avito_ai.config import ConfigError, Settings, load_settings
from avito_ai.observability.logging import configure_logging, log_file_problem


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avito-ai", description="Avito AI API")
    parser.add_argument("--version", action="version", version=f"avito-ai {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="start the development server (uvicorn)")
    serve.add_argument("--host", help="bind address (default: HOST or 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (default: PORT or 8085)")
    config = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    config.add_argument("--json", action="store_true", help="print JSON instead of KEY=value")
    config.add_argument(
        "--example",
        action="store_true",
        help="print .env.example: every variable with its description and default",
    )
    config.add_argument(
        "--check-engines",
        action="store_true",
        help="run each engine command line through the installed engine's own parser "
        "(vLLM, SGLang: in their environments; exit 1 if one is refused)",
    )
    batch = sub.add_parser(
        "batch",
        help="run a JSONL file of requests on a running service's Batch API, write the output",
    )
    batch.add_argument("file", help="the input: one request a line (OpenAI's batch format)")
    batch.add_argument("-o", "--output", required=True, help="where the output lines go")
    batch.add_argument(
        "--endpoint",
        help="/v1/chat/completions, /v1/completions or /v1/responses (default: the first "
        "line's url)",
    )
    batch.add_argument("--url", help="the service (default: AVITO_AI_URL or http://127.0.0.1:PORT)")
    batch.add_argument("--api-key", help="an API key (default: AVITO_AI_API_KEY)")
    return parser


def _batch_view() -> dict[str, Any]:
    from avito_ai.batches.settings import load_batch_settings

    try:
        return load_batch_settings().public_view()
    except ConfigError as exc:
        print(f"avito-ai: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _batch(args: argparse.Namespace) -> None:
    """`avito-ai batch`: the Batch API from the command line (avito_ai/batches/client.py)."""
    import os
    from pathlib import Path

    import httpx

    from avito_ai.batches.client import BatchCommandError, run

    port = os.environ.get("PORT", "8085")
    url = args.url or os.environ.get("AVITO_AI_URL") or f"http://127.0.0.1:{port}"
    try:
        status = run(
            Path(args.file),
            Path(args.output),
            url=url,
            api_key=args.api_key or os.environ.get("AVITO_AI_API_KEY"),
            endpoint=args.endpoint,
        )
    except KeyboardInterrupt:
        print(
            "\navito-ai: interrupted; the batch goes on in the service: run the same command "
            "again to reattach to it",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except (BatchCommandError, OSError, httpx.HTTPError) as exc:
        print(f"avito-ai: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(status)


def checked_settings(*, serving: bool = True, **overrides: object) -> Settings:
    """Settings from the environment; ConfigError (one line naming the variable) on a bad
    value, or a LOG_FILE that cannot be written (the start-up step that makes its folder and
    opens it, as the server will). `serving`: also refuse a configured backend whose
    libraries are not installed (a light install asked for the transformers engine), naming
    the extra to install, or an engine process whose program is not there."""
    from avito_ai.engines.process.commands import engine_problem
    from avito_ai.engines.registry import missing_extra

    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    problems = (
        missing_extra(settings.engines) if serving else None,
        engine_problem(settings.engines) if serving else None,
        log_file_problem(settings.log_file),  # (`config` too: it says what serving would)
    )
    for problem in problems:
        if problem is not None:
            raise ConfigError(problem)
    return settings


def settings_or_exit(*, serving: bool = True, **overrides: object) -> Settings:
    """`checked_settings`, or one line on stderr and exit 2."""
    try:
        return checked_settings(serving=serving, **overrides)
    except ConfigError as exc:
        print(f"avito-ai: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _engine_lines(settings: Settings, check: bool) -> dict[str, dict[str, Any]]:
    """The engine command lines this configuration starts (port: *_ENGINE_PORT, or the
    free one chosen at start shown as 0), and with `check` what the installed engine's own
    parser says of each."""
    from avito_ai.engines.process.check import check_command_line
    from avito_ai.engines.process.commands import engine_spec

    lines: dict[str, dict[str, Any]] = {}
    for role in settings.engine_processes():
        spec = engine_spec(role, settings.engines, settings.role(role).engine_port)
        entry: dict[str, Any] = {"engine": spec.kind, "command_line": shlex.join(spec.argv)}
        if check:
            accepted, said = check_command_line(spec)
            entry.update(accepted=accepted, check=said)
        lines[role] = entry
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    if command == "batch":
        _batch(args)
    if command == "config" and args.example:
        from avito_ai.config.example import env_example

        print(env_example(), end="")
        return
    if command == "config":
        settings = settings_or_exit(serving=False)
        view = settings.public_view()
        view.update(_batch_view())  # the Batch API's own class (avito_ai/batches/settings.py)
        engines = _engine_lines(settings, check=args.check_engines)
        if args.json:
            view["ENGINE_COMMAND_LINES"] = engines
            print(json.dumps(view, indent=2, ensure_ascii=False, default=str))
        else:
            for key, value in view.items():
                print(f"{key}={'' if value is None else value}")
            for role, engine in engines.items():  # comments: the output stays a .env
                print(f"# {role} engine ({engine['engine']}): {engine['command_line']}")
                if engine.get("check"):
                    print(f"#   {engine['check']}")
        if any(e.get("accepted") is False for e in engines.values()):
            raise SystemExit(1)
        return
    settings = settings_or_exit(host=getattr(args, "host", None), port=getattr(args, "port", None))
    configure_logging(settings.log_level, settings.log_format, settings.log_file)
    from avito_ai.server import serve

    serve(settings)
