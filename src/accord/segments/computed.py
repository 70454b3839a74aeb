"""Computed traits: values aggregated from a person's events (count, sum, avg, min, max, first, last,
distinct count, most frequent), with property filters and a window. Pure: a definition and the person's
matching events give the value. Segments read them through `{"computed": key, "op": ..., "value": ...}`;
the profile API shows them. Evaluated from the stored timeline when read, so always current."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from accord.segments.conditions import (
    _MISSING,
    NEW,
    PATH,
    ConditionError,
    Days,
    PropertyFilter,
    _kind,
    _Node,
    compare,
    json_path,
    lookup,
)

Function = Literal["count", "sum", "avg", "min", "max", "first", "last", "distinct_count", "most_frequent"]
MAX_DAYS = 36_600


class ComputedDefinition(_Node):
    """What to aggregate: `function` of `property` over the person's `event`s matching `where`, in the
    last `within` days (none: ever)."""

    event: str = Field(min_length=1, max_length=200, description="Track event name")
    function: Function
    property: str | None = Field(default=None, pattern=PATH, description="The property aggregated (not for count)")
    where: list[PropertyFilter] = Field(default_factory=list, max_length=20)
    within: Days | None = Field(default=None, description="In the last N days; none: ever")

    @model_validator(mode="after")
    def _property_fits(self) -> ComputedDefinition:
        if self.function == "count" and self.property is not None:
            raise ValueError("count counts events; give no property")
        if self.function != "count" and self.property is None:
            raise ValueError(f"{self.function} needs a property")
        if self.within is not None and int(self.within[:-1]) > MAX_DAYS:
            raise ValueError(f"a window is at most {MAX_DAYS}d")
        return self


DEFINITION: TypeAdapter[ComputedDefinition] = TypeAdapter(ComputedDefinition)


def parse(document: Any, *, new: bool = False) -> ComputedDefinition:
    """The definition in `document`, or ConditionError naming the first offending part; `new` as for
    `conditions.parse`."""
    try:
        return DEFINITION.validate_python(document, context={NEW: new})
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        raise ConditionError(json_path(first["loc"]), str(first["msg"]).removeprefix("Value error, ")) from None


def dump(definition: ComputedDefinition) -> dict[str, Any]:
    return dict(DEFINITION.dump_python(definition, mode="json", exclude_defaults=True))


def json_schema() -> dict[str, Any]:
    return DEFINITION.json_schema()


def compute(definition: ComputedDefinition, events: Sequence[tuple[datetime, Mapping[str, Any]]], now: datetime) -> Any:
    """The value; None when no event counts (count and distinct_count: 0)."""
    start = now - timedelta(days=int(definition.within[:-1])) if definition.within else None
    matching = sorted(
        (
            (moment, properties)
            for moment, properties in events
            if (start is None or moment >= start)
            and all(compare(f.op, lookup(properties, f.property), f.value) for f in definition.where)
        ),
        # Time first; equal times by content, so that first, last and float sums do not depend on the order
        # the store returns events in.
        key=lambda pair: (pair[0], orjson.dumps(pair[1], option=orjson.OPT_SORT_KEYS)),
    )
    if definition.function == "count":
        return len(matching)
    assert definition.property is not None
    values = [(m, v) for m, p in matching if (v := lookup(p, definition.property)) is not _MISSING and v is not None]
    function = definition.function
    if function == "distinct_count":
        return len({_hashable(v) for _, v in values})
    if not values:
        return None
    if function == "first":
        return values[0][1]
    if function == "last":
        return values[-1][1]
    if function == "most_frequent":
        counts = Counter(_hashable(v) for _, v in values)
        best = max(counts.values())
        # Ties go to the value seen first, so the answer does not depend on the order events arrived in.
        return next(v for _, v in values if counts[_hashable(v)] == best)
    numbers = [v for _, v in values if _kind(v) == "number"]
    if function in ("min", "max"):
        strings = [v for _, v in values if _kind(v) == "string"]
        pool: list[Any] = numbers or strings
        if not pool:
            return None
        return min(pool) if function == "min" else max(pool)
    if not numbers:
        return None
    total = sum(numbers)
    return total if function == "sum" else total / len(numbers)


def _hashable(value: Any) -> Any:
    if isinstance(value, dict | list):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return (type(value) is bool, value)
