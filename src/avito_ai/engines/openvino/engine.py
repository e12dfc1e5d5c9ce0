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

from avito_ai.config import AvibeSettings, InProcessSettings, OpenVINOSettings
from avito_ai.engines.base import GenerationRequest, Role
from avito_ai.engines.models import EMBEDDED_MODEL_ID
from avito_ai.engines.openvino.generation import Prepared, request_config
from avito_ai.engines.openvino.worker import PipelineEngine
from avito_ai.engines.prompts import (
    FALLBACK_STOPS,
    chat_input,
    check_prompt_tokens,
    fallback_prompt,
    neutralize,
    takes_tools,
)
from avito_ai.errors import ValidationFailed

if TYPE_CHECKING:
    from avito_ai.engines.openvino.loading import LoadedPipeline

log = logging.getLogger(__name__)


class OpenVINOTextEngine(PipelineEngine):
    """Engine for role "avibe" on OpenVINO GenAI. Construction is cheap; start() loads."""

    role: Role = "avibe"
    title = "A-Vibe"
    engine = "openvino"

    def __init__(
        self,
        own: AvibeSettings,
        local: InProcessSettings,
        settings: OpenVINOSettings,
        *,
        max_queue_size: int,
    ) -> None:
        super().__init__(
            own.model or EMBEDDED_MODEL_ID, local, settings, max_queue_size=max_queue_size
        )
        self._own = own
        self._has_template = False
        self._takes_tools = False

    # ------------------------------------------------------------------ lifecycle

    def _load(self) -> LoadedPipeline:
        from avito_ai.engines.openvino.loading import load_pipeline, resolve_source

        source = resolve_source(self._own.model)
        self._model_id = source.model_id
        return load_pipeline(source, self._local, self._settings)

    def _install(self, loaded: LoadedPipeline) -> None:
        template = loaded.tokenizer.chat_template
        self._has_template = bool(template)
        self._takes_tools = takes_tools(template)
        self._context = loaded.context_length or 0

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
        check_prompt_tokens(tokens, self._own.max_prompt_tokens, raw=request.prompt is not None)
        # (The tokenizer cuts a longer prompt at the context: "at least".)
        config, opened = request_config(
            request, prompt, tokens, self._context, counted=f"at least {tokens} tokens"
        )
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
