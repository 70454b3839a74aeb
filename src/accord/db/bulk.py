"""Many rows into one table at the speed of the driver.

`session.execute(table.insert(), rows)` pays SQLAlchemy's per-row work (building each row's parameters and
running every column's bind processor through generic machinery), which was a fifth of the pipeline's
time on SQLite. `insert_rows` converts each column once with a converter chosen per column type (a
timestamp formatted as SQLAlchemy's SQLite dialect stores it, a JSON document dumped by orjson) and hands
the rows to the driver: `executemany` on SQLite, `COPY` on PostgreSQL. The rows are read back by the ORM
and by SQLAlchemy Core exactly as if SQLAlchemy had written them (a test checks both dialects).

Only for plain inserts into the session's transaction: no ON CONFLICT, no RETURNING, and every column
with a Python-side default must be given (a server default or an autoincrement key may be left out).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
import psycopg
from psycopg.postgres import types as builtin_types
from psycopg.types.json import Jsonb
from sqlalchemy import JSON, Column, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from accord.db.base import UTCDateTime, as_utc

Converter = Callable[[Any], Any]


def _json_text(value: Any) -> Any:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _json_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def _sqlite_utc(value: datetime | None) -> str | None:
    # SQLAlchemy's SQLite DATETIME stores "YYYY-MM-DD HH:MM:SS.ffffff", microseconds always written, so
    # that stored values and bound ones compare as strings in time order.
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = as_utc(value)
    return value.isoformat(" ", "microseconds")[:26]  # without the "+00:00"


def _converter(column: Column[Any], dialect: Dialect) -> Converter | None:
    if isinstance(column.type, UTCDateTime):
        if dialect.name == "sqlite":
            return _sqlite_utc
        return lambda value: None if value is None else as_utc(value)
    resolved = column.type.dialect_impl(dialect)
    if isinstance(resolved, JSON):
        # A Python None is the JSON null, as SQLAlchemy writes it (none_as_null is off on every column).
        if dialect.name == "sqlite":
            return _json_text
        return lambda value: Jsonb(value, dumps=_json_bytes)
    return resolved.bind_processor(dialect)


def _columns(table: Table, names: Sequence[str]) -> list[Column[Any]]:
    unknown = [name for name in names if name not in table.c]
    if unknown:
        raise ValueError(f"{table.name} has no column {', '.join(unknown)}")
    missing = [c.name for c in table.c if c.default is not None and c.name not in names]
    if missing:
        raise ValueError(f"insert_rows into {table.name} needs {', '.join(missing)} (Python-side defaults)")
    return [table.c[name] for name in names]


def insert_rows(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `rows` (dicts with the same keys) into `table` in the session's transaction."""
    if not rows:
        return
    connection = session.connection()
    plan = _plan(table, tuple(rows[0]), connection.dialect)
    values = _converted(rows, plan.pairs)
    if plan.copy:
        driver = connection.connection.driver_connection
        try:
            with driver.cursor() as cursor, cursor.copy(plan.statement) as copy:  # type: ignore[union-attr]
                if plan.types:
                    copy.set_types(plan.types)
                for value in values:
                    copy.write_row(value)
        except psycopg.Error as error:
            # Raised as SQLAlchemy raises the driver's errors (IntegrityError for a duplicate key, ...), so
            # callers tell conflicts, deadlocks and faults apart as they do for any other statement.
            raise DBAPIError.instance(plan.statement, None, error, psycopg.Error) from error
        return
    connection.exec_driver_sql(plan.statement, values)


def _converted(
    rows: Sequence[Mapping[str, Any]], pairs: tuple[tuple[str, Converter | None], ...]
) -> list[tuple[Any, ...]]:
    """Each row's values in the order of `pairs`, through their column's converter to what the driver takes."""
    return list(zip(*_columned(rows, pairs), strict=True))


def _columned(
    rows: Sequence[Mapping[str, Any]], pairs: tuple[tuple[str, Converter | None], ...]
) -> tuple[list[Any], ...]:
    """Each column's values, in the order of `pairs`, through their column's converter. Column by column: a
    timestamp shared by many rows (a run's `now`) is formatted once."""
    columns: list[list[Any]] = []
    for name, convert in pairs:
        values = [row[name] for row in rows]
        if convert is _sqlite_utc:
            text = {value: _sqlite_utc(value) for value in set(values)}
            values = [text[value] for value in values]
        elif convert is not None:
            values = [convert(value) for value in values]
        columns.append(values)
    return tuple(columns)


@dataclass(frozen=True, slots=True)
class _Plan:
    pairs: tuple[tuple[str, Converter | None], ...]  # each column's name and converter, in the rows' order
    statement: str
    copy: bool  # PostgreSQL: the statement is a COPY, written row by row
    types: tuple[str, ...] = ()  # PostgreSQL: the columns' types, for a COPY in binary format


@lru_cache(maxsize=256)
def _plan(table: Table, names: tuple[str, ...], dialect: Dialect) -> _Plan:
    """How rows with these keys go into `table`: worked out once per table, keys and dialect."""
    columns = _columns(table, names)
    converters = [_converter(column, dialect) for column in columns]
    quoted = ", ".join(dialect.identifier_preparer.quote(name) for name in names)
    target = dialect.identifier_preparer.format_table(table)
    pairs = tuple(zip(names, converters, strict=True))
    if dialect.name == "postgresql":
        types = _binary_types(columns, dialect)
        if types:
            return _Plan(pairs, f"COPY {target} ({quoted}) FROM STDIN (FORMAT BINARY)", copy=True, types=types)
        return _Plan(pairs, f"COPY {target} ({quoted}) FROM STDIN", copy=True)
    marks = ", ".join("?" for _ in names)
    # Table and column names come from the metadata, quoted by the dialect; the values are bound.
    return _Plan(pairs, f"INSERT INTO {target} ({quoted}) VALUES ({marks})", copy=False)  # noqa: S608


def _binary_types(columns: Sequence[Column[Any]], dialect: Dialect) -> tuple[str, ...]:
    """The columns' PostgreSQL types as psycopg names them, for a COPY in binary format; empty when one is
    not a built-in type psycopg knows (the COPY is then in text format). Binary, psycopg writes each value
    as the server stores it: no text to escape and parse, which was an eighth of the pipeline's time there
    (the timeline's sealed payloads above all)."""
    names = tuple(re.sub(r"\(.*\)", "", column.type.compile(dialect)).strip().lower() for column in columns)
    return names if all(builtin_types.get(name) is not None for name in names) else ()


def upsert_rows(
    session: Session, table: Table, rows: Sequence[Mapping[str, Any]], *, key: str, keep: tuple[str, ...] = ()
) -> None:
    """Insert `rows` (dicts with the same keys) into `table`, a row whose `key` is stored already updating
    it with its values (all but `key` and `keep`). SQLAlchemy's own INSERT ... ON CONFLICT DO UPDATE,
    compiled once, goes to the driver with the values converted as `insert_rows` converts them: on SQLite
    once per row (executemany); on PostgreSQL once for all rows, each column bound as one array and the
    rows made by unnest (executemany ran the statement once per row: 100 µs each, the pipeline's
    costliest statement there). Rows sharing a key are upserted one after another, as SQLAlchemy does:
    one statement may not update a row twice."""
    if not rows:
        return
    connection = session.connection()
    names = tuple(rows[0])
    statement, pairs = _upsert_plan(table, names, key, keep, connection.dialect)
    if connection.dialect.name == "postgresql":
        if len({row[key] for row in rows}) == len(rows):
            connection.exec_driver_sql(statement, _columned(rows, pairs))
            return
        statement = _upsert_statement(table, names, key, keep, connection.dialect)
        connection.execute(statement, rows)
        return
    connection.exec_driver_sql(statement, _converted(rows, pairs))


def _upsert_statement(table: Table, names: tuple[str, ...], key: str, keep: tuple[str, ...], dialect: Dialect) -> Any:
    insert = (pg_insert if dialect.name == "postgresql" else sqlite_insert)(table)
    updated = {name: insert.excluded[name] for name in names if name != key and name not in keep}
    return insert.on_conflict_do_update(index_elements=[table.c[key]], set_=updated)


@lru_cache(maxsize=64)
def _upsert_plan(
    table: Table, names: tuple[str, ...], key: str, keep: tuple[str, ...], dialect: Dialect
) -> tuple[str, tuple[tuple[str, Converter | None], ...]]:
    """The upsert of rows with these keys, as text for the driver, with the converters of its parameters
    in their order: on PostgreSQL, of the rows from unnest, one array per column (in the order of `names`)."""
    columns = {column.name: column for column in _columns(table, names)}
    statement = _upsert_statement(table, names, key, keep, dialect)
    if dialect.name == "postgresql":
        # SQLAlchemy's statement gives the ON CONFLICT clause; the rows come from unnest of one array per
        # column, each sent in binary (%b) and cast to its column's type.
        quoted = ", ".join(dialect.identifier_preparer.quote(name) for name in names)
        target = dialect.identifier_preparer.format_table(table)
        arrays = ", ".join(f"%b::{columns[name].type.compile(dialect)}[]" for name in names)
        compiled = statement.compile(dialect=dialect, column_keys=list(names))
        _, _, conflict = compiled.string.partition(" ON CONFLICT ")
        # Table, column and type names come from the metadata, quoted by the dialect; the values are bound.
        text = f"INSERT INTO {target} ({quoted}) SELECT * FROM unnest({arrays}) ON CONFLICT {conflict}"  # noqa: S608
        return text, tuple((name, _converter(columns[name], dialect)) for name in names)
    compiled = statement.compile(dialect=dialect, column_keys=list(names))
    order = compiled.positiontup or []
    return compiled.string, tuple((name, _converter(columns[name], dialect)) for name in order)
