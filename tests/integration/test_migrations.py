"""Migrations: head matches the ORM on SQLite and PostgreSQL, downgrades work, and the app
refuses a database that is not at head."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from api.db import alembic_config, upgrade_to_head
from api.main import DatabaseNotAtHead, create_app
from api.models import Base
from api.settings import Settings


def _settings(kind: str, tmp_path: Path, postgres_url: str) -> Settings:
    url = postgres_url if kind == "postgresql" else None
    return Settings(data_dir=tmp_path, database_url=url)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_head_matches_the_orm_and_downgrades_cleanly(
    kind: str, tmp_path: Path, postgres_url: str
) -> None:
    settings = _settings(kind, tmp_path, postgres_url)
    upgrade_to_head(settings)
    engine = create_engine(settings.resolved_database_url)
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []
    command.downgrade(alembic_config(settings), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade_to_head(settings)
    assert {"job", "model", "result", "artifact", "job_event", "user"} <= set(
        inspect(engine).get_table_names()
    )
    engine.dispose()


def test_the_app_refuses_a_database_that_is_not_at_head(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(DatabaseNotAtHead, match="python -m api migrate"):
        create_app(settings)
    create_app(Settings(data_dir=tmp_path, auto_migrate=True))  # the embedded start migrates
    create_app(settings)
