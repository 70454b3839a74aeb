"""A statement that fails on a unique key (`duplicate_key`) is taken for a race with another writer, which took
the key between a service's check and its insert: the API answers it as it answers the other conflicts, 503
database_busy with Retry-After. Any other integrity error (foreign key, not null) is a fault: 500. With the
errors SQLite and PostgreSQL raise for real; tests/test_database_busy.py makes the race happen on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Table, insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Executable
from structlog.testing import capture_logs

from accord.db.engine import conflicted, duplicate_key
from accord.errors import install
from accord.identity.models import Identity
from accord.runtime import Runtime
from accord.sources.models import Source
from accord.sources.service import create_source
from conftest import ServerThread, bound_socket

IDENTITIES = cast(Table, Identity.__table__)
AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def identity(value: str, **changes: Any) -> dict[str, Any]:
    return {"type": "user_id", "value": value, "profile_id": None, "first_seen": AT, "message_id": "m1", **changes}


def failed(rt: Runtime, statement: Executable) -> IntegrityError:
    with pytest.raises(IntegrityError) as raised, rt.db.unit_of_work() as session:
        session.execute(statement)
    return raised.value


def test_a_key_a_row_holds_is_a_duplicate_key_and_other_integrity_errors_are_not(rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        session.execute(insert(IDENTITIES).values(identity("42")))
        create_source(session, name="web")
        create_source(session, name="app")
    primary_key = failed(rt, insert(IDENTITIES).values(identity("42")))
    unique = failed(rt, update(Source).where(Source.name == "app").values(name="web"))
    foreign_key = failed(rt, insert(IDENTITIES).values(identity("43", profile_id="nobody")))
    not_null = failed(rt, insert(IDENTITIES).values(identity("44", message_id=None)))
    assert [duplicate_key(e) for e in (primary_key, unique, foreign_key, not_null)] == [True, True, False, False]
    # The worker retries a transaction after any of them (a key or a profile another worker wrote meanwhile).
    assert all(conflicted(e) for e in (primary_key, unique, foreign_key, not_null))


def test_the_api_answers_a_duplicate_key_as_busy_and_another_integrity_error_as_a_fault(rt: Runtime) -> None:
    app = FastAPI()
    install(app)

    @app.post("/identities/{value}", status_code=204)
    def add(value: str, profile_id: str | None = None) -> None:
        with rt.db.unit_of_work() as session:
            session.execute(insert(IDENTITIES).values(identity(value, profile_id=profile_id)))

    with (
        capture_logs() as logs,
        ServerThread(app, bound_socket()) as server,
        httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client,
    ):
        assert client.post("/identities/42").status_code == 204
        busy = client.post("/identities/42")
        fault = client.post("/identities/43", params={"profile_id": "nobody"})
    assert (busy.status_code, busy.json()["code"], busy.headers["Retry-After"]) == (503, "database_busy", "1")
    assert (fault.status_code, fault.json()["code"]) == (500, "internal_error")
    assert "Retry-After" not in fault.headers
    # The error's type and the constraint's name (PostgreSQL names it), never the message: it quotes values.
    if rt.db.dialect == "postgresql":
        assert logs == [
            {
                "event": "database busy",
                "error": "UniqueViolation",
                "constraint": "pk_identities",
                "log_level": "warning",
            },
            {
                "event": "unhandled error",
                "error": "ForeignKeyViolation",
                "constraint": "fk_identities_profile_id_profiles",
                "log_level": "error",
            },
        ]
    else:
        assert logs == [
            {"event": "database busy", "error": "IntegrityError", "log_level": "warning"},
            {"event": "unhandled error", "error": "IntegrityError", "log_level": "error"},
        ]
