"""A-Vibe on OpenVINO GenAI's continuous-batching pipeline: the CPU default.

The worker, its step loop, rows and results are the OpenVINO engines' shared ones
(`worker.py`); this engine loads a GGUF file or an IR folder (`loading.py`), and builds and
tokenizes prompts on the event loop (a template render and one tokenizer call), so what it
adds to the pipeline is token ids.

Sampling is the pipeline's: temperature, top-p/k, repetition penalty and the request's own
`rng_seed`; stop strings are applied by the text pipeline (it cuts the text exactly as the
transformers engine does, and the worker cancels the request).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from avito_ai.config import Settings
from avito_ai.engines.base import EngineState, GenerationRequest, Role
from avito_ai.engines.models import EMBEDDED_MODEL_ID
from avito_ai.engines.openvino.generation import Prepared, constrain, generation_config
from avito_ai.engines.openvino.worker import PipelineEngine
from avito_ai.engines.prompts import (
    FALLBACK_STOPS,
    chat_input,
    check_prompt_tokens,
    fallback_prompt,
    neutralize,
    special_spellings,
    takes_tools,
)
from avito_ai.engines.textstream import THINK_OPEN
from avito_ai.engines.threads import run_in_own_thread
from avito_ai.errors import ValidationFailed

if TYPE_CHECKING:
    from avito_ai.engines.openvino.loading import LoadedPipeline

log = logging.getLogger(__name__)


class OpenVINOTextEngine(PipelineEngine):
    """Engine for role "avibe" on OpenVINO GenAI. Construction is cheap; start() loads."""

    role: Role = "avibe"
    title = "A-Vibe"
    engine = "openvino"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.role("avibe").model or EMBEDDED_MODEL_ID, settings)
        self._tokenizer: Any = None
        self._has_template = False
        self._takes_tools = False
        self._specials: list[str] = []
        self._context = 0  # the model's context in tokens; 0: unknown

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load in a thread; end READY or FAILED (with a reason). Never raises an error."""
        if self._state is EngineState.STOPPED:
            return
        from avito_ai.engines.openvino.loading import load_pipeline, resolve_source

        try:
            source = resolve_source(self._settings.role("avibe").model)
            self._model_id = source.model_id
            loaded = await run_in_own_thread(
                lambda: load_pipeline(source, self._settings), name="avibe-load"
            )
            if self.status().state is EngineState.STOPPED:  # stop() came during the load
                return
            self._install(loaded)
        except Exception as exc:
            log.exception("A-Vibe model failed to load")
            self._fail(str(exc) or type(exc).__name__)
            return
        self._state = EngineState.READY
        log.info(
            "A-Vibe ready: %s on OpenVINO CPU (%s) in %.1f s",
            self._model_id,
            loaded.precision,
            loaded.seconds,
        )

    def _install(self, loaded: LoadedPipeline) -> None:
        tokenizer = loaded.tokenizer
        self._has_template = bool(tokenizer.chat_template)
        self._takes_tools = takes_tools(tokenizer.chat_template)
        vocab = (
            t.decode("utf-8", "replace") if isinstance(t, bytes) else t
            for t in tokenizer.get_vocab()
        )
        self._specials = special_spellings(vocab)
        self._context = loaded.context_length or 0
        self._tokenizer = tokenizer
        self._device, self._dtype = "cpu", loaded.precision
        self._start_worker(loaded.pipe, tokenizer)

    async def stop(self) -> None:
        await super().stop()
        self._tokenizer = None

    # ----------------------------------------------------------------- generation

    def prompt_tokens(self, request: GenerationRequest) -> int:
        self._ensure_ready()
        return self.prepare(request).prompt_tokens

    def prepare(self, request: GenerationRequest) -> Prepared:
        """Render and tokenize the prompt, map the sampling. Raises ValidationFailed."""
        sampling = request.sampling
        if sampling.max_tokens < 1:
            raise ValidationFailed("max_tokens must be at least 1", param="max_tokens")
        stops = tuple(s for s in sampling.stop if s)
        if request.prompt is not None:
            if not request.prompt:
                raise ValidationFailed("The prompt is empty", param="prompt")
            prompt, special = request.prompt, True
        else:
            plain, tools = chat_input(request, template_tools=self._takes_tools)
            if self._has_template:
                for message in plain:
                    message["content"] = neutralize(message["content"], self._specials)
                prompt = self._tokenizer.apply_chat_template(
                    plain,
                    add_generation_prompt=True,
                    tools=tools,
                    extra_context={"enable_thinking": request.enable_thinking},
                )
            else:
                prompt = fallback_prompt(plain)
                stops += FALLBACK_STOPS
            special = False  # the template wrote the special tokens it wants
        input_ids = self._tokenizer.encode(prompt, add_special_tokens=special).input_ids
        tokens = int(input_ids.shape[1])
        check_prompt_tokens(
            tokens, self._settings.max_prompt_tokens, raw=request.prompt is not None
        )
        room = self._context - tokens if self._context else sampling.max_tokens
        if room < 1:  # (the tokenizer cuts a longer prompt at the context: "at least")
            raise ValidationFailed(
                f"The prompt is at least {tokens} tokens; the model's context is "
                f"{self._context} tokens",
                param="prompt" if request.prompt is not None else "messages",
            )
        config = generation_config(sampling)
        config.max_new_tokens = min(sampling.max_tokens, room)
        opened = prompt.rstrip().endswith(THINK_OPEN)
        constrain(config, request, thinking_opened=opened)
        return Prepared(
            request=request,
            input_ids=input_ids,
            prompt_tokens=tokens,
            config=config,
            stop=stops,
            keep_thinking=request.enable_thinking,
            thinking_open=opened,
        )

    def _add_request(self, request_id: int, prepared: Prepared) -> Any:
        return self._pipe.add_request(request_id, prepared.input_ids, prepared.config)
