"""Alembic's environment: run on the connection `store.migrate` hands in."""

from __future__ import annotations

from alembic import context

from avito_ai.batches.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
