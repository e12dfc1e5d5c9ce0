"""Form and multipart fields (always strings) → typed sampling fields, and the error a
client gets for a value that is not right, naming the field."""

from __future__ import annotations

import pytest

from avito_ai.api.form_fields import sampling_from_form
from avito_ai.errors import ValidationFailed

BOOL_FIELDS = ("stream", "enable_thinking", "ignore_eos")


def refused(values: dict[str, str], stops: list[str] | None = None) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as exc:
        sampling_from_form(values, stops or [])
    return exc.value


def test_numbers_are_parsed_from_strings() -> None:
    fields = sampling_from_form(
        {
            "max_tokens": "12",
            "top_k": "5",
            "seed": "-3",
            "temperature": "0.5",
            "top_p": "0.9",
            "repetition_penalty": "1.1",
        },
        [],
    )
    assert fields.max_tokens == 12 and isinstance(fields.max_tokens, int)
    assert fields.top_k == 5 and isinstance(fields.top_k, int)
    assert fields.seed == -3
    assert fields.temperature == 0.5
    assert fields.top_p == 0.9
    assert fields.repetition_penalty == 1.1


def test_whitespace_around_numbers_is_ignored() -> None:
    fields = sampling_from_form({"max_tokens": " 64 ", "temperature": "\t1\n"}, [])
    assert (fields.max_tokens, fields.temperature) == (64, 1.0)


def test_integer_text_is_a_valid_float() -> None:
    assert sampling_from_form({"temperature": "1"}, []).temperature == 1.0


def test_nothing_sent_gives_the_defaults() -> None:
    fields = sampling_from_form({}, [])
    assert fields.max_tokens is None and fields.temperature is None and fields.top_p is None
    assert fields.top_k is None and fields.seed is None and fields.repetition_penalty is None
    assert fields.stop is None and fields.system is None
    assert (fields.stream, fields.enable_thinking, fields.ignore_eos) == (False, False, False)


@pytest.mark.parametrize(
    "name", ["max_tokens", "top_k", "seed", "temperature", "top_p", "repetition_penalty"]
)
@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_number_fields_are_ignored(name: str, blank: str) -> None:
    assert getattr(sampling_from_form({name: blank}, []), name) is None


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("max_tokens", "1.5", "an integer"),
        ("max_tokens", "ten", "an integer"),
        ("top_k", "abc", "an integer"),
        ("seed", "1e3", "an integer"),
        ("temperature", "warm", "a number"),
        ("top_p", "0,9", "a number"),
        ("repetition_penalty", "1.1.1", "a number"),
    ],
)
def test_bad_number_is_refused_naming_the_field(name: str, value: str, kind: str) -> None:
    error = refused({name: value})
    assert error.param == name
    assert error.message == f"{name}: must be {kind}"


def test_the_bad_field_is_named_even_when_others_are_fine() -> None:
    error = refused({"max_tokens": "10", "temperature": "0.3", "top_k": "many"})
    assert error.param == "top_k"


@pytest.mark.parametrize("name", BOOL_FIELDS)
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("1", True),
        (" True ", True),
        ("false", False),
        ("False", False),
        ("no", False),
        ("off", False),
        ("0", False),
        ("", False),
    ],
)
def test_booleans(name: str, value: str, expected: bool) -> None:
    assert getattr(sampling_from_form({name: value}, []), name) is expected


@pytest.mark.parametrize("name", BOOL_FIELDS)
@pytest.mark.parametrize("value", ["maybe", "2", "y", "tru", "-1"])
def test_bad_boolean_is_refused_naming_the_field(name: str, value: str) -> None:
    error = refused({name: value})
    assert error.param == name
    assert error.message == f"{name}: must be true or false"


def test_stop_strings_are_kept_in_order() -> None:
    assert sampling_from_form({}, ["###", "\n\n", "END"]).stop == ["###", "\n\n", "END"]


def test_no_stop_strings_means_none() -> None:
    assert sampling_from_form({}, []).stop is None


def test_system_is_kept_and_an_empty_one_ignored() -> None:
    assert sampling_from_form({"system": "Отвечай кратко"}, []).system == "Отвечай кратко"
    assert sampling_from_form({"system": ""}, []).system is None


def test_unknown_form_fields_are_ignored() -> None:
    fields = sampling_from_form({"prompt": "hi", "colour": "blue", "max_tokens": "3"}, [])
    assert fields.max_tokens == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", "2.5"),
        ("temperature", "-0.1"),
        ("temperature", "nan"),
        ("temperature", "inf"),
        ("top_p", "0"),
        ("top_p", "1.5"),
        ("repetition_penalty", "0"),
        ("repetition_penalty", "2.01"),
        ("max_tokens", "0"),
        ("max_tokens", "-5"),
        ("top_k", "-1"),
    ],
)
def test_value_out_of_range_is_refused_naming_the_field(name: str, value: str) -> None:
    error = refused({name: value})
    assert error.param == name
    assert error.message.startswith(f"{name}: ")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("temperature", "0", 0.0),
        ("temperature", "2", 2.0),
        ("top_p", "1", 1.0),
        ("repetition_penalty", "2", 2.0),
        ("max_tokens", "1", 1),
        ("top_k", "0", 0),
    ],
)
def test_range_boundaries_are_accepted(name: str, value: str, expected: float) -> None:
    assert getattr(sampling_from_form({name: value}, []), name) == expected


def test_too_many_stop_strings_name_the_stop_field() -> None:
    error = refused({}, ["a", "b", "c", "d", "e"])
    assert error.param == "stop"
    assert "at most 4" in error.message and "stop.str" not in error.message
