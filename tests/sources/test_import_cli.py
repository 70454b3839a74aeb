"""`accord import` and `accord imports ...` against a real database: output, exit codes, bad arguments,
and a run killed with SIGKILL that resumes from its checkpoint and ends with every row once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from accord.cli import app
from accord.config import Settings
from accord.log.models import LogRecord
from accord.runtime import Runtime
from accord.sources.models import ImportRun
from sources.importing import LOYALTY, LOYALTY_CSV, process, stored_events, write


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    values = {"ACCORD_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        values["ACCORD_DATABASE_URL"] = settings.database_url
    return values


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def test_import_prints_counts_and_the_rejects(env: dict[str, str], tmp_path: Path) -> None:
    csv = write(tmp_path, "loyalty.csv", LOYALTY_CSV)
    mapping = write(tmp_path, "loyalty.yaml", LOYALTY)
    code, output = run(env, "import", str(csv), "--mapping", str(mapping), "--json")
    assert code == 0, output
    summary = json.loads(output)
    assert (summary["status"], summary["read"], summary["imported"], summary["rejected"]) == ("done", 3, 2, 1)
    code, output = run(env, "import", str(csv), "--mapping", str(mapping), "--source", "crm")
    assert code == 0, output
    assert "imported: 2" in output
    code, output = run(env, "imports", "rejects", summary["run_id"], "--json")
    assert json.loads(output)[0]["reason"] == "field points: 'abc' is not an integer"
    code, output = run(env, "imports", "show", summary["run_id"], "--json")
    assert json.loads(output)["run_id"] == summary["run_id"]
    code, output = run(env, "imports", "list", "--source", "crm", "--json")
    assert len(json.loads(output)) == 1
    code, output = run(env, "imports", "list", "--json")
    assert len(json.loads(output)) == 2
    code, output = run(env, "imports", "replay", summary["run_id"], "--json")
    assert code == 0, output
    assert json.loads(output)["rejected"] == 1  # the same mapping rejects it again, in the new run
    code, output = run(env, "import", str(csv), "--mapping", str(mapping), "--preview", "--limit", "1", "--json")
    assert code == 0, output
    assert [r["position"] for r in json.loads(output)["rows"]] == [1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "nowhere.csv", "--mapping", "{mapping}"], "no file at"),
        (["import", "{csv}", "--mapping", "nowhere.yaml"], "cannot read the mapping"),
        (["import", "{csv}", "--mapping", "{bad}"], "identifiers"),
        (["import", "{csv}", "--mapping", "{mapping}", "--format", "xls"], "--format must be one of"),
        (["import", "{csv}", "--mapping", "{mapping}", "--resume", "imp_nope"], "no import run"),
        (["imports", "show", "imp_nope"], "no import run"),
        (["imports", "rejects", "imp_nope"], "no import run"),
        (["imports", "replay", "imp_nope"], "no import run"),
        (["imports", "resume", "imp_nope"], "no import run"),
        (["imports", "list", "--source", "nope"], "no source"),
    ],
)
def test_bad_arguments_exit_1_with_a_reason(env: dict[str, str], tmp_path: Path, args: list[str], message: str) -> None:
    paths = {
        "{csv}": str(write(tmp_path, "l.csv", LOYALTY_CSV)),
        "{mapping}": str(write(tmp_path, "l.yaml", LOYALTY)),
        "{bad}": str(write(tmp_path, "bad.yaml", "mapping: 1\nname: x\ntraits: [{field: a}]\n")),
    }
    code, output = run(env, *[paths.get(a, a) for a in args])
    assert code == 1, output
    assert message in output


def test_a_failed_run_exits_1(env: dict[str, str], tmp_path: Path) -> None:
    csv = write(tmp_path, "other.csv", "a,b\n1,2\n")
    code, output = run(env, "import", str(csv), "--mapping", str(write(tmp_path, "l.yaml", LOYALTY)), "--json")
    assert code == 1
    assert "no column 'Customer ID'" in json.loads(output)["error"]


ROWS = 60_000


@pytest.mark.slow
def test_kill_9_mid_import_resumes_and_every_row_lands_once(
    env: dict[str, str], settings: Settings, rt: Runtime, tmp_path: Path
) -> None:
    path = tmp_path / "many.csv"
    with path.open("w") as out:
        out.write("id,plan\n")
        out.writelines(f"{i},p{i % 7}\n" for i in range(1, ROWS + 1))  # id 0 is a blocked placeholder
    mapping = write(
        tmp_path, "m.yaml", "mapping: 1\nname: m\nidentifiers: [{field: id, type: user_id}]\ntraits: [{field: plan}]\n"
    )
    command = [sys.executable, "-m", "accord", "import", str(path), "--mapping", str(mapping), "--json"]
    child = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    checkpoint = 0
    while checkpoint == 0:
        assert child.poll() is None, "the import finished before it could be killed"
        assert time.monotonic() < deadline
        with rt.db.read() as session:
            checkpoint = int(session.scalar(select(func.max(ImportRun.checkpoint))) or 0)
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with rt.db.read() as session:
        killed = session.scalars(select(ImportRun)).one()
    assert killed.status == "running"
    assert 0 < killed.checkpoint < ROWS
    assert killed.read == killed.checkpoint == killed.imported + killed.rejected
    # The same command again: it finds the interrupted run (its heartbeat is old enough only after 60 s,
    # so name it) and carries on from the checkpoint.
    resumed = subprocess.run(
        [*command, "--resume", killed.id], env={**os.environ, **env}, capture_output=True, timeout=300, check=False
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    summary = json.loads(resumed.stdout)
    assert summary["run_id"] == killed.id
    assert (summary["status"], summary["read"], summary["imported"], summary["rejected"]) == ("done", ROWS, ROWS, 0)
    with rt.log.db.read() as session:
        logged = int(session.scalar(select(func.sum(LogRecord.event_count))) or 0)
    assert logged >= ROWS  # a chunk appended but not checkpointed is appended again...
    process(rt, batch_size=2000)
    assert stored_events(rt) == ROWS  # ...and stored once
