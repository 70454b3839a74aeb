"""A journey's definition: ordered stages, each entered by a condition of the segment condition language,
an optional goal and exit condition, and optional time limits. Checked by Pydantic models, which also
publish the JSON Schema; errors name the offending part by JSON path, as segment conditions do.

    {"stages": [
       {"key": "browsing", "condition": {"event": "Product Viewed"}},
       {"key": "carting", "condition": {"event": "Product Added"}, "time_limit": "2d"},
       {"key": "checkout", "condition": {"event": "Checkout Started"}}],
     "goal": {"event": "Order Completed"},
     "exit": {"trait": "unsubscribed", "op": "eq", "value": true},
     "time_limit": "30d"}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from accord.segments import conditions
from accord.segments.conditions import Condition, ConditionError, Node, References

MAX_STAGES = 20
MAX_MINUTES = conditions.MAX_DAYS * 24 * 60
UNITS = {"m": 1, "h": 60, "d": 24 * 60}
Duration = Annotated[
    str, Field(pattern=r"^[0-9]{1,8}[mhd]$", description="A time span: minutes, hours or days, e.g. 30m, 12h, 7d")
]
STAGE_KEY = r"^[a-z0-9][a-z0-9_.-]{0,99}$"


def duration(text: str) -> timedelta:
    return timedelta(minutes=int(text[:-1]) * UNITS[text[-1]])


def _check_duration(text: str | None) -> None:
    if text is not None and int(text[:-1]) * UNITS[text[-1]] > MAX_MINUTES:
        raise ValueError(f"a time limit is at most {conditions.MAX_DAYS}d")
    if text is not None and int(text[:-1]) == 0:
        raise ValueError("a time limit is more than 0")


class Stage(BaseModel):
    """A stage: entered when its condition holds (and the profile is not already at or past it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(pattern=STAGE_KEY, description="The stage's key, unique in the journey: a-z, 0-9, _ . -")
    name: str = Field(default="", max_length=200)
    condition: Condition
    time_limit: Duration | None = Field(
        default=None, description="A profile that stays in this stage longer exits the journey"
    )

    @model_validator(mode="after")
    def _limit(self) -> Stage:
        _check_duration(self.time_limit)
        return self


class Definition(BaseModel):
    """A journey's stages (in order), goal, exit and time limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: list[Stage] = Field(min_length=1, max_length=MAX_STAGES, description="In order; forward-only")
    goal: Condition | None = Field(
        default=None, description="Holding while in the journey completes it (none: reaching the last stage does)"
    )
    exit: Condition | None = Field(default=None, description="Holding while in the journey exits it")
    time_limit: Duration | None = Field(
        default=None, description="A profile still in the journey this long after entering it exits"
    )

    @model_validator(mode="after")
    def _checks(self) -> Definition:
        _check_duration(self.time_limit)
        return self


DEFINITION: TypeAdapter[Definition] = TypeAdapter(Definition)


def json_schema() -> dict[str, Any]:
    schema = DEFINITION.json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Accord journey definition"
    return schema


def parse(document: Any) -> Definition:
    """The definition in `document`, or ConditionError naming the first offending part."""
    try:
        found = DEFINITION.validate_python(document)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConditionError(conditions.json_path(first["loc"]), message) from None
    seen: dict[str, int] = {}
    for i, stage in enumerate(found.stages):
        if stage.key in seen:
            raise ConditionError(f"$.stages[{i}].key", f"stage {stage.key!r} is already stages[{seen[stage.key]}]")
        seen[stage.key] = i
    for path, node in parts(found):
        count = sum(1 for _ in conditions.walk(node))
        if count > conditions.MAX_NODES:
            raise ConditionError(path, f"a condition has at most {conditions.MAX_NODES} parts, this one {count}")
    return found


def parts(definition: Definition) -> list[tuple[str, Node]]:
    """Every condition of the definition with its JSON path."""
    found: list[tuple[str, Node]] = [
        (f"$.stages[{i}].condition", stage.condition) for i, stage in enumerate(definition.stages)
    ]
    if definition.goal is not None:
        found.append(("$.goal", definition.goal))
    if definition.exit is not None:
        found.append(("$.exit", definition.exit))
    return found


def dump(definition: Definition) -> dict[str, Any]:
    return dict(DEFINITION.dump_python(definition, mode="json", by_alias=True, exclude_defaults=True))


def references(definition: Definition) -> References:
    """What the definition's conditions read, together."""
    found = [conditions.references(node) for _, node in parts(definition)]
    return References(
        traits=frozenset().union(*(r.traits for r in found)),
        events=frozenset().union(*(r.events for r in found)),
        segments=frozenset().union(*(r.segments for r in found)),
        purposes=frozenset().union(*(r.purposes for r in found)),
        computed=frozenset().union(*(r.computed for r in found)),
        timed=any(r.timed for r in found),
        needs_properties=any(r.needs_properties for r in found),
    )


@dataclass(frozen=True, slots=True)
class Compiled:
    """A journey ready to run: its definition, what it reads, and its time limits as spans."""

    key: str
    version: int
    definition: Definition
    refs: References
    stage_limits: tuple[timedelta | None, ...] = ()
    limit: timedelta | None = None
    index: dict[str, int] = field(default_factory=dict)
    # the conditions, compiled: of each stage, the goal's, the exit's
    stage_tests: tuple[conditions.Test, ...] = ()
    goal_test: conditions.Test | None = None
    exit_test: conditions.Test | None = None

    @property
    def limited(self) -> bool:
        return self.limit is not None or any(x is not None for x in self.stage_limits)


def compile_journey(key: str, version: int, document: Any) -> Compiled:
    definition = parse(document)
    return Compiled(
        key=key,
        version=version,
        definition=definition,
        refs=references(definition),
        stage_limits=tuple(duration(s.time_limit) if s.time_limit else None for s in definition.stages),
        limit=duration(definition.time_limit) if definition.time_limit else None,
        index={stage.key: i for i, stage in enumerate(definition.stages)},
        stage_tests=tuple(conditions.compile_test(stage.condition) for stage in definition.stages),
        goal_test=conditions.compile_test(definition.goal) if definition.goal is not None else None,
        exit_test=conditions.compile_test(definition.exit) if definition.exit is not None else None,
    )
