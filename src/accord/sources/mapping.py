"""Declarative mappings: how the columns of a file or table become identifiers, traits or events.

A mapping is a YAML or JSON document checked by the Pydantic models below; every problem is reported
with the path of the part at fault (`fields[2].cast: ...`). Pure: no I/O but parsing the text given.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from accord.ingest.spec import contains_nul

MAPPING_LANGUAGE = 1  # the version of this document format (`mapping: 1`)
MAX_MAPPING_BYTES = 256 * 1024
MAX_FIELDS = 500
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
IDENTIFIER_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # as identity rules name types
ValueType = Literal["string", "integer", "number", "boolean", "date", "timestamp"]
Format = Literal["csv", "parquet", "jsonl"]


class MappingError(ValueError):
    """A mapping that cannot be used; the message says where and what."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CsvOptions(_Strict):
    delimiter: str = Field(default=",", min_length=1, max_length=4)
    header: bool = True
    quote: str = Field(default='"', min_length=1, max_length=1)
    encoding: Literal["utf-8", "utf-16", "latin-1"] = "utf-8"


class FieldSpec(_Strict):
    """One output field of a row, computed from the input columns.

    The value comes from one of `from` (a column, renamed to `name`), `concat` (columns joined by
    `separator`) or `sql` (a DuckDB expression over the input columns); then `trim`, `lower`,
    `parse_date` and `cast` apply in that order.
    """

    name: str = Field(description="The field's name, used by identifiers, traits and event")
    from_: str | None = Field(default=None, alias="from", max_length=300, description="Input column")
    concat: list[str] | None = Field(default=None, min_length=1, max_length=20)
    separator: str = Field(default="", max_length=20)
    sql: str | None = Field(default=None, min_length=1, max_length=4000)

    @field_validator("sql")
    @classmethod
    def _one_expression(cls, value: str | None) -> str | None:
        if value is not None and ";" in value:
            raise ValueError("must be one SQL expression, without ;")
        return value

    trim: bool = False
    lower: bool = False
    parse_date: str | None = Field(
        default=None, max_length=100, description="strptime format, e.g. %d/%m/%Y; empty: ISO-8601"
    )
    cast: ValueType | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError("must be 1 to 100 letters, digits or _, not starting with a digit")
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> FieldSpec:
        origins = [o for o in ("from_", "concat", "sql") if getattr(self, o) is not None]
        if len(origins) > 1:
            raise ValueError("give at most one of from, concat and sql")
        if self.parse_date is not None and self.cast not in (None, "date", "timestamp"):
            raise ValueError("parse_date gives a timestamp; cast it to date or timestamp, or not at all")
        return self

    @property
    def column(self) -> str:
        return self.from_ if self.from_ is not None else self.name

    @property
    def value_type(self) -> ValueType:
        if self.cast is not None:
            return self.cast
        return "timestamp" if self.parse_date is not None else "string"


class IdentifierSpec(_Strict):
    field: str
    type: str = Field(description="An identifier type of the identity rules: user_id, email, phone, ...")

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if not IDENTIFIER_TYPE.match(value):
            raise ValueError("must be 1 to 40 lower-case letters, digits or _, starting with a letter")
        return value


class TraitSpec(_Strict):
    field: str
    name: str | None = Field(default=None, min_length=1, max_length=200, description="Trait name; default the field")
    type: ValueType | None = None
    pii: bool = Field(default=False, description="Personal data: marked in the event as such")

    @property
    def trait(self) -> str:
        return self.name or self.field


class PropertySpec(_Strict):
    field: str
    name: str | None = Field(default=None, min_length=1, max_length=200)
    type: ValueType | None = None
    pii: bool = False

    @property
    def prop(self) -> str:
        return self.name or self.field


class EventSpec(_Strict):
    """Each row is a track event: a fixed `name` or one read from `name_field`, at the time in `time`."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    name_field: str | None = None
    time: str | None = Field(default=None, description="The field holding when it happened")
    properties: list[PropertySpec] = Field(default_factory=list, max_length=MAX_FIELDS)

    @model_validator(mode="after")
    def _a_name(self) -> EventSpec:
        if (self.name is None) == (self.name_field is None):
            raise ValueError("give exactly one of name and name_field")
        return self


class Mapping(_Strict):
    mapping: Literal[1] = Field(description="The mapping language's version")
    name: str = Field(min_length=1, max_length=100)
    version: int = Field(default=1, ge=1, description="This mapping's own version, kept with each run")
    source: str | None = Field(default=None, min_length=1, max_length=200, description="Default source name")
    format: Format | None = Field(default=None, description="Default: from the file's extension")
    csv: CsvOptions = Field(default_factory=CsvOptions)
    fields: list[FieldSpec] = Field(default_factory=list, max_length=MAX_FIELDS)
    identifiers: list[IdentifierSpec] = Field(min_length=1, max_length=50)
    traits: list[TraitSpec] = Field(default_factory=list, max_length=MAX_FIELDS)
    event: EventSpec | None = None
    time: str | None = Field(default=None, description="Trait imports: the field holding when the values held")
    key: list[str] | None = Field(
        default=None, min_length=1, max_length=20, description="Fields naming a row; default: the row's content"
    )

    @model_validator(mode="after")
    def _references(self) -> Mapping:
        declared: dict[str, FieldSpec] = {}
        for index, spec in enumerate(self.fields):
            if spec.name in declared:
                raise ValueError(f"fields[{index}].name {spec.name!r} is declared twice")
            declared[spec.name] = spec
        # A field used but not declared is the input column of the same name, unchanged.
        known = set(declared)

        def check(where: str, name: str | None) -> None:
            if name is not None and name not in known:
                raise ValueError(f"{where} names field {name!r}, which is not in fields")

        for index, ident in enumerate(self.identifiers):
            check(f"identifiers[{index}].field", ident.field)
        for index, trait in enumerate(self.traits):
            check(f"traits[{index}].field", trait.field)
        if self.event is not None:
            check("event.name_field", self.event.name_field)
            check("event.time", self.event.time)
            for index, prop in enumerate(self.event.properties):
                check(f"event.properties[{index}].field", prop.field)
            if self.time is not None:
                raise ValueError("time is for trait imports; an event's time is event.time")
        elif not self.traits:
            raise ValueError("map at least one trait, or give event")
        check("time", self.time)
        for index, name in enumerate(self.key or []):
            check(f"key[{index}]", name)
        for where, typed in self._typed_uses():
            spec = declared[typed[0]]
            if typed[1] is not None and spec.cast is not None and spec.cast != typed[1]:
                raise ValueError(f"{where}.type is {typed[1]} but field {spec.name!r} is cast to {spec.cast}")
        return self

    def _typed_uses(self) -> list[tuple[str, tuple[str, ValueType | None]]]:
        uses: list[tuple[str, tuple[str, ValueType | None]]] = [
            (f"traits[{i}]", (t.field, t.type)) for i, t in enumerate(self.traits)
        ]
        if self.event is not None:
            uses += [(f"event.properties[{i}]", (p.field, p.type)) for i, p in enumerate(self.event.properties)]
        return uses

    def field(self, name: str) -> FieldSpec:
        return next(spec for spec in self.fields if spec.name == name)

    def output_types(self) -> dict[str, ValueType]:
        """Each field's final type: its cast, else the type a trait or property asks of it, else string."""
        types: dict[str, ValueType] = {spec.name: spec.value_type for spec in self.fields}
        for _, (name, wanted) in self._typed_uses():
            if wanted is not None and self.field(name).cast is None and self.field(name).parse_date is None:
                types[name] = wanted
        for when in (self.time, self.event.time if self.event else None):
            if when is None:
                continue
            name = when
            if self.field(name).cast is None and self.field(name).parse_date is None:
                types[name] = "timestamp"
        return types

    def document(self) -> dict[str, Any]:
        """The mapping as stored with each run (JSON)."""
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def _where(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "mapping"


def parse_mapping(data: Any) -> Mapping:
    """Check a parsed document; MappingError names the part at fault."""
    if not isinstance(data, dict):
        raise MappingError("mapping: the document must be an object (YAML mapping or JSON object)")
    if contains_nul(data):
        raise MappingError("mapping: contains a NUL character (\\u0000), which is not allowed")
    # Fields used by identifiers/traits/event but not declared are input columns of the same name.
    data = dict(data)
    declared = {f.get("name") for f in data.get("fields") or [] if isinstance(f, dict)}
    used: list[Any] = []
    for group in ("identifiers", "traits"):
        used += [x.get("field") for x in data.get(group) or [] if isinstance(x, dict)]
    event = data.get("event")
    if isinstance(event, dict):
        used += [event.get("name_field"), event.get("time")]
        used += [p.get("field") for p in event.get("properties") or [] if isinstance(p, dict)]
    used += [data.get("time"), *(data.get("key") or [] if isinstance(data.get("key"), list) else [])]
    implicit = [
        {"name": name}
        for name in dict.fromkeys(u for u in used if isinstance(u, str))
        if name not in declared and NAME.match(name)
    ]
    if implicit and isinstance(data.get("fields", []), list):
        data["fields"] = [*(data.get("fields") or []), *implicit]
    try:
        return Mapping.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        raise MappingError(f"{_where(tuple(first['loc']))}: {message}") from None


def load_mapping(text: str | bytes) -> Mapping:
    """A mapping from YAML or JSON text (JSON is YAML; a JSON parser is tried first for its messages)."""
    if len(text) > MAX_MAPPING_BYTES:
        raise MappingError(f"mapping: at most {MAX_MAPPING_BYTES} bytes")
    raw = text.encode() if isinstance(text, str) else text
    stripped = raw.lstrip()
    if stripped.startswith(b"{"):
        try:
            return parse_mapping(orjson.loads(raw))
        except orjson.JSONDecodeError as error:
            raise MappingError(f"mapping: not valid JSON: {error.msg} at byte {error.pos}") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise MappingError(f"mapping: not valid YAML{where}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise MappingError(f"mapping: not valid YAML: {type(error).__name__}") from None
    return parse_mapping(data)
