"""Malformed input: wrong encoding, ragged rows, wrong types, huge fields, empty files, files that are not
what their names say, duplicates; every run's counts reconcile (read = imported + rejected)."""

from __future__ import annotations

from pathlib import Path

import pytest

from accord.runtime import Runtime
from accord.security.datakeys import DataKeys
from accord.sources import imports
from accord.sources.connectors import FileInput, InputError
from accord.sources.mapping import CsvOptions
from sources.importing import process, reconciles, run_error, run_import, stored_events, traits, write

PLAN = "mapping: 1\nname: plans\nidentifiers: [{field: id, type: user_id}]\ntraits: [{field: plan}]\n"
TYPED = (
    "mapping: 1\nname: typed\nidentifiers: [{field: id, type: user_id}]\n"
    "traits: [{field: n, type: integer}, {field: ok, type: boolean}, {field: at, type: timestamp}]\n"
)


def reasons(rt: Runtime, run_id: str) -> dict[tuple[str, int], str]:
    with rt.db.read() as session:
        keys = DataKeys.of(session)
        rows = imports.rejects(session, run_id, limit=1000)
        return {(r.origin, r.position): imports.open_reject(keys, r).reason for r in rows}


def test_wrong_encoding_rejects_the_line_and_the_right_one_reads_it(rt: Runtime, tmp_path: Path) -> None:
    content = "id,plan\n1,Caf\xe9\n2,gold\n".encode("latin-1")
    run = run_import(rt, write(tmp_path, "latin.csv", content), PLAN)
    assert (run.status, run.read, run.imported, run.rejected) == ("done", 2, 1, 1)
    assert "INVALID ENCODING" in reasons(rt, run.id)[("line", 2)]
    latin = PLAN + "csv: {encoding: latin-1}\n"
    run = run_import(rt, write(tmp_path, "latin2.csv", content), latin)
    assert (run.read, run.imported, run.rejected) == (2, 2, 0)
    process(rt)
    assert traits(rt, "user_id:1") == {"plan": "Café"}
    # UTF-16 with its byte-order mark
    run = run_import(
        rt, write(tmp_path, "u16.csv", "id,plan\n3,Zoë\n".encode("utf-16")), PLAN + "csv: {encoding: utf-16}\n"
    )
    assert (run.read, run.imported) == (1, 1), run.error


def test_ragged_rows_are_rejected_lines(rt: Runtime, tmp_path: Path) -> None:
    content = 'id,plan\n1,gold\n2\n3,silver,extra\n4,"unterminated\n5,ok\n'
    run = run_import(rt, write(tmp_path, "ragged.csv", content), PLAN)
    assert run.status == "done", run.error
    assert reconciles(run)
    found = reasons(rt, run.id)
    assert "MISSING COLUMNS" in found[("line", 3)]
    assert "TOO MANY COLUMNS" in found[("line", 4)]
    assert run.imported >= 1
    process(rt)
    assert traits(rt, "user_id:1") == {"plan": "gold"}


def test_wrong_types_are_rejected_rows_with_the_value(rt: Runtime, tmp_path: Path) -> None:
    content = (
        "id,n,ok,at\n"
        "1,5,true,2026-01-01T10:00:00Z\n"
        "2,five,true,2026-01-01\n"
        "3,5,maybe,2026-01-01\n"
        "4,5,false,yesterday\n"
        "5,,,\n"
        "6,9999999999999999999999,1,2026-01-01\n"
    )
    run = run_import(rt, write(tmp_path, "typed.csv", content), TYPED)
    assert (run.read, run.imported, run.rejected) == (6, 2, 4)
    assert reasons(rt, run.id) == {
        ("row", 2): "field n: 'five' is not an integer",
        ("row", 3): "field ok: 'maybe' is not a boolean",
        ("row", 4): "field at: 'yesterday' is not a timestamp",
        ("row", 6): "field n: '9999999999999999999999' is not an integer",
    }
    process(rt)
    assert traits(rt, "user_id:1") == {"n": 5, "ok": True, "at": "2026-01-01T10:00:00.000Z"}
    with rt.db.read() as session:
        from accord.profiles import service as profiles

        assert profiles.resolve(session, "user_id:5") is not None  # empty cells: no traits, still a person


def test_huge_fields_and_lines_are_rejected_not_loaded(rt: Runtime, tmp_path: Path) -> None:
    content = "id,plan\n1," + "x" * 40_000 + "\n2," + "y" * 3_000_000 + "\n3,ok\n"
    run = run_import(rt, write(tmp_path, "huge.csv", content), PLAN)
    assert (run.read, run.imported, run.rejected) == (3, 1, 2)
    found = reasons(rt, run.id)
    assert found[("row", 1)].startswith("the event would be")
    assert any("maximum line size" in r.lower() or "line size" in r.lower() for r in found.values()), found
    long_id = "id,plan\n" + "9" * 300 + ",gold\n"
    run = run_import(rt, write(tmp_path, "longid.csv", long_id), PLAN)
    assert reasons(rt, run.id) == {("row", 1): "identifier user_id (field id) is longer than 200 characters"}
    nul = run_import(rt, write(tmp_path, "nul.csv", "id,plan\n1,a\x00b\n"), PLAN)
    assert (nul.read, nul.rejected) == (1, 1)
    assert "NUL" in next(iter(reasons(rt, nul.id).values()))


def test_empty_and_header_only_files_import_nothing(rt: Runtime, tmp_path: Path) -> None:
    run = run_import(rt, write(tmp_path, "empty.csv", b""), PLAN)
    assert (run.status, run.read, run.imported, run.rejected) == ("done", 0, 0, 0)
    run = run_import(rt, write(tmp_path, "header.csv", "id,plan\n"), PLAN)
    assert (run.status, run.read) == ("done", 0)
    run = run_import(rt, write(tmp_path, "empty.jsonl", b"\n\n"), PLAN)
    assert run.status in ("done", "failed")
    assert run.read == 0


def test_files_that_are_not_what_their_names_say(rt: Runtime, tmp_path: Path) -> None:
    csv = CsvOptions()
    with pytest.raises(InputError, match="not a Parquet file"):
        FileInput.at(write(tmp_path, "a.parquet", "id,plan\n1,x\n"), declared=None, csv=csv)
    with pytest.raises(InputError, match="is a Parquet file"):
        FileInput.at(write(tmp_path, "b.csv", b"PAR1\x00\x01"), declared=None, csv=csv)
    with pytest.raises(InputError, match="JSON array"):
        FileInput.at(write(tmp_path, "c.jsonl", '[{"id": 1}]'), declared=None, csv=csv)
    with pytest.raises(InputError, match="not JSON lines"):
        FileInput.at(write(tmp_path, "d.jsonl", "id,plan\n1,x\n"), declared=None, csv=csv)
    with pytest.raises(InputError, match="gzip"):
        FileInput.at(write(tmp_path, "e.csv", b"\x1f\x8b\x08\x00"), declared=None, csv=csv)
    with pytest.raises(InputError, match="cannot tell the format"):
        FileInput.at(write(tmp_path, "f.xlsx", b"PK\x03\x04"), declared=None, csv=csv)
    with pytest.raises(InputError, match="no file"):
        FileInput.at(tmp_path / "missing.csv", declared=None, csv=csv)
    garbage = bytes(range(256)) * 8
    run = run_import(rt, write(tmp_path, "g.csv", garbage), PLAN)
    assert run.status == "failed"
    assert run_error(rt, run)
    bad_json = run_import(rt, write(tmp_path, "h.jsonl", '{"id": 1, "plan": "a"}\n{"id": 2, "pl\n'), PLAN)
    assert bad_json.status == "failed"
    assert "JSON" in run_error(rt, bad_json)


def test_the_same_row_twice_in_one_file_is_stored_once(rt: Runtime, tmp_path: Path) -> None:
    run = run_import(rt, write(tmp_path, "dup.csv", "id,plan\n1,gold\n1,gold\n1,silver\n"), PLAN)
    assert (run.read, run.imported) == (3, 3)
    process(rt)
    assert stored_events(rt) == 2  # identical rows are one event; the changed one is another


def test_a_sql_expression_cannot_read_other_files(rt: Runtime, tmp_path: Path) -> None:
    secret = write(tmp_path, "secret.txt", "the key")
    mapping = PLAN.replace(
        "traits: [{field: plan}]",
        f"fields: [{{name: plan, sql: \"(SELECT content FROM read_text('{secret}'))\"}}]\ntraits: [{{field: plan}}]",
    )
    run = run_import(rt, write(tmp_path, "p.csv", "id,plan\n1,x\n"), mapping)
    assert run.status == "failed"
    error = run_error(rt, run)
    assert "the key" not in error
    assert "disabled" in error or "Permission" in error
