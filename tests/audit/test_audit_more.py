"""The audit trail beyond profiles and consent: segments (changes and exports of members), console logins
and logouts (failed ones too, without the email typed), and console users changed from the CLI."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from typer.testing import CliRunner

from accord.audit import service as audit
from accord.cli import app as cli_app
from accord.runtime import Runtime
from conftest import LiveAccord
from console.helpers import csrf_of, login, make_user


def entries(rt: Runtime, action: str) -> list[dict[str, Any]]:
    with rt.db.read() as session:
        return [e.body for e in reversed(audit.records(session, audit.Filters(action=action)))]


def stored(rt: Runtime) -> bytes:
    with rt.db.engine.connect() as connection:
        return b"\n".join(bytes(r) for r in connection.execute(text("SELECT body FROM audit_log")).scalars())


def test_segment_changes_and_exports_are_recorded(live: LiveAccord) -> None:
    token_id = live.token.removeprefix("acc_").split(".")[0]
    with live.api() as api:
        created = api.post(
            "/api/v1/segments", json={"key": "gold", "condition": {"trait": "plan", "op": "eq", "value": "gold"}}
        )
        assert created.status_code == 201, created.text
        changed = api.put("/api/v1/segments/gold", json={"name": "Gold customers"})
        assert changed.status_code == 200, changed.text
        exported = api.get("/api/v1/segments/gold/export", params={"purpose": "sale_sharing", "traits": ["email"]})
        assert exported.status_code == 200, exported.text
        refused = api.post(
            "/api/v1/segments", json={"key": "gold", "condition": {"trait": "plan", "op": "eq", "value": "x"}}
        )
        assert refused.status_code == 409
        assert api.delete("/api/v1/segments/gold").status_code == 204
    records = entries(live.rt, "segment.")
    assert [(r["action"], r["target_type"], r["target_id"]) for r in records] == [
        ("segment.create", "segment", "gold"),
        ("segment.update", "segment", "gold"),
        ("segment.export", "segment", "gold"),
        ("segment.delete", "segment", "gold"),
    ]
    assert all(r["actor_id"] == token_id for r in records)
    assert records[2]["details"] == {"purpose": "sale_sharing", "channel": "all", "traits": ["email"]}
    assert [r["details"]["version"] for r in records[:2]] == [1, 2]


def test_console_logins_and_logouts_are_recorded(live: LiveAccord) -> None:
    email = make_user(live.rt, "agent")
    with live.client() as client:
        assert login(client, email, "wrong password").status_code == 401
        assert login(client, "nobody@staff.example", "whatever").status_code == 401
        assert login(client, email).status_code == 303
        token = csrf_of(client.get("/console").text)
        assert client.post("/console/logout", data={"csrf": token}).status_code == 303
    failed = entries(live.rt, "console.login_failed")
    assert [(r["actor_type"], r["actor_id"], r["ip"]) for r in failed] == [("anonymous", None, "127.0.0.1")] * 2
    (success,) = entries(live.rt, "console.login")
    (logout,) = entries(live.rt, "console.logout")
    assert success["actor_type"] == "user"
    assert success["actor_role"] == "agent"
    assert logout["actor_id"] == success["actor_id"]
    trail = stored(live.rt)
    assert email.encode() not in trail
    assert b"nobody@staff.example" not in trail
    assert b"wrong password" not in trail
    assert audit.verify(live.rt.db.engine, key=live.rt.signing).ok


def test_console_users_changed_from_the_cli_are_recorded(live: LiveAccord) -> None:
    settings = live.rt.settings
    env = {"ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["ACCORD_DATABASE_URL"] = settings.database_url
    runner = CliRunner()
    made = runner.invoke(
        cli_app,
        ["user", "create", "eve@staff.example", "--role", "analyst", "--json"],
        env=env,
        input="a long enough password\n",
    )
    assert made.exit_code == 0, made.output
    user_id = json.loads(made.output)["id"]
    for args in (
        ["user", "set-role", "eve@staff.example", "--role", "agent"],
        ["user", "disable", "eve@staff.example"],
    ):
        done = runner.invoke(cli_app, args, env=env)
        assert done.exit_code == 0, done.output
    assert runner.invoke(cli_app, ["user", "disable", "nobody@staff.example"], env=env).exit_code == 1
    records = entries(live.rt, "user.")
    assert [(r["action"], r["actor_type"], r["target_id"], r["details"]["role"]) for r in records] == [
        ("user.create", "cli", user_id, "analyst"),
        ("user.set_role", "cli", user_id, "agent"),
        ("user.disable", "cli", user_id, "agent"),
    ]
    assert b"eve@staff.example" not in stored(live.rt)
