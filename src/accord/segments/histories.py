"""The opened event histories of profiles with many events, kept by a worker from one run to the next.

Streaming evaluation reads, on every run, the events of the names the segments and journeys read, of each
profile the run touched, and opens their sealed payloads when a condition filters on a property. That cost
grew with the profile's history: a run of 20 events of one customer took 4.8 ms of CPU with 10 events
before it and 91 ms with 5,000 (`bench/segments.py --parts history`). Kept here, a long history is read
whole once; later runs read only the events added since.

Each use checks what is kept against the database, in the one statement that reads what was added (one
snapshot on PostgreSQL too): how many events the profile has, of every kind, their highest id, and the sums
of their ids, of their squares and of their cubes (the last two modulo a prime P). Whatever else changed
them (an erasure, a merge or an unmerge moving events between profiles, another worker's event committed
after one with a later id) fails the check, and the history is read whole again. The sum of the ids alone
was fooled by events swapped between profiles with equal sums (ids 1 and 8 out, 4 and 5 in); with the
three sums equal, the ids out and the ids in are the same modulo P whenever at most three were swapped
(Newton's identities over the field of P), so any such change is seen. Only a swap of four or more events
whose ids agree in all three sums could still pass unseen. What a transaction read is kept only once it
commits: a rolled-back one leaves what is kept as it was. A profile unused for `ttl` seconds is forgotten
(at the next commit, or by the worker's idle loop), so that opened payloads outlive an erasure made by
another process by at most that long.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Select, Table, and_, bindparam, event, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from accord.config import Settings
from accord.profiles.models import ProfileEvent
from accord.profiles.sealed import opened_properties, sealed_by
from accord.security.datakeys import DataKeys

EVENTS = cast(Table, ProfileEvent.__table__)
Events = dict[str, list[tuple[datetime, Mapping[str, Any]]]]
# The profile's events of every kind: how many, the highest id, the sum of their ids, of their squares and
# of their cubes (the last two modulo _PRIME)
Token = tuple[int, int, int, int, int]
# Below 2**31, so that each product fits in 62 bits and a sum of up to 2**32 of them in 63, on SQLite and
# PostgreSQL alike. The database computes the powers, of the added rows too: its modulo of a negative id
# (a test's) differs from Python's.
_PRIME = 2_147_483_647
_STAGED = "accord.histories.staged"
_EVERY = -(2**63)  # an `after` below every id: the whole history


@dataclass(slots=True)
class _Kept:
    names: frozenset[str]
    properties: bool  # the payloads' properties are opened
    events: Events
    token: Token
    size: int  # events kept
    used: float = 0.0


def _statement() -> Select[Any]:
    """The profile's token and its events with an id above `after` (none: the token alone, one row)."""
    e = EVENTS.c
    totals = (
        select(
            func.count().label("n"),
            func.coalesce(func.max(e.id), 0).label("top"),
            *(func.coalesce(func.sum(power), 0).label(f"sum_{n}") for n, power in enumerate(_powers(e.id))),
        )
        .where(e.profile_id == bindparam("pid"))
        .subquery("totals")
    )
    added = EVENTS.alias("added")
    a = added.c
    columns = (a.id, a.type, a.event, a.timestamp, a.payload, a.source_id, a.message_id)
    powers = (power.label(f"power_{n}") for n, power in enumerate(_powers(a.id)))
    on = and_(a.profile_id == bindparam("pid"), a.id > bindparam("after"))
    t = totals.c
    summed = (t.n, t.top, t.sum_0, t.sum_1, t.sum_2)
    return select(*summed, *columns, *powers).select_from(totals.outerjoin(added, on))


def _powers(id_: Any) -> tuple[Any, Any, Any]:
    """The id, its square and its cube, the last two modulo _PRIME."""
    residue = id_ % _PRIME
    square = residue * residue % _PRIME
    return id_, square, square * residue % _PRIME


def _token(row: Row[Any]) -> Token:
    return (int(row.n), int(row.top), int(row.sum_0), int(row.sum_1), int(row.sum_2))


STATEMENT = _statement()


class Histories:
    """The histories one process keeps (`of`), at most `max_events` events in all, least recently used
    first out; a history of fewer than `min_events` events of the names read is cheap to read each time
    and is not kept."""

    def __init__(
        self,
        *,
        min_events: int = 100,
        max_events: int = 100_000,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_events = min_events
        self.max_events = max_events
        self.ttl = ttl
        self._clock = clock
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        # How each read went: "unchanged" (kept as it is), "added" (kept, plus what was added), "whole"
        self.reads = {"unchanged": 0, "added": 0, "whole": 0}

    def __len__(self) -> int:
        return len(self._kept)

    def covers(self, profile_id: str, names: frozenset[str], properties: bool) -> bool:
        """Whether a history of this profile is kept with these names (and properties, if wanted)."""
        return self._current(profile_id, names, properties) is not None

    def read(
        self,
        session: Session,
        connection: Connection,
        profile_id: str,
        names: frozenset[str],
        properties: bool,
        keys: DataKeys,
    ) -> Events:
        """The profile's events of `names` (at least), with their properties opened when `properties`: what
        is kept and what was added since, or the whole history when the check fails or nothing is kept. What
        was read is kept once the session's transaction commits."""
        # What this transaction read already (the segments', when the journeys read), else what is kept.
        staged: _Kept | None = session.info.get(_STAGED, {}).get(profile_id)
        kept = (
            staged
            if staged is not None and names <= staged.names and (staged.properties or not properties)
            else self._current(profile_id, names, properties)
        )
        rows = connection.execute(STATEMENT, {"pid": profile_id, "after": kept.token[1] if kept else _EVERY}).all()
        token = _token(rows[0])
        added = [row for row in rows if row.id is not None]
        if kept is not None and token == kept.token:
            self.reads["unchanged"] += 1
            return kept.events
        if (
            kept is not None
            and token[0] == kept.token[0] + len(added)
            and all(
                token[2 + n] == kept.token[2 + n] + sum(getattr(row, f"power_{n}") for row in added) for n in range(3)
            )
        ):
            self.reads["added"] += 1
            names, properties = kept.names, kept.properties  # what is kept stays whole
            events = {name: list(found) for name, found in kept.events.items()}
            _add(events, added, names, keys if properties else None)
        else:
            self.reads["whole"] += 1
            if kept is not None:  # the check failed: read everything again
                rows = connection.execute(STATEMENT, {"pid": profile_id, "after": _EVERY}).all()
                token = _token(rows[0])
            events = {}
            _add(events, [row for row in rows if row.id is not None], names, keys if properties else None)
        size = sum(len(found) for found in events.values())
        self._stage(session, profile_id, _Kept(names, properties, events, token, size))
        return events

    def forget(self) -> None:
        with self._lock:
            self._kept.clear()
            self._size = 0

    def _current(self, profile_id: str, names: frozenset[str], properties: bool) -> _Kept | None:
        now = self._clock()
        with self._lock:
            kept = self._kept.get(profile_id)
            if kept is None:
                return None
            if now - kept.used > self.ttl:
                self._drop(profile_id)
                return None
            if not names <= kept.names or (properties and not kept.properties):
                return None
            kept.used = now
            self._kept.move_to_end(profile_id)
            return kept

    def _stage(self, session: Session, profile_id: str, kept: _Kept) -> None:
        staged = session.info.get(_STAGED)
        if staged is None:
            staged = session.info[_STAGED] = {}
            event.listen(session, "after_commit", self._committed)
            event.listen(session, "after_rollback", _rolled_back)
        staged[profile_id] = kept

    def _committed(self, session: Session) -> None:
        staged: dict[str, _Kept] = session.info.pop(_STAGED, {})
        if not staged:
            return
        now = self._clock()
        with self._lock:
            for profile_id, kept in staged.items():
                self._drop(profile_id)
                if kept.size >= self.min_events:
                    kept.used = now
                    self._kept[profile_id] = kept
                    self._size += kept.size
            self._prune(now)

    def prune(self) -> None:
        """Forget the histories unused for longer than the ttl (a worker does it when idle, so that nothing
        stays past it while no run comes)."""
        now = self._clock()
        with self._lock:
            self._prune(now)

    def _prune(self, now: float) -> None:
        """Least recently used first: past the bound, or unused for longer than the ttl."""
        while self._kept:
            oldest_id, oldest = next(iter(self._kept.items()))
            if self._size <= self.max_events and now - oldest.used <= self.ttl:
                break
            self._drop(oldest_id)

    def _drop(self, profile_id: str) -> None:
        kept = self._kept.pop(profile_id, None)
        if kept is not None:
            self._size -= kept.size


def _rolled_back(session: Session) -> None:
    session.info.pop(_STAGED, None)


def _add(events: Events, rows: Sequence[Row[Any]], names: frozenset[str], keys: DataKeys | None) -> None:
    """The tracked events of `names` among `rows`, appended to `events` with their properties (opened
    with `keys`; none without)."""
    wanted = [row for row in rows if row.type == "track" and row.event in names]
    if keys is not None:  # every data key the payloads are sealed under, in one query
        keys.load({key for row in wanted if (key := sealed_by(row.payload)) is not None})
    for row in wanted:
        props = {} if keys is None else opened_properties(keys, row.source_id, row.message_id, row.payload)
        events.setdefault(row.event, []).append((row.timestamp, props))


_registry: dict[str, Histories] = {}
_registry_lock = threading.Lock()


def prune() -> None:
    """`Histories.prune` for every database this process keeps histories of."""
    with _registry_lock:
        kept = list(_registry.values())
    for histories in kept:
        histories.prune()


def of(session: Session) -> Histories:
    """The histories this process keeps for the session's database, at most ACCORD_SEGMENT_HISTORY_EVENTS
    events in all (read when first asked for)."""
    bind = str(session.get_bind().engine.url)
    with _registry_lock:
        found = _registry.get(bind)
        if found is None:
            found = _registry[bind] = Histories(max_events=Settings().segment_history_events)
        return found
