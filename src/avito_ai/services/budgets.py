"""Token budgets: tokens per client per minute and per day, reserved when a generation is
admitted and settled when it ends.

A budget checked before a request and charged after it let a burst through whole: 12
concurrent requests of one client with TOKENS_PER_MINUTE=300 used 1,226 tokens. So each
request *reserves* what it may use (its prompt's tokens plus `max_tokens`) in one atomic
step of the storage (a Lua script on Redis, shared by gunicorn workers and replicas; one
synchronous step in memory), and a reservation that does not fit is a 429 naming the
budget. When the request ends, cancelled or not, the reservation is settled against what
it used (prompt plus generated tokens): the rest is given back.

A reservation larger than a whole budget is cut to the budget, so it fits an empty window
and the request can run at all; such a request can overspend by what it uses past the
budget, which bounds the overspend of any burst by one request's reservation.

Windows are fixed and start with a client's first tokens (`minute`: 60 s, `day`: 86,400 s).
An unreachable storage is decided by RATE_LIMIT_FAIL_MODE, as for request limits.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from avito_ai.clients import ANONYMOUS, Client
from avito_ai.config import Settings
from avito_ai.engines.base import (
    CountsPromptTokens,
    Engine,
    EngineState,
    GenerationRequest,
)
from avito_ai.engines.prompts import estimate_prompt_tokens
from avito_ai.errors import RateLimited, RateLimitUnavailable
from avito_ai.observability import metrics
from avito_ai.observability.logging import Throttled
from avito_ai.storage import budget_store

logger = logging.getLogger(__name__)

WINDOWS = (("minute", 60), ("day", 86400))


def prompt_tokens(engine: Engine, request: GenerationRequest, max_pixels: int) -> int:
    """The prompt's tokens: counted by the engine when it can, else estimated."""
    if isinstance(engine, CountsPromptTokens) and engine.status().state is EngineState.READY:
        return engine.prompt_tokens(request)
    return estimate_prompt_tokens(request, max_pixels)


@dataclass
class Reservation:
    """Tokens held for one request in each of its client's windows, until settled."""

    client: Client
    keys: list[str]
    amounts: list[int]
    expiries: list[int]
    once: str | None = None  # its settlement's name: a retried settlement is applied once
    settled: bool = False


class TokenBudgets:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = budget_store(settings.rate_limit_storage_uri)
        self._storage_log = Throttled(logger)
        self._settling: set[asyncio.Future[None]] = set()

    def limits_for(self, client: Client) -> dict[str, int]:
        policy = client.policy
        per_minute = policy.tokens_per_minute if policy else None
        per_day = policy.tokens_per_day if policy else None
        return {
            "minute": self.settings.tokens_per_minute if per_minute is None else per_minute,
            "day": self.settings.tokens_per_day if per_day is None else per_day,
        }

    def active(self, client: Client) -> bool:
        return any(self.limits_for(client).values())

    @staticmethod
    def _key(client: Client, window: str) -> str:
        # The id in braces: a Redis Cluster hash tag, so a client's windows share the slot
        # that the reservation's one Lua script needs.
        return f"avito-tokens/{{{client.id}}}/{window}"

    @staticmethod
    def _once(client: Client) -> str:
        """A fresh name for one change of the client's budgets, in the same Cluster slot:
        the storage applies a change once however often its client retries it."""
        return f"avito-tokens/{{{client.id}}}/once/{uuid.uuid4().hex}"

    def _failed(self, what: str, exc: Exception) -> None:
        # (Imported here: the gunicorn master imports this module before it has made the
        # metrics folder.)
        from avito_ai.observability.metrics import RATE_LIMIT_STORAGE_ERRORS

        RATE_LIMIT_STORAGE_ERRORS.inc()
        self._storage_log.error("Token budget storage unreachable (%s): %s", what, exc)

    async def reserve(self, client: Client, tokens: int) -> Reservation | None:
        """Hold `tokens` in each of the client's budgets, or 429 naming the one it does not
        fit. Sets the headers' figures on `client.budget`. None: nothing to settle (no
        budget, or the storage is unreachable and RATE_LIMIT_FAIL_MODE=open)."""
        limits = self.limits_for(client)
        windows = [(name, seconds, limits[name]) for name, seconds in WINDOWS if limits[name]]
        if not windows:
            return None
        keys = [self._key(client, name) for name, _, _ in windows]
        amounts = [min(tokens, limit) for _, _, limit in windows]
        expiries = [seconds for _, seconds, _ in windows]
        try:
            refused, used, left = await self.store.reserve(
                keys,
                [limit for _, _, limit in windows],
                amounts,
                expiries,
                once=self._once(client),
            )
        except Exception as exc:
            self._failed("reserving", exc)
            if self.settings.rate_limit_fail_mode == "closed":
                raise RateLimitUnavailable("Token budgets are unavailable; retry shortly") from exc
            return None
        figures: dict[str, int] = {}
        for (name, _, limit), use, seconds in zip(windows, used, left, strict=True):
            suffix = "" if name == "minute" else "-day"
            figures[f"limit-tokens{suffix}"] = limit
            figures[f"remaining-tokens{suffix}"] = max(0, limit - use)
            figures[f"reset-tokens{suffix}"] = seconds if use else 0
        if client is not ANONYMOUS:  # (the default is shared: no headers to report to)
            client.budget.update(figures)
        if refused:
            name, _, limit = windows[refused - 1]
            metrics.BUDGET_REFUSALS.labels(client.name, name).inc()
            retry = max(1, left[refused - 1])
            raise RateLimited(
                f"Token budget exceeded: {limit} tokens per {name} ({used[refused - 1]} used "
                f"or held, this request may use up to {tokens}); retry in {retry} s",
                retry_after=retry,
            )
        return Reservation(client, keys, amounts, expiries, self._once(client))

    async def settle(self, reservation: Reservation | None, used: int) -> None:
        """Give back what the request did not use (or charge what it used past its
        reservation). Runs once per reservation, shielded from the request's cancellation."""
        if reservation is None or reservation.settled:
            return
        reservation.settled = True
        deltas = [max(0, used) - amount for amount in reservation.amounts]
        if not any(deltas):
            return
        task = asyncio.ensure_future(self._adjust(reservation, deltas, used))
        self._settling.add(task)  # a strong reference until it is done
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def _adjust(self, reservation: Reservation, deltas: list[int], used: int) -> None:
        try:
            await self.store.adjust(
                reservation.keys, deltas, reservation.expiries, once=reservation.once
            )
        except Exception as exc:  # the answer is given: log (throttled), do not fail it
            self._failed(f"settling {used} tokens of {reservation.client.name}", exc)

    async def usage(self, client: Client) -> dict[str, Any]:
        """The client's use against its budgets (for /api/metrics and the page)."""
        view: dict[str, Any] = {"client": client.name, "priority": client.priority}
        for window, _seconds in WINDOWS:
            limit = self.limits_for(client)[window]
            try:
                used: int | None = (await self.store.read(self._key(client, window)))[0]
            except Exception:
                used = None  # storage unreachable
            view[f"tokens_per_{window}"] = {"used": used, "limit": limit or None}
        return view
