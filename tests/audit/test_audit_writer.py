"""The group-committing writer of read records: concurrent submitters get one chain, a failing group fails
only its own waiters, and the writer restarts after close."""

from __future__ import annotations

import threading

import pytest
import rfc8785

from accord.audit import service as audit
from accord.audit.writer import AuditWriter, Pending
from accord.runtime import Runtime


def pending(n: int, **details: object) -> Pending:
    return Pending(
        audit.Actor("token", f"tok_{n % 4}", "agent", "127.0.0.1"), "profile.read", "profile", f"p{n}", dict(details)
    )


def test_concurrent_submitters_share_commits_and_keep_one_chain(rt: Runtime) -> None:
    writer = AuditWriter(rt.db, rt.signing, max_group=16)
    errors: list[BaseException] = []

    def submit(base: int) -> None:
        futures = [writer.submit(pending(base + i)) for i in range(25)]
        for future in futures:
            if future.exception(timeout=60) is not None:
                errors.append(future.exception())  # type: ignore[arg-type]

    threads = [threading.Thread(target=submit, args=(100 * t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    assert errors == []
    report = audit.verify(rt.db.engine, key=rt.signing)
    assert report.ok, report.first_bad
    assert report.records == 100
    with rt.db.read() as session:
        targets = {e.body["target_id"] for e in audit.records(session, audit.Filters(), limit=1000)}
    assert targets == {f"p{100 * t + i}" for t in range(4) for i in range(25)}


def test_a_failing_group_fails_its_waiters_and_the_writer_goes_on(rt: Runtime) -> None:
    writer = AuditWriter(rt.db, rt.signing)
    bad = writer.submit(pending(1, unencodable={1, 2}))  # a set is not JSON: the group's transaction fails
    with pytest.raises(rfc8785.CanonicalizationError):
        bad.result(timeout=60)
    writer.submit(pending(2)).result(timeout=60)
    writer.close()
    writer.submit(pending(3)).result(timeout=60)  # starts again after close
    writer.close()
    report = audit.verify(rt.db.engine, key=rt.signing)
    assert report.ok, report.first_bad
    assert report.records == 2
