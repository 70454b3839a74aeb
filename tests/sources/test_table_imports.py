"""Tables and queries of real PostgreSQL, MariaDB and SQLite databases, incremental by a cursor column,
into Accord on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from accord.config import Settings
from accord.runtime import Runtime
from accord.sources import imports
from accord.sources.connectors import InputError
from accord.sources.mapping import load_mapping
from accord.sources.tables import TableSpec, decode_cursor, encode_cursor, run_table_import
from conftest import service_missing
from sources.importing import process, run_error, source, traits, versions

MARIADB_URL = "mysql://root@127.0.0.1:3306/test"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
MAPPING = load_mapping(
    "mapping: 1\nname: crm\n"
    "fields: [{name: email, trim: true, lower: true}]\n"
    "identifiers: [{field: id, type: user_id}, {field: email, type: email}]\n"
    "traits: [{field: plan}, {field: email, pii: true}]\n"
)


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A source database with a fresh `customers_*` table: (URL, table)."""
    kind = str(request.param)
    url = {"postgresql": POSTGRES_URL, "mariadb": MARIADB_URL, "sqlite": f"sqlite:///{tmp_path / 'crm.db'}"}[kind]
    driver = {"postgresql": "postgresql+psycopg", "mariadb": "mysql+pymysql", "sqlite": "sqlite"}[kind]
    engine = create_engine(url.replace(url.split("://")[0], driver, 1))
    table = f"customers_{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as connection:
            connection.execute(
                text(f"CREATE TABLE {table} (id INTEGER, email VARCHAR(200), plan VARCHAR(50), updated_at TIMESTAMP)")
            )
    except Exception as error:  # unreachable server: skip or fail, as the environment asks
        engine.dispose()
        service_missing(kind, error)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(f"INSERT INTO {table} VALUES (:id, :email, :plan, :at)"),
                [
                    {"id": 1, "email": " Ann@Example.com", "plan": "gold", "at": datetime(2026, 1, 1, 9)},
                    {"id": 2, "email": "bob@example.com", "plan": "silver", "at": datetime(2026, 1, 2, 9)},
                    {"id": 3, "email": None, "plan": "bronze", "at": datetime(2026, 1, 3, 9)},
                ],
            )
        request.node.source_engine = engine
        yield url, table
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def execute(url: str, sql: str, **params: object) -> None:
    driver = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "sqlite": "sqlite"}[url.split("://")[0]]
    engine = create_engine(url.replace(url.split("://")[0], driver, 1))
    with engine.begin() as connection:
        connection.execute(text(sql), params)
    engine.dispose()


def test_a_table_imports_incrementally_by_its_cursor(rt: Runtime, database: tuple[str, str], tmp_path: Path) -> None:
    url, table = database
    spec = TableSpec(url=url, table=table, query=None, cursor="updated_at")
    source_id = source(rt, "crm")
    first = run_table_import(rt.db, rt.log, source_id=source_id, mapping=MAPPING, spec=spec, data_dir=tmp_path)
    assert (first.status, first.read, first.imported, first.rejected) == ("done", 3, 3, 0), first.error
    assert first.cursor is not None
    assert str(decode_cursor(first.cursor)).startswith("2026-01-03 09:00:00")  # SQLite keeps it as text
    process(rt)
    assert traits(rt, "user_id:1") == {"plan": "gold", "email": "ann@example.com"}
    execute(url, f"UPDATE {table} SET plan = 'platinum', updated_at = :at WHERE id = 1", at=datetime(2026, 2, 1))
    execute(url, f"INSERT INTO {table} VALUES (4, 'dan@example.com', 'gold', :at)", at=datetime(2026, 2, 2))
    second = run_table_import(rt.db, rt.log, source_id=source_id, mapping=MAPPING, spec=spec, data_dir=tmp_path)
    # From the last cursor on (>=): row 3 again (stored already), row 1 changed, row 4 new.
    assert (second.status, second.read, second.imported, second.appended) == ("done", 3, 3, 2), second.error
    process(rt)
    assert traits(rt, "user_id:1")["plan"] == "platinum"
    assert versions(rt, "user_id:1")["plan"][3] == second.id
    assert traits(rt, "email:dan@example.com")["plan"] == "gold"
    nothing = run_table_import(rt.db, rt.log, source_id=source_id, mapping=MAPPING, spec=spec, data_dir=tmp_path)
    assert (nothing.read, nothing.appended) == (1, 0)
    full = run_table_import(
        rt.db, rt.log, source_id=source_id, mapping=MAPPING, spec=spec, data_dir=tmp_path, full=True
    )
    assert (full.read, full.appended) == (4, 0)
    assert not list((tmp_path / "imports").glob("*/export.csv"))  # exports are removed once done


def test_a_query_and_an_interrupted_run_resumes(rt: Runtime, database: tuple[str, str], tmp_path: Path) -> None:
    url, table = database
    spec = TableSpec(
        url=url, table=None, query=f"SELECT id, email, plan FROM {table} WHERE plan <> 'bronze'", cursor=None
    )
    source_id = source(rt, "crm")
    stop = threading.Event()
    stop.set()  # stopped before its first chunk: the export is kept, the run resumable
    interrupted = run_table_import(
        rt.db, rt.log, source_id=source_id, mapping=MAPPING, spec=spec, data_dir=tmp_path, stop=stop
    )
    assert interrupted.status == "interrupted"
    resumed = run_table_import(rt.db, rt.log, source_id=source_id, mapping=MAPPING, spec=spec, data_dir=tmp_path)
    assert resumed.id == interrupted.id
    assert (resumed.status, resumed.read, resumed.imported) == ("done", 2, 2)


def test_bad_tables_fail_with_a_reason(rt: Runtime, database: tuple[str, str], tmp_path: Path) -> None:
    url, table = database
    source_id = source(rt, "crm")
    for spec, words in [
        (TableSpec(url=url, table=table, query=None, cursor="nope"), "refused"),
        (TableSpec(url=url, table=f"{table}_missing", query=None, cursor=None), "refused"),
        (TableSpec(url=url, table=None, query="SELECT 1; DROP TABLE x", cursor=None), "one SELECT"),
    ]:
        run = run_table_import(rt.db, rt.log, source_id=source_id, mapping=MAPPING, spec=spec, data_dir=tmp_path)
        assert run.status == "failed"
        assert words in run_error(rt, run)
    if url.startswith("sqlite"):
        return
    wrong = url.replace("://", "://nobody:wrong@", 1).replace("root@", "").replace("postgres@", "")
    run = run_table_import(
        rt.db, rt.log, source_id=source_id, mapping=MAPPING, spec=TableSpec(wrong, table, None, None), data_dir=tmp_path
    )
    assert run.status == "failed"
    assert "wrong" not in run.location  # credentials are never stored
    assert "wrong" not in run_error(rt, run)


def test_urls_and_cursors() -> None:
    with pytest.raises(InputError, match="not 'oracle'"):
        TableSpec("oracle://x/y", "t", None, None).database_url()
    with pytest.raises(InputError, match="not valid"):
        TableSpec("::::", "t", None, None).database_url()
    for value in (5, "x", 1.5, datetime(2026, 1, 1, 9), datetime(2026, 1, 1).date()):
        assert decode_cursor(encode_cursor(value)) == value
    assert imports.new_run_id().startswith("imp_")


def test_the_import_table_command(settings: Settings, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from accord.cli import app

    crm = tmp_path / "crm.db"
    execute(f"sqlite:///{crm}", "CREATE TABLE people (id INTEGER, plan TEXT, n INTEGER)")
    execute(f"sqlite:///{crm}", "INSERT INTO people VALUES (1, 'gold', 1), (2, 'silver', 2)")
    mapping = tmp_path / "m.yaml"
    mapping.write_text("mapping: 1\nname: people\nidentifiers: [{field: id, type: user_id}]\ntraits: [{field: plan}]\n")
    env = {
        "ACCORD_DATA_DIR": str(settings.data_dir),
        **({"ACCORD_DATABASE_URL": settings.database_url} if settings.database_url else {}),
    }
    args = [
        "import-table",
        "--url",
        f"sqlite:///{crm}",
        "--table",
        "people",
        "--cursor",
        "n",
        "--mapping",
        str(mapping),
    ]
    result = CliRunner().invoke(app, [*args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert '"imported": 2' in result.output
    result = CliRunner().invoke(app, [*args, "--json"], env=env)
    assert '"read": 1' in result.output  # from the last cursor on
    result = CliRunner().invoke(app, [*args, "--full", "--json"], env=env)
    assert '"read": 2' in result.output
    result = CliRunner().invoke(app, [*args, "--query", "SELECT 1"], env=env)
    assert result.exit_code == 1
    assert "one of them" in result.output
    result = CliRunner().invoke(
        app, ["import-table", "--url", "oracle://x", "--table", "t", "--mapping", str(mapping)], env=env
    )
    assert result.exit_code == 1
    assert "postgresql, mysql, mariadb or sqlite" in result.output
