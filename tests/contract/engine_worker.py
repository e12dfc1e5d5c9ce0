"""Runs in vLLM's or SGLang's own environment (its Python), never in the service's: the
engine imported once, then JSON requests on stdin, one JSON answer line each on the
original stdout (everything the engine prints goes to stderr).

    python engine_worker.py vllm|sglang

Operations:
  command_lines  the service's command lines through the engine's own parser
                 (src/avito_ai/engines/process/engine_check.py, what `avito-ai config
                 --check-engines` runs)
  requests       request bodies through the engine's request models and its conversion
                 to sampling parameters; what each became, and fields it does not know
  stream         a chat or completions event stream as the engine's server writes it,
                 built from its response classes and its own reasoning and tool parsers
                 fed model text token by token (a Qwen3-style tokenizer given as a folder)
  trace          the engine's own tracer set up as it sets it up, one span exported
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2] / "src" / "avito_ai" / "engines" / "process"))

import engine_check  # noqa: E402  (the service's checker, by path: nothing else of it)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "-inf" if value < 0 else "inf"
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "model_dump"):  # a pydantic object of the engine's
        return _jsonable(value.model_dump(exclude_none=True))
    return repr(value)


# --- vLLM --------------------------------------------------------------------------------


class Vllm(engine_check.Vllm):
    def requests(self, items: list[dict]) -> list[dict]:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        out = []
        for item in items:
            body = item["body"]
            model = (
                ChatCompletionRequest if item["path"] == "/chat/completions" else CompletionRequest
            )
            try:
                request = model.model_validate(body)
                params = request.to_sampling_params(body["max_tokens"], {})
            except Exception as exc:  # a 400 from vLLM
                out.append({"accepted": False, "error": f"{type(exc).__name__}: {exc}"})
                continue
            known = set(model.model_fields)
            structured = params.structured_outputs
            out.append(
                {
                    "accepted": True,
                    "unknown_fields": sorted(set(body) - known),
                    "n": params.n,
                    "temperature": params.temperature,
                    "top_p": params.top_p,
                    "top_k": params.top_k,
                    "seed": params.seed,
                    "stop": params.stop,
                    "max_tokens": params.max_tokens,
                    "logprobs": params.logprobs,
                    "presence_penalty": params.presence_penalty,
                    "frequency_penalty": params.frequency_penalty,
                    "repetition_penalty": params.repetition_penalty,
                    "ignore_eos": params.ignore_eos,
                    "priority": request.priority,
                    "structured": None
                    if structured is None
                    else {
                        k: v
                        for k in ("json", "regex", "grammar", "json_object", "choice")
                        if (v := getattr(structured, k, None)) is not None
                    },
                    "include_usage": bool(
                        request.stream_options and request.stream_options.include_usage
                    ),
                    "tool_choice": _jsonable(getattr(request, "tool_choice", None)),
                    "tools": [t.function.name for t in getattr(request, "tools", None) or []],
                    "parallel_tool_calls": getattr(request, "parallel_tool_calls", None),
                    "chat_template_kwargs": getattr(request, "chat_template_kwargs", None),
                    "messages": _vllm_messages(body),
                }
            )
        return out

    def stream(self, spec: dict) -> list[str]:
        """Chat: reasoning (qwen3 parser) until it ends, then content and tool calls (hermes
        parser) on the text after it, as vLLM's serving loop hands them over; each delta a
        ChatCompletionStreamResponse written as vLLM writes it (model_dump_json with
        exclude_unset). Completions: CompletionStreamResponse with its logprobs."""
        from transformers import AutoTokenizer
        from vllm.entrypoints.generate.base.protocol import DeltaMessage
        from vllm.entrypoints.openai.chat_completion.protocol import (
            ChatCompletionLogProb,
            ChatCompletionLogProbs,
            ChatCompletionLogProbsContent,
            ChatCompletionRequest,
            ChatCompletionResponseStreamChoice,
            ChatCompletionStreamResponse,
        )
        from vllm.entrypoints.openai.completion.protocol import (
            CompletionLogProbs,
            CompletionResponseStreamChoice,
            CompletionStreamResponse,
        )
        from vllm.entrypoints.serve.engine.protocol import UsageInfo
        from vllm.reasoning import ReasoningParserManager
        from vllm.tool_parsers import ToolParserManager

        tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
        text = spec.get("model_text", "")
        ids = tok.encode(text, add_special_tokens=False)
        lines: list[str] = []
        rid = "chatcmpl-contract"

        def emit(chunk: Any) -> None:
            lines.append(chunk.model_dump_json(exclude_unset=True, exclude_none=not chunk.choices))

        logprob_of = spec.get("logprobs") or {}
        if spec["kind"] == "choices":  # n sampled choices, their tokens interleaved
            return self._choices(tok, spec["texts"])
        if spec["kind"] == "completions":
            for i, token_id in enumerate(ids):
                piece = tok.decode([token_id])
                score = _float(logprob_of.get(str(i), -0.25))
                logprobs = CompletionLogProbs(
                    text_offset=[0], token_logprobs=[max(score, -9999.0)], tokens=[piece],
                    top_logprobs=[{piece: max(score, -9999.0)}],
                )  # fmt: skip
                choice = CompletionResponseStreamChoice(index=0, text=piece, logprobs=logprobs)
                emit(CompletionStreamResponse(id="cmpl-contract", model="m", choices=[choice]))
            end = CompletionResponseStreamChoice(index=0, text="", finish_reason="length")
            emit(CompletionStreamResponse(id="cmpl-contract", model="m", choices=[end]))
        else:
            request = ChatCompletionRequest.model_validate(spec["request"])
            reasoning = ReasoningParserManager.get_reasoning_parser("qwen3")(tok)
            tools = ToolParserManager.get_tool_parser("hermes")(tok) if request.tools else None
            prev_text, prev_ids = "", []
            content_from: int | None = None if spec.get("thinking") else 0
            called = False
            for i, token_id in enumerate(ids):
                cur_ids = ids[: i + 1]
                cur_text = tok.decode(cur_ids)
                delta_text = cur_text[len(prev_text) :]
                delta: DeltaMessage | None
                if content_from is None:
                    delta = reasoning.extract_reasoning_streaming(
                        prev_text, cur_text, delta_text, prev_ids, cur_ids, [token_id]
                    )
                    if reasoning.is_reasoning_end([token_id]):
                        content_from = i + 1
                elif tools is not None:
                    c_ids = ids[content_from : i + 1]
                    c_prev = tok.decode(c_ids[:-1])
                    c_text = tok.decode(c_ids)
                    delta = tools.extract_tool_calls_streaming(
                        c_prev,
                        c_text,
                        c_text[len(c_prev) :],
                        c_ids[:-1],
                        c_ids,
                        [token_id],
                        request,
                    )
                else:
                    delta = DeltaMessage(content=delta_text)
                prev_text, prev_ids = cur_text, cur_ids
                if delta is None:
                    continue
                called = called or bool(delta.tool_calls)
                logprobs = None
                if request.logprobs:
                    piece = tok.decode([token_id])
                    score = max(_float(logprob_of.get(str(i), -0.25)), -9999.0)
                    top = [
                        ChatCompletionLogProb(
                            token=piece, logprob=score, bytes=list(piece.encode())
                        )
                    ]
                    logprobs = ChatCompletionLogProbs(
                        content=[ChatCompletionLogProbsContent(
                            token=piece, logprob=score, bytes=list(piece.encode()), top_logprobs=top
                        )]
                    )  # fmt: skip
                choice = ChatCompletionResponseStreamChoice(index=0, delta=delta, logprobs=logprobs)
                emit(ChatCompletionStreamResponse(id=rid, model="m", choices=[choice]))
            finish = "tool_calls" if called else spec.get("finish", "stop")
            end = ChatCompletionResponseStreamChoice(
                index=0, delta=DeltaMessage(content=""), finish_reason=finish
            )
            emit(ChatCompletionStreamResponse(id=rid, model="m", choices=[end]))
        usage = UsageInfo(prompt_tokens=7, completion_tokens=len(ids), total_tokens=7 + len(ids))
        last = (
            CompletionStreamResponse
            if spec["kind"] == "completions"
            else ChatCompletionStreamResponse
        )
        emit(last(id=rid, model="m", choices=[], usage=usage))
        return lines

    @staticmethod
    def _choices(tok: Any, texts: list[str]) -> list[str]:
        from vllm.entrypoints.generate.base.protocol import DeltaMessage
        from vllm.entrypoints.openai.chat_completion.protocol import (
            ChatCompletionResponseStreamChoice,
            ChatCompletionStreamResponse,
        )
        from vllm.entrypoints.serve.engine.protocol import UsageInfo

        return _interleaved(
            tok,
            texts,
            lambda i, piece, finish: ChatCompletionStreamResponse(
                id="c", model="m",
                choices=[ChatCompletionResponseStreamChoice(
                    index=i, delta=DeltaMessage(content=piece), finish_reason=finish
                )],
            ),
            lambda total: ChatCompletionStreamResponse(
                id="c", model="m", choices=[],
                usage=UsageInfo(prompt_tokens=7, completion_tokens=total, total_tokens=7 + total),
            ),
            lambda chunk: chunk.model_dump_json(exclude_unset=True, exclude_none=not chunk.choices),
        )  # fmt: skip

    def error_event(self, message: str) -> str:
        """What vLLM writes when a stream fails after it began."""
        from vllm.entrypoints.serve import create_error_response

        # GenerateBaseServing.create_streaming_error_response, without a server
        return json.dumps(create_error_response(message, "BadRequestError").model_dump())

    def trace(self, endpoint: str) -> None:
        from vllm.tracing.otel import init_otel_tracer

        tracer = init_otel_tracer("vllm.contract", endpoint)
        with tracer.start_as_current_span("vllm-contract-span"):
            pass
        from opentelemetry import trace

        trace.get_tracer_provider().force_flush()


def _vllm_messages(body: dict) -> list[dict]:
    out = []
    for m in body.get("messages", []):
        content = m.get("content")
        parts = [p.get("type") for p in content] if isinstance(content, list) else []
        out.append(
            {"role": m["role"], "parts": parts, "tool_calls": len(m.get("tool_calls") or [])}
        )
    return out


def _interleaved(tok: Any, texts: list[str], chunk: Any, usage: Any, dump: Any) -> list[str]:
    """The choices' tokens in turn (as a server streams n choices of one request), each
    choice's last chunk with its finish reason, then the usage-only chunk."""
    pieces = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        pieces.append(
            [tok.decode(ids[: k + 1])[len(tok.decode(ids[:k])) :] for k in range(len(ids))]
        )
    lines = []
    for step in range(max(len(p) for p in pieces)):
        for i, own in enumerate(pieces):
            if step < len(own):
                lines.append(dump(chunk(i, own[step], "stop" if step == len(own) - 1 else None)))
    lines.append(dump(usage(sum(len(p) for p in pieces))))
    return lines


def _float(value: Any) -> float:
    return float("-inf") if value in ("-inf", None) else float(value)


# --- SGLang ------------------------------------------------------------------------------


class Sglang(engine_check.Sglang):
    def requests(self, items: list[dict]) -> list[dict]:
        from sglang.srt.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
        from sglang.srt.entrypoints.openai.serving_completions import OpenAIServingCompletion

        out = []
        for item in items:
            body = item["body"]
            chat = item["path"] == "/chat/completions"
            model = ChatCompletionRequest if chat else CompletionRequest
            try:
                request = model.model_validate(body)
                if chat:
                    stop = (
                        request.stop
                        if isinstance(request.stop, list)
                        else [request.stop]
                        if request.stop
                        else []
                    )
                    params = request.to_sampling_params(stop, {})
                else:
                    params = OpenAIServingCompletion._build_sampling_params(None, request)
            except Exception as exc:
                out.append({"accepted": False, "error": f"{type(exc).__name__}: {exc}"})
                continue
            known = set(model.model_fields) | {
                f.alias for f in model.model_fields.values() if f.alias
            }
            out.append(
                {
                    "accepted": True,
                    "unknown_fields": sorted(set(body) - known),
                    "n": params.get("n"),
                    "temperature": params.get("temperature"),
                    "top_p": params.get("top_p"),
                    "top_k": params.get("top_k"),
                    "seed": params.get("sampling_seed"),
                    "stop": params.get("stop"),
                    "max_tokens": params.get("max_new_tokens"),
                    "logprobs": request.top_logprobs
                    if chat and request.logprobs
                    else (None if chat else request.logprobs),
                    "presence_penalty": params.get("presence_penalty"),
                    "frequency_penalty": params.get("frequency_penalty"),
                    "repetition_penalty": params.get("repetition_penalty"),
                    "ignore_eos": params.get("ignore_eos"),
                    "priority": request.priority,
                    "structured": {
                        k: params[k]
                        for k in ("json_schema", "regex", "ebnf")
                        if params.get(k) is not None
                    }
                    or None,
                    "include_usage": bool(
                        request.stream_options and request.stream_options.include_usage
                    ),
                    "tool_choice": _jsonable(getattr(request, "tool_choice", None)),
                    "tools": [t.function.name for t in getattr(request, "tools", None) or []],
                    "parallel_tool_calls": getattr(request, "parallel_tool_calls", None),
                    "chat_template_kwargs": getattr(request, "chat_template_kwargs", None),
                    "messages": _vllm_messages(body),
                }
            )
        return out

    def stream(self, spec: dict) -> list[str]:
        """SGLang's serving loop in short: its qwen3 ReasoningParser and its qwen25
        FunctionCallParser fed each token's text; ChatCompletionStreamResponse chunks
        written with model_dump_json (a -inf log probability becomes null)."""
        from sglang.srt.entrypoints.openai.protocol import (
            ChatCompletionResponseStreamChoice,
            ChatCompletionStreamResponse,
            ChatCompletionTokenLogprob,
            ChoiceLogprobs,
            CompletionResponseStreamChoice,
            CompletionStreamResponse,
            DeltaMessage,
            FunctionResponse,
            LogProbs,
            Tool,
            ToolCall,
            TopLogprob,
            UsageInfo,
        )
        from sglang.srt.function_call.function_call_parser import FunctionCallParser
        from sglang.srt.parser.reasoning_parser import ReasoningParser
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
        if spec["kind"] == "choices":
            return _interleaved(
                tok,
                spec["texts"],
                lambda i, piece, finish: ChatCompletionStreamResponse(
                    id="s", model="m",
                    choices=[ChatCompletionResponseStreamChoice(
                        index=i, delta=DeltaMessage(content=piece), finish_reason=finish
                    )],
                ),
                lambda total: ChatCompletionStreamResponse(
                    id="s", model="m", choices=[],
                    usage=UsageInfo(
                        prompt_tokens=7, completion_tokens=total, total_tokens=7 + total
                    ),
                ),
                lambda chunk: chunk.model_dump_json(),
            )  # fmt: skip
        ids = tok.encode(spec["model_text"], add_special_tokens=False)
        pieces = [tok.decode(ids[: i + 1])[len(tok.decode(ids[:i])) :] for i in range(len(ids))]
        logprob_of = spec.get("logprobs") or {}
        lines: list[str] = []
        if spec["kind"] == "completions":
            for i, piece in enumerate(pieces):
                score = _float(logprob_of.get(str(i), -0.25))
                logprobs = LogProbs(
                    text_offset=[0],
                    token_logprobs=[score],
                    tokens=[piece],
                    top_logprobs=[{piece: score}],
                )
                choice = CompletionResponseStreamChoice(
                    index=0, text=piece, logprobs=logprobs, finish_reason=None
                )
                lines.append(
                    CompletionStreamResponse(id="c", model="m", choices=[choice]).model_dump_json()
                )
            end = CompletionResponseStreamChoice(index=0, text="", finish_reason="length")
            lines.append(
                CompletionStreamResponse(id="c", model="m", choices=[end]).model_dump_json()
            )
            usage = UsageInfo(
                prompt_tokens=7, completion_tokens=len(ids), total_tokens=7 + len(ids)
            )
            lines.append(
                CompletionStreamResponse(
                    id="c", model="m", choices=[], usage=usage
                ).model_dump_json()
            )
            return lines
        request = spec["request"]
        tools = [Tool.model_validate(t) for t in request.get("tools") or []]
        reasoning = (
            ReasoningParser("qwen3", stream_reasoning=True) if spec.get("thinking") else None
        )
        calls = FunctionCallParser(tools, "qwen25") if tools else None
        called = False
        for i, piece in enumerate(pieces):
            think, text = (None, piece)
            if reasoning is not None:
                think, text = reasoning.parse_stream_chunk(piece)
            deltas = []
            if think:
                deltas.append(DeltaMessage(reasoning_content=think))
            if text and calls is not None:
                normal, items = calls.parse_stream_chunk(text)
                if normal:
                    deltas.append(DeltaMessage(content=normal))
                for item in items:
                    called = True
                    call = ToolCall(
                        id=f"call_{item.tool_index}" if item.name else None,
                        index=item.tool_index,
                        function=FunctionResponse(name=item.name, arguments=item.parameters),
                    )
                    deltas.append(DeltaMessage(tool_calls=[call]))
            elif text:
                deltas.append(DeltaMessage(content=text))
            for delta in deltas:
                logprobs = None
                if request.get("logprobs"):
                    score = _float(logprob_of.get(str(i), -0.25))
                    top = [TopLogprob(token=piece, logprob=score, bytes=list(piece.encode()))]
                    logprobs = ChoiceLogprobs(content=[ChatCompletionTokenLogprob(
                        token=piece, logprob=score, bytes=list(piece.encode()), top_logprobs=top
                    )])  # fmt: skip
                choice = ChatCompletionResponseStreamChoice(index=0, delta=delta, logprobs=logprobs)
                lines.append(
                    ChatCompletionStreamResponse(
                        id="s", model="m", choices=[choice]
                    ).model_dump_json()
                )
        finish = "tool_calls" if called else spec.get("finish", "stop")
        end = ChatCompletionResponseStreamChoice(
            index=0, delta=DeltaMessage(), finish_reason=finish
        )
        lines.append(
            ChatCompletionStreamResponse(id="s", model="m", choices=[end]).model_dump_json()
        )
        usage = UsageInfo(prompt_tokens=7, completion_tokens=len(ids), total_tokens=7 + len(ids))
        lines.append(
            ChatCompletionStreamResponse(
                id="s", model="m", choices=[], usage=usage
            ).model_dump_json()
        )
        return lines

    def error_event(self, message: str) -> str:
        from sglang.srt.entrypoints.openai.serving_base import OpenAIServingBase

        return OpenAIServingBase.create_streaming_error_response(None, message)

    def trace(self, endpoint: str) -> None:
        from sglang.srt.observability import trace as sgl_trace

        sgl_trace.process_tracing_init(endpoint, None)
        with sgl_trace.tracer.start_as_current_span("sglang-contract-span"):
            pass
        from opentelemetry import trace

        trace.get_tracer_provider().force_flush()


ENGINES = {"vllm": Vllm, "sglang": Sglang}


def main() -> None:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the engine's own prints and logs: stderr
    engine = ENGINES[sys.argv[1]]()
    answers.write(
        json.dumps({"ready": True, "name": engine.name, "version": engine.version}) + "\n"
    )
    for line in sys.stdin:
        request = json.loads(line)
        try:
            op = request["op"]
            if op == "command_lines":
                result: Any = [engine.check(list(argv)) for argv in request["command_lines"]]
            elif op == "requests":
                result = engine.requests(request["items"])
            elif op == "stream":
                result = engine.stream(request["spec"])
            elif op == "error_event":
                result = engine.error_event(request["message"])
            elif op == "trace":
                os.environ.update(request.get("environment") or {})
                engine.trace(request["endpoint"])
                result = True
            else:
                raise ValueError(f"unknown op {op}")
            answers.write(json.dumps({"ok": True, "result": _jsonable(result)}) + "\n")
        except Exception:
            answers.write(json.dumps({"ok": False, "error": traceback.format_exc()}) + "\n")


if __name__ == "__main__":
    main()
