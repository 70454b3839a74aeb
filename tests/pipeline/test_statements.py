"""What one run of the pipeline reads besides the events' own rows: the data keys of the profiles it
touches, with those profiles (no statement of their own); the configuration's stamps, once, in one
statement."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from accord.runtime import Runtime
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
