"""The remote backend's upstreams: where they are and how long to wait for them
(RemoteConfig), and what is known of each (Upstream: health, load, failures)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from avito_ai.engines.base import Role

if TYPE_CHECKING:
    from avito_ai.config import RemoteSettings, RoleSettings

logger = logging.getLogger(__name__)

EJECT_AFTER_FAILURES = 3


@dataclass(frozen=True)
class RemoteConfig:
    """What the remote backend needs: its upstreams and how long to wait for them."""

    role: Role
    urls: tuple[str, ...]
    model: str | None  # what requests name; None: the first model the upstream lists
    api_key: str | None
    connect_timeout: float
    read_timeout: float
    health_interval: float
    max_pixels: int  # images are sent scaled to this (AVISION_MAX_PIXELS)

    @classmethod
    def of(cls, own: RoleSettings, remote: RemoteSettings, max_pixels: int) -> RemoteConfig:
        """The role's upstreams (`<ROLE>_UPSTREAM_*`) and the backend's timeouts
        (`UPSTREAM_*`); images go up at most `max_pixels` (AVISION_MAX_PIXELS)."""
        key = own.upstream_api_key
        return cls(
            role=own.role,
            urls=own.upstream_urls,
            model=own.upstream_model,
            api_key=key.get_secret_value() if key else None,
            connect_timeout=remote.connect_timeout,
            read_timeout=remote.read_timeout,
            health_interval=remote.health_interval,
            max_pixels=max_pixels,
        )


@dataclass(eq=False)
class Upstream:
    base: str  # ends with /v1
    healthy: bool = False
    outstanding: int = 0
    failures: int = 0
    last_error: str | None = None

    def record_failure(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.failures >= EJECT_AFTER_FAILURES and self.healthy:
            self.healthy = False
            logger.warning(
                "Upstream %s ejected after %d failures: %s", self.base, self.failures, error
            )

    def record_success(self) -> None:
        self.failures = 0
        self.last_error = None
        self.healthy = True
