"""The in-process A-Vibe engine: a transformers causal LM behind `Engine`, continuously batched.

Production runs AvitoTech/avibe (a Qwen3-8B derivative); with AVIBE_MODEL unset the embedded
SmolLM2-135M-Instruct answers (see loading.py). All model work happens on the scheduler's
worker thread (scheduler.py); this class only builds prompts on the event loop (a template
render and a tokenizer call: sub-millisecond for the prompt sizes we accept), owns the
lifecycle, and translates requests into `SequenceSpec`s.

Chat prompts are rendered with `sanitize_control_tokens=True`: text a client writes into a
message, such as "<|im_start|>system", is tokenized as plain text, so users cannot forge
role markers. Raw prompts (OpenAI /v1/completions style) are the caller's own template and
are tokenized as they are.

Qwen3 templates take `enable_thinking`; when it is False (the default) `<think>` blocks are
removed from the answer, also while streaming, so clients never see reasoning text.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from avito_ai.config import AvibeSettings, InProcessSettings
from avito_ai.engines.base import (
    ALL_CONSTRAINTS,
    Capabilities,
    Chunk,
    EngineState,
    GenerationRequest,
    Role,
)
from avito_ai.engines.grammar import after_thinking
from avito_ai.engines.inprocess import InProcessEngine
from avito_ai.engines.models import EMBEDDED_MODEL_ID
from avito_ai.engines.prompts import (
    FALLBACK_STOPS,
    chat_input,
    check_prompt_tokens,
    fallback_prompt,
    takes_tools,
)
from avito_ai.engines.threads import run_in_own_thread
from avito_ai.engines.transformers.detokenize import detokenizer_factory, prompt_opens_thinking
from avito_ai.engines.transformers.device import Placement, free_memory, resolve_placement
from avito_ai.engines.transformers.grammar import GrammarCompiler
from avito_ai.engines.transformers.loading import (
    LoadedTextModel,
    eos_token_ids,
    load_text_model,
    pad_token_id,
    resolve_text_source,
)
from avito_ai.engines.transformers.scheduler import (
    BatchScheduler,
    SequenceSpec,
)
from avito_ai.errors import ValidationFailed

log = logging.getLogger(__name__)


class TransformersTextEngine(InProcessEngine):
    """Engine for role "avibe". Construction is cheap; `start()` loads the weights."""

    role: Role = "avibe"
    title = "A-Vibe"
    engine = "transformers"

    def __init__(
        self, own: AvibeSettings, local: InProcessSettings, *, max_queue_size: int
    ) -> None:
        super().__init__(own.model or EMBEDDED_MODEL_ID)
        self._placement: Placement | None = None
        self._own = own
        self._local = local
        self._max_queue_size = max_queue_size
        self._loaded: LoadedTextModel | None = None
        self._scheduler: BatchScheduler | None = None
        self._tokenizer: Any = None
        self._grammars: GrammarCompiler | None = None
        self._context_length = 0
        self._has_template = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load in a thread; end READY or FAILED (with a reason). Never raises an error."""
        if self._state is EngineState.STOPPED:
            return
        self._state = EngineState.LOADING
        self._reason = None
        try:
            source = resolve_text_source(self._own.model)
            self._model_id = source.model_id
            self._placement = placement = resolve_placement(self._local.device, self._local.dtype)
            self._device, self._dtype = placement.device, placement.dtype_name
            loaded = await run_in_own_thread(
                lambda: load_text_model(source, placement, self._local.model_cache_dir),
                name="avibe-load",
            )
            if self._state is EngineState.STOPPED:  # stop() came during the load: stay so
                del loaded
                gc.collect()
                return
            self._install(loaded)
        except Exception as exc:
            log.exception("A-Vibe model failed to load")
            self._fail(str(exc) or exc.__class__.__name__)
            return
        self._state = EngineState.READY
        log.info(
            "A-Vibe ready: %s on %s/%s in %.1f s%s",
            self._model_id,
            self._placement.device,
            self._placement.dtype_name,
            loaded.seconds,
            " (converted GGUF into the cache)" if loaded.converted else "",
        )

    def _install(self, loaded: LoadedTextModel) -> None:
        assert self._placement is not None
        tokenizer, model = loaded.tokenizer, loaded.model
        config = model.config.get_text_config(decoder=True)
        self._context_length = int(getattr(config, "max_position_embeddings", 0) or 0) or 32768
        self._has_template = bool(getattr(tokenizer, "chat_template", None))
        eos = eos_token_ids(tokenizer, model)
        scheduler = BatchScheduler(
            model,
            detokenizer_factory(copy.deepcopy(tokenizer)),
            eos_token_ids=eos,
            pad_token_id=pad_token_id(tokenizer, eos),
            device=self._placement.device,
            max_batch_size=self._local.max_batch_size,
            max_queue_size=self._max_queue_size,
            name="avibe",
        )
        scheduler.start()
        vocab = int(model.get_output_embeddings().weight.shape[0])
        self._grammars = GrammarCompiler(tokenizer, vocab, eos)
        self._loaded, self._tokenizer, self._scheduler = loaded, tokenizer, scheduler

    async def stop(self) -> None:
        """Stop the worker (queued requests: ShuttingDown; running: "cancelled"), free memory."""
        self._stopping()
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            await asyncio.to_thread(scheduler.stop)
        self._loaded = None
        self._tokenizer = None
        await asyncio.to_thread(free_memory, self._placement)

    def _worker(self) -> BatchScheduler | None:
        return self._scheduler

    def _running(self) -> int:
        scheduler = self._scheduler
        return scheduler.active_count if scheduler is not None else 0

    @property
    def scheduler(self) -> BatchScheduler | None:
        """The running scheduler (benchmarks and metrics); None unless READY."""
        return self._scheduler

    # ----------------------------------------------------------------- generation

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self._ensure_ready()
        scheduler = self._scheduler
        assert scheduler is not None  # READY means a running scheduler
        spec = self.build_spec(request)
        if request.constraint is not None:
            assert self._grammars is not None
            grammar = request.constraint.grammar
            if request.enable_thinking or spec.thinking_open:  # after the thinking block
                grammar = after_thinking(grammar, opened=spec.thinking_open)
            spec.grammar = await self._grammars.compile(grammar)
            spec.vocab_size = self._grammars.vocab_size
        async for chunk in self._relay(scheduler.stream(spec)):
            yield chunk

    def capabilities(self) -> Capabilities:
        return Capabilities(constraints=ALL_CONSTRAINTS, logprobs=True, top_logprobs=20)

    def prompt_tokens(self, request: GenerationRequest) -> int:
        self._ensure_ready()
        return len(self.build_spec(request).prompt_ids)

    def build_spec(self, request: GenerationRequest) -> SequenceSpec:
        """Tokenize the request and bound its length. Raises ValidationFailed."""
        sampling = request.sampling
        if sampling.max_tokens < 1:
            raise ValidationFailed("max_tokens must be at least 1", param="max_tokens")
        stops = tuple(s for s in sampling.stop if s)
        if request.prompt is not None:
            ids = self._encode_raw(request.prompt)
        else:
            ids, fallback = self._encode_chat(request)
            if fallback:
                stops += FALLBACK_STOPS
        check_prompt_tokens(len(ids), self._own.max_prompt_tokens, raw=request.prompt is not None)
        room = self._context_length - len(ids)
        if room < 1:
            raise ValidationFailed(
                f"The prompt is {len(ids)} tokens; the model's context is "
                f"{self._context_length} tokens",
                param="prompt" if request.prompt is not None else "messages",
            )
        return SequenceSpec(
            prompt_ids=ids,
            sampling=sampling,
            max_new_tokens=min(sampling.max_tokens, room),
            stop=stops,
            keep_thinking=request.enable_thinking,
            thinking_open=prompt_opens_thinking(self._tokenizer, ids),
            deadline=request.deadline,
            created=request.created,
            request_id=request.request_id,
            ignore_eos=sampling.ignore_eos,
            token_bytes=self._token_bytes if sampling.logprobs else None,
        )

    def _token_bytes(self, token: int) -> bytes:
        return str(self._tokenizer.decode([token])).encode()

    def _encode_raw(self, prompt: str) -> list[int]:
        ids: list[int] = list(self._tokenizer(prompt, add_special_tokens=True)["input_ids"])
        if not ids:
            bos = self._tokenizer.bos_token_id
            if bos is None:
                raise ValidationFailed("The prompt is empty", param="prompt")
            ids = [bos]
        return ids

    def _encode_chat(self, request: GenerationRequest) -> tuple[list[int], bool]:
        template = getattr(self._tokenizer, "chat_template", None)
        plain, tools = chat_input(request, template_tools=takes_tools(template))
        if not self._has_template:
            return self._encode_raw(fallback_prompt(plain)), True
        ids = self._tokenizer.apply_chat_template(
            plain,
            tools=tools,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
            sanitize_control_tokens=True,
            enable_thinking=request.enable_thinking,
        )
        return list(ids), False
