"""What every settings class shares: where values come from and how they read.

A `Section` is one pydantic-settings class: its fields are read from the environment, then
`.env`, under their environment variable names (`env_prefix` + the field's name, or the
field's own alias), and each field's description is its line in `.env.example` and in
`avito-ai config` (`docs()`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

from pydantic import AliasChoices, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

S = TypeVar("S", bound="Section")


class Section(BaseSettings):
    """Base of the settings classes: environment, then `.env`, then the defaults."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        validate_default=True,
        # VAR= (empty) in the environment or .env means "not set": the default applies.
        env_ignore_empty=True,
        populate_by_name=True,
    )

    # The heading of this class's block in `.env.example`; "" continues the one before.
    heading: ClassVar[str] = ""
    # Only the values given and the defaults: no environment, no `.env` (`given_only`).
    reads_environment: ClassVar[bool] = True

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if not cls.reads_environment:
            return (init_settings,)
        return (init_settings, env_settings, dotenv_settings, file_secret_settings)

    @field_validator("*", mode="before")
    @classmethod
    def _blank_means_default(cls, value: Any, info: ValidationInfo) -> Any:
        """Only spaces count as empty too (env_ignore_empty covers ""): the default applies."""
        if isinstance(value, str) and value and not value.strip() and info.field_name:
            return cls.model_fields[info.field_name].get_default(call_default_factory=True)
        return value

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name → its environment variable, as pydantic-settings reads it."""
        prefix = str(cls.model_config.get("env_prefix", ""))
        names: dict[str, str] = {}
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, AliasChoices):
                alias = alias.choices[0]
            names[name] = (alias if isinstance(alias, str) else prefix + name).upper()
        return names

    @classmethod
    def field_for(cls, env_name: str) -> str | None:
        """The field an environment variable (any case) sets, or None."""
        wanted = env_name.upper()
        return next((f for f, e in cls.env_names().items() if e == wanted), None)

    def view(self) -> dict[str, Any]:
        """This class's effective values keyed by environment variable, secrets masked."""
        view: dict[str, Any] = {}
        for name, env in self.env_names().items():
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********" if value.get_secret_value() else ""
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = ",".join(map(str, value))
            view[env] = value
        return view


def given_only(cls: type[S]) -> type[S]:
    """`cls` reading only the values given to it and its defaults (tests, scripts)."""
    return cast("type[S]", _given_only(cls))


@functools.cache
def _given_only(cls: type[Section]) -> type[Section]:
    return type(cls.__name__, (cls,), {"reads_environment": False, "__module__": cls.__module__})
