"""`.env.example`, written from the settings classes: each class a block under its heading,
each field its description and `NAME=default` (`avito-ai config --example` prints it; a
unit test keeps the file equal to it)."""

from __future__ import annotations

import textwrap
from enum import Enum

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from avito_ai.config.service import FRONT_DOOR, SECTIONS

HEADER = """\
# Avito AI API configuration. Copy to .env and edit; environment variables override .env.
# Comments stay on their own lines: systemd's EnvironmentFile and docker --env-file do not
# strip comments after a value.
# `avito-ai config` prints the effective configuration (secrets masked).
# Written from the settings classes (src/avito_ai/config/): `avito-ai config --example`.
"""


def _default(field: FieldInfo) -> str:
    """The default as a .env value; empty where it is computed (a path under the home
    folder) or unset."""
    if field.default_factory is not None:
        return ""
    value = field.default
    if value is None or isinstance(value, SecretStr):
        return ""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _block(heading: str, fields: dict[str, FieldInfo], names: dict[str, str]) -> list[str]:
    lines = ["", f"# --- {heading} ---"]
    for name, field in fields.items():
        if field.description:
            lines += textwrap.wrap(
                field.description, 90, initial_indent="# ", subsequent_indent="# "
            )
        lines.append(f"{names[name]}={_default(field)}")
    return lines


def env_example() -> str:
    # The Batch API's BATCH_* are a class of their own (batches/settings.py, its runner's).
    from avito_ai.batches.settings import BatchSettings

    lines = HEADER.splitlines()
    for section in (*FRONT_DOOR, *SECTIONS.values()):
        lines += _block(section.heading, section.model_fields, section.env_names())
    lines += _block(
        "Batch API (/v1/files, /v1/batches; docs/batch.md)",
        BatchSettings.model_fields,
        BatchSettings.env_names(),
    )
    return "\n".join(lines) + "\n"
