"""Who a request comes from, and what that client may use.

A client is its API key when one is used, else its address (IPv6 by prefix). Keys come
from API_KEYS (plain) and API_KEYS_FILE, one per line, optionally with fields:

    sk-team-a   name=search   tokens_per_minute=20000   tokens_per_day=2000000
    sk-batch    name=nightly  priority=batch  concurrency=2
    sk-ops      name=ops      classes=interactive,batch      # may choose with X-Priority
    sk-plain                                                   # the old format still works

Fields: `name` (what logs and metrics show, never the key; default key-<hash>),
`tokens_per_minute` / `tokens_per_day` (override TOKENS_PER_MINUTE / TOKENS_PER_DAY; 0 is
unlimited), `concurrency` (overrides CLIENT_CONCURRENCY), `priority` (the key's class:
interactive or batch), `classes` (the classes its requests may ask for with X-Priority).

middleware/auth.py builds the request's `Client` once; every layer further in reads it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

PRIORITY_CLASSES: dict[str, int] = {"interactive": 0, "batch": 1}  # lower: admitted first
DEFAULT_CLASS = "interactive"
_INT_FIELDS = ("tokens_per_minute", "tokens_per_day", "concurrency")


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class KeyPolicy:
    key: str = field(repr=False)
    name: str
    tokens_per_minute: int | None = None  # None: the setting's value
    tokens_per_day: int | None = None
    concurrency: int | None = None
    priority: str = DEFAULT_CLASS
    classes: frozenset[str] = frozenset({DEFAULT_CLASS})


def parse_key_line(line: str, where: str = "API_KEYS_FILE") -> KeyPolicy | None:
    """One line of the keys file; None for a blank or comment line. ValueError names the
    field that is wrong (the service refuses to start on it)."""
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    key, *fields = text.split()
    values: dict[str, str] = {}
    for item in fields:
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise ValueError(f"{where}: '{item}' is not name=value")
        values[name] = value
    unknown = set(values) - {"name", "priority", "classes", *_INT_FIELDS}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    numbers: dict[str, int] = {}
    for name in _INT_FIELDS:
        if name in values:
            if not values[name].isdigit():
                raise ValueError(f"{where}: {name} must be a whole number >= 0")
            numbers[name] = int(values[name])
    priority = values.get("priority", DEFAULT_CLASS)
    classes = frozenset(c for c in values.get("classes", priority).split(",") if c) | {priority}
    for name in classes:
        if name not in PRIORITY_CLASSES:
            raise ValueError(f"{where}: unknown priority class '{name}'")
    return KeyPolicy(
        key=key,
        name=values.get("name", f"key-{key_id(key)[:8]}"),
        priority=priority,
        classes=classes,
        **numbers,
    )


@dataclass(frozen=True)
class Client:
    """The client of the request being served: `id` counts limits and budgets (a key's
    hash or an address), `name` is what logs and metrics show."""

    id: str
    name: str
    policy: KeyPolicy | None = None
    priority: str = DEFAULT_CLASS
    requested_priority: str | None = None  # X-Priority as sent, checked by the services
    # What is left of its token budgets, filled when a generation is admitted; the
    # rate-limit middleware sends it as x-ratelimit-*-tokens headers.
    budget: dict[str, int] = field(default_factory=dict, compare=False)


# A request with no client identified (an engine driven directly, not through the app).
ANONYMOUS = Client(id="ip:unknown", name="ip:unknown")
