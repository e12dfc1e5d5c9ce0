"""The OpenAI front door's serving layer: wire requests → GenerationRequests, answers →
OpenAI bodies and stream chunks, model names → roles."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from avito_ai.api.openai.chunks import (
    ChatChunks,
    TextChunks,
    chat_completion,
    completion_id,
    text_completion,
    usage,
    wire,
)
from avito_ai.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from avito_ai.api.openai.requests import chat_request, completion_request
from avito_ai.api.openai.serving import model_list
from avito_ai.engines.base import Chunk, ImagePart, TextPart, Timings, TokenLogprob
from avito_ai.engines.fake import FakeEngine
from avito_ai.errors import NotFound, PayloadTooLarge, ValidationFailed
from avito_ai.services.answers import Answer, ChoiceAnswer
from avito_ai.services.models import model_names, resolve_role
from avito_ai.services.state import ServiceState
from tests.conftest import engine_set, isolated_settings
from tests.images import encoded

REQUEST_ID = "123e4567-e89b-12d3-a456-426614174000"
HEX_ID = "123e4567e89b12d3a456426614174000"


def answer(
    text: str = "Echo: hi", finish_reason: str = "stop", input_tokens: int = 7, generated: int = 5
) -> Answer:
    return Answer(
        text=text,
        finish_reason=finish_reason,
        input_tokens=input_tokens,
        generated_tokens=generated,
        timings=Timings(queue_s=0.01, ttft_s=0.1, generation_s=0.5, total_s=0.51),
        choices=(ChoiceAnswer(0, text, finish_reason, generated),),
    )


def chat(model: str = "avibe", **body: Any) -> ChatCompletionRequest:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return ChatCompletionRequest(model=model, **body)


def data_uri(fmt: str = "PNG", size: tuple[int, int] = (16, 8)) -> str:
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(encoded(fmt, size)).decode()


def image_message(url: str, text: str = "Что на фото?") -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }


def refused(call: Any, *args: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as exc:
        call(*args)
    return exc.value


# ------------------------------------------------------------------ ids and bodies


def test_completion_id_is_derived_from_the_request_id() -> None:
    assert completion_id(REQUEST_ID, chat=True) == "chatcmpl-" + HEX_ID
    assert completion_id(REQUEST_ID, chat=False) == "cmpl-" + HEX_ID
    other = "00000000-0000-0000-0000-000000000001"
    assert completion_id(other, chat=True) != completion_id(REQUEST_ID, chat=True)


def test_completion_id_is_at_most_32_characters_after_the_prefix() -> None:
    assert completion_id("a" * 100, chat=False) == "cmpl-" + "a" * 32


def test_usage_adds_prompt_and_completion_tokens() -> None:
    u = usage(answer(input_tokens=7, generated=5))
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (7, 5, 12)


def test_chat_completion_body() -> None:
    before = int(time.time())
    body = chat_completion(answer("Привет!", "length", 3, 4), REQUEST_ID, "fake-avibe")
    dumped = body.model_dump()
    assert dumped["id"] == "chatcmpl-" + HEX_ID
    assert dumped["object"] == "chat.completion"
    assert dumped["model"] == "fake-avibe"  # the name the client used
    assert before <= dumped["created"] <= int(time.time())
    assert dumped["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Привет!"},
            "finish_reason": "length",
            "logprobs": None,
        }
    ]
    assert dumped["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_text_completion_body_without_echo() -> None:
    body = text_completion(answer(" there", "stop", 2, 1), REQUEST_ID, "avibe").model_dump()
    assert body["id"] == "cmpl-" + HEX_ID
    assert body["object"] == "text_completion"
    assert body["model"] == "avibe"
    assert body["choices"] == [
        {"index": 0, "text": " there", "finish_reason": "stop", "logprobs": None}
    ]
    assert body["usage"]["total_tokens"] == 3


def test_text_completion_with_echo_starts_with_the_prompt() -> None:
    body = text_completion(answer(" there"), REQUEST_ID, "avibe", echo="Hello")
    assert body.choices[0].text == "Hello there"


# ------------------------------------------------------------------ stream chunks


def test_chat_stream_chunks() -> None:
    chunks = ChatChunks(REQUEST_ID, "avibe", created=1_700_000_000)
    final = answer("Echo: hi", "length", 7, 5)
    bodies = [
        wire(chunks.opening_chunks()[0]),
        wire(chunks.delta_chunk(Chunk("Echo:"))),
        wire(chunks.finish_chunks(final)[0]),
        wire(chunks.usage_chunk(final)),
    ]
    assert all(b is not None for b in bodies)
    opening, delta, finish, use = bodies
    assert opening["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    ]
    assert delta["choices"] == [{"index": 0, "delta": {"content": "Echo:"}, "finish_reason": None}]
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert use["choices"] == []
    assert use["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    for body in bodies:
        assert body["id"] == "chatcmpl-" + HEX_ID
        assert body["object"] == "chat.completion.chunk"
        assert body["created"] == 1_700_000_000
        assert body["model"] == "avibe"
    assert "usage" not in delta and "usage" not in finish


def test_chat_stream_logprobs_are_openais_whole_shape() -> None:
    """A delta names only what it carries, but its logprobs are the whole object, as the
    answer's (`refusal` included)."""
    chunks = ChatChunks(REQUEST_ID, "avibe", logprobs=True, created=1)
    token = TokenLogprob("Hi", -0.5, (72, 105), (("Hi", -0.5, (72, 105)),))
    delta = wire(chunks.delta_chunk(Chunk("Hi", logprobs=(token,))))
    assert delta["choices"][0]["logprobs"] == {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.5,
                "bytes": [72, 105],
                "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}],
            }
        ],
        "refusal": None,
    }
    assert delta["choices"][0]["delta"] == {"content": "Hi"}


def test_text_stream_chunks() -> None:
    chunks = TextChunks(REQUEST_ID, "fake-avibe", logprobs=False, created=1_700_000_001)
    final = answer(" world", "stop", 2, 1)
    assert chunks.opening_chunks() == []  # text streams start straight with text
    delta, finish, use = (
        wire(chunks.delta_chunk(Chunk(" world"))),
        wire(chunks.finish_chunks(final)[0]),
        wire(chunks.usage_chunk(final)),
    )
    assert delta["choices"] == [
        {"index": 0, "text": " world", "finish_reason": None, "logprobs": None}
    ]
    assert finish["choices"] == [{"index": 0, "text": "", "finish_reason": "stop"}]
    assert use["choices"] == [] and use["usage"]["total_tokens"] == 3
    for body in (delta, finish, use):
        assert body["id"] == "cmpl-" + HEX_ID
        assert body["object"] == "text_completion"
        assert body["created"] == 1_700_000_001
        assert body["model"] == "fake-avibe"


def test_stream_created_defaults_to_now_and_stays_fixed(monkeypatch: pytest.MonkeyPatch) -> None:
    before = int(time.time())
    chunks = ChatChunks(REQUEST_ID, "avibe")
    assert before <= chunks.created <= int(time.time())
    first = chunks.delta_chunk(Chunk("a")).created
    later = time.time() + 5  # the stream goes on into another second (a sleep of 0.01 s
    monkeypatch.setattr(time, "time", lambda: later)  # almost never reached one)
    last = chunks.finish_chunks(answer())[0]
    assert chunks.delta_chunk(Chunk("b")).created == first == last.created  # type: ignore[attr-defined]


# ------------------------------------------------------------------ chat_request


def test_chat_request_keeps_the_conversation_and_maps_developer_to_system() -> None:
    body = chat(
        messages=[
            {"role": "system", "content": "Be brief"},
            {"role": "developer", "content": "Answer in Russian"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Привет"},
            {"role": "user", "content": "how are you?"},
        ]
    )
    request = chat_request(body, "avibe", isolated_settings(), REQUEST_ID)
    assert request.request_id == REQUEST_ID
    assert request.prompt is None
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", (TextPart("Be brief"),)),
        ("system", (TextPart("Answer in Russian"),)),
        ("user", (TextPart("hi"),)),
        ("assistant", (TextPart("Привет"),)),
        ("user", (TextPart("how are you?"),)),
    ]


def test_chat_request_sampling_defaults_come_from_settings() -> None:
    settings = isolated_settings(temperature=0.3, max_tokens_avibe=99, max_tokens_avision=44)
    sampling = chat_request(chat(), "avibe", settings, REQUEST_ID).sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.stop) == (99, 0.3, ())
    assert chat_request(chat(), "avision", settings, REQUEST_ID).sampling.max_tokens == 44


def test_chat_request_passes_the_clients_sampling() -> None:
    body = chat(temperature=0, top_p=0.5, top_k=4, seed=42, stop="###", repetition_penalty=1.2)
    sampling = chat_request(body, "avibe", isolated_settings(), REQUEST_ID).sampling
    assert sampling.temperature == 0
    assert (sampling.top_p, sampling.top_k, sampling.seed) == (0.5, 4, 42)
    assert sampling.stop == ("###",)
    assert sampling.repetition_penalty == 1.2


def test_chat_request_deadline_follows_request_timeout() -> None:
    request = chat_request(chat(), "avibe", isolated_settings(request_timeout=30), REQUEST_ID)
    assert request.deadline is not None
    assert 29 < request.deadline - time.monotonic() <= 30


@pytest.mark.parametrize("url_as_string", [False, True])
def test_chat_request_decodes_images_for_avision(url_as_string: bool) -> None:
    url = data_uri("PNG", (16, 8))
    message = image_message(url)
    if url_as_string:
        message["content"][1]["image_url"] = url
    request = chat_request(
        chat("avision", messages=[message]), "avision", isolated_settings(), REQUEST_ID
    )
    (user,) = request.messages
    text, image = user.content
    assert text == TextPart("Что на фото?")
    assert isinstance(image, ImagePart)
    assert (image.image.mode, image.image.size) == ("RGB", (16, 8))


def test_chat_request_refuses_images_for_avibe() -> None:
    body = chat(messages=[image_message(data_uri())])
    takes = FakeEngine("avibe").capabilities().images  # A-Vibe's engine says it takes none
    with pytest.raises(ValidationFailed) as info:
        chat_request(body, "avibe", isolated_settings(), REQUEST_ID, images=takes)
    error = info.value
    assert error.param == "messages"
    assert "avision" in error.message


def test_chat_request_refuses_an_image_url_that_is_not_a_data_uri_naming_the_part() -> None:
    body = chat(
        "avision",
        messages=[
            {"role": "system", "content": "Be brief"},
            image_message("https://example.com/cat.png"),
        ],
    )
    error = refused(chat_request, body, "avision", isolated_settings(), REQUEST_ID)
    assert error.param == "messages.1.content.1.image_url"
    assert "data: URI" in error.message


def test_chat_request_refuses_bad_base64_in_image_url() -> None:
    body = chat("avision", messages=[image_message("data:image/png;base64,@@@")])
    error = refused(chat_request, body, "avision", isolated_settings(), REQUEST_ID)
    assert error.param == "messages.0.content.1.image_url"
    assert "base64" in error.message


def test_chat_request_applies_the_image_size_limit() -> None:
    body = chat("avision", messages=[image_message(data_uri("PNG", (64, 64)))])
    with pytest.raises(PayloadTooLarge) as too_big:
        chat_request(body, "avision", isolated_settings(max_image_size_mb=0.0001), REQUEST_ID)
    assert too_big.value.param == "messages.0.content.1.image_url"


def test_prompt_length_limit_counts_the_text_of_all_messages() -> None:
    settings = isolated_settings(max_prompt_length=10)
    fits = chat(
        messages=[{"role": "system", "content": "12345"}, {"role": "user", "content": "67890"}]
    )
    assert len(chat_request(fits, "avibe", settings, REQUEST_ID).messages) == 2

    over = chat(
        messages=[{"role": "system", "content": "123456"}, {"role": "user", "content": "67890"}]
    )
    error = refused(chat_request, over, "avibe", settings, REQUEST_ID)
    assert error.param == "messages"
    assert "Maximum length: 10 characters" in error.message


def test_prompt_length_limit_counts_text_parts_but_not_images() -> None:
    settings = isolated_settings(max_prompt_length=10)
    fits = chat("avision", messages=[image_message(data_uri(), text="0123456789")])
    assert chat_request(fits, "avision", settings, REQUEST_ID).messages
    over = chat("avision", messages=[image_message(data_uri(), text="0123456789X")])
    assert refused(chat_request, over, "avision", settings, REQUEST_ID).param == "messages"


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "Be brief"}],
        [{"role": "assistant", "content": "Hello"}],
    ],
    ids=["system-only", "assistant-only"],
)
def test_chat_request_without_a_user_message_is_refused(messages: list[dict[str, Any]]) -> None:
    error = refused(chat_request, chat(messages=messages), "avibe", isolated_settings(), "r")
    assert error.param == "messages"
    assert "user message" in error.message


@pytest.mark.parametrize("content", [None, []], ids=["without-content", "empty-parts"])
def test_a_message_without_content_is_refused_by_the_schema(content: Any) -> None:
    from pydantic import ValidationError

    from avito_ai.services.validation import validation_failed

    messages = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": content}]
    with pytest.raises(ValidationError) as info:
        chat(messages=messages)
    assert validation_failed(info.value.errors()).param == "messages.1.content"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 50}, 50),
        ({"max_completion_tokens": 20}, 20),
        ({"max_tokens": 50, "max_completion_tokens": 20}, 20),
        ({"max_tokens": 20, "max_completion_tokens": 50}, 50),
    ],
)
def test_max_completion_tokens_is_preferred_over_max_tokens(
    fields: dict[str, int], expected: int
) -> None:
    request = chat_request(chat(**fields), "avibe", isolated_settings(), REQUEST_ID)
    assert request.sampling.max_tokens == expected


def test_max_tokens_over_the_role_cap_is_refused() -> None:
    settings = isolated_settings(max_tokens_avibe=100)
    error = refused(chat_request, chat(max_tokens=101), "avibe", settings, REQUEST_ID)
    assert error.param == "max_tokens"
    assert "between 1 and 100" in error.message


def test_empty_stop_string_is_refused() -> None:
    from pydantic import ValidationError

    from avito_ai.services.validation import validation_failed

    for stop in (["ok", ""], ""):
        with pytest.raises(ValidationError) as info:
            chat(stop=stop)
        error = validation_failed(info.value.errors())
        assert error.param is not None and error.param.startswith("stop"), error.param
        assert "must not be empty" in error.message


@pytest.mark.parametrize(
    ("fields", "thinking"),
    [
        ({}, False),
        ({"enable_thinking": True}, True),
        ({"chat_template_kwargs": {"enable_thinking": True}}, True),
        ({"chat_template_kwargs": {"enable_thinking": False}}, False),
        ({"chat_template_kwargs": {"other": 1}}, False),
        ({"enable_thinking": True, "chat_template_kwargs": {"enable_thinking": False}}, True),
    ],
)
def test_thinking_switch(fields: dict[str, Any], thinking: bool) -> None:
    request = chat_request(chat(**fields), "avibe", isolated_settings(), REQUEST_ID)
    assert request.enable_thinking is thinking


# ------------------------------------------------------------------ completion_request


@pytest.mark.parametrize("prompt", ["Once upon a time", ["Once upon a time"]])
def test_completion_request_takes_the_raw_prompt(prompt: str | list[str]) -> None:
    body = CompletionRequest(model="avibe", prompt=prompt, max_tokens=8, temperature=0.1)
    request = completion_request(body, "avibe", isolated_settings(), REQUEST_ID)
    assert request.prompt == "Once upon a time"
    assert request.messages == []
    assert (request.sampling.max_tokens, request.sampling.temperature) == (8, 0.1)
    assert request.request_id == REQUEST_ID


def test_completion_request_prefers_max_completion_tokens() -> None:
    body = CompletionRequest(model="avibe", prompt="hi", max_tokens=8, max_completion_tokens=3)
    assert completion_request(body, "avibe", isolated_settings(), "r").sampling.max_tokens == 3


def test_completion_request_refuses_the_vision_model_as_openai_does() -> None:
    from avito_ai.errors import NotFound

    body = CompletionRequest(model="avision", prompt="hi")
    takes = FakeEngine("avision").capabilities().completions  # a chat-only model
    with pytest.raises(NotFound) as exc:  # 404, like a chat-only model on OpenAI's endpoint
        completion_request(body, "avision", isolated_settings(), REQUEST_ID, completions=takes)
    assert exc.value.param == "model"
    assert "/v1/chat/completions" in exc.value.message


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [("   ", "must not be empty"), ("x" * 11, "Maximum length: 10 characters")],
)
def test_completion_request_checks_the_prompt(prompt: str, fragment: str) -> None:
    body = CompletionRequest(model="avibe", prompt=prompt)
    settings = isolated_settings(max_prompt_length=10)
    error = refused(completion_request, body, "avibe", settings, REQUEST_ID)
    assert error.param == "prompt"
    assert fragment in error.message


def test_completion_request_prompt_at_the_limit_is_accepted() -> None:
    body = CompletionRequest(model="avibe", prompt="x" * 10)
    request = completion_request(body, "avibe", isolated_settings(max_prompt_length=10), "r")
    assert request.prompt == "x" * 10


# ------------------------------------------------------------------ model names


def state(**engines: Any) -> ServiceState:
    return ServiceState(settings=isolated_settings(), engines=engine_set(**engines))


def test_model_names_are_the_roles_and_the_configured_model_ids() -> None:
    assert model_names(state()) == {"avibe": "avibe", "fake-avibe": "avibe", "avision": "avision"}
    both = state(avision=FakeEngine("avision"))
    assert model_names(both)["fake-avision"] == "avision"


@pytest.mark.parametrize(
    ("name", "role"), [("avibe", "avibe"), ("fake-avibe", "avibe"), ("avision", "avision")]
)
def test_resolve_role(name: str, role: str) -> None:
    assert resolve_role(name, state()) == role


@pytest.mark.parametrize("name", ["gpt-4o", "AVIBE", "fake-avision", ""])
def test_unknown_model_is_not_found_listing_the_available_names(name: str) -> None:
    with pytest.raises(NotFound) as exc:
        resolve_role(name, state())
    assert exc.value.param == "model"
    assert f"'{name}'" in exc.value.message
    # A-Vision is not configured in this state: it is not offered.
    assert exc.value.message.endswith("Available: avibe, fake-avibe")


def test_model_list_leaves_out_roles_that_are_not_configured() -> None:
    s = ServiceState(settings=isolated_settings(), engines=engine_set(), started_at=1_700_000_000.7)
    cards = model_list(s).model_dump()
    assert cards["object"] == "list"
    assert [(c["id"], c["root"], c["created"], c["object"]) for c in cards["data"]] == [
        ("avibe", "fake-avibe", 1_700_000_000, "model"),
        ("fake-avibe", "fake-avibe", 1_700_000_000, "model"),
    ]
    assert {c["owned_by"] for c in cards["data"]} == {"avito"}


def test_model_list_with_both_models_configured() -> None:
    ids = [card.id for card in model_list(state(avision=FakeEngine("avision"))).data]
    assert ids == ["avibe", "fake-avibe", "avision", "fake-avision"]


def test_max_completion_tokens_over_the_cap_is_named_as_sent() -> None:
    settings = isolated_settings(max_tokens_avibe=256)
    with pytest.raises(ValidationFailed) as info:
        chat_request(chat(max_completion_tokens=100000), "avibe", settings, REQUEST_ID)
    assert info.value.param == "max_completion_tokens"
    assert "max_completion_tokens" in info.value.message
    with pytest.raises(ValidationFailed) as plain:
        chat_request(chat(max_tokens=100000), "avibe", settings, REQUEST_ID)
    assert plain.value.param == "max_tokens"
