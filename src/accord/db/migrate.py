"""Schema migrations (Alembic), run from code: `accord migrate`, and by `accord up` on start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from accord.db.engine import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(db: Database, revision: str = "head") -> None:
    config = _config()
    before = current_revision(db)
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        config.attributes["keyring"] = db.keyring  # migrations that encrypt existing rows need it
        command.upgrade(config, revision)
    if current_revision(db) != before:
        db.checkpoint_wal()  # SQLite: the pages that held what a migration sealed leave the write-ahead log


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def is_current(db: Database) -> bool:
    return current_revision(db) == head_revision()


def make_revision(db: Database, message: str) -> None:
    """Developer aid: autogenerate a migration from the models against an up-to-date database."""
    config = _config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        config.attributes["keyring"] = db.keyring  # migrations that encrypt existing rows need it
        command.revision(config, message=message, autogenerate=True)
