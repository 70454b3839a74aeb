"""`accord journey ...` against a real database (SQLite and PostgreSQL), with good and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accord.cli import app
from accord.config import Settings
from accord.runtime import Runtime
from pipeline.helpers import process, send

SHOP = {
    "stages": [
        {"key": "viewed", "condition": {"event": "Viewed"}},
        {"key": "carted", "condition": {"event": "Carted"}},
    ],
    "goal": {"event": "Bought"},
}


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    values = {"ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        values["ACCORD_DATABASE_URL"] = settings.database_url
    return values


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env, input=stdin)
    return result.exit_code, result.output


def test_create_list_show_update_funnel_sweep_delete(env: dict[str, str], rt: Runtime, tmp_path: Path) -> None:
    send(rt, [{"type": "track", "userId": f"u{i}", "event": "Viewed" if i % 2 else "Carted"} for i in range(5)])
    process(rt)
    code, output = run(env, "journey", "create", "shop", "--definition", json.dumps(SHOP), "--name", "Shop", "--json")
    assert code == 0, output
    created = json.loads(output)
    assert (created["version"], created["backfill"], created["positions"]) == (
        1,
        {"status": "ready", "done": 5, "total": 5},
        {"active": 5, "completed": 0, "exited": 0},
    )
    # Without a goal, reaching the last stage ("carted") completes it.
    file = tmp_path / "d.json"
    file.write_text(json.dumps({"stages": SHOP["stages"]}))
    code, output = run(env, "journey", "update", "shop", "--definition", f"@{file}", "--json")
    assert code == 0, output
    assert json.loads(output)["positions"] == {"active": 2, "completed": 3, "exited": 0}
    code, output = run(env, "journey", "create", "other", "--definition", "-", "--json", stdin=json.dumps(SHOP))
    assert code == 0, output
    listed = json.loads(run(env, "journey", "list", "--json")[1])
    assert [j["key"] for j in listed] == ["other", "shop"]
    assert json.loads(run(env, "journey", "show", "shop", "--json")[1])["version"] == 2
    code, output = run(env, "journey", "funnel", "shop", "--json")
    assert code == 0, output
    funnel = json.loads(output)
    assert [s["reached"] for s in funnel["stages"]] == [5, 3]
    assert funnel["stages"][0]["conversion"] == 0.6
    code, output = run(env, "journey", "funnel", "shop")
    assert code == 0
    assert "entered 5" in output
    assert json.loads(run(env, "journey", "sweep", "--json")[1]) == {"swept_chunks": 0}  # nothing timed
    assert json.loads(run(env, "journey", "backfill", "--json")[1]) == {"backfilled": []}
    for command in ("list", "show shop", "backfill", "sweep"):
        assert run(env, "journey", *command.split())[0] == 0
    code, output = run(env, "journey", "delete", "shop", "--json")
    assert (code, json.loads(output)) == (0, {"deleted": "shop", "positions": 5})
    assert run(env, "journey", "delete", "other")[0] == 0


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("create", "bad", "--definition", "{nope"), None, "cannot read a JSON condition"),
        (("create", "bad", "--definition", "@/nonexistent/file"), None, "cannot read a JSON condition"),
        (("create", "bad", "--definition", "-"), "x" * 70_000, "at most 65536 bytes"),
        (("create", "Bad Key", "--definition", json.dumps(SHOP)), None, "a journey key is"),
        (("create", "bad", "--definition", '{"stages": []}'), None, "$.stages"),
        (
            ("create", "bad", "--definition", '{"stages": [{"key": "a", "condition": {"segment": "x"}}]}'),
            None,
            "$.stages[0].condition.segment",
        ),
        (("show", "nope"), None, "no journey 'nope'"),
        (("show", "x\x00y"), None, "no journey"),
        (("update", "nope", "--name", "x"), None, "no journey 'nope'"),
        (("delete", "nope"), None, "no journey 'nope'"),
        (("funnel", "nope"), None, "no journey 'nope'"),
    ],
)
def test_bad_input(env: dict[str, str], args: tuple[str, ...], stdin: str | None, message: str) -> None:
    code, output = run(env, "journey", *args, stdin=stdin)
    assert code == 1, output
    assert message in output.replace("\n", "")


def test_duplicates_and_bad_windows(env: dict[str, str]) -> None:
    assert run(env, "journey", "create", "shop", "--definition", json.dumps(SHOP))[0] == 0
    code, output = run(env, "journey", "create", "shop", "--definition", json.dumps(SHOP))
    assert (code, "exists" in output) == (1, True)
    for args, message in (
        (("--from", "yesterday"), "not an ISO-8601 time"),
        (("--from", "2026-01-01T00:00:00"), "needs a zone"),
        (("--from", "2026-01-02T00:00:00Z", "--to", "2026-01-01T00:00:00Z"), "from must be before to"),
    ):
        code, output = run(env, "journey", "funnel", "shop", *args)
        assert code == 1, output
        assert message in output
