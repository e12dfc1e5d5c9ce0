"""The Batch API's settings (BATCH_*), a class of their own beside the service's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

MB = 1024 * 1024


def default_database_url() -> str:
    """An SQLite file beside the model cache: nothing to start, kept across restarts."""
    return f"sqlite:///{Path.home() / '.cache' / 'avito-ai' / 'batches.sqlite3'}"


class BatchSettings(BaseSettings):
    """Names are the environment variable names (BATCH_DATABASE_URL, ...)."""

    model_config = SettingsConfigDict(
        env_prefix="BATCH_",
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        env_ignore_empty=True,
    )

    database_url: str = Field(
        default_factory=default_database_url,
        description="the batches' database: sqlite:///path (default ~/.cache/avito-ai/"
        "batches.sqlite3; one machine) or postgresql://user:password@host/db (several "
        "replicas share the work)",
    )
    max_file_bytes: Annotated[
        int, Field(gt=0, description="an uploaded file's bytes at most (OpenAI: 200 MB)")
    ] = 200 * MB
    max_lines: Annotated[
        int, Field(gt=0, description="lines in one file at most (OpenAI: 50,000)")
    ] = 50_000
    max_line_bytes: Annotated[int, Field(gt=0, description="bytes of one line at most")] = 16 * MB
    lines_in_flight: Annotated[
        int,
        Field(
            gt=0,
            description="lines this process runs at once (each replica, each gunicorn "
            "worker: its own); they wait in fair admission's lowest class behind every "
            "interactive request",
        ),
    ] = 4
    yield_seconds: Annotated[
        float,
        Field(
            ge=0,
            description="after an interactive request to an in-process model (OpenVINO, "
            "transformers) of this process ends, new lines wait this long (lines already "
            "running go on): batches fill the time interactive users leave idle. 0: lines "
            "only queue behind interactive requests in fair admission. Upstreams and vLLM or "
            "SGLang engine processes are never waited for",
        ),
    ] = 2.0
    lease_seconds: Annotated[
        float,
        Field(
            ge=2,
            description="a claimed line belongs to its process this long, renewed while "
            "it runs; a process that died loses its lines to the others after it",
        ),
    ] = 30.0
    retention_hours: Annotated[
        float,
        Field(
            gt=0,
            description="files (uploads and outputs) are deleted this long after they "
            "were made, a finished batch once it is older and its files are gone",
        ),
    ] = 30 * 24.0
    enabled: bool = Field(
        True,
        description="off: no batch runner in this process, and /v1/files and /v1/batches "
        "answer 503",
    )

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name → its environment variable."""
        return {name: f"BATCH_{name.upper()}" for name in cls.model_fields}

    def public_view(self) -> dict[str, Any]:
        """KEY=value for `avito-ai config`, the database password masked."""
        from sqlalchemy.engine import make_url

        view: dict[str, Any] = {}
        for name, env in self.env_names().items():
            value = getattr(self, name)
            if name == "database_url":
                value = make_url(value).render_as_string(hide_password=True)
            view[env] = value
        return view


def load_batch_settings(**overrides: Any) -> BatchSettings:
    """From the environment and .env; ConfigError (one line) on a bad value."""
    from avito_ai.config import ConfigError, format_validation_error

    try:
        return BatchSettings(**overrides)
    except ValidationError as exc:
        message = format_validation_error(exc)
        raise ConfigError(message.replace(": ", ": BATCH_", 1)) from None
