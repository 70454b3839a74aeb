"""Declarative base and column types shared by every feature's tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BindParameter,
    ColumnElement,
    DateTime,
    MetaData,
    Select,
    String,
    any_,
    bindparam,
    cast,
    func,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def as_utc(value: datetime) -> datetime:
    """A timestamp for a UTC column (`UTCDateTime`, `db.bulk`): converted to UTC; a naive one is refused."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always returned timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSON documents: JSONB on PostgreSQL, JSON text on SQLite.
JSONDoc = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def one_of(column: ColumnElement[Any], values: Sequence[str], dialect: str) -> ColumnElement[bool]:
    """`column IN values` with the values as one bound parameter: a JSON array read by json_each on SQLite,
    an array compared with = ANY on PostgreSQL. A plain IN of hundreds of values makes SQLAlchemy render a
    placeholder per value on every execution, which cost the pipeline a tenth of its time."""
    return _in_list(column, bindparam(None, listed(values, dialect), type_=_list_type(dialect)), dialect)


def one_of_bound(column: ColumnElement[Any], name: str, dialect: str) -> ColumnElement[bool]:
    """`one_of` for a statement built once: the values are given on execution, as parameter `name`, in the
    form `listed` gives them. Building a statement costs more than running it on a small run."""
    return _in_list(column, bindparam(name, type_=_list_type(dialect)), dialect)


def one_of_bound_under(
    prefix: ColumnElement[Any], prefix_name: str, column: ColumnElement[Any], name: str, dialect: str
) -> ColumnElement[bool]:
    """`prefix = :prefix_name AND column IN` the list bound as `name` (as `one_of_bound` takes it), for a
    key on (prefix, column). On PostgreSQL written `(prefix, column) IN (SELECT :prefix_name, unnest(...))`,
    which probes the key once per value whatever the table's statistics say: with `= ANY`, statistics
    taken while the table was small (a new installation, a first import) made PostgreSQL read every row
    under the prefix instead (a source's every event, on each run of the pipeline)."""
    if dialect == "postgresql":
        pairs = select(bindparam(prefix_name, type_=String), func.unnest(bindparam(name, type_=ARRAY(String))))
        return tuple_(prefix, column).in_(pairs)
    return (prefix == bindparam(prefix_name)) & one_of_bound(column, name, dialect)


def _list_type(dialect: str) -> Any:
    return ARRAY(String) if dialect == "postgresql" else String()


def _in_list(column: ColumnElement[Any], values: BindParameter[Any], dialect: str) -> ColumnElement[bool]:
    """`column IN` the list bound as `values`: = ANY of an array on PostgreSQL, json_each of a JSON array on
    SQLite."""
    if dialect == "postgresql":
        return column == any_(values)
    return column.in_(select(literal_column("value")).select_from(func.json_each(values)))


def listed(values: Iterable[str], dialect: str) -> Any:
    """The values of a `one_of_bound` parameter."""
    if dialect == "postgresql":
        return list(values)
    return orjson.dumps(list(values)).decode()


def pair_of_bound(
    first: ColumnElement[Any], second: ColumnElement[Any], name: str, dialect: str
) -> ColumnElement[bool]:
    """`(first, second) IN pairs` for a statement built once, the pairs given on execution as parameter
    `name`, in the form `listed_pairs` gives them (a JSON array of pairs). SQLite searches a key on
    (first, second) for this, where it scans the whole table for `IN (VALUES (?, ?), ...)`."""
    document = bindparam(name, type_=String)
    pairs: Select[Any]
    if dialect == "postgresql":
        rows = func.jsonb_array_elements(cast(document, JSONB))
        first_of: ColumnElement[Any] = literal_column("value ->> 0")
        pairs = select(first_of, literal_column("value ->> 1")).select_from(rows)
    else:
        value: ColumnElement[Any] = literal_column("value")
        at: list[ColumnElement[Any]] = [literal_column(f"'$[{index}]'") for index in (0, 1)]
        pairs = select(func.json_extract(value, at[0]), func.json_extract(value, at[1])).select_from(
            func.json_each(document)
        )
    return tuple_(first, second).in_(pairs)


def listed_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    """The pairs of a `pair_of_bound` parameter."""
    return orjson.dumps(list(pairs)).decode()
