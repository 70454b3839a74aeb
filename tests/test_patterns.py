"""Regular expressions that users write cannot stall a process (accord.patterns): new ones that backtrack
for too long are refused with the part named, and one stored before that check is switched off in the
process the first time a match runs out of time, while the worker carries on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from structlog.testing import capture_logs

from accord import patterns
from accord.identity.rules import DEFAULT_DOCUMENT, RulesError, compile_rules
from accord.runtime import Runtime
from accord.segments import computed, conditions, service
from accord.segments.conditions import ConditionError
from accord.segments.models import Segment, SegmentMembership
from pipeline.helpers import process, send

# Exponential backtracking on "aaaa...!" in Python's re and in the regex module alike.
EXPONENTIAL = "(a|aa)+$"
HOSTILE = "a" * 80 + "!"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        (EXPONENTIAL, "can take too long"),
        ("^(x+x+)+y", "can take too long"),  # polynomial: shows only on the long probe
        ("(", "does not compile"),
        ("a{2,1}", "does not compile"),
    ],
)
def test_new_patterns_that_backtrack_or_do_not_compile_are_refused(pattern: str, words: str) -> None:
    problem = patterns.problem(pattern)
    assert problem is not None
    assert words in problem


@pytest.mark.parametrize(
    "pattern",
    ["^gold$", r"^[\w.+-]+@example\.com$", r"(?i)^vip", r"\d{3}-\d{4}", "a+b+c+", "(ab|cd)*e", r"^\p{L}+$"],
)
def test_ordinary_patterns_are_accepted(pattern: str) -> None:
    assert patterns.problem(pattern) is None


def test_the_meaning_is_pythons() -> None:
    # VERSION0: what re would match, Unicode classes included.
    assert patterns.Pattern(r"^\w+$", use="test").search("José")
    assert not patterns.Pattern("^b", use="test").search("abc")
    assert patterns.Pattern("B", use="test", ignore_case=True).fullmatch("b")


def test_a_match_that_runs_out_of_time_switches_the_pattern_off_once() -> None:
    pattern = patterns.Pattern(EXPONENTIAL, use="test")
    before = REGISTRY.get_sample_value("accord_patterns_switched_off_total", {"use": "test"}) or 0.0
    with capture_logs() as logs:
        assert pattern.search(HOSTILE) is False
        assert pattern.switched_off
        assert pattern.search("aa") is False  # it would match, but it is off: nothing is tried
    after = REGISTRY.get_sample_value("accord_patterns_switched_off_total", {"use": "test"})
    assert after == before + 1
    (entry,) = logs
    assert entry["log_level"] == "warning"
    assert entry["use"] == "test"
    assert entry["pattern_length"] == len(EXPONENTIAL)
    assert EXPONENTIAL not in repr(entry)  # a digest names it: a pattern may hold personal data


def test_conditions_refuse_such_patterns_on_save_and_read_stored_ones_back() -> None:
    document = {
        "all": [{"trait": "plan", "op": "eq", "value": "gold"}, {"trait": "nick", "op": "regex", "value": EXPONENTIAL}]
    }
    with pytest.raises(ConditionError) as refused:
        conditions.parse(document, new=True)
    assert refused.value.path == "$.all[1].value"
    assert "can take too long" in refused.value.message
    conditions.parse(document)  # read back: compiled, not probed
    trait = {"event": "E", "function": "count", "where": [{"property": "p", "op": "regex", "value": EXPONENTIAL}]}
    with pytest.raises(ConditionError, match="can take too long"):
        computed.parse(trait, new=True)
    computed.parse(trait)


def test_the_services_refuse_such_patterns(rt: Runtime) -> None:
    condition = {"trait": "nick", "op": "regex", "value": EXPONENTIAL}
    with rt.db.unit_of_work() as session, pytest.raises(ConditionError, match="can take too long"):
        service.create(session, key="slow", name="", description="", condition=condition, actor="t", now=NOW)
    trait = {"event": "E", "function": "count", "where": [{"property": "p", "op": "regex", "value": EXPONENTIAL}]}
    with rt.db.unit_of_work() as session, pytest.raises(ConditionError, match="can take too long"):
        service.computed_save(session, key="n", name=None, definition=trait, actor="t", now=NOW, create=True)
    with rt.db.read() as session:
        assert session.scalar(select(Segment.key)) is None


def test_a_stored_pattern_that_runs_out_of_time_does_not_stop_the_worker(rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        for key, condition in (
            ("gold", {"trait": "plan", "op": "eq", "value": "gold"}),
            ("slow", {"trait": "nick", "op": "regex", "value": "^x"}),
        ):
            service.create(session, key=key, name="", description="", condition=condition, actor="t", now=NOW)
    with rt.db.unit_of_work() as session:
        for key in ("gold", "slow"):
            assert service.backfill_step(session, key, now=NOW, limit=10).finished
        # As a condition stored before new ones were probed would be: changed under the check.
        row = session.get(Segment, "slow")
        assert row is not None
        row.condition = {"trait": "nick", "op": "regex", "value": EXPONENTIAL}
        row.version += 1
        row.updated_at = NOW + timedelta(seconds=1)
    send(rt, [{"type": "identify", "userId": "u1", "traits": {"plan": "gold", "nick": HOSTILE}, "messageId": "m1"}])
    assert process(rt) == 1
    with rt.db.read() as session:
        members = {(m.segment_key, m.profile_id) for m in session.scalars(select(SegmentMembership))}
    assert {key for key, _ in members} == {"gold"}
    assert conditions._REGEX_CACHE[EXPONENTIAL].switched_off


def test_identity_rules_refuse_such_blocked_patterns_and_read_stored_ones_back() -> None:
    document: dict[str, Any] = {**DEFAULT_DOCUMENT, "blocked": ["^none$", EXPONENTIAL]}
    with pytest.raises(RulesError, match=r"blocked\[1\] can take too long"):
        compile_rules(document, new=True)
    with pytest.raises(RulesError, match=r"blocked\[0\] does not compile"):
        compile_rules({**DEFAULT_DOCUMENT, "blocked": ["("]}, new=True)
    rules = compile_rules(document)  # stored: compiled, not probed
    assert rules.normalise("user_id", "none") is None  # blocked, as before
    assert rules.normalise("user_id", HOSTILE) == HOSTILE  # ran out of time: the pattern blocks nothing now
    assert rules.normalise("user_id", "none") == "none"
