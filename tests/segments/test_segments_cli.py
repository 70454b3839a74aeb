"""`accord segment ...` against a real database (SQLite and PostgreSQL), with good and bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accord.cli import app
from accord.config import Settings
from accord.runtime import Runtime
from pipeline.helpers import process, send

GOLD = '{"trait": "plan", "op": "eq", "value": "gold"}'


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    values = {"ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        values["ACCORD_DATABASE_URL"] = settings.database_url
    return values


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env, input=stdin)
    return result.exit_code, result.output


def test_create_list_show_update_delete(env: dict[str, str], rt: Runtime, tmp_path: Path) -> None:
    send(
        rt, [{"type": "identify", "userId": f"u{i}", "traits": {"plan": "gold" if i % 2 else "free"}} for i in range(5)]
    )
    process(rt)
    code, output = run(env, "segment", "create", "gold", "--condition", GOLD, "--name", "Gold", "--json")
    assert code == 0, output
    created = json.loads(output)
    assert (created["version"], created["size"], created["backfill"]) == (
        1,
        2,
        {"status": "ready", "done": 5, "total": 5},
    )
    listed = json.loads(run(env, "segment", "list", "--json")[1])
    assert [(s["key"], s["size"]) for s in listed] == [("gold", 2)]
    file = tmp_path / "c.json"
    file.write_text('{"trait": "plan", "op": "in", "value": ["gold", "free"]}')
    code, output = run(env, "segment", "update", "gold", "--condition", f"@{file}", "--json")
    assert code == 0, output
    assert (json.loads(output)["version"], json.loads(output)["size"]) == (2, 5)
    code, output = run(
        env, "segment", "create", "free", "--condition", "-", "--json", stdin='{"not": {"segment": "gold"}}'
    )
    assert code == 0, output
    assert json.loads(run(env, "segment", "show", "free", "--json")[1])["size"] == 0
    code, output = run(env, "segment", "delete", "gold")
    assert code == 1
    assert "read by free" in output
    assert json.loads(run(env, "segment", "delete", "free", "--json")[1]) == {"deleted": "free", "memberships": 0}
    assert json.loads(run(env, "segment", "delete", "gold", "--json")[1]) == {"deleted": "gold", "memberships": 5}
    assert json.loads(run(env, "segment", "list", "--json")[1]) == []
    code, output = run(env, "segment", "list")
    assert code == 0


def test_no_backfill_then_backfill_and_sweep(env: dict[str, str], rt: Runtime) -> None:
    moment = datetime.now(UTC).isoformat()
    send(rt, [{"type": "track", "userId": "1", "event": "Bought", "timestamp": moment}])
    process(rt)
    recent = '{"event": "Bought", "within": "7d"}'
    code, output = run(env, "segment", "create", "recent", "--condition", recent, "--no-backfill", "--json")
    assert code == 0, output
    assert json.loads(output)["backfill"]["status"] == "backfilling"
    assert json.loads(run(env, "segment", "backfill", "--json")[1]) == {"backfilled": ["recent"]}
    assert json.loads(run(env, "segment", "show", "recent", "--json")[1])["size"] == 1
    code, output = run(env, "segment", "sweep", "--json")
    assert code == 0, output
    assert json.loads(run(env, "segment", "show", "recent", "--json")[1])["size"] == 1


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("segment", "create", "Bad Key", "--condition", GOLD), "segment key"),
        (("segment", "create", "k", "--condition", "{not json"), "cannot read a JSON condition"),
        (("segment", "create", "k", "--condition", "@/nonexistent/file"), "cannot read a JSON condition"),
        (("segment", "create", "k", "--condition", '{"trait": "plan", "op": "nope"}'), "$.op:"),
        (("segment", "create", "k", "--condition", '{"segment": "nowhere"}'), "$.segment: no segment"),
        (("segment", "create", "k", "--condition", '{"any": [' + ",".join([GOLD] * 300) + "]}"), "$.any"),
        (("segment", "show", "nope"), "no segment"),
        (("segment", "show", "nope\x00"), "no segment"),
        (("segment", "update", "nope", "--name", "x"), "no segment"),
        (("segment", "delete", "nope"), "no segment"),
    ],
)
def test_bad_input_fails_clearly(env: dict[str, str], args: tuple[str, ...], words: str) -> None:
    code, output = run(env, *args)
    assert code == 1, output
    assert words in output


def test_duplicates_and_oversized(env: dict[str, str]) -> None:
    assert run(env, "segment", "create", "dup", "--condition", GOLD)[0] == 0
    code, output = run(env, "segment", "create", "dup", "--condition", GOLD)
    assert code == 1
    assert "exists" in output
    code, output = run(env, "segment", "create", "big", "--condition", "-", stdin=" " * 70_000 + GOLD)
    assert code == 1
    assert "at most" in output
    assert run(env, "segment", "create")[0] == 2  # usage


def test_computed_traits_from_the_cli(env: dict[str, str], rt: Runtime) -> None:
    moment = datetime.now(UTC).isoformat()
    send(rt, [{"type": "track", "userId": "u1", "event": "Bought", "properties": {"total": 70}, "timestamp": moment}])
    process(rt)
    spend = '{"event": "Bought", "function": "sum", "property": "total", "within": "30d"}'
    code, output = run(env, "computed", "create", "spend", "--definition", spend, "--json")
    assert code == 0, output
    assert json.loads(output)["version"] == 1
    big = '{"computed": "spend", "op": "gte", "value": 50}'
    assert json.loads(run(env, "segment", "create", "big", "--condition", big, "--json")[1])["size"] == 1
    code, output = run(
        env, "computed", "update", "spend", "--definition", "-", "--json", stdin=spend.replace("sum", "max")
    )
    assert code == 0, output
    assert json.loads(output)["version"] == 2
    assert [c["key"] for c in json.loads(run(env, "computed", "list", "--json")[1])] == ["spend"]
    assert json.loads(run(env, "computed", "show", "spend", "--json")[1])["definition"]["function"] == "max"
    code, output = run(env, "computed", "delete", "spend")
    assert code == 1
    assert "read by big" in output
    assert run(env, "segment", "delete", "big")[0] == 0
    assert json.loads(run(env, "computed", "delete", "spend", "--json")[1]) == {"deleted": "spend"}
    for args, words in (
        (("computed", "create", "x", "--definition", '{"event": "E", "function": "sum"}'), "needs a property"),
        (("computed", "create", "Bad Key", "--definition", spend), "key"),
        (("computed", "show", "nope"), "no computed trait"),
        (("computed", "update", "nope", "--definition", spend), "no computed trait"),
        (("computed", "delete", "nope"), "no computed trait"),
    ):
        code, output = run(env, *args)
        assert code == 1, args
        assert words in output, args


def test_configuration_commands_are_audited(env: dict[str, str], rt: Runtime) -> None:
    """Every change of a segment, computed trait or journey from the command line leaves an audit record
    (actor cli), as the same change through the API does; a refused change leaves none."""
    from sqlalchemy import select

    from accord.audit import service as audit
    from accord.audit.models import AuditRecord

    spend = '{"event": "Bought", "function": "sum", "property": "total"}'
    journey = json.dumps({"stages": [{"key": "viewed", "condition": {"event": "Viewed"}}]})
    commands = [
        ("segment", "create", "gold", "--condition", GOLD),
        ("segment", "update", "gold", "--condition", '{"trait": "plan", "op": "eq", "value": "platinum"}'),
        ("segment", "create", "bad", "--condition", '{"trait": "plan", "op": "nope"}'),  # refused
        ("computed", "create", "spend", "--definition", spend),
        ("computed", "update", "spend", "--definition", spend.replace("sum", "max")),
        ("journey", "create", "shop", "--definition", journey),
        ("journey", "update", "shop", "--definition", journey.replace("Viewed", "Seen")),
        ("journey", "delete", "shop"),
        ("computed", "delete", "spend"),
        ("segment", "delete", "gold"),
    ]
    for command in commands:
        code, output = run(env, *command)
        assert code == (1 if "bad" in command else 0), (command, output)
    with rt.db.read() as session:
        rows = session.execute(
            select(AuditRecord.action, AuditRecord.target_id, AuditRecord.actor_type).order_by(AuditRecord.seq)
        ).all()
    assert [tuple(row) for row in rows] == [
        ("segment.create", "gold", "cli"),
        ("segment.update", "gold", "cli"),
        ("computed_trait.create", "spend", "cli"),
        ("computed_trait.update", "spend", "cli"),
        ("journey.create", "shop", "cli"),
        ("journey.update", "shop", "cli"),
        ("journey.delete", "shop", "cli"),
        ("computed_trait.delete", "spend", "cli"),
        ("segment.delete", "gold", "cli"),
    ]
    assert audit.verify(rt.db.engine, key=rt.signing).ok
