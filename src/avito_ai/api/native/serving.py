"""The native API's serving layer: its requests → GenerationRequests, and the Answer → the
original specification's JSON body, or its Server-Sent Events when `stream` is set
(`event: delta` per piece of text, then `event: done` with the whole body, or
`event: error`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from avito_ai.api.deps import Call
from avito_ai.api.errors import stream_failure
from avito_ai.api.form_fields import form_values, sampling_from_form
from avito_ai.api.native.protocol import (
    GenerationData,
    GenerationMetrics,
    GenerationResponse,
    ImageAnalyzeJSON,
    NativeTokenLogprob,
    NativeTopLogprob,
    TextGenerateRequest,
)
from avito_ai.api.requests import (
    image_request,
    no_images,
    question_or_default,
    response_format_output,
    text_request,
    validate_prompt,
)
from avito_ai.api.sse import event
from avito_ai.api.streaming import drive
from avito_ai.engines.base import Capabilities, Chunk, Engine, GenerationRequest, Role
from avito_ai.errors import ValidationFailed
from avito_ai.schemas.sampling import SamplingFields
from avito_ai.services.answers import Answer
from avito_ai.services.images import decode_base64_image, decode_image
from avito_ai.services.output import CHAT_FIELDS
from avito_ai.services.pipeline import prepare
from avito_ai.services.state import ServiceState
from avito_ai.services.validation import validation_failed

DEFAULT_IMAGE_PROMPT = "Describe this image."
NativeAnswer = GenerationResponse | AsyncIterator[str]


def native_response(result: Answer, request_id: str) -> GenerationResponse:
    t = result.timings
    return GenerationResponse(
        data=GenerationData(
            text=result.text,
            generated_tokens=result.generated_tokens,
            input_tokens=result.input_tokens,
            finish_reason=result.finish_reason,
            logprobs=None
            if result.logprobs is None
            else [
                NativeTokenLogprob(
                    token=t.token,
                    logprob=t.logprob,
                    top_logprobs=[NativeTopLogprob(token=k, logprob=v) for k, v, _ in t.top],
                )
                for t in result.logprobs
            ],
            reasoning=result.reasoning or None,
        ),
        metrics=GenerationMetrics(
            generation_time=round(t.generation_s, 3),
            total_time=round(t.total_s, 3),
            tokens_per_second=result.tokens_per_second,
            queue_time=round(t.queue_s, 3),
            time_to_first_token=round(t.ttft_s, 3),
        ),
        request_id=request_id,
    )


class NativeEvents:
    """The native stream (api/streaming.py drives it): `reasoning` and `delta` events, then
    `done` with the whole body, or `error`."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id

    def start(self) -> list[str]:
        return []

    def delta(self, chunk: Chunk) -> list[str]:
        out: list[str] = []
        if chunk.reasoning:
            out.append(event({"reasoning": chunk.reasoning}, "reasoning"))
        if chunk.text:
            out.append(event({"text": chunk.text}, "delta"))
        return out

    def finish(self, answer: Answer) -> list[str]:
        return [event(native_response(answer, self.request_id).model_dump(), "done")]

    def failure(self, exc: BaseException) -> list[str]:
        return [event(stream_failure(exc, self.request_id, "native"), "error")]

    def end(self) -> list[str]:
        return []


class NativeServing:
    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.settings = state.settings
        self.generation = state.generation

    async def text(self, body: TextGenerateRequest, call: Call) -> NativeAnswer:
        ready = await prepare(
            self.state,
            "avibe",
            response_format_output(body.response_format),
            CHAT_FIELDS,
            lambda _, __: text_request(body.prompt, body, self.settings, call.request_id),
        )
        return await self._answer(ready.engine, ready.request, body.stream, call)

    async def image(self, request: Request, call: Call) -> NativeAnswer:
        """Multipart (an `image` file and form fields) or JSON (the image as base64 or a
        `data:` URI)."""
        await self.generation.ready_engine("avision")  # 503 before the body is read
        fields, prompt, image = await self._image_input(request)

        def build(role: Role, can: Capabilities) -> GenerationRequest:
            if not can.images:
                raise no_images(role, "image")
            question = question_or_default(prompt, DEFAULT_IMAGE_PROMPT)
            decoded = image()  # (at the model's size)
            text = validate_prompt(question, self.settings)
            return image_request(decoded, text, fields, self.settings, call.request_id)

        ready = await prepare(
            self.state,
            "avision",
            response_format_output(fields.response_format),
            CHAT_FIELDS,
            build,
        )
        return await self._answer(ready.engine, ready.request, fields.stream, call)

    async def _image_input(
        self, request: Request
    ) -> tuple[SamplingFields, str | None, Callable[[], Image.Image]]:
        """The fields, the prompt and the image's decoding (blocking: prepare runs it off
        the loop)."""
        max_mb = self.settings.max_image_size_mb
        budget = self.settings.avision_max_pixels  # decoded at the model's size
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise ValidationFailed(
                    "image file is required (multipart field 'image')", param="image"
                )
            values = form_values(form.multi_items())
            stops = [s for s in form.getlist("stop") if isinstance(s, str)]
            fields = sampling_from_form(values, stops)
            data = await upload.read()
            return (
                fields,
                values.get("prompt"),
                lambda: decode_image(data, max_mb, max_pixels=budget),
            )
        if "json" in content_type:
            try:
                body = ImageAnalyzeJSON.model_validate_json(await request.body())
            except ValidationError as exc:
                raise validation_failed(exc.errors()) from None
            return (
                body,
                body.prompt,
                lambda: decode_base64_image(body.image, max_mb, max_pixels=budget),
            )
        raise ValidationFailed("Send multipart/form-data with an 'image' file, or JSON")

    async def _answer(
        self, engine: Engine, generation: GenerationRequest, stream: bool, call: Call
    ) -> NativeAnswer:
        if stream:
            items = await self.generation.stream(engine, generation, call.client, call.disconnected)
            return drive(items, NativeEvents(call.request_id))
        answer = await self.generation.complete(engine, generation, call.client, call.disconnected)
        return native_response(answer, call.request_id)
