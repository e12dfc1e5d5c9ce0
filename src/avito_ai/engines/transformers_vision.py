"""The in-process A-Vision engine: a transformers image-text-to-text model behind `Engine`.

Production runs AvitoTech/avision (a Qwen2.5-VL-7B derivative); any checkpoint that
`AutoModelForImageTextToText` + `AutoProcessor` can load works the same way (Idefics3 /
SmolVLM are tested with tiny random models).

Threads. `model.generate()` is a blocking loop of forward passes, so it never runs on the
event loop. Every request runs on ONE dedicated worker thread (a single-thread executor):
building the chat prompt, image preprocessing, the vision encoder, prefill and decoding
all happen there, one request at a time. The worker talks back to the loop only through
`loop.call_soon_threadsafe` into a per-request asyncio.Queue, and the loop talks to the
worker only through a per-request `threading.Event` (cancel), which a StoppingCriteria
reads after every decoding step.

Why one request at a time (no batching): Qwen2.5-VL computes 3-D "mrope" position ids
from each prompt's image grid and keeps the per-sequence `rope_deltas` on the model
object between prefill and decode; mixing requests with different image counts/sizes
in one padded batch, or joining a running batch, is fragile (left padding shifts the
deltas, KV caches of different prompts cannot be merged). Vision requests are
dominated by the image prefill anyway, so serial execution costs less than it seems.
A bounded queue in front (MAX_QUEUE_SIZE) turns overload into `Overloaded` at once.

Cancellation. Closing the async iterator (client gone) or cancelling the task that
drives it sets the request's cancel event; the StoppingCriteria returns True at the next
step, so the worker is free within one forward pass. The queue slot is given back only
when the worker has actually finished (done-callback of the executor future), so the
next request never waits behind a zombie generation it cannot see.

Sampling uses a private `torch.Generator` per request instead of the global RNG: the
text engine samples in another thread of the same process, and a global `manual_seed`
would let the two engines disturb each other ("same seed, same answer" would break).
`generate()` therefore runs in greedy mode and a final logits processor does the
temperature / top-k / top-p sampling with that generator and forces its choice.

Big images. Every image is downscaled (aspect kept) to at most AVISION_MAX_PIXELS pixels
(default 1280*28*28 = 1,003,520, about 1000x1000) before the processor sees it. For
Qwen2.5-VL that is at most ~1280 visual tokens per image (the Qwen-recommended
max_pixels); a 4000x4000 photo would otherwise become ~16k tokens and several GB of
activations. The processor's own size limits apply on top (the smaller one wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from avito_ai.config import Settings
from avito_ai.engines.base import (
    Chunk,
    EngineState,
    EngineStatus,
    FinishReason,
    GenerationRequest,
    ImagePart,
    Role,
    SamplingParams,
    TextPart,
    Timings,
)
from avito_ai.engines.sampling import apply_top_k, apply_top_p
from avito_ai.engines.textstream import partial_suffix_len
from avito_ai.engines.threads import run_in_own_thread
from avito_ai.errors import ModelUnavailable, Overloaded, ShuttingDown, Timeout, ValidationFailed

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from avito_ai.engines.device import Placement

log = logging.getLogger(__name__)

# 1280 visual tokens of 28x28 pixels: Qwen2.5-VL's recommended max_pixels.
DEFAULT_MAX_PIXELS = 1280 * 28 * 28

_REPLACEMENT = "\ufffd"


class _LoadProblem(Exception):
    """A load failure whose message is already readable (no traceback-speak)."""


# --------------------------------------------------------------------------- worker side


@dataclass(eq=False)
class _Job:
    """One request as the worker sees it. Created on the loop, run on the worker thread."""

    request: GenerationRequest
    deadline: float
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[_Event]
    cancel: threading.Event = field(default_factory=threading.Event)

    def post(self, event: _Event) -> None:
        """Hand an event to the consumer on the loop; a closed loop means nobody listens."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass(frozen=True)
class _Delta:
    text: str


@dataclass(frozen=True)
class _Done:
    finish_reason: FinishReason | Literal["timeout"]
    input_tokens: int
    generated_tokens: int
    scheduled: float
    first_token: float | None
    finished: float


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_Event = _Delta | _Done | _Failed


class _TextTracker:
    """Turns the growing list of generated token ids into safe, final text deltas.

    The whole generated sequence is decoded at every step (cheap next to a forward pass
    of a 7B model), so the deltas always join to exactly `decode(all generated ids)`, cut
    before the first stop string. Held back from the stream until more tokens arrive:
    a trailing U+FFFD (a multi-byte character split across byte-level tokens) and any
    tail that could be the beginning of a stop string.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = ""
        self.hit_stop = False

    def _decode(self) -> str:
        text: str = self._tokenizer.decode(
            self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return text

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._advance(final=False)

    def finish(self) -> str:
        return "" if self.hit_stop else self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        text = self._decode()
        if not final:
            text = text.rstrip(_REPLACEMENT)
        cut = self._first_stop(text)
        if cut is not None:
            text = text[:cut]
            self.hit_stop = True
        elif not final:
            text = text[: len(text) - partial_suffix_len(text, self._stop)]
        if len(text) <= len(self.emitted):
            return ""
        if not text.startswith(self.emitted):  # pragma: no cover - non prefix-stable tokenizer
            log.warning("avision: decoded text changed behind the stream; continuing")
        delta = text[len(self.emitted) :]
        self.emitted += delta
        return delta

    def _first_stop(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        return min(found) if found else None


def _stepper_class() -> type[Any]:
    """Built lazily: importing transformers at module import time would slow every CLI call."""
    import torch
    from transformers import StoppingCriteria

    class _Stepper(StoppingCriteria):
        """Called by generate() after every new token: stream it, and decide whether to stop.

        Stopping criteria run synchronously in the decoding loop right after the token is
        appended, so this is the earliest point to see it and the cheapest place to
        honour cancel / deadline / stop strings (no extra forward pass, unlike a streamer
        whose verdict is only read on the next step).
        """

        def __init__(self, job: _Job, tracker: _TextTracker) -> None:
            self.job = job
            self.tracker = tracker
            self.first_token: float | None = None
            self.reason: Literal["cancelled", "timeout", "stop"] | None = None

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            if self.first_token is None:
                self.first_token = time.monotonic()
            delta = self.tracker.push(int(input_ids[0, -1]))
            if delta:
                self.job.post(_Delta(delta))
            if self.job.cancel.is_set():
                self.reason = "cancelled"
            elif time.monotonic() > self.job.deadline:
                self.reason = "timeout"
            elif self.tracker.hit_stop:
                self.reason = "stop"
            return torch.full(
                (input_ids.shape[0],),
                self.reason is not None,
                dtype=torch.bool,
                device=input_ids.device,
            )

    return _Stepper


def _sampler_class() -> type[Any]:
    import torch
    from transformers import LogitsProcessor

    class _SeededSampler(LogitsProcessor):
        """Temperature / top-k / top-p sampling with a private generator (see module doc).

        Runs last in generate()'s (greedy) processor chain, after repetition penalty; it
        returns scores where only the sampled token is finite, so greedy argmax takes it.
        """

        def __init__(self, sampling: SamplingParams, device: torch.device) -> None:
            self.temperature = sampling.temperature
            self.top_k = sampling.top_k
            self.top_p = sampling.top_p
            self.generator = torch.Generator(device=device)
            if sampling.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(sampling.seed)

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            scores = scores.float() / self.temperature
            if self.top_k > 0:
                scores = apply_top_k(scores, self.top_k)
            if self.top_p < 1.0:
                scores = apply_top_p(scores, self.top_p)
            probs = scores.softmax(dim=-1)
            chosen = torch.multinomial(probs, 1, generator=self.generator)
            forced = torch.full_like(scores, -math.inf)
            return forced.scatter(-1, chosen, 0.0)

    return _SeededSampler


# --------------------------------------------------------------------------- the engine


class TransformersVisionEngine:
    """A-Vision on transformers, one request at a time on a dedicated worker thread."""

    role: Role

    def __init__(self, settings: Settings) -> None:
        # Cheap on purpose: nothing is imported or loaded until start().
        self.role = "avision"
        self._settings = settings
        self._model_id = settings.avision_model
        self._state = EngineState.LOADING
        self._reason: str | None = None
        self._placement: Placement | None = None
        self._model: Any = None
        self._processor: Any = None
        self._eos_ids: list[int] = []
        self._pad_id: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._slot = asyncio.Lock()  # held from "my turn" until the worker is done
        self._waiting = 0
        self._jobs: set[_Job] = set()
        self._max_queue: int = settings.max_queue_size
        self._max_pixels: int = settings.avision_max_pixels
        self._started = False

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load processor and weights in a thread; end READY or FAILED, never raise."""
        if self._started:
            return
        self._started = True
        self._state = EngineState.LOADING
        began = time.monotonic()
        try:
            processor, model, placement = await run_in_own_thread(self._load, "avision-load")
        except Exception as exc:  # every failure becomes a readable status, not a crash
            self._reason = self._explain_load_error(exc)
            self._state = EngineState.FAILED
            log.error("avision: %s", self._reason)
            return
        if self._state is EngineState.STOPPED:  # stop() came while we were loading
            del processor, model
            gc.collect()
            return
        self._processor, self._model, self._placement = processor, model, placement
        self._eos_ids, self._pad_id = self._special_ids(processor, model)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="avision-generate")
        self._state = EngineState.READY
        log.info(
            "avision: loaded %s on %s/%s in %.1fs",
            self._model_id,
            placement.device,
            placement.dtype_name,
            time.monotonic() - began,
        )

    async def stop(self) -> None:
        """Cancel running work, end the worker thread, drop the weights."""
        was_ready = self._state is EngineState.READY
        self._state = EngineState.STOPPED
        self._reason = "shutting down"
        for job in list(self._jobs):
            job.cancel.set()
        executor, self._executor = self._executor, None
        if executor is not None:
            # The running request stops within one decoding step; wait for it off-loop.
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        self._model = None
        self._processor = None
        if was_ready:
            await asyncio.to_thread(self._free_memory)

    def _free_memory(self) -> None:
        gc.collect()
        if self._placement is not None and self._placement.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def status(self) -> EngineStatus:
        placement = self._placement
        return EngineStatus(
            self.role,
            self._state,
            model_id=self._model_id,
            device=placement.device if placement else None,
            dtype=placement.dtype_name if placement else None,
            reason=self._reason if self._state is not EngineState.READY else None,
        )

    # ---------------------------------------------------------------- loading

    def _load(self) -> tuple[Any, Any, Placement]:
        """Runs in a thread. Raises with a message that names the model on any problem."""
        from avito_ai.engines.device import resolve_placement

        source = self._model_id
        if not source:
            raise RuntimeError("AVISION_MODEL is not set")
        placement = resolve_placement(self._settings.device, self._settings.dtype)
        path = Path(source).expanduser()
        if path.is_dir():
            source = str(path)
        elif source.startswith(("/", "./", "../", "~")) or path.exists():
            raise _LoadProblem("no such model folder")

        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor: Any = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            source, local_files_only=True
        )
        if getattr(processor, "image_processor", None) is None:
            raise _LoadProblem("it has no image processor: not a vision model")
        on_cuda = placement.device.startswith("cuda")
        model: Any = AutoModelForImageTextToText.from_pretrained(
            source,
            local_files_only=True,
            dtype=placement.torch_dtype,
            device_map=placement.device if on_cuda else None,
        )
        if not on_cuda:
            model.to(placement.device)
        model.eval()
        return processor, model, placement

    def _explain_load_error(self, exc: Exception) -> str:
        name = self._model_id or "<unset>"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, _LoadProblem):
            return f"cannot load A-Vision model {name!r}: {text}"
        if isinstance(exc, OSError) and not Path(name).expanduser().is_dir():
            return (
                f"cannot load A-Vision model {name!r}: not a local folder and not in the local "
                f"Hugging Face cache (download it first, e.g. `hf download {name}`); {text}"
            )
        return f"cannot load A-Vision model {name!r}: {type(exc).__name__}: {text}"

    @staticmethod
    def _special_ids(processor: Any, model: Any) -> tuple[list[int], int | None]:
        tokenizer = processor.tokenizer
        eos: Any = getattr(model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        eos_ids = [
            int(e) for e in (eos if isinstance(eos, list | tuple) else [eos]) if e is not None
        ]
        pad: Any = getattr(model.generation_config, "pad_token_id", None)
        if pad is None:
            pad = tokenizer.pad_token_id
        if pad is None and eos_ids:
            pad = eos_ids[0]
        return eos_ids, (int(pad) if pad is not None else None)

    # ---------------------------------------------------------------- generation (loop side)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Queue, run on the worker, stream deltas; see the module docstring for the rules."""
        self._ensure_ready()
        if self._waiting >= self._max_queue:
            raise Overloaded("A-Vision queue is full, retry later")
        deadline = request.deadline
        if deadline is None:
            deadline = request.created + self._settings.request_timeout
        self._waiting += 1
        try:
            async with asyncio.timeout_at(_loop_time_for(deadline)):
                await self._slot.acquire()
        except TimeoutError:
            raise Timeout("Request timed out waiting in the A-Vision queue") from None
        finally:
            self._waiting -= 1

        loop = asyncio.get_running_loop()
        job = _Job(request=request, deadline=deadline, loop=loop, events=asyncio.Queue())
        future: asyncio.Future[None] | None = None
        try:
            self._ensure_ready()  # stop() may have come while we waited
            assert self._executor is not None
            future = loop.run_in_executor(self._executor, self._run_job, job)
            self._jobs.add(job)
            future.add_done_callback(lambda done: self._job_done(job, done))
            while True:
                try:
                    async with asyncio.timeout_at(_loop_time_for(deadline)):
                        event = await job.events.get()
                except TimeoutError:
                    raise Timeout("Request timed out") from None
                if isinstance(event, _Delta):
                    yield Chunk(event.text)
                elif isinstance(event, _Failed):
                    raise event.error
                else:
                    if event.finish_reason == "timeout":
                        raise Timeout("Request timed out")
                    yield self._final_chunk(request, event)
                    return
        finally:
            # Runs on normal end, error, aclose() (GeneratorExit) and task cancellation.
            job.cancel.set()
            if future is None:
                self._slot.release()

    def _job_done(self, job: _Job, future: asyncio.Future[None]) -> None:
        """On the loop, once the worker is really done with `job`: free the slot."""
        self._jobs.discard(job)
        self._slot.release()
        if future.cancelled():  # stop() dropped it before it ran: don't leave the consumer hanging
            job.events.put_nowait(_Failed(ShuttingDown("A-Vision is shutting down")))

    def _ensure_ready(self) -> None:
        if self._state is EngineState.READY:
            return
        if self._state is EngineState.STOPPED:
            raise ShuttingDown("A-Vision is shutting down")
        reason = f": {self._reason}" if self._reason else ""
        raise ModelUnavailable(f"A-Vision model is {self._state.value}{reason}")

    @staticmethod
    def _final_chunk(request: GenerationRequest, done: _Done) -> Chunk:
        first = done.first_token if done.first_token is not None else done.finished
        reason: FinishReason = "stop" if done.finish_reason == "timeout" else done.finish_reason
        return Chunk(
            "",
            finish_reason=reason,
            input_tokens=done.input_tokens,
            generated_tokens=done.generated_tokens,
            timings=Timings(
                queue_s=done.scheduled - request.created,
                ttft_s=first - request.created,
                generation_s=done.finished - done.scheduled,
                total_s=done.finished - request.created,
            ),
        )

    # ---------------------------------------------------------------- generation (worker side)

    def _run_job(self, job: _Job) -> None:
        """The worker thread's whole job for one request; reports through job.post only."""
        scheduled = time.monotonic()
        try:
            if job.cancel.is_set() or scheduled > job.deadline:
                reason: Literal["cancelled", "timeout"] = (
                    "cancelled" if job.cancel.is_set() else "timeout"
                )
                job.post(_Done(reason, 0, 0, scheduled, None, scheduled))
                return
            inputs = self._prepare_inputs(job.request)
            self._generate(job, inputs, scheduled)
        except BaseException as exc:
            job.post(_Failed(exc))

    def _prepare_inputs(self, request: GenerationRequest) -> Any:
        """Chat template + image preprocessing, on the worker (CPU-heavy for big images)."""
        processor = self._processor
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
                        content.append({"type": "text", "text": part.text})
                    elif isinstance(part, ImagePart):
                        content.append({"type": "image"})
                        images.append(self._fit_image(part.image))
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
        placement = self._placement
        assert placement is not None
        try:
            inputs = processor(text=[text], images=images or None, return_tensors="pt")
        except ValueError as exc:  # e.g. Qwen2-VL rejects aspect ratios beyond 200:1
            raise ValidationFailed(f"cannot process the image(s): {exc}", param="messages") from exc
        return inputs.to(device=placement.device, dtype=placement.torch_dtype)

    def _fit_image(self, image: Image) -> Image:
        """RGB, and at most `max_pixels` pixels (aspect kept): bounds vision memory."""
        from PIL import Image as PILImage

        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        if width * height > self._max_pixels:
            scale = math.sqrt(self._max_pixels / (width * height))
            size = (max(1, int(width * scale)), max(1, int(height * scale)))
            image = image.resize(size, PILImage.Resampling.BICUBIC)
        return image

    def _generate(self, job: _Job, inputs: Any, scheduled: float) -> None:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        sampling = job.request.sampling
        input_tokens = int(inputs["input_ids"].shape[1])
        tracker = _TextTracker(self._processor.tokenizer, sampling.stop)
        stepper = _stepper_class()(job, tracker)
        processors = LogitsProcessorList()
        if sampling.temperature > 0:
            device = torch.device(self._placement.device if self._placement else "cpu")
            processors.append(_sampler_class()(sampling, device))
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=sampling.max_tokens,
            do_sample=False,  # sampling is done by _SeededSampler, see module doc
            num_beams=1,
            # Neutral values, unused in greedy mode: set so that the checkpoint's own
            # generation_config.json (Qwen2.5-VL ships top_k=1, temperature=0.1...) is
            # not inherited and warned about on every request.
            temperature=1.0,
            top_p=1.0,
            top_k=50,
            repetition_penalty=sampling.repetition_penalty,
            eos_token_id=self._eos_ids or None,
            pad_token_id=self._pad_id,
        )
        self._model.generate(
            **inputs,
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([stepper]),
        )
        tail = tracker.finish()
        if tail:
            job.post(_Delta(tail))
        finished = time.monotonic()
        generated = len(tracker.ids)
        reason: FinishReason | Literal["timeout"]
        if stepper.reason is not None:
            reason = stepper.reason
        elif tracker.ids and tracker.ids[-1] in self._eos_ids:
            reason = "stop"
        elif generated >= sampling.max_tokens:
            reason = "length"
        else:
            reason = "stop"
        job.post(_Done(reason, input_tokens, generated, scheduled, stepper.first_token, finished))


def _loop_time_for(deadline: float) -> float:
    """Convert a time.monotonic() deadline to the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())
