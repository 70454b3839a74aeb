"""The identity API and CLI: rules, merge history, unmerge; malformed and hostile input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accord.cli import app as cli_app
from conftest import LiveAccord

RULES = {
    "identifiers": [{"type": "user_id", "limit": 1}, {"type": "email", "limit": 3}, {"type": "anonymous_id"}],
    "blocked": ["^$", "^null$"],
}


def track(live: LiveAccord, events: list[dict[str, object]]) -> None:
    with live.client(auth=(live.write_key, "")) as client:
        assert client.post("/v1/batch", json={"batch": events}).status_code == 200
    live.wait_processed()


def test_rules_round_trip_and_take_effect_without_a_restart(live: LiveAccord) -> None:
    with live.api() as api:
        assert api.get("/api/v1/identity/rules").json()["version"] == 0
        put = api.put("/api/v1/identity/rules", json=RULES)
        assert put.status_code == 200, put.text
        assert put.json()["version"] == 1
        assert put.json()["rules"]["identifiers"][1] == {"type": "email", "normalise": "email", "limit": 3}
        # anonymous_id ranks below email now, device_id is no longer an identifier
        track(live, [{"type": "track", "anonymousId": "a1", "event": "E", "context": {"device": {"id": "dev"}}}])
        body = api.get("/api/v1/profiles/anonymous_id:a1").json()
        assert [i["type"] for i in body["identities"]] == ["anonymous_id"]
        assert api.get("/api/v1/profiles/device_id:dev").json()["code"] == "invalid_reference"


@pytest.mark.parametrize(
    "body",
    [
        {"identifiers": "nope"},
        {"identifiers": [{"type": "x" * 41}]},
        {"blocked": ["(unclosed"]},
        {"identifiers": [{"type": "user_id", "limit": 10**9}]},
        [1, 2, 3],
    ],
)
def test_bad_rules_answer_422_and_change_nothing(live: LiveAccord, body: object) -> None:
    with live.api() as api:
        response = api.put("/api/v1/identity/rules", json=body)
        assert response.status_code == 422
        assert response.json()["code"] in {"invalid_rules", "invalid_request"}
        assert api.get("/api/v1/identity/rules").json()["version"] == 0


def test_merge_history_and_unmerge_over_http(live: LiveAccord) -> None:
    track(
        live,
        [
            {
                "type": "identify",
                "userId": "ann",
                "traits": {"email": "shared@example.com", "plan": "gold"},
                "timestamp": "2026-05-01T10:00:00Z",
            },
            {"type": "track", "anonymousId": "bobs-phone", "event": "Viewed", "timestamp": "2026-05-01T11:00:00Z"},
            {
                "type": "identify",
                "anonymousId": "bobs-phone",
                "traits": {"email": "shared@example.com", "city": "Oslo"},
                "timestamp": "2026-05-01T12:00:00Z",
            },
        ],
    )
    with live.api() as api:
        merged = api.get("/api/v1/profiles/user_id:ann").json()
        assert {i["value"] for i in merged["identities"]} == {"ann", "shared@example.com", "bobs-phone"}
        history = api.get("/api/v1/profiles/user_id:ann/merges").json()["data"]
        assert [h["kind"] for h in history] == ["merge"]
        merge = history[0]
        assert merge["identity_type"] in {"email", "anonymous_id"}  # the key that found the absorbed profile
        answer = api.post("/api/v1/profiles/user_id:ann/unmerge", json={"merge_id": merge["id"]})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["profiles"]) == 2
        ann = api.get("/api/v1/profiles/user_id:ann").json()
        bob = api.get("/api/v1/profiles/anonymous_id:bobs-phone").json()
        assert ann["id"] != bob["id"]
        # Each party is back under its own id.
        assert {ann["id"], bob["id"]} == {merge["survivor_id"], merge["absorbed_id"]}
        assert {i["value"] for i in ann["identities"]} == {"ann", "shared@example.com"}
        assert {i["value"] for i in bob["identities"]} == {"bobs-phone"}
        assert bob["counts"]["events"] == {"Viewed": 1}
        # The linking identify belongs with its highest-priority identifier, the email: Ann's side.
        assert bob["traits"] == {}
        assert ann["traits"] == {"email": "shared@example.com", "plan": "gold", "city": "Oslo"}
        kinds = [h["kind"] for h in api.get(f"/api/v1/profiles/{ann['id']}/merges").json()["data"]]
        assert kinds[0] == "unmerge"
        assert "rederive" in kinds
        again = api.post("/api/v1/profiles/user_id:ann/unmerge", json={"merge_id": merge["id"]})
        assert again.status_code == 409
        assert again.json()["code"] == "already_unmerged"
        # The same linking evidence again does not merge them back.
        track(
            live,
            [
                {
                    "type": "identify",
                    "anonymousId": "bobs-phone",
                    "traits": {"email": "shared@example.com"},
                    "timestamp": "2026-05-02T12:00:00Z",
                }
            ],
        )
        assert api.get("/api/v1/profiles/anonymous_id:bobs-phone").json()["id"] == bob["id"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"merge_id": 999}, 404, "merge_not_found"),
        ({"merge_id": 0}, 422, "invalid_request"),
        ({"merge_id": "1; drop table"}, 422, "invalid_request"),
        ({}, 422, "invalid_request"),
        ({"merge_id": 2**63}, 422, "invalid_request"),
    ],
)
def test_unmerge_refuses_bad_requests(live: LiveAccord, body: object, status: int, code: str) -> None:
    track(live, [{"type": "track", "userId": "solo", "event": "E"}])
    with live.api() as api:
        response = api.post("/api/v1/profiles/user_id:solo/unmerge", json=body)
        assert (response.status_code, response.json()["code"]) == (status, code)
        missing = api.post("/api/v1/profiles/user_id:nobody/unmerge", json={"merge_id": 1})
        assert missing.status_code == 404


def test_cli_rules_and_history(live: LiveAccord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = live.rt.settings
    monkeypatch.setenv("ACCORD_DATA_DIR", str(settings.data_dir))
    if settings.database_url:
        monkeypatch.setenv("ACCORD_DATABASE_URL", settings.database_url)
    runner = CliRunner()
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(RULES))
    result = runner.invoke(cli_app, ["identity", "set-rules", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["version"] == 1
    shown = json.loads(runner.invoke(cli_app, ["identity", "rules", "--json"]).output)
    assert shown["rules"]["identifiers"][1]["limit"] == 3
    path.write_text("{not json")
    bad = runner.invoke(cli_app, ["identity", "set-rules", str(path)])
    assert bad.exit_code == 1
    path.write_text(json.dumps({"identifiers": [{"type": "email", "limit": -1}]}))
    refused = runner.invoke(cli_app, ["identity", "set-rules", str(path)])
    assert refused.exit_code == 1
    assert "limit" in refused.output
    track(live, [{"type": "track", "userId": "cli-user", "event": "E"}])
    history = runner.invoke(cli_app, ["identity", "history", "user_id:cli-user", "--json"])
    assert history.exit_code == 0
    assert json.loads(history.output) == []
    assert runner.invoke(cli_app, ["identity", "history", "user_id:nobody"]).exit_code == 1
    assert runner.invoke(cli_app, ["identity", "unmerge", "user_id:cli-user", "--merge", "5"]).exit_code == 1
