"""The import API against a live Accord (API and worker): upload, status, provenance, rejects, replay,
preview, and hostile or malformed requests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from accord.runtime import Runtime
from accord.sources.models import ImportReject
from conftest import LiveAccord, make_settings, running_accord
from sources.importing import LOYALTY, LOYALTY_CSV, source


def wait_done(api: httpx.Client, url: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = api.get(url).json()
        if run["status"] in ("done", "failed", "interrupted"):
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.05)


def upload(api: httpx.Client, key: str, content: bytes, name: str = "loyalty.csv", mapping: str = LOYALTY, **data: Any):
    return api.post(
        f"/api/v1/sources/{key}/imports", files={"file": (name, content)}, data={"mapping": mapping, **data}
    )


def test_an_upload_is_imported_as_a_job_and_traits_name_the_run(live: LiveAccord) -> None:
    source(live.rt, "loyalty")
    with live.api() as api:
        answer = upload(api, "loyalty", LOYALTY_CSV.encode())
        assert answer.status_code == 202, answer.text
        queued = answer.json()
        assert queued["status"] in ("queued", "running", "done")
        run = wait_done(api, f"/api/v1/sources/loyalty/imports/{queued['id']}")
        assert (run["status"], run["read"], run["imported"], run["rejected"], run["kind"]) == (
            "done",
            3,
            2,
            1,
            "upload",
        )
        live.wait_processed()
        traits = api.get("/api/v1/profiles/user_id:1/traits").json()
        assert traits["traits"]["tier"] == "gold"
        assert traits["sources"]["tier"]["run_id"] == run["id"]
        assert traits["sources"]["tier"]["source_id"] == run["source_id"]
        rejects = api.get(f"/api/v1/sources/loyalty/imports/{run['id']}/rejects").json()
        assert [(r["origin"], r["position"], r["reason"]) for r in rejects["data"]] == [
            ("row", 2, "field points: 'abc' is not an integer")
        ]
        assert rejects["data"][0]["row"]["points"] == "abc"
        listed = api.get(f"/api/v1/sources/{run['source_id']}/imports").json()["data"]
        assert [r["id"] for r in listed] == [run["id"]]
        # The same upload again adds nothing.
        again = wait_done(
            api, f"/api/v1/sources/loyalty/imports/{upload(api, 'loyalty', LOYALTY_CSV.encode()).json()['id']}"
        )
        assert (again["imported"], again["appended"]) == (2, 0)


def test_replay_with_a_fixed_mapping(live: LiveAccord) -> None:
    source(live.rt, "loyalty")
    with live.api() as api:
        run = wait_done(
            api, f"/api/v1/sources/loyalty/imports/{upload(api, 'loyalty', LOYALTY_CSV.encode()).json()['id']}"
        )
        fixed = LOYALTY.replace("{name: points, cast: integer}", '{name: points, sql: "try_cast(points AS BIGINT)"}')
        from accord.sources.mapping import load_mapping

        answer = api.post(
            f"/api/v1/sources/loyalty/imports/{run['id']}/replay", json={"mapping": load_mapping(fixed).document()}
        )
        assert answer.status_code == 202, answer.text
        replay = wait_done(api, f"/api/v1/sources/loyalty/imports/{answer.json()['id']}")
        assert (replay["kind"], replay["parent_id"], replay["read"], replay["imported"]) == ("replay", run["id"], 1, 1)
        live.wait_processed()
        assert api.get("/api/v1/profiles/user_id:2/traits").json()["traits"]["tier"] == "silver"
        again = api.post(f"/api/v1/sources/loyalty/imports/{run['id']}/replay", json={})
        assert (again.status_code, again.json()["code"]) == (409, "nothing_to_replay")
        bad = api.post(f"/api/v1/sources/loyalty/imports/{run['id']}/replay", json={"mapping": {"mapping": 7}})
        assert (bad.status_code, bad.json()["code"]) == (422, "invalid_mapping")
        extra = api.post(f"/api/v1/sources/loyalty/imports/{run['id']}/replay", json={"mapping": None, "x": 1})
        assert extra.status_code == 422


def test_preview_writes_nothing(live: LiveAccord) -> None:
    source(live.rt, "loyalty")
    with live.api() as api:
        answer = api.post(
            "/api/v1/sources/loyalty/preview",
            files={"file": ("x.csv", LOYALTY_CSV.encode() + b"4,a,b\n")},
            data={"mapping": LOYALTY, "limit": "10"},
        )
        assert answer.status_code == 200, answer.text
        shown = answer.json()
        assert [r["position"] for r in shown["rows"]] == [1, 2, 3]
        assert shown["rows"][0]["event"]["traits"]["name"] == "Ann Lee"
        assert shown["rows"][1]["error"] == "field points: 'abc' is not an integer"
        assert shown["line_errors"][0]["line"] == 5
        assert api.get("/api/v1/sources/loyalty/imports").json()["data"] == []
    assert live.pending() == 0


@pytest.mark.parametrize(
    ("name", "content", "mapping", "status", "code"),
    [
        ("x.csv", b"a\n1\n", "mapping: 1\nname: x\nidentifiers: []", 422, "invalid_mapping"),
        ("x.csv", b"a\n1\n", "{not json", 422, "invalid_mapping"),
        ("x.exe", b"a\n1\n", LOYALTY, 422, "invalid_input"),
        ("x.parquet", b"a,b\n1,2\n", LOYALTY, 422, "invalid_input"),
        ("x.csv", b"PAR1\x00\x00binary", LOYALTY, 422, "invalid_input"),
        ("x.jsonl", b'[{"a": 1}]', LOYALTY, 422, "invalid_input"),
        ("../../etc/passwd.csv", b"x\n", LOYALTY, 202, None),  # the name never becomes a path
    ],
)
def test_bad_uploads_are_refused_with_a_reason(
    live: LiveAccord, name: str, content: bytes, mapping: str, status: int, code: str | None
) -> None:
    source(live.rt, "loyalty")
    with live.api() as api:
        answer = upload(api, "loyalty", content, name=name, mapping=mapping)
        assert answer.status_code == status, answer.text
        if code is not None:
            assert answer.json()["code"] == code
        else:
            run = wait_done(api, f"/api/v1/sources/loyalty/imports/{answer.json()['id']}")
            assert Path(run["location"]).name == "upload.csv"
            assert run["status"] == "failed"  # the file has no Customer ID column
            assert "Customer ID" in run["error"]


def test_unknown_things_and_malformed_requests(live: LiveAccord) -> None:
    source(live.rt, "loyalty")
    with live.api() as api:
        assert upload(api, "nope", b"a\n").json()["code"] == "source_not_found"
        assert api.get("/api/v1/sources/loyalty/imports/imp_nope").status_code == 404
        assert api.get("/api/v1/sources/loyalty/imports/imp_nope/rejects").json()["code"] == "import_not_found"
        assert api.post("/api/v1/sources/loyalty/imports", data={"mapping": LOYALTY}).status_code == 422
        assert api.post("/api/v1/sources/loyalty/imports", json={"mapping": LOYALTY}).status_code == 422
        assert api.get("/api/v1/sources/loyalty/imports?limit=0").status_code == 422
        assert upload(api, "x" * 300, b"a\n").status_code == 422
        too_big = upload(api, "loyalty", b"a\n", mapping="#" * (300 * 1024))
        assert too_big.status_code == 413
    with live.client() as anonymous:
        assert upload(anonymous, "loyalty", b"a\n").status_code == 401


@pytest.fixture
def small_uploads(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LiveAccord]:
    from accord.db import migrate

    rt = Runtime.create(make_settings(backend, tmp_path, request, import_max_bytes=4096))
    migrate.upgrade(rt.db)
    try:
        with running_accord(rt) as accord:
            yield accord
    finally:
        rt.close()


def test_an_upload_over_the_limit_is_refused(small_uploads: LiveAccord) -> None:
    source(small_uploads.rt, "loyalty")
    with small_uploads.api() as api:
        answer = upload(api, "loyalty", b"a\n" + b"1\n" * 200_000)
        assert (answer.status_code, answer.json()["code"]) == (413, "request_too_large")
        assert upload(api, "loyalty", LOYALTY_CSV.encode()).status_code == 202


def test_an_interrupted_upload_resumes_when_accord_starts_again(rt: Runtime) -> None:
    """The API process that ran an upload stopped part way: the next start carries the run on."""
    from sqlalchemy import update

    from accord.sources.models import ImportRun

    with running_accord(rt) as accord:
        source(rt, "loyalty")
        with accord.api() as api:
            run = wait_done(
                api, f"/api/v1/sources/loyalty/imports/{upload(api, 'loyalty', LOYALTY_CSV.encode()).json()['id']}"
            )
    # As a kill would have left it: running, its heartbeat old, nothing counted yet.
    with rt.db.unit_of_work() as session:
        session.execute(
            update(ImportRun)
            .where(ImportRun.id == run["id"])
            .values(
                status="running",
                read=0,
                imported=0,
                appended=0,
                rejected=0,
                checkpoint=0,
                heartbeat_at=datetime(2026, 1, 1, tzinfo=UTC),
                finished_at=None,
            )
        )
        session.execute(ImportReject.__table__.delete())
    with running_accord(rt) as accord, accord.api() as api:
        resumed = wait_done(api, f"/api/v1/sources/loyalty/imports/{run['id']}")
        assert (resumed["status"], resumed["read"], resumed["imported"], resumed["rejected"]) == ("done", 3, 2, 1)
