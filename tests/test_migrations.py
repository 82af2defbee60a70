"""The Alembic migrations build the whole model on SQLite and on PostgreSQL, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

import provisioner.model  # noqa: F401
from provisioner.db import make_engine, upgrade


def test_migrations_create_every_table_and_match_models(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)  # running twice is a no-op, not an error
    engine = make_engine(database_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert set(SQLModel.metadata.tables) <= tables
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        engine.dispose()


def test_migrations_form_one_line_with_unique_revision_ids() -> None:
    """Two helpers landing a revision each on the same parent would leave two heads (or two "0005"s)."""
    import re

    from alembic.script import ScriptDirectory

    from provisioner.db import MIGRATIONS, alembic_config

    files = sorted((MIGRATIONS / "versions").glob("*.py"))
    ids = [re.search(r'^revision: str = "([^"]+)"', f.read_text(), re.M) for f in files]
    revisions = [m.group(1) for m in ids if m]
    assert len(revisions) == len(set(revisions)) == len(files), revisions
    assert len(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()) == 1
