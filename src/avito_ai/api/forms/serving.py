"""The forms' serving layer: the two forms' fields → GenerationRequests, answered whole
(the page shows the Answer). A refusal raises; the router renders it into the page."""

from __future__ import annotations

from starlette.datastructures import FormData, UploadFile

from avito_ai.api.deps import Call
from avito_ai.api.forms.fields import sampling_from_form
from avito_ai.api.requests import image_request, question_or_default, text_request, validate_prompt
from avito_ai.engines.base import Engine
from avito_ai.errors import ValidationFailed
from avito_ai.services.answers import Answer
from avito_ai.services.constraints import check_supported, constraint_from
from avito_ai.services.images import decode_image, off_loop
from avito_ai.services.state import ServiceState

DEFAULT_QUESTION = "Что изображено на фото?"


class FormServing:
    def __init__(self, state: ServiceState) -> None:
        self.settings = state.settings
        self.generation = state.generation

    async def avibe(self, values: dict[str, str], call: Call) -> Answer:
        fields = sampling_from_form(values, [])
        constraint = await constraint_from(fields.response_format, "json_schema")
        generation = text_request(
            values.get("prompt"), fields, self.settings, call.request_id, constraint
        )
        engine = await self.generation.ready_engine("avibe")
        check_supported(engine, constraint, "json_schema")
        return await self.generation.complete(engine, generation, call.client, call.disconnected)

    async def vision_engine(self) -> Engine:
        """A-Vision, ready: asked before a body of up to MAX_IMAGE_SIZE_MB is read."""
        return await self.generation.ready_engine("avision")

    @staticmethod
    def question(values: dict[str, str]) -> str:
        return question_or_default(values.get("question") or values.get("prompt"), DEFAULT_QUESTION)

    async def avision(
        self, engine: Engine, form: FormData, values: dict[str, str], call: Call
    ) -> Answer:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ValidationFailed("Choose an image file to analyze", param="image")
        image = await off_loop(
            decode_image,
            await upload.read(),
            self.settings.max_image_size_mb,
            max_pixels=self.settings.avision_max_pixels,  # held at the model's size
        )
        text = validate_prompt(self.question(values), self.settings, field="question")
        fields = sampling_from_form(values, [])
        constraint = await constraint_from(fields.response_format, "json_schema")
        check_supported(engine, constraint, "json_schema")
        generation = image_request(image, text, fields, self.settings, call.request_id, constraint)
        return await self.generation.complete(engine, generation, call.client, call.disconnected)
