"""Conditions the database can evaluate itself: trait comparisons, event counts and first / last events
(without property filters), and all / any / not of them, turned into a SQL predicate over the profile's
stored traits (SQLite's JSON1 functions, PostgreSQL's jsonb) and its timeline.

Backfilling a segment over a million profiles in Python spends most of its time carrying rows out of the
database and back in; a predicate lets one INSERT ... SELECT per chunk do it. It must give exactly what
`conditions.evaluate` gives, JSON semantics included (true is not 1, 1 is 1.0, a missing trait is neither
null nor equal to anything), which tests/segments/test_pushdown.py checks on both databases against the
evaluator for random traits, events and conditions. Whatever it cannot express exactly (regex, list or
object operands, property filters on events, whose properties are sealed, computed traits, segments,
consent) is left to Python: `predicate` returns None.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, func, literal, not_, or_, select, type_coerce
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.types import String

from accord.segments.conditions import AllOf, AnyOf, EventCondition, Node, NotCondition, TraitCondition
from accord.segments.evaluate import EVENTS

# Numbers beyond this are compared as doubles by SQLite but exactly by Python: leave them to Python.
EXACT = 2**53
# PostgreSQL's #> reads a part like "0" or "-1" as an index into an array; Python only looks into objects.
_INDEX = re.compile(r"^-?[0-9]+$")
_TEXT_ARRAY = ARRAY(String)

Traits = ColumnElement[Any]


def predicate(
    node: Node,
    traits: Traits,
    dialect: str,
    *,
    readable: Callable[[str], bool] = lambda _trait: True,
    profile_id: ColumnElement[str] | None = None,
    now: datetime | None = None,
) -> ColumnElement[bool] | None:
    """A SQL predicate true exactly where `conditions.evaluate` would be as of `now`, or None if there is
    none. `readable(trait)` says whether the stored value can be compared as it is (an encrypted trait
    cannot). Event leaves need the profile's id column and `now` (for `within` and `older_than`)."""
    if isinstance(node, AllOf | AnyOf):
        children = node.all if isinstance(node, AllOf) else node.any
        parts = [
            predicate(child, traits, dialect, readable=readable, profile_id=profile_id, now=now) for child in children
        ]
        found = [part for part in parts if part is not None]
        if len(found) < len(parts):
            return None
        return and_(*found) if isinstance(node, AllOf) else or_(*found)
    if isinstance(node, NotCondition):
        inner = predicate(node.not_, traits, dialect, readable=readable, profile_id=profile_id, now=now)
        return None if inner is None else not_(inner)
    if isinstance(node, EventCondition):
        return None if node.where or profile_id is None or now is None else _performed(node, profile_id, now)
    if not isinstance(node, TraitCondition) or not readable(node.trait.split(".", 1)[0]):
        return None
    leaf: _Leaf
    if dialect == "sqlite":
        leaf = _Sqlite(traits, node.trait)
    elif dialect == "postgresql" and not any(_INDEX.match(part) for part in node.trait.split(".")):
        leaf = _Postgres(traits, node.trait)
    else:
        return None
    test = leaf.compare(node.op, node.value)
    # Two-valued: NULL (a missing trait) must read as false, or NOT would keep it out as well.
    return None if test is None else func.coalesce(test, false())


def candidates(
    node: Node,
    traits: Traits,
    dialect: str,
    *,
    readable: Callable[[str], bool] = lambda _trait: True,
    profile_id: ColumnElement[str] | None = None,
    now: datetime | None = None,
) -> ColumnElement[bool] | None:
    """A SQL predicate true wherever `conditions.evaluate` would be as of `now`, and maybe elsewhere: the
    profiles a backfill must still evaluate in Python, the others being outside for certain. None when it
    would narrow nothing. Where `predicate` has an exact answer, that; an event leaf with property filters
    that asks for at least N events (or a first or last one in the window) needs at least N events of
    its name in the window, whatever their properties; `all` needs what each of its parts needs, `any`
    what one of them does. Under `not`, only an exact answer narrows."""
    exact = predicate(node, traits, dialect, readable=readable, profile_id=profile_id, now=now)
    if exact is not None or isinstance(node, NotCondition):
        return exact
    if isinstance(node, AllOf | AnyOf):
        children = node.all if isinstance(node, AllOf) else node.any
        parts = [
            candidates(child, traits, dialect, readable=readable, profile_id=profile_id, now=now) for child in children
        ]
        if isinstance(node, AllOf):
            found = [part for part in parts if part is not None]
            return and_(*found) if found else None
        return None if any(part is None for part in parts) else or_(*(part for part in parts if part is not None))
    if isinstance(node, EventCondition) and profile_id is not None and now is not None:
        count = node.counted
        least = 1 if node.occurrence != "any" else count.eq if count.eq is not None else count.gte
        return None if not least else _named_in_window(node, profile_id, now) >= least
    return None


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | str) or (isinstance(value, int | float) and abs(value) < EXACT)


class _Leaf:
    """One trait: typed JSON on the database's side, a Python value on the other."""

    def kind_is(self, kind: str) -> ColumnElement[bool]:
        raise NotImplementedError

    def missing(self) -> ColumnElement[bool]:
        raise NotImplementedError

    def number(self, op: str, value: float) -> ColumnElement[bool]:
        raise NotImplementedError

    def text(self) -> ColumnElement[Any]:
        raise NotImplementedError

    def contains_text(self, value: str) -> ColumnElement[bool]:
        raise NotImplementedError

    def starts_with(self, value: str) -> ColumnElement[bool]:
        raise NotImplementedError

    def array_has(self, value: Any) -> ColumnElement[bool]:
        raise NotImplementedError

    def equals(self, value: Any) -> ColumnElement[bool] | None:
        if not _scalar(value):
            return None
        if value is None:
            return self.kind_is("null")
        if isinstance(value, bool):
            return self.kind_is("true" if value else "false")
        if isinstance(value, str):
            return and_(self.kind_is("text"), self.text() == literal(value, String))
        return and_(self.kind_is("number"), self.number("eq", value))

    def one_of(self, values: list[Any]) -> ColumnElement[bool] | None:
        """`in`, one test per kind of value (each JSON function call parses the whole document again)."""
        if not all(_scalar(v) for v in values):
            return None
        texts = sorted({v for v in values if isinstance(v, str)})
        numbers = sorted({v for v in values if isinstance(v, int | float) and not isinstance(v, bool)})
        tests = [self.equals(v) for v in {v for v in values if v is None or isinstance(v, bool)}]
        if texts:
            tests.append(and_(self.kind_is("text"), self.text().in_([literal(v, String) for v in texts])))
        if numbers:
            tests.append(and_(self.kind_is("number"), or_(*(self.number("eq", v) for v in numbers))))
        return or_(*(test for test in tests if test is not None))

    def compare(self, op: str, value: Any) -> ColumnElement[bool] | None:
        if op == "exists":
            present = and_(not_(self.missing()), not_(self.kind_is("null")))
            return present if value is None or value else not_(present)
        if op == "eq":
            return self.equals(value)
        if op == "ne":
            equal = self.equals(value)
            return None if equal is None else or_(self.missing(), not_(func.coalesce(equal, false())))
        if op == "in":
            return self.one_of(value)
        if op in ("gt", "gte", "lt", "lte"):
            return self.order(op, value)
        if op == "between":
            low, high = value
            above, below = self.order("gte", low), self.order("lte", high)
            return None if above is None or below is None else and_(above, below)
        if op == "contains":
            if not _scalar(value):
                return None
            in_text = and_(self.kind_is("text"), self.contains_text(value)) if isinstance(value, str) else false()
            return or_(in_text, and_(self.kind_is("array"), self.array_has(value)))
        if op == "starts_with":
            return and_(self.kind_is("text"), self.starts_with(value))
        return None  # regex: Python's re is not the database's

    def order(self, op: str, value: Any) -> ColumnElement[bool] | None:
        if isinstance(value, str):
            return and_(self.kind_is("text"), _compare(self.text(), op, literal(value, String)))
        if isinstance(value, bool) or not isinstance(value, int | float) or abs(value) >= EXACT:
            return None
        return and_(self.kind_is("number"), self.number(op, value))


def _compare(side: ColumnElement[Any], op: str, bound: Any) -> ColumnElement[bool]:
    tests: dict[str, ColumnElement[bool]] = {
        "eq": side == bound,
        "gt": side > bound,
        "gte": side >= bound,
        "lt": side < bound,
        "lte": side <= bound,
    }
    return tests[op]


class _Sqlite(_Leaf):
    """json_type: NULL when missing, else null/true/false/integer/real/text/array/object."""

    def __init__(self, traits: Traits, path: str) -> None:
        self.path = "$" + "".join(f'."{part}"' for part in path.split("."))
        self.traits = traits
        self.type = func.json_type(traits, self.path)

    def kind_is(self, kind: str) -> ColumnElement[bool]:
        return self.type.in_(["integer", "real"]) if kind == "number" else self.type == kind

    def missing(self) -> ColumnElement[bool]:
        return self.type.is_(None)

    def number(self, op: str, value: float) -> ColumnElement[bool]:
        return _compare(func.json_extract(self.traits, self.path), op, literal(value))

    def text(self) -> ColumnElement[Any]:
        return func.json_extract(self.traits, self.path, type_=String)

    def contains_text(self, value: str) -> ColumnElement[bool]:
        return func.instr(self.text(), literal(value, String)) > 0

    def starts_with(self, value: str) -> ColumnElement[bool]:
        return func.substr(self.text(), 1, len(value)) == literal(value, String)

    def array_has(self, value: Any) -> ColumnElement[bool]:
        each = func.json_each(self.traits, self.path).table_valued("type", "value")
        if value is None or isinstance(value, bool):
            match = each.c.type == ("null" if value is None else "true" if value else "false")
        elif isinstance(value, str):
            match = and_(each.c.type == "text", each.c.value == literal(value, String))
        else:
            match = and_(each.c.type.in_(["integer", "real"]), each.c.value == literal(value))
        return exists(select(literal(1)).select_from(each).where(match))


class _Postgres(_Leaf):
    """jsonb_typeof: NULL when missing, else null/boolean/number/string/array/object."""

    def __init__(self, traits: Traits, path: str) -> None:
        self.value = traits.op("#>")(literal(path.split("."), _TEXT_ARRAY))
        self.type = func.jsonb_typeof(self.value)

    def kind_is(self, kind: str) -> ColumnElement[bool]:
        if kind in ("true", "false"):
            return and_(self.type == "boolean", self.value == literal(kind == "true", JSONB))
        return self.type == {"text": "string"}.get(kind, kind)

    def missing(self) -> ColumnElement[bool]:
        return self.type.is_(None)

    def number(self, op: str, value: float) -> ColumnElement[bool]:
        # As jsonb: numbers compare numerically (1 = 1.0), and no cast can fail on another type.
        return _compare(self.value, op, literal(value, JSONB))

    def text(self) -> ColumnElement[Any]:
        # The string's characters in byte order, as Python compares them (UTF-8 keeps code point order).
        return type_coerce(self.value.op("#>>")(literal([], _TEXT_ARRAY)), String).collate("C")

    def contains_text(self, value: str) -> ColumnElement[bool]:
        return func.strpos(self.text(), literal(value, String)) > 0

    def starts_with(self, value: str) -> ColumnElement[bool]:
        return func.left(self.text(), len(value)) == literal(value, String)

    def array_has(self, value: Any) -> ColumnElement[bool]:
        return self.value.op("@>")(literal([value], JSONB))


def _named_in_window(node: EventCondition, profile_id: ColumnElement[str], now: datetime) -> ColumnElement[int]:
    """How many track events of the node's name the profile has in its window (whatever their properties)."""
    e = EVENTS.c
    start, end = node.window(now)
    window = ([] if start is None else [e.timestamp >= start]) + ([] if end is None else [e.timestamp < end])
    named = (e.profile_id == profile_id, e.type == "track", e.event == node.event)
    return select(func.count()).select_from(EVENTS).where(*named, *window).scalar_subquery()


def _performed(node: EventCondition, profile_id: ColumnElement[str], now: datetime) -> ColumnElement[bool]:
    """What `conditions._performed` decides from the profile's track events of the name (their
    `timestamp`), read from the timeline: a count in the window, or the first / last one's time."""
    e = EVENTS.c
    start, end = node.window(now)
    named = (e.profile_id == profile_id, e.type == "track", e.event == node.event)
    if node.occurrence != "any":
        moment = (func.min if node.occurrence == "first" else func.max)(e.timestamp)
        at = select(moment).where(*named).scalar_subquery()
        tests: list[ColumnElement[bool]] = [at.is_not(None)]
        tests += [] if start is None else [at >= start]
        tests += [] if end is None else [at < end]
        return and_(*tests)
    found = _named_in_window(node, profile_id, now)
    count = node.counted
    if count.eq is not None:
        return found == count.eq
    bounds = ([] if count.gte is None else [found >= count.gte]) + ([] if count.lte is None else [found <= count.lte])
    return and_(*bounds)
