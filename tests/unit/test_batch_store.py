"""The Batch API's schema on a real SQLite file: alembic's migrations, and the check at
every process start that skips alembic where the database is already at the newest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from avito_ai.batches.store import HEAD, alembic_config, migrate


def version(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [
                r[0] for r in connection.execute(text("SELECT version_num FROM alembic_version"))
            ]
    finally:
        engine.dispose()


def test_head_is_alembics_newest_revision() -> None:
    assert ScriptDirectory.from_config(alembic_config()).get_heads() == [HEAD]


def test_a_new_database_is_migrated_and_a_migrated_one_is_checked_without_alembic(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'batches.sqlite3'}"
    migrate(url)
    assert version(url) == [HEAD]
    script = (
        "import sys\n"
        "from avito_ai.batches.store import migrate\n"
        f"migrate({url!r})\n"
        "print('alembic' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_a_database_at_an_older_revision_is_brought_to_the_newest(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'batches.sqlite3'}"
    engine = create_engine(url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    indexes = {index["name"] for index in inspect(engine).get_indexes("batch_lines")}
    engine.dispose()
    assert version(url) == ["0001"]
    migrate(url)
    assert version(url) == [HEAD]
    engine = create_engine(url)
    after = {index["name"] for index in inspect(engine).get_indexes("batch_lines")}
    engine.dispose()
    assert after > indexes  # 0002's index, which only alembic makes
