"""The in-process A-Vision engine: a transformers image-text-to-text model behind `Engine`.

Production runs AvitoTech/avision (a Qwen2.5-VL-7B derivative); any checkpoint that
`AutoModelForImageTextToText` + `AutoProcessor` can load works the same way (tiny random
Qwen2.5-VL and Idefics3 models are tested).

Threads. `model.generate()` is a blocking loop of forward passes, so it never runs on the
event loop. Requests run on ONE worker thread, one at a time, through the same bridge as the
text scheduler (`engines/bridge.py`: bounded queue, cancel flags, deadline-aware streams):
the chat prompt, image preprocessing, the vision encoder, prefill and decoding all happen
there. A StoppingCriteria sees every new token right after it is appended: it feeds it
through the request's `Sequence` (the text engine's sampler and text pipeline: `<think>`
blocks stripped, stop strings honoured the same way) and stops `generate()` when the answer
is finished, the client went away, the deadline passed or the engine stops - so the worker
is free within one forward pass.

Why one request at a time (no batching): Qwen2.5-VL computes 3-D "mrope" position ids from
each prompt's image grid and keeps the per-sequence `rope_deltas` on the model object
between prefill and decode; mixing requests with different image counts and sizes in one
padded batch, or joining a running batch, is fragile. Vision requests are dominated by the
image prefill anyway. A bounded queue in front (MAX_QUEUE_SIZE) turns overload into
`Overloaded` at once.

Sampling uses the request's own `torch.Generator` (RowSampler), never the global RNG: the
text engine samples in another thread of the same process, and "same seed, same answer"
must hold whatever it does. `generate()` runs in greedy mode and a last logits processor
forces the token the sampler chose.

Big images. Every image is downscaled (aspect kept) to at most AVISION_MAX_PIXELS pixels
(default 1280*28*28, about 1000x1000) before the processor sees it: for Qwen2.5-VL at most
~1280 visual tokens per image; a 4000x4000 photo would otherwise become ~16k tokens and
several GB of activations. The processor's own size limits apply on top.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from avito_ai.config import AvisionSettings, InProcessSettings
from avito_ai.engines.base import (
    ALL_CONSTRAINTS,
    Capabilities,
    Chunk,
    EngineState,
    FinishReason,
    GenerationRequest,
    ImagePart,
    Role,
    TextPart,
)
from avito_ai.engines.bridge import Ticket, WorkerBridge
from avito_ai.engines.grammar import after_thinking
from avito_ai.engines.images import fit_image
from avito_ai.engines.inprocess import InProcessEngine
from avito_ai.engines.prompts import neutralize, special_spellings
from avito_ai.engines.threads import run_in_own_thread
from avito_ai.engines.transformers.detokenize import detokenizer_factory, prompt_opens_thinking
from avito_ai.engines.transformers.device import Placement, free_memory
from avito_ai.engines.transformers.grammar import GrammarCompiler, TokenGrammar
from avito_ai.engines.transformers.sequence import Sequence, SequenceSpec, generation_failure
from avito_ai.errors import AvitoError, Timeout, ValidationFailed

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from avito_ai.engines.transformers.loading import LoadedVisionModel

log = logging.getLogger(__name__)


class TransformersVisionEngine(InProcessEngine):
    """A-Vision on transformers, one request at a time on a dedicated worker thread."""

    role: Role = "avision"
    title = "A-Vision"
    engine = "transformers"

    def __init__(
        self, own: AvisionSettings, local: InProcessSettings, *, max_queue_size: int
    ) -> None:
        # Cheap on purpose: nothing is imported or loaded until start().
        super().__init__(own.model)
        self._placement: Placement | None = None
        self._local = local
        self._loaded: LoadedVisionModel | None = None
        self._eos: frozenset[int] = frozenset()
        self._new_detokenizer: Callable[[], Any] | None = None
        self._grammars: GrammarCompiler | None = None
        self._bridge: WorkerBridge[_Job] = WorkerBridge(
            max_queue_size=max_queue_size, name="avision-generate"
        )
        self._job: Ticket[_Job] | None = None  # worker-only: the one it generates
        self._max_pixels: int = own.max_pixels
        self._started = False
        self._specials: list[str] = []  # special-token spellings user text must not forge

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load processor and weights in a thread; end READY or FAILED, never raise."""
        if self._started:
            return
        self._started = True
        began = time.monotonic()
        try:
            loaded, placement = await run_in_own_thread(self._load, "avision-load")
        except Exception as exc:  # every failure becomes a readable status, not a crash
            self._fail(str(exc) or type(exc).__name__)
            return
        if self._state is EngineState.STOPPED:  # stop() came while we were loading
            del loaded
            gc.collect()
            return
        from avito_ai.engines.transformers.loading import eos_token_ids

        tokenizer = loaded.processor.tokenizer
        self._loaded, self._placement = loaded, placement
        self._device, self._dtype = placement.device, placement.dtype_name
        self._eos = frozenset(eos_token_ids(tokenizer, loaded.model))
        self._new_detokenizer = detokenizer_factory(copy.deepcopy(tokenizer))
        self._specials = special_spellings(tokenizer.get_vocab())
        vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
        self._grammars = GrammarCompiler(tokenizer, vocab, self._eos)
        self._bridge.start(self._run)
        self._state = EngineState.READY
        log.info(
            "avision: loaded %s on %s/%s in %.1fs",
            self._model_id,
            placement.device,
            placement.dtype_name,
            time.monotonic() - began,
        )

    def _load(self) -> tuple[LoadedVisionModel, Placement]:
        from avito_ai.engines.models import ModelLoadError
        from avito_ai.engines.transformers.device import resolve_placement
        from avito_ai.engines.transformers.loading import load_vision_model

        if not self._model_id:
            raise ModelLoadError("AVISION_MODEL is not set")
        placement = resolve_placement(self._local.device, self._local.dtype)
        return load_vision_model(self._model_id, placement), placement

    async def stop(self) -> None:
        """Cancel running work (it ends "cancelled"), end the worker, drop the weights."""
        self._stopping()  # a load still running ends unused
        await asyncio.to_thread(self._bridge.stop)
        self._loaded = None
        await asyncio.to_thread(free_memory, self._placement)

    def _worker(self) -> WorkerBridge[_Job]:
        return self._bridge

    def _running(self) -> int:
        return int(self._job is not None)  # one at a time

    # ---------------------------------------------------------------- generation (loop side)

    def capabilities(self) -> Capabilities:
        # One request at a time; a chat model of images (no raw-prompt completions).
        return Capabilities(
            constraints=ALL_CONSTRAINTS,
            logprobs=True,
            top_logprobs=20,
            images=True,
            completions=False,
            capacity=1,
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self._ensure_ready()
        grammar = None
        if request.constraint is not None:
            assert self._grammars is not None
            text = request.constraint.grammar
            if request.enable_thinking:  # (Qwen2.5-VL's template does not open the block)
                text = after_thinking(text, opened=False)
            grammar = await self._grammars.compile(text)
        job = _Job(request, grammar)
        async for chunk in self._relay(self._bridge.stream(job, deadline=request.deadline)):
            yield chunk

    # ---------------------------------------------------------------- generation (worker side)

    def _run(self) -> None:
        import torch

        bridge = self._bridge
        try:
            with torch.inference_mode():
                while bridge.wait_for_work():
                    for ticket in bridge.take(1):
                        self._job = ticket
                        self._serve(ticket)
                        self._job = None
                    bridge.flush()  # also the Timeout of a ticket that expired in the queue
        except BaseException:  # pragma: no cover - a bug in the worker itself
            log.exception("avision worker crashed")
            if self._job is not None:  # its consumer must not wait for its deadline
                bridge.fail([self._job], RuntimeError("The A-Vision worker stopped"))
                self._job = None
        finally:
            bridge.close()
            bridge.flush()

    def _serve(self, ticket: Ticket[_Job]) -> None:
        """The worker's whole job for one request; reports through the bridge only."""
        scheduled = time.monotonic()
        request = ticket.payload.request
        try:
            inputs = self._prepare_inputs(request)
            seq = self._sequence(request, inputs, ticket.deadline, scheduled)
            if ticket.payload.grammar is not None:
                assert self._grammars is not None
                seq.sampler.constrain(
                    TokenGrammar(ticket.payload.grammar, self._grammars.vocab_size)
                )
            reason = self._generate(ticket, inputs, seq)
            if reason == "timeout":
                self._bridge.fail([ticket], Timeout("Request timed out"))
            else:
                self._bridge.end(ticket, seq.finish(reason, time.monotonic()))
        except AvitoError as exc:  # the request's own fault (bad image, template): 4xx
            self._bridge.fail([ticket], exc)
        except Exception as exc:
            log.exception("avision generation failed")
            self._bridge.fail([ticket], generation_failure(exc))

    def _sequence(
        self, request: GenerationRequest, inputs: Any, deadline: float | None, scheduled: float
    ) -> Sequence:
        assert self._loaded is not None and self._new_detokenizer is not None
        assert self._placement is not None
        sampling = request.sampling
        prompt_ids = [int(t) for t in inputs["input_ids"][0].tolist()]
        spec = SequenceSpec(
            prompt_ids=prompt_ids,
            sampling=sampling,
            max_new_tokens=sampling.max_tokens,
            stop=sampling.stop,
            keep_thinking=request.enable_thinking,
            thinking_open=prompt_opens_thinking(self._loaded.processor.tokenizer, prompt_ids),
            deadline=deadline,
            created=request.created,
            request_id=request.request_id,
            ignore_eos=sampling.ignore_eos,
            token_bytes=self._token_bytes if sampling.logprobs else None,
        )
        return Sequence(
            spec,
            self._new_detokenizer,
            eos_token_ids=self._eos,
            device=self._placement.device,
            scheduled_at=scheduled,
        )

    def _token_bytes(self, token: int) -> bytes:
        assert self._loaded is not None
        return str(self._loaded.processor.tokenizer.decode([token])).encode()

    def _prepare_inputs(self, request: GenerationRequest) -> Any:
        """Chat template + image preprocessing, on the worker (CPU-heavy for big images)."""
        assert self._loaded is not None and self._placement is not None
        processor = self._loaded.processor
        images: list[Image] = []
        if request.prompt is not None:
            text = request.prompt
        else:
            if not request.messages:
                raise ValidationFailed("messages must not be empty", param="messages")
            conversation: list[dict[str, Any]] = []
            for message in request.messages:
                content: list[dict[str, Any]] = []
                for part in message.content:
                    if isinstance(part, TextPart):
                        text = neutralize(part.text, self._specials)
                        content.append({"type": "text", "text": text})
                    elif isinstance(part, ImagePart):
                        content.append({"type": "image"})
                        images.append(fit_image(part.image, self._max_pixels))
                conversation.append({"role": message.role, "content": content})
            template_kwargs: dict[str, Any] = {}
            if "enable_thinking" in (getattr(processor, "chat_template", None) or ""):
                template_kwargs["enable_thinking"] = request.enable_thinking
            try:
                text = processor.apply_chat_template(
                    conversation, tokenize=False, add_generation_prompt=True, **template_kwargs
                )
            except Exception as exc:  # jinja raise_exception(): e.g. roles must alternate
                raise ValidationFailed(f"cannot build the chat prompt: {exc}") from exc
        try:
            inputs = processor(text=[text], images=images or None, return_tensors="pt")
        except ValueError as exc:  # e.g. Qwen2-VL rejects aspect ratios beyond 200:1
            raise ValidationFailed(f"cannot process the image(s): {exc}", param="messages") from exc
        placement = self._placement
        return inputs.to(device=placement.device, dtype=placement.torch_dtype)

    def _generate(
        self, ticket: Ticket[_Job], inputs: Any, seq: Sequence
    ) -> FinishReason | Literal["timeout"]:
        """Run generate() with `seq` deciding every token; returns why it ended."""
        import torch
        from transformers import (
            GenerationConfig,
            LogitsProcessorList,
            StoppingCriteria,
            StoppingCriteriaList,
        )

        bridge = self._bridge
        ended: list[FinishReason | Literal["timeout"]] = []

        class Stepper(StoppingCriteria):
            """Runs right after each token is appended: stream it, decide whether to stop."""

            def __call__(self, input_ids: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
                now = time.monotonic()
                delta, finish = seq.accept(int(input_ids[0, -1]), now)
                if delta is not None:
                    bridge.send(ticket, delta)
                    bridge.flush()
                if ticket.cancelled or bridge.stopping:
                    ended.append("cancelled")
                elif ticket.expired(now):
                    ended.append("timeout")
                elif finish is not None:
                    ended.append(finish)
                stop = bool(ended)
                return torch.full((input_ids.shape[0],), stop, device=input_ids.device)

        processors = LogitsProcessorList()
        if not seq.sampler.is_plain_greedy:
            processors.append(_forced(seq))
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=seq.spec.max_new_tokens,
            do_sample=False,  # the request's RowSampler samples, see the module doc
            num_beams=1,
            # Neutral values, unused in greedy mode: set so that the checkpoint's own
            # generation_config.json (Qwen2.5-VL ships top_k=1, temperature=0.1...) is
            # not inherited and warned about on every request.
            temperature=1.0,
            top_p=1.0,
            top_k=50,
            repetition_penalty=1.0,  # applied by the RowSampler, with the prompt's history
            eos_token_id=sorted(self._eos) or None,
            # ignore_eos: generate() would fill an unset eos_token_id from the checkpoint, so
            # EOS is masked out instead, until max_new_tokens (as benchmarks want).
            min_new_tokens=seq.spec.max_new_tokens if seq.spec.ignore_eos else None,
            pad_token_id=min(self._eos) if self._eos else None,
        )
        self._loaded.model.generate(  # type: ignore[union-attr]
            **inputs,
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([Stepper()]),
        )
        if ended:
            return ended[0]
        return "length" if seq.generated >= seq.spec.max_new_tokens else "stop"


def _forced(seq: Sequence) -> Any:
    """A logits processor that lets `seq`'s sampler choose and forces that token."""
    import torch
    from transformers import LogitsProcessor

    class Forced(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            chosen = seq.sampler.choose(scores[0].float())
            forced = torch.full_like(scores, -math.inf)
            forced[0, chosen] = 0.0
            return forced

    return Forced()


@dataclass(frozen=True)
class _Job:
    """A request on its way to the worker, with its constraint compiled for this model."""

    request: GenerationRequest
    grammar: Any = None
