"""The segment condition language: JSON documents checked by Pydantic models, which also publish the
JSON Schema. Evaluation is pure: a condition and a profile's facts give true or false.

    {"all": [
      {"trait": "plan", "op": "eq", "value": "gold"},
      {"event": "Order Completed", "where": [{"property": "total", "op": "gte", "value": 50}],
       "count": {"gte": 2}, "within": "30d"},
      {"not": {"segment": "churn_risk"}},
      {"consent": {"purpose": "marketing.email", "channel": "email"}}]}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from accord import patterns

TRAIT_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "contains", "starts_with", "exists", "regex")
Op = Literal["eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "contains", "starts_with", "exists", "regex"]
MAX_NODES = 200
MAX_REGEX = 200
MAX_LIST = 1000
MAX_DAYS = 36_600
PATH = r"^[A-Za-z0-9_$@:\- ]{1,100}(\.[A-Za-z0-9_$@:\- ]{1,100}){0,4}$"
Days = Annotated[str, Field(pattern=r"^[0-9]{1,5}d$", description="A number of days, e.g. 30d")]


NEW = "accord.new"  # the validation context's key: a condition being saved (`parse`)


class ConditionError(ValueError):
    """A condition that cannot be used; `path` is a JSON path to the offending part, e.g. $.all[1].op."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _operand(value: Any, info: ValidationInfo) -> Any:
    op = info.data.get("op")
    if op is not None:
        check_operand(op, value, new=bool(info.context and info.context.get(NEW)))
    return value


OPERAND = Field(
    default=None, validate_default=True, description="The operand; its shape depends on op (see docs/segments.md)"
)


def check_operand(op: str, value: Any, *, new: bool = False) -> None:
    if op in ("gt", "gte", "lt", "lte"):
        if not _orderable(value):
            raise ValueError(f"{op} needs a number or a string")
    elif op == "between":
        if not (isinstance(value, list) and len(value) == 2 and all(_orderable(v) for v in value)):
            raise ValueError("between needs [low, high], two numbers or two strings")
        if _kind(value[0]) != _kind(value[1]):
            raise ValueError("between needs two numbers or two strings, not one of each")
        if value[0] > value[1]:
            raise ValueError("between needs low <= high")
    elif op == "in":
        if not isinstance(value, list) or not value or len(value) > MAX_LIST:
            raise ValueError(f"in needs a list of 1 to {MAX_LIST} values")
    elif op in ("contains", "eq", "ne"):
        if isinstance(value, dict | list) and op != "eq" and op != "ne":
            raise ValueError(f"{op} needs a single value")
        if value is None and op == "contains":
            raise ValueError("contains needs a value")
    elif op == "starts_with":
        if not isinstance(value, str) or not value:
            raise ValueError("starts_with needs a non-empty string")
    elif op == "exists":
        if not isinstance(value, bool | None):
            raise ValueError("exists takes true, false or nothing (true)")
    elif op == "regex":
        if not isinstance(value, str) or not value or len(value) > MAX_REGEX:
            raise ValueError(f"regex needs a pattern of 1 to {MAX_REGEX} characters")
        # Stored conditions are read back through here too; only new ones are probed for backtracking
        # (patterns.problem), so that one stored before the probe existed is not refused when read.
        problem = patterns.problem(value) if new else patterns.compiles(value)
        if problem is not None:
            raise ValueError(f"regex {problem}")


class TraitCondition(_Node):
    """A profile trait compared with a value. A dotted name reaches into an object trait."""

    trait: str = Field(pattern=PATH, description="Trait name; a.b reaches into an object")
    op: Op
    value: Any = OPERAND
    _value = field_validator("value")(_operand)


class PropertyFilter(_Node):
    """An event property compared with a value."""

    property: str = Field(pattern=PATH, description="Property name; a.b reaches into an object")
    op: Op
    value: Any = OPERAND
    _value = field_validator("value")(_operand)


class CountSpec(_Node):
    """How many matching events: at least (gte), at most (lte), exactly (eq). Default: at least 1."""

    gte: int | None = Field(default=None, ge=0, le=1_000_000)
    lte: int | None = Field(default=None, ge=0, le=1_000_000)
    eq: int | None = Field(default=None, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _one_bound(self) -> CountSpec:
        if self.eq is not None and (self.gte is not None or self.lte is not None):
            raise ValueError("count takes eq alone, or gte and/or lte")
        if self.eq is None and self.gte is None and self.lte is None:
            raise ValueError("count needs gte, lte or eq")
        if self.gte is not None and self.lte is not None and self.gte > self.lte:
            raise ValueError("count needs gte <= lte")
        return self

    def holds(self, n: int) -> bool:
        if self.eq is not None:
            return n == self.eq
        return (self.gte is None or n >= self.gte) and (self.lte is None or n <= self.lte)


_AT_LEAST_ONCE = CountSpec(gte=1)


class DateRange(_Node):
    """Absolute times: from (inclusive) to (exclusive)."""

    from_: AwareDatetime = Field(alias="from")
    to: AwareDatetime

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.from_ >= self.to:
            raise ValueError("between needs from < to")
        return self


class EventCondition(_Node):
    """The person performed a track event (with properties matching `where`) a number of times in a window;
    or their first or last such event falls in the window."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    event: str = Field(min_length=1, max_length=200, description="Track event name")
    where: list[PropertyFilter] = Field(default_factory=list, max_length=20)
    count: CountSpec | None = Field(default=None, description="Default: at least once")
    within: Days | None = Field(default=None, description="In the last N days (at or after now - N days)")
    older_than: Days | None = Field(default=None, description="Before now - N days")
    between: DateRange | None = Field(default=None, description="From (inclusive) to (exclusive)")
    occurrence: Literal["any", "first", "last"] = Field(
        default="any", description="first / last: the person's first (last) matching event falls in the window"
    )

    @model_validator(mode="after")
    def _one_window(self) -> EventCondition:
        windows = [w for w in (self.within, self.older_than, self.between) if w is not None]
        if len(windows) > 1:
            raise ValueError("give at most one of within, older_than, between (none: ever)")
        for days in (self.within, self.older_than):
            if days is not None and int(days[:-1]) > MAX_DAYS:
                raise ValueError(f"a window is at most {MAX_DAYS}d")
        if self.occurrence != "any" and self.count is not None:
            raise ValueError("count does not go with occurrence first or last")
        return self

    def window(self, now: datetime) -> tuple[datetime | None, datetime | None]:
        """[start, end): either may be open."""
        if self.within is not None:
            return now - timedelta(days=int(self.within[:-1])), None
        if self.older_than is not None:
            return None, now - timedelta(days=int(self.older_than[:-1]))
        if self.between is not None:
            return self.between.from_.astimezone(UTC), self.between.to.astimezone(UTC)
        return None, None

    @property
    def counted(self) -> CountSpec:
        """The count asked for: at least once when none is given."""
        return self.count or _AT_LEAST_ONCE

    @property
    def timed(self) -> bool:
        """Whether the passing of time alone can change the result."""
        return self.within is not None or self.older_than is not None


class ComputedCondition(_Node):
    """A computed trait (see docs/segments.md) compared with a value."""

    computed: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$", description="The computed trait's key")
    op: Op
    value: Any = OPERAND
    _value = field_validator("value")(_operand)


class SegmentCondition(_Node):
    """Membership of another segment."""

    segment: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$")


class ConsentRef(_Node):
    purpose: str = Field(min_length=1, max_length=100)
    channel: str = Field(default="all", min_length=1, max_length=60)


class ConsentCondition(_Node):
    """The consent policy allows this purpose on this channel (a valid consent or other legal basis)."""

    consent: ConsentRef


class AllOf(_Node):
    all: list[Condition] = Field(min_length=1, max_length=100)


class AnyOf(_Node):
    any: list[Condition] = Field(min_length=1, max_length=100)


class NotCondition(_Node):
    not_: Condition = Field(alias="not")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


_KINDS = ("all", "any", "not", "trait", "computed", "event", "segment", "consent")
_TAGS = {kind: f"<{kind}>" for kind in _KINDS}


def _which(value: Any) -> str | None:
    if isinstance(value, dict):
        found = [kind for kind in _KINDS if kind in value]
        return _TAGS[found[0]] if len(found) == 1 else None
    if isinstance(value, BaseModel):
        return _TAGS[_kind_of(value)]
    return None


Condition = Annotated[
    Annotated[AllOf, Tag(_TAGS["all"])]
    | Annotated[AnyOf, Tag(_TAGS["any"])]
    | Annotated[NotCondition, Tag(_TAGS["not"])]
    | Annotated[TraitCondition, Tag(_TAGS["trait"])]
    | Annotated[ComputedCondition, Tag(_TAGS["computed"])]
    | Annotated[EventCondition, Tag(_TAGS["event"])]
    | Annotated[SegmentCondition, Tag(_TAGS["segment"])]
    | Annotated[ConsentCondition, Tag(_TAGS["consent"])],
    Discriminator(
        _which,
        custom_error_type="condition_kind",
        custom_error_message="a condition is an object with exactly one of: " + ", ".join(_KINDS),
    ),
]
AllOf.model_rebuild()
AnyOf.model_rebuild()
NotCondition.model_rebuild()
CONDITION: TypeAdapter[Any] = TypeAdapter(Condition)
Node = (
    AllOf
    | AnyOf
    | NotCondition
    | TraitCondition
    | ComputedCondition
    | EventCondition
    | SegmentCondition
    | ConsentCondition
)


def _kind_of(node: BaseModel) -> str:
    return {
        AllOf: "all",
        AnyOf: "any",
        NotCondition: "not",
        TraitCondition: "trait",
        ComputedCondition: "computed",
        EventCondition: "event",
        SegmentCondition: "segment",
        ConsentCondition: "consent",
    }[type(node)]


def json_schema() -> dict[str, Any]:
    schema = CONDITION.json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Accord segment condition"
    return schema


def json_path(loc: Sequence[int | str]) -> str:
    path = "$"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _TAGS.values() or part.startswith("function-after["):
            continue
        else:
            path += f".{part}"
    return path


def parse(document: Any, *, new: bool = False) -> Node:
    """The condition in `document`, or ConditionError naming the first offending part. `new`: a condition
    being saved, not one read back, whose regular expressions are also probed (accord.patterns.problem)."""
    try:
        node: Node = CONDITION.validate_python(document, context={NEW: new})
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConditionError(json_path(first["loc"]), message) from None
    count = sum(1 for _ in walk(node))
    if count > MAX_NODES:
        raise ConditionError("$", f"a condition has at most {MAX_NODES} parts, this one {count}")
    return node


def dump(node: Node) -> dict[str, Any]:
    return dict(CONDITION.dump_python(node, mode="json", by_alias=True, exclude_defaults=True))


def walk(node: Node, path: str = "$") -> Iterator[tuple[str, Node]]:
    """Every part of a condition with its JSON path, depth first."""
    yield path, node
    if isinstance(node, AllOf):
        for i, child in enumerate(node.all):
            yield from walk(child, f"{path}.all[{i}]")
    elif isinstance(node, AnyOf):
        for i, child in enumerate(node.any):
            yield from walk(child, f"{path}.any[{i}]")
    elif isinstance(node, NotCondition):
        yield from walk(node.not_, f"{path}.not")


@dataclass(frozen=True, slots=True)
class References:
    """What a condition reads; the streaming evaluator re-evaluates a segment when one of these changes."""

    traits: frozenset[str] = frozenset()  # top-level trait names
    events: frozenset[str] = frozenset()
    segments: frozenset[str] = frozenset()
    purposes: frozenset[str] = frozenset()
    computed: frozenset[str] = frozenset()
    timed: bool = False  # time passing alone can change it (a within / older_than window)
    needs_properties: bool = False  # some event leaf filters on properties


def references(node: Node) -> References:
    traits: set[str] = set()
    events: set[str] = set()
    segments: set[str] = set()
    purposes: set[str] = set()
    computed: set[str] = set()
    timed = needs_properties = False
    for _, part in walk(node):
        if isinstance(part, TraitCondition):
            traits.add(part.trait.split(".", 1)[0])
        elif isinstance(part, EventCondition):
            events.add(part.event)
            timed = timed or part.timed
            needs_properties = needs_properties or bool(part.where)
        elif isinstance(part, SegmentCondition):
            segments.add(part.segment)
        elif isinstance(part, ConsentCondition):
            purposes.add(part.consent.purpose)
        elif isinstance(part, ComputedCondition):
            computed.add(part.computed)
    return References(
        frozenset(traits),
        frozenset(events),
        frozenset(segments),
        frozenset(purposes),
        frozenset(computed),
        timed,
        needs_properties,
    )


# --- evaluation -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Facts:
    """What evaluation knows of one profile: traits, its track events of the referenced names (time and
    properties), the segments it is in, and a consent check."""

    traits: Mapping[str, Any]
    events: Mapping[str, list[tuple[datetime, Mapping[str, Any]]]] = field(default_factory=dict)
    segments: set[str] = field(default_factory=set)
    allowed: Callable[[str, str], bool] = lambda _purpose, _channel: False
    computed: Callable[[str], Any] = lambda _key: None


_MISSING = object()


def lookup(document: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted `path` in `document`, or _MISSING."""
    return _lookup(document, _path(path))


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _orderable(value: Any) -> bool:
    return _kind(value) in ("number", "string") and value == value


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return bool(type(a) is type(b) or (_kind(a) == _kind(b) == "number")) and a == b


_REGEX_CACHE: dict[str, patterns.Pattern] = {}
MAX_SUBJECT = 10_000


def compare(op: str, actual: Any, value: Any) -> bool:
    """`actual op value`; a missing or mistyped actual makes every operator false except ne and exists."""
    if op == "exists":
        present = actual is not _MISSING and actual is not None
        return present if value is None or value else not present
    if op == "ne":
        return actual is _MISSING or not _equal(actual, value)
    if actual is _MISSING:
        return False
    if op == "eq":
        return _equal(actual, value)
    if op == "in":
        return any(_equal(actual, v) for v in value)
    if op in ("gt", "gte", "lt", "lte"):
        if not _orderable(actual) or _kind(actual) != _kind(value):
            return False
        if op == "gt":
            return bool(actual > value)
        if op == "gte":
            return bool(actual >= value)
        if op == "lt":
            return bool(actual < value)
        return bool(actual <= value)
    if op == "between":
        low, high = value
        return _orderable(actual) and _kind(actual) == _kind(low) and bool(low <= actual <= high)
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(value, str) and value in actual
        if isinstance(actual, list):
            return any(_equal(item, value) for item in actual)
        return False
    if op == "starts_with":
        return isinstance(actual, str) and actual.startswith(value)
    if op == "regex":
        if not isinstance(actual, str):
            return False
        pattern = _REGEX_CACHE.get(value)
        if pattern is None:
            pattern = _REGEX_CACHE.setdefault(value, patterns.Pattern(value, use="condition"))
        return pattern.search(actual[:MAX_SUBJECT])
    raise ValueError(f"unknown operator {op!r}")


Test = Callable[[Facts, datetime], bool]


def evaluate(node: Node, facts: Facts, now: datetime) -> bool:
    return compile_test(node)(facts, now)


def compile_test(node: Node) -> Test:
    """The condition as a function of a profile's facts and the moment, what `evaluate` gives: the tree is
    walked, paths split and windows read once, not for each profile evaluated."""
    if isinstance(node, AllOf):
        every = tuple(compile_test(child) for child in node.all)

        def all_of(facts: Facts, now: datetime) -> bool:
            for test in every:  # noqa: SIM110 - all() over a generator costs a generator per profile
                if not test(facts, now):
                    return False
            return True

        return all_of
    if isinstance(node, AnyOf):
        some = tuple(compile_test(child) for child in node.any)

        def any_of(facts: Facts, now: datetime) -> bool:
            for test in some:  # noqa: SIM110 - as above
                if test(facts, now):
                    return True
            return False

        return any_of
    if isinstance(node, NotCondition):
        inner = compile_test(node.not_)
        return lambda facts, now: not inner(facts, now)
    if isinstance(node, TraitCondition):
        op, path, value = node.op, _path(node.trait), node.value
        fast = _top_level_trait_test(op, path[0], value) if len(path) == 1 else None
        return fast or (lambda facts, now: compare(op, _lookup(facts.traits, path), value))
    if isinstance(node, ComputedCondition):
        op, key, value = node.op, node.computed, node.value

        def computed(facts: Facts, now: datetime) -> bool:
            found = facts.computed(key)
            return compare(op, _MISSING if found is None else found, value)

        return computed
    if isinstance(node, EventCondition):
        return _performed(node)
    if isinstance(node, SegmentCondition):
        segment = node.segment
        return lambda facts, now: segment in facts.segments
    purpose, channel = node.consent.purpose, node.consent.channel
    return lambda facts, now: facts.allowed(purpose, channel)


def _top_level_trait_test(op: str, name: str, value: Any) -> Test | None:
    """What `compare` answers for a top-level trait, for the commonest tests (a text equal to, not equal to
    or among given texts; present or not), without its dispatch; None for the others. JSON equality with
    a text is a text that is equal: never a number, a bool or null."""
    if op in ("eq", "ne") and type(value) is str:  # only a text equals a text, in Python too
        if op == "eq":
            return lambda facts, now: facts.traits.get(name) == value
        return lambda facts, now: facts.traits.get(name) != value
    if op == "in" and isinstance(value, list) and value and all(type(v) is str for v in value):
        texts = frozenset(value)
        return lambda facts, now: type(actual := facts.traits.get(name, _MISSING)) is str and actual in texts
    if op == "exists":
        wanted = value is None or bool(value)
        return lambda facts, now: (facts.traits.get(name) is not None) is wanted
    return None


def _path(dotted: str) -> tuple[str, ...]:
    return tuple(dotted.split("."))


def _lookup(document: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """`lookup` with the path split (once, when a condition is compiled)."""
    value: Any = document
    for part in path:
        if not (type(value) is dict or isinstance(value, Mapping)) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _performed(node: EventCondition) -> Test:
    name, occurrence, count = node.event, node.occurrence, node.counted
    filters = tuple((f.op, _path(f.property), f.value) for f in node.where)
    window = _window(node)

    # With only a lower bound on the count, counting stops once it is reached.
    enough = count.gte if count.eq is None and count.lte is None else None

    def performed(facts: Facts, now: datetime) -> bool:
        events = facts.events.get(name, ())
        start, end = window(now)
        if occurrence != "any":
            matching = [
                moment
                for moment, properties in events
                if all(compare(op, _lookup(properties, path), value) for op, path, value in filters)
            ]
            if not matching:
                return False
            moment = min(matching) if occurrence == "first" else max(matching)
            return (start is None or moment >= start) and (end is None or moment < end)
        found = 0
        for moment, properties in events:  # the window first, then the filters (none: no generator made)
            if (
                (start is None or moment >= start)
                and (end is None or moment < end)
                and (not filters or all(compare(op, _lookup(properties, path), value) for op, path, value in filters))
            ):
                found += 1
                if found == enough:
                    return True
        return count.holds(found)

    return performed


def _window(node: EventCondition) -> Callable[[datetime], tuple[datetime | None, datetime | None]]:
    """`node.window`, its days read once."""
    if node.within is not None:
        span = timedelta(days=int(node.within[:-1]))
        return lambda now: (now - span, None)
    if node.older_than is not None:
        span = timedelta(days=int(node.older_than[:-1]))
        return lambda now: (None, now - span)
    fixed = node.window(datetime.now(UTC))  # absolute dates (between) or no window: now plays no part
    return lambda now: fixed
