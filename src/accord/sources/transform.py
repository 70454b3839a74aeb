"""From a mapping to events: the DuckDB query that transforms each row, and the Python step that turns a
transformed row into a tracking event (or the reason it is rejected).

DuckDB does the column work (rename, trim, lower-case, parse date, cast, concatenate, SQL expressions) in
one streaming query; Python builds each event with the same limits as the tracking gateway, checks that
the identity rules find an identifier in it, and gives it a deterministic messageId so that importing the
same rows again adds nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import duckdb
import orjson

from accord.identity.rules import Rules
from accord.ingest.spec import MAX_EVENT_BYTES, MAX_EVENT_NAME_LENGTH, MAX_ID_LENGTH
from accord.sources.mapping import FieldSpec, Mapping, MappingError, ValueType

SQL_TYPES: dict[ValueType, str] = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "number": "DOUBLE",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMPTZ",
}
TYPE_WORDS: dict[ValueType, str] = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "date": "a date",
    "timestamp": "a timestamp",
}
# Where each built-in identifier type goes in an event, so that the identity rules read it back.
TOP_LEVEL = {"user_id": "userId", "anonymous_id": "anonymousId"}
CONTEXT_TRAITS = ("email", "phone")
DEVICE = {"device_id": "id", "advertising_id": "advertisingId"}
MAX_REASON = 500


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, slots=True)
class Output:
    """One transformed field in the query: its value, and the value before conversion (to tell a failed
    conversion, NULL out of something, from an empty input, NULL out of NULL)."""

    name: str
    type: ValueType
    converted: bool


@dataclass(slots=True)
class Query:
    """The transform as DuckDB SQL over a relation called `input`, and how to read its result rows."""

    sql: str
    input_columns: list[str]
    outputs: list[Output]


def _field_sql(spec: FieldSpec, wanted: ValueType) -> tuple[str, str | None]:
    """(the field's final value, its value before conversion or None when there is no conversion)."""
    if spec.concat is not None:
        parts = ", ".join(f"CAST({quote_name(c)} AS VARCHAR)" for c in spec.concat)
        value = f"concat_ws({quote_text(spec.separator)}, {parts})"
    elif spec.sql is not None:
        value = f"({spec.sql})"
    else:
        value = quote_name(spec.column)
    textual = spec.trim or spec.lower or spec.parse_date is not None or wanted == "string"
    if textual:
        value = f"CAST({value} AS VARCHAR)"
        if spec.trim:
            value = f"trim({value})"
        if spec.lower:
            value = f"lower({value})"
        value = f"NULLIF({value}, '')"  # an empty cell is no value
    before = value
    converted = False
    if spec.parse_date is not None:
        value = (
            f"try_strptime({value}, {quote_text(spec.parse_date)})"
            if spec.parse_date
            else f"TRY_CAST({value} AS TIMESTAMPTZ)"
        )
        converted = True
    if wanted != "string":
        value = f"TRY_CAST({value} AS {SQL_TYPES[wanted]})"
        converted = True
    if wanted == "timestamp":
        value = f"strftime({value}, '%Y-%m-%dT%H:%M:%S.%gZ')"
    elif wanted == "date":
        value = f"strftime({value}, '%Y-%m-%d')"
    return value, before if converted else None


def compile_query(mapping: Mapping, input_columns: list[str]) -> Query:
    """The SELECT that transforms rows of `input`; MappingError when it names a column the input lacks."""
    present = set(input_columns)
    for index, spec in enumerate(mapping.fields):
        needed = spec.concat if spec.concat is not None else [] if spec.sql is not None else [spec.column]
        for column in needed:
            if column not in present:
                shown = ", ".join(repr(c)[1:-1] for c in input_columns[:20]) or "none"
                raise MappingError(f"fields[{index}]: the input has no column {column!r} (its columns: {shown})")
    types = mapping.output_types()
    selected = [quote_name(c) for c in input_columns]
    outputs: list[Output] = []
    for spec in mapping.fields:
        value, before = _field_sql(spec, types[spec.name])
        selected.append(value)
        if before is not None:
            selected.append(before)
        outputs.append(Output(spec.name, types[spec.name], before is not None))
    sql = f"SELECT {', '.join(selected)} FROM input"  # noqa: S608 (names quoted; expressions run sandboxed)
    return Query(sql=sql, input_columns=list(input_columns), outputs=outputs)


def check_query(connection: duckdb.DuckDBPyConnection, mapping: Mapping, query: Query) -> None:
    """Fail early on what DuckDB can tell before reading: bad SQL expressions, bad date formats."""
    for index, spec in enumerate(mapping.fields):
        if spec.parse_date:
            try:
                connection.execute("SELECT try_strptime('2000-01-01', ?)", [spec.parse_date]).fetchall()
            except duckdb.Error as error:
                raise MappingError(f"fields[{index}].parse_date: {str(error).splitlines()[0][:300]}") from None
    try:
        connection.execute(f"SELECT * FROM ({query.sql}) LIMIT 0").fetchall()  # noqa: S608 (names are quoted)
    except duckdb.Error as error:
        raise MappingError(f"fields: the transform does not run: {str(error).splitlines()[0][:300]}") from None


def json_safe(value: Any) -> Any:
    """A raw input value as JSON can hold it (for rejected rows and previews)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)


class Rejected(Exception):
    """A row that cannot become an event; the message is the reason kept with it."""


@dataclass(slots=True)
class RowMapper:
    """Turns one transformed row into an event, fast: all lookups are worked out once per run."""

    mapping: Mapping
    query: Query
    rules: Rules
    source_id: str
    run_id: str
    default_time: str  # ISO-8601, used when the mapping names no time field
    received_at: str
    _index: dict[str, int] = field(default_factory=dict)
    _before: dict[str, int] = field(default_factory=dict)
    _checks: list[tuple[str, int, int, ValueType]] = field(default_factory=list)
    _prefix: bytes = b""
    _pii: list[str] = field(default_factory=list)
    # Worked out once per run, for `event`:
    _identifiers: list[tuple[int, str, int, str, str]] = field(default_factory=list)  # position, type, place...
    _values: list[tuple[str, int]] = field(default_factory=list)  # trait or property name, position
    _event_name: str | None = None
    _event_name_at: int = -1
    _time_at: int = -1
    _time_field: str | None = None
    _key: list[int] = field(default_factory=list)
    _meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        position = len(self.query.input_columns)
        for output in self.query.outputs:
            self._index[output.name] = position
            position += 1
            if output.converted:
                self._before[output.name] = position
                self._checks.append((output.name, position - 1, position, output.type))
                position += 1
        self._prefix = f"{self.source_id}\x00{self.mapping.name}\x00".encode()
        marked = (
            [p.prop for p in self.mapping.event.properties if p.pii]
            if self.mapping.event is not None
            else [t.trait for t in self.mapping.traits if t.pii]
        )
        personal = [i.type for i in self.mapping.identifiers if i.type in CONTEXT_TRAITS]
        self._pii = list(dict.fromkeys([*marked, *personal]))
        index = self._index
        mapping = self.mapping
        for ident in mapping.identifiers:
            kind = ident.type
            if kind in TOP_LEVEL:
                place, key = 0, TOP_LEVEL[kind]
            elif kind in CONTEXT_TRAITS:
                place, key = 1, kind
            elif kind in DEVICE:
                place, key = 2, DEVICE[kind]
            else:
                place, key = 3, kind
            self._identifiers.append((index[ident.field], kind, place, key, ident.field))
        if mapping.event is not None:
            self._values = [(p.prop, index[p.field]) for p in mapping.event.properties]
            self._event_name = mapping.event.name
            self._event_name_at = index[mapping.event.name_field] if mapping.event.name_field else -1
            self._time_field = mapping.event.time
        else:
            self._values = [(t.trait, index[t.field]) for t in mapping.traits]
            self._time_field = mapping.time
        self._time_at = index[self._time_field] if self._time_field else -1
        self._key = [index[name] for name in mapping.key or []]
        # A webhook's rows belong to no import run: the field then names only the PII.
        self._meta = {"run": self.run_id} if self.run_id else {}
        if self._pii:
            self._meta["pii"] = self._pii
        for number, ident in enumerate(self.mapping.identifiers):
            if ident.type not in self.rules.limits or ident.type == "alias":
                raise MappingError(
                    f"identifiers[{number}].type {ident.type!r} is not an identifier type of the identity rules in "
                    f"force ({', '.join(t for t in self.rules.limits if t != 'alias')})"
                )

    def raw(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """The input row as kept with a rejected row (PostgreSQL stores no NUL: it becomes U+FFFD)."""
        kept = {name: json_safe(row[i]) for i, name in enumerate(self.query.input_columns)}
        return {k: v.replace("\x00", "\ufffd") if isinstance(v, str) else v for k, v in kept.items()}

    def values(self, row: tuple[Any, ...]) -> dict[str, Any]:
        return {name: json_safe(row[i]) for name, i in self._index.items()}

    def event(self, row: tuple[Any, ...]) -> tuple[dict[str, Any], bytes]:
        """The event for a transformed row and its JSON encoding; raises Rejected with the reason.

        On the import's hot path: everything that does not depend on the row was worked out once."""
        for name, out, before, wanted in self._checks:
            if row[out] is None and row[before] is not None:
                raise Rejected(f"field {name}: {_shown(row[before])} is not {TYPE_WORDS[wanted]}")
        event: dict[str, Any] = {}
        context: dict[str, Any] = {}
        personal: dict[str, str] = {}  # email and phone: traits of the person, read as identifiers
        usable = False
        normalise = self.rules.normalise
        for position, kind, place, slot, field_name in self._identifiers:
            value = row[position]
            if value is None:
                continue
            text = value if isinstance(value, str) else str(value)
            if len(text) > MAX_ID_LENGTH:
                raise Rejected(f"identifier {kind} (field {field_name}) is longer than {MAX_ID_LENGTH} characters")
            # The identity rules read each type where it is put; checking here rejects the row with a
            # reason rather than quarantining its event later.
            if not usable:
                usable = normalise(kind, text) is not None
            if place == 0:
                event[slot] = text
            elif place == 1:
                personal[kind] = text
            elif place == 2:
                context.setdefault("device", {})[slot] = text
            else:
                context.setdefault("externalIds", []).append({"type": kind, "id": text, "collection": "users"})
        if not usable:
            raise Rejected(self._no_identifier(row))
        values = {name: v for name, position in self._values if (v := row[position]) is not None}
        if self._event_name is not None or self._event_name_at >= 0:
            name = self._event_name if self._event_name is not None else row[self._event_name_at]
            if name is None or not str(name).strip():
                raise Rejected(f"event.name_field {self.mapping.event.name_field if self.mapping.event else ''}: empty")
            name = str(name)
            if len(name) > MAX_EVENT_NAME_LENGTH:
                raise Rejected(f"the event name is longer than {MAX_EVENT_NAME_LENGTH} characters")
            event["type"] = "track"
            event["event"] = name
            event["properties"] = values
            if personal:
                context["traits"] = personal
        else:
            event["type"] = "identify"
            event["traits"] = {**values, **personal} if personal else values
        if context:
            event["context"] = context
        timestamp = self.default_time
        if self._time_at >= 0:
            moment = row[self._time_at]
            if moment is None:
                raise Rejected(f"field {self._time_field}: no time given")
            timestamp = moment
            event["originalTimestamp"] = moment
        named = orjson.dumps([json_safe(row[p]) for p in self._key]) if self._key else orjson.dumps(event)
        event["messageId"] = "imp_" + hashlib.blake2b(self._prefix + named, digest_size=16).hexdigest()
        event["timestamp"] = timestamp
        event["receivedAt"] = self.received_at
        if self._meta:
            event["_accord"] = self._meta
        try:
            encoded = orjson.dumps(event)
        except (orjson.JSONEncodeError, TypeError) as error:
            raise Rejected(f"the row cannot be encoded as JSON: {str(error)[:200]}") from None
        if b"\\u0000" in encoded:
            raise Rejected("the row holds a NUL character (\\u0000), which Accord does not store")
        if len(encoded) > MAX_EVENT_BYTES:
            raise Rejected(f"the event would be {len(encoded)} bytes; an event may be at most {MAX_EVENT_BYTES}")
        return event, encoded

    def _no_identifier(self, row: tuple[Any, ...]) -> str:
        parts = []
        for ident in self.mapping.identifiers:
            value = row[self._index[ident.field]]
            parts.append(f"{ident.type} is empty" if value is None else f"{ident.type} {_shown(value)} is not usable")
        return ("no usable identifier: " + ", ".join(parts))[:MAX_REASON]
