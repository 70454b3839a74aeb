"""The journeys configuration page (SQLite and PostgreSQL): the editor checks a definition as the analyst
types (the journey service's check, so the same error path as the API), saves versions and deletes, audited;
agents and auditors are refused."""

from __future__ import annotations

import json

import pytest

from accord.audit.service import Filters, records
from conftest import LiveAccord
from console.helpers import logged_in

SHOP = json.dumps(
    {
        "stages": [
            {"key": "viewed", "name": "Viewed a product", "condition": {"event": "Product Viewed"}},
            {"key": "carted", "condition": {"event": "Product Added"}},
        ],
        "goal": {"event": "Order Completed"},
    }
)
BAD_OP = json.dumps({"stages": [{"key": "viewed", "condition": {"trait": "plan", "op": "between", "value": 1}}]})


def journeys_from_api(live: LiveAccord) -> list[dict[str, object]]:
    with live.api() as api:
        answer = api.get("/api/v1/journeys")
        assert answer.status_code == 200
        data: list[dict[str, object]] = answer.json()["data"]
        return data


def test_an_analyst_creates_changes_and_deletes_a_journey(live: LiveAccord) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "analyst")
        made = client.post("/console/journeys", data={"key": "shop", "name": "Shop", "definition": SHOP, "csrf": csrf})
        assert made.status_code == 303
        assert made.headers["location"] == "/console/journeys?done=saved"
        listing = client.get("/console/journeys").text
        assert "<td><code>shop</code></td><td>Shop</td><td>1</td><td>2</td>" in listing
        editing = client.get("/console/journeys?edit=shop").text
        assert 'value="shop"' in editing
        assert "Viewed a product" in editing.split('id="journey-definition"')[1]
        shorter = json.dumps({"stages": [{"key": "viewed", "condition": {"event": "Product Viewed"}}]})
        again = client.post(
            "/console/journeys", data={"key": "shop", "name": "Shop", "definition": shorter, "csrf": csrf}
        )
        assert again.status_code == 303
        assert "<td><code>shop</code></td><td>Shop</td><td>2</td><td>1</td>" in client.get("/console/journeys").text
        with live.api() as api:
            versions = api.get("/api/v1/journeys/shop/versions").json()["data"]
        assert [v["version"] for v in versions] == [2, 1]
        refused = client.post("/console/journeys/delete", data={"key": "shop", "confirm": "sho", "csrf": csrf})
        assert refused.status_code == 422
        assert len(journeys_from_api(live)) == 1
        gone = client.post("/console/journeys/delete", data={"key": "shop", "confirm": "shop", "csrf": csrf})
        assert gone.status_code == 303
        assert "Journey deleted." in client.get(gone.headers["location"]).text
        missing = client.post("/console/journeys/delete", data={"key": "shop", "confirm": "shop", "csrf": csrf})
        assert missing.status_code == 404
    assert journeys_from_api(live) == []
    with live.rt.db.read() as session:
        actions = [r.body["action"] for r in records(session, Filters(target_type="journey"))]
    assert sorted(actions) == ["journey.create", "journey.delete", "journey.update"]


def test_the_editor_gives_the_same_path_as_the_api(live: LiveAccord) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "analyst")
        checked = client.post(
            "/console/journeys/check",
            data={"definition": BAD_OP},
            headers={"HX-Request": "true", "X-CSRF-Token": csrf},
        )
        saved = client.post("/console/journeys", data={"key": "shop", "definition": BAD_OP, "csrf": csrf})
    with live.api() as api:
        api_answer = api.post("/api/v1/journeys", json={"key": "shop", **json.loads(BAD_OP)})
    assert api_answer.status_code == 422
    message = api_answer.json()["message"]
    assert message.startswith("$.stages[0].condition")
    assert checked.status_code == 200
    assert "<html" not in checked.text
    assert message.replace("'", "&#39;") in checked.text or message in checked.text
    assert saved.status_code == 422
    assert "$.stages[0].condition" in saved.text
    assert journeys_from_api(live) == []


@pytest.mark.parametrize(
    ("definition", "says"),
    [
        (SHOP, "The definition is valid."),
        ("{", "not JSON"),
        ("", "write a definition"),
        ("[" * 5000 + "]" * 5000, "$"),
        (json.dumps({"stages": []}), "$.stages"),
        (json.dumps({"stages": [{"key": "a", "condition": {"segment": "nope"}}]}), "$.stages[0].condition"),
        (json.dumps({"stages": [{"key": "a", "condition": {"event": "E"}}], "goal": {"nope": 1}}), "$.goal"),
    ],
)
def test_the_editor_says_what_is_wrong_as_you_type(live: LiveAccord, definition: str, says: str) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "analyst")
        answer = client.post(
            "/console/journeys/check",
            data={"definition": definition},
            headers={"HX-Request": "true", "X-CSRF-Token": csrf},
        )
    assert answer.status_code == 200
    assert says in answer.text
    assert "<html" not in answer.text


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"key": "Bad Key", "definition": SHOP}, 422),
        ({"key": "", "definition": SHOP}, 422),
        ({"key": "ok", "definition": "not json"}, 422),
        ({"key": "ok", "definition": SHOP + "\x00"}, 422),
        ({"key": "o\x00k", "definition": SHOP}, 422),
        ({"key": "ok", "definition": SHOP, "name": "n" * 201}, 422),
        ({"key": "ok", "definition": " " * 62_000 + SHOP}, 422),
        ({"key": "ok", "definition": "x" * 70_000}, 422),
    ],
)
def test_bad_journeys_are_refused(live: LiveAccord, form: dict[str, str], status: int) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "analyst")
        answer = client.post("/console/journeys", data={**form, "csrf": csrf})
        checked = client.post("/console/journeys/check", data={**form, "csrf": csrf})
    assert answer.status_code == status
    assert checked.status_code in {status, 200}
    assert journeys_from_api(live) == []


def test_changes_need_the_csrf_token(live: LiveAccord) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, "admin")
        assert client.post("/console/journeys", data={"key": "shop", "definition": SHOP}).status_code == 403
        wrong = {"key": "shop", "definition": SHOP, "csrf": "x" + csrf}
        assert client.post("/console/journeys", data=wrong).status_code == 403
        assert client.post("/console/journeys", data={**wrong, "csrf": csrf}).status_code == 303
        deleting = {"key": "shop", "confirm": "shop"}
        assert client.post("/console/journeys/delete", data=deleting).status_code == 403
        assert client.post("/console/journeys/check", data={"definition": SHOP}).status_code == 403
    assert len(journeys_from_api(live)) == 1


@pytest.mark.parametrize("role", ["agent", "auditor"])
def test_agents_and_auditors_are_refused(live: LiveAccord, role: str) -> None:
    with live.client() as client:
        csrf = logged_in(client, live.rt, role)
        page = client.get("/console/journeys")
        assert page.status_code == 403
        home = client.get("/console").text
        assert 'href="/console/journeys"' not in home
        assert client.post("/console/journeys", data={"key": "x", "definition": SHOP, "csrf": csrf}).status_code == 403
    assert journeys_from_api(live) == []
