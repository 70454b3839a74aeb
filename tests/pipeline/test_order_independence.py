"""Hypothesis: any order, any duplication and any batching of the same events gives the same profiles."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accord.runtime import Runtime
from pipeline.helpers import process, reset, send, snapshot

USERS = ["u1", "u2", "u3"]
DEVICES = ["d1", "d2", "d3", "d4"]
EMAILS = ["ann@example.com", "ANN@example.com ", "bob@example.com"]
TIMES = [f"2026-05-01T10:0{m}:00Z" for m in range(4)]  # few, so that ties happen


@st.composite
def events(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(min_value=1, max_value=14))
    made = []
    for index in range(count):
        kind = draw(st.sampled_from(["identify", "track", "page", "alias"]))
        event: dict[str, Any] = {"type": kind, "messageId": f"m{index}", "timestamp": draw(st.sampled_from(TIMES))}
        if kind == "alias":
            event["userId"] = draw(st.sampled_from(USERS))
            event["previousId"] = draw(st.sampled_from(USERS + DEVICES))
        else:
            user = draw(st.sampled_from([None, *USERS]))
            device = draw(st.sampled_from(DEVICES)) if user is None else draw(st.sampled_from([None, *DEVICES]))
            if user:
                event["userId"] = user
            if device:
                event["anonymousId"] = device
        if kind == "identify":
            event["traits"] = draw(
                st.dictionaries(st.sampled_from(["plan", "email", "city"]), st.sampled_from(["a", "b", *EMAILS]))
            )
        if kind == "track":
            event["event"] = draw(st.sampled_from(["Viewed", "Bought"]))
        made.append(event)
    return made


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(original=events(), data=st.data())
def test_any_order_duplication_and_batching_gives_the_same_profiles(
    rt: Runtime, original: list[dict[str, Any]], data: st.DataObject
) -> None:
    reset(rt)
    send(rt, original)
    process(rt)
    expected = snapshot(rt)

    reset(rt)
    shuffled = data.draw(st.permutations(original), label="order")
    repeats = data.draw(st.lists(st.sampled_from(original), max_size=6), label="duplicates")
    stream = data.draw(st.permutations(shuffled + repeats), label="stream")
    batch_size = data.draw(st.integers(min_value=1, max_value=8), label="log record size")
    worker_batch = data.draw(st.sampled_from([1, 3, 500]), label="worker batch")
    for start in range(0, len(stream), batch_size):
        send(rt, stream[start : start + batch_size])
        if data.draw(st.booleans(), label="process now"):
            process(rt, batch_size=worker_batch)
    process(rt, batch_size=worker_batch)
    assert snapshot(rt) == expected
