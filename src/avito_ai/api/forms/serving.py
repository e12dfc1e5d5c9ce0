"""The forms' serving layer: the two forms' fields → GenerationRequests, answered whole
(the page shows the Answer). A refusal raises; the router renders it into the page."""

from __future__ import annotations

from starlette.datastructures import FormData, UploadFile

from avito_ai.api.deps import Call
from avito_ai.api.form_fields import sampling_from_form
from avito_ai.api.requests import (
    image_request,
    no_images,
    question_or_default,
    response_format_output,
    text_request,
    validate_prompt,
)
from avito_ai.engines.base import Capabilities, Engine, GenerationRequest, Role
from avito_ai.errors import ValidationFailed
from avito_ai.services.answers import Answer
from avito_ai.services.images import decode_image
from avito_ai.services.output import FieldNames
from avito_ai.services.pipeline import Prepared, prepare
from avito_ai.services.state import ServiceState

DEFAULT_QUESTION = "Что изображено на фото?"


# Where a form's client writes what it asks of the answer (the `json_schema` box).
FORM_FIELDS = FieldNames(
    format="json_schema",
    schema="json_schema.json_schema.schema",
    regex="json_schema.regex",
    grammar="json_schema.grammar",
)


class FormServing:
    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.settings = state.settings
        self.generation = state.generation

    async def avibe(self, values: dict[str, str], call: Call) -> Answer:
        fields = sampling_from_form(values, [])
        ready = await prepare(
            self.state,
            "avibe",
            response_format_output(fields.response_format),
            FORM_FIELDS,
            lambda _, __: text_request(
                values.get("prompt"), fields, self.settings, call.request_id
            ),
        )
        return await self._complete(ready, call)

    async def vision_engine(self) -> Engine:
        """A-Vision, ready: asked before a body of up to MAX_IMAGE_SIZE_MB is read."""
        return await self.generation.ready_engine("avision")

    @staticmethod
    def question(values: dict[str, str]) -> str:
        return question_or_default(values.get("question") or values.get("prompt"), DEFAULT_QUESTION)

    async def avision(self, form: FormData, values: dict[str, str], call: Call) -> Answer:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ValidationFailed("Choose an image file to analyze", param="image")
        data = await upload.read()
        fields = sampling_from_form(values, [])
        settings = self.settings

        def build(role: Role, can: Capabilities) -> GenerationRequest:
            if not can.images:
                raise no_images(role, "image")
            # held at the model's size
            image = decode_image(
                data, settings.max_image_size_mb, max_pixels=settings.avision_max_pixels
            )
            text = validate_prompt(self.question(values), settings, field="question")
            return image_request(image, text, fields, settings, call.request_id)

        ready = await prepare(
            self.state,
            "avision",
            response_format_output(fields.response_format),
            FORM_FIELDS,
            build,
        )
        return await self._complete(ready, call)

    async def _complete(self, ready: Prepared, call: Call) -> Answer:
        return await self.generation.complete(
            ready.engine, ready.request, call.client, call.disconnected
        )
