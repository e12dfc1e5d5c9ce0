"""The Batch API's tables (SQLAlchemy Core). Changed only through a migration in
`migrations/versions/`."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# An uploaded file (kind "upload") or a batch's output / error file: the latter have no
# chunks, their lines are the batch's finished lines (written once, as each finishes).
files = Table(
    "batch_files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(128), nullable=False, index=True),
    Column("filename", String(512), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("lines", Integer, nullable=False),
    Column("batch_id", String(64)),
    Column("created_at", Integer, nullable=False, index=True),
    Column("expires_at", Integer),
)

# An upload's bytes, in chunks of at most 1 MiB (a 200 MB file is never one value).
file_chunks = Table(
    "batch_file_chunks",
    metadata,
    Column("file_id", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

batches = Table(
    "batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(128), nullable=False, index=True),  # who may see it
    Column("client_id", String(128), nullable=False),  # who its lines are charged to
    Column("client_name", String(256), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("input_file_id", String(64), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("created_at", Integer, nullable=False),
    Column("expires_at", Integer, nullable=False),
    Column("in_progress_at", Integer),
    Column("finalizing_at", Integer),
    Column("completed_at", Integer),
    Column("failed_at", Integer),
    Column("expired_at", Integer),
    Column("cancelling_at", Integer),
    Column("cancelled_at", Integer),
    Column("metadata_json", Text),
    Column("errors_json", Text),
    Column("output_file_id", String(64)),
    Column("error_file_id", String(64)),
    Column("total", Integer, nullable=False, default=0),
    # validation is claimed like a line: one process validates, a dead one's claim lapses
    Column("lease_owner", String(128)),
    Column("lease_until", Float),
)

# One input line: pending → running (leased by one process) → done / failed, its output
# line written in the same commit that finishes it.
lines = Table(
    "batch_lines",
    metadata,
    Column("batch_id", String(64), primary_key=True),
    Column("line_no", Integer, primary_key=True),
    Column("custom_id", String(512), nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_until", Float),
    Column("not_before", Float, nullable=False, default=0.0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("result", Text),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("finished_at", Float),
    Column("finished_by", String(128)),  # the process that wrote its result
    Index("ix_batch_lines_status", "status", "not_before"),
    # counts by status and the tokens' sums read from the index alone (migration 0002)
    Index(
        "ix_batch_lines_batch_status", "batch_id", "status", "prompt_tokens", "completion_tokens"
    ),
)
