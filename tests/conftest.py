"""Shared fixtures. The fake engine serves API tests; real models are loaded once per session."""

from __future__ import annotations

import os

# Tests never read the developer's .env or talk to a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
