"""What one run of the pipeline reads besides the events' own rows: the data keys of the profiles it
touches, with those profiles (no statement of their own); the configuration's stamps, once, in one
statement. And what it writes of the data keys: those of its new profiles, in one statement."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, text

from accord.profiles.private import Opener
from accord.runtime import Runtime
from accord.security.crypto import key_id_of
from accord.security.datakeys import DataKeys
from pipeline.helpers import process, send

SELECT_FROM = re.compile(r"\bFROM\s+(\w+)", re.IGNORECASE)


@contextmanager
def reads(rt: Runtime) -> Iterator[Counter[str]]:
    """The SELECT statements run on the main database meanwhile, counted by each table they read."""
    counted: Counter[str] = Counter()

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            for table in set(SELECT_FROM.findall(statement)):
                counted[table] += 1

    event.listen(rt.db.engine, "before_cursor_execute", count)
    try:
        yield counted
    finally:
        event.remove(rt.db.engine, "before_cursor_execute", count)


def test_a_run_reads_the_data_keys_with_the_profiles_and_the_configuration_in_one_statement(rt: Runtime) -> None:
    send(
        rt,
        [
            {"type": "identify", "userId": "ann", "anonymousId": "a-1", "traits": {"firstName": "Ann", "plan": "gold"}},
            {"type": "track", "anonymousId": "b-1", "event": "Viewed"},
        ],
    )
    assert process(rt) == 2
    # Ann again (her personal traits are sealed), the anonymous visitor merged into her, and a stranger.
    send(
        rt,
        [
            {"type": "identify", "userId": "ann", "anonymousId": "b-1", "traits": {"lastName": "Lee"}},
            {"type": "identify", "userId": "cy", "traits": {"firstName": "Cy"}},
        ],
    )
    with reads(rt) as counted:
        assert process(rt) == 2
    assert counted["data_keys"] == 0  # read with the profiles they belong to
    # One statement reads the three stamps: it names all three tables.
    assert counted["identity_rules"] == counted["source_mappings"] == counted["identity_match_models"] == 1


def test_a_run_makes_the_data_keys_of_its_new_profiles_in_one_statement(rt: Runtime) -> None:
    """New profiles merged away within the run keep their personal traits sealed under their own key: their
    keys are made with the others', not each in a statement of its own."""
    inserts: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if re.match(r"\s*INSERT\s+INTO\s+data_keys\b", statement, re.IGNORECASE):
            inserts.append(statement)

    # Three visitors give a first name, then each signs in: each visitor's profile merges into the user's.
    at = "2026-11-01T10:00:0{}Z".format
    send(
        rt,
        [
            *(
                {"type": "identify", "anonymousId": f"v-{i}", "traits": {"firstName": f"Vi{i}"}, "timestamp": at(i)}
                for i in range(3)
            ),
            *(
                {"type": "identify", "userId": f"u-{i}", "traits": {"lastName": f"Lee{i}"}, "timestamp": at(3 + i)}
                for i in range(3)
            ),
            *(
                {"type": "identify", "userId": f"u-{i}", "anonymousId": f"v-{i}", "timestamp": at(6 + i)}
                for i in range(3)
            ),
        ],
    )
    event.listen(rt.db.engine, "before_cursor_execute", count)
    try:
        assert process(rt) == 9
    finally:
        event.remove(rt.db.engine, "before_cursor_execute", count)
    assert len(inserts) == 1
    with rt.db.read() as session:
        rows = session.execute(text("SELECT id, merged_into, traits_enc FROM profiles")).all()
        keys = DataKeys.of(session)
        opener = Opener.of(session)
        merged = [(pid, token) for pid, merged_into, token in rows if merged_into is not None]
        assert len(merged) == 3
        assert all(key_id_of(token) == pid for pid, token in merged)
        # Each holds the name it was given (a visitor's first name or a user's last name, whichever lost).
        assert all(set(opener.personal(pid, token)) in ({"firstName"}, {"lastName"}) for pid, token in merged)
        assert keys.cipher(merged[0][0]) is not None
