"""Segments in the console: the editor checks conditions as the analyst types, saves versions through the
segment service, and the 360 shows a person's segments."""

from __future__ import annotations

import json
import re

import pytest

from conftest import LiveAccord
from console.helpers import logged_in, profile_id, track

GOLD = json.dumps({"trait": "plan", "op": "eq", "value": "gold"})


def test_an_analyst_defines_a_segment_and_the_360_shows_it(live: LiveAccord) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "analyst")
        made = client.post(
            "/console/segments", data={"key": "gold", "name": "Gold customers", "condition": GOLD, "csrf": csrf}
        )
        assert made.status_code == 303
        track(live, [{"type": "identify", "userId": "u-9", "traits": {"plan": "gold", "name": "Gil"}}])
        person = profile_id(live, "user_id:u-9")
        page = client.get(f"/console/customers/{person}").text
        listing = client.get("/console/segments").text
        again = client.post("/console/segments", data={"key": "gold", "name": "Gold", "condition": GOLD, "csrf": csrf})
        assert again.status_code == 303
    assert "Gold customers" in page.split('id="segments"')[1]
    assert re.search(r"<td><code>gold</code></td><td>Gold customers</td><td>1</td>", listing)
    with live.api() as api:
        versions = api.get("/api/v1/segments/gold/versions").json()
    assert [v["version"] for v in versions["data"]] == [2, 1]


@pytest.mark.parametrize(
    ("condition", "says"),
    [
        (GOLD, "The condition is valid."),
        ("{", "not JSON"),
        ("", "write a condition"),
        ('{"trait": "plan", "op": "between", "value": 1}', "$"),
        ('{"segment": "nope"}', "no segment"),
        ('{"consent": {"purpose": "nope", "channel": "email"}}', "no purpose"),
        ("[" * 5000 + "]" * 5000, "$"),
    ],
)
def test_the_editor_says_what_is_wrong_as_you_type(live: LiveAccord, condition: str, says: str) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "analyst")
        answer = client.post(
            "/console/segments/check",
            data={"condition": condition},
            headers={"HX-Request": "true", "X-CSRF-Token": csrf},
        )
    assert answer.status_code == 200
    assert says in answer.text
    assert "<html" not in answer.text


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"key": "Bad Key", "condition": GOLD}, 422),
        ({"key": "", "condition": GOLD}, 422),
        ({"key": "ok", "condition": "not json"}, 422),
        ({"key": "ok", "condition": '{"segment": "ok"}'}, 422),
        ({"key": "ok", "condition": GOLD, "name": "n" * 201}, 422),
        ({"key": "ok", "condition": "x" * 70_000}, 422),
    ],
)
def test_bad_segments_are_refused(live: LiveAccord, form: dict[str, str], status: int) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "analyst")
        answer = client.post("/console/segments", data={**form, "csrf": csrf})
    assert answer.status_code == status
    with live.api() as api:
        assert api.get("/api/v1/segments").json()["data"] == []


def test_agents_see_segments_but_cannot_change_them(live: LiveAccord) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "agent")
        page = client.get("/console/segments")
        assert page.status_code == 200
        assert "segment-form" not in page.text
        assert client.post("/console/segments", data={"key": "x", "condition": GOLD, "csrf": csrf}).status_code == 403
