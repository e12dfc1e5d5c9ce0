"""OpenAI's Batch API on the service's own engines: files and batches kept in a database
(SQLite by default, PostgreSQL across replicas), each line run in-process through the
same pipeline as an online request of the batch's owner, at the lowest priority class.

* `settings.py`: `BatchSettings` (BATCH_*), apart from the service's own settings.
* `store.py`: the tables (SQLAlchemy Core), alembic migrations in `migrations/`, and every
  query: leases on lines (`FOR UPDATE SKIP LOCKED` on PostgreSQL), one commit per line.
* `jsonl.py`: reading an uploaded JSONL file and validating a batch's lines whole.
* `runner.py`: the background loop of each process: validates, claims lines, runs them
  through the app, finalizes, cancels, expires, deletes what retention says.
"""
