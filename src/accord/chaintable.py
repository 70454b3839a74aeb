"""Verifying a hash chain kept in a table: the consent ledger and the audit log.

`accord.hashchain` checks records, whatever holds them; this reads them from the database, with the
chain's checkpoints and head, and walks a long chain in ranges, one process per range, the report being
the one a single walk gives (each range starts from the record stored just before it). What differs
between the chains is described by a `ChainTable`: which table, which columns repeat body fields, what a
chain checks beyond the links (the consent ledger's evidence, which it opens with data keys). It holds names
and module-level functions only, so that it can be handed to another process; so is the key provider a
verification is given (the file provider travels as its path: each process opens the key file itself).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, func, select, text
from sqlalchemy.orm import Session

from accord import hashchain
from accord.consent.keys import MacKey, SigningKey
from accord.hashchain import GENESIS, Verification

# Below this many records one process walks the chain: starting others costs more than it saves.
PARALLEL_MIN_RECORDS = 200_000
_NO_SEQ_BELOW, _NO_SEQ_ABOVE = -(2**62), 2**62  # bounds that leave a range open at that end


@dataclass(frozen=True, slots=True)
class ChainTable:
    table: str  # the records' table, read as `r`
    mirrored: tuple[str, ...]  # columns that repeat body fields, the record's id first
    record: type[Any]  # mapped classes: the records (seq, hash), the head row, the checkpoints
    head: type[Any]
    checkpoint: type[Any]
    messages: hashchain.MacMessages
    checkpoint_typ: str
    more_columns: str = ""  # for `attachments`: ", e.record_id, e.salt, e.body"
    join: str = ""  # and where they come from: " LEFT JOIN consent_evidence e ON e.record_id = r.id"
    # From those columns (in each stored row from the index given), a chunk of rows at a time so that keys are
    # read in bulk: what `extra` gets of each row.
    attachments: Callable[[list[Any], int, Lookup], list[Any]] | None = None
    extra: hashchain.Extra | None = None


@dataclass(slots=True)
class Lookup:
    """What `attachments` may use in the process that walks a range: the walk's connection (a query per
    chunk), the key provider the verification was given (None: none), and a cache that lasts the walk."""

    connection: Connection
    keys: Any
    cache: dict[Any, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Range:
    """The records with `after` < seq <= `upto` (None: unbounded), walked from the record before them."""

    after: int | None
    upto: int | None
    expected: int
    previous: str


def verify(
    engine: Engine,
    chain: ChainTable,
    *,
    key: SigningKey,
    batch: int = 20_000,
    workers: int = 1,
    min_per_worker: int = PARALLEL_MIN_RECORDS // 2,
    keys: Any = None,
) -> Verification:
    """Walk the whole chain, its checkpoints and head; stop at the first problem and name it. With
    `workers` > 1 and a long chain, consecutive ranges are walked in that many processes at once. `keys`
    (a key provider, or None) is handed to the chain's `attachments` in each of them."""
    with Session(engine) as session:
        checkpoints = {
            row.seq: hashchain.Signed(row.seq, row.hash, row.signed_at, _signed(key, chain, row))
            for row in session.scalars(select(chain.checkpoint).order_by(chain.checkpoint.seq))
        }
        head = session.get(chain.head, 1)
        stored_head = None if head is None else hashchain.Head(head.seq, head.hash, head.mac)
        last_seq = session.scalar(select(func.max(chain.record.seq))) or 0
        parts = max(1, min(workers, last_seq // max(1, min_per_worker)))
        ranges = _ranges(session, chain, last_seq, parts)
    bad_signature = hashchain.first_bad_signature(checkpoints)
    if bad_signature is not None:
        return Verification(first_bad=bad_signature)
    if len(ranges) == 1:
        walked = [_walk(engine, chain, ranges[0], mac_key=key.mac_key, checkpoints=checkpoints, batch=batch, keys=keys)]
    else:
        url = engine.url.render_as_string(hide_password=False)
        context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
        with ProcessPoolExecutor(max_workers=len(ranges), mp_context=context) as pool:
            futures = [
                pool.submit(_walk_elsewhere, url, chain, part, key.mac_key, checkpoints, batch, keys) for part in ranges
            ]
            walked = [future.result() for future in futures]
    report = hashchain.join(walked)
    return hashchain.finish(
        report, checkpoints=checkpoints, head=stored_head, mac_ok=key.mac_ok, messages=chain.messages
    )


def _signed(key: SigningKey, chain: ChainTable, row: Any) -> bool:
    payload = key.verify(row.jws, typ=chain.checkpoint_typ)
    return payload is not None and payload.get("seq") == row.seq and payload.get("hash") == row.hash


def _ranges(session: Session, chain: ChainTable, last_seq: int, parts: int) -> list[_Range]:
    """`parts` consecutive ranges of seq; each starts after the record stored just before it, which the
    range before ends with, so walking them one by one is walking the chain."""
    cuts = [last_seq * i // parts for i in range(1, parts)]
    found, after = [], None
    for upto in [*cuts, None]:
        if after is None:
            expected, previous = 1, GENESIS
        else:
            before = session.execute(
                select(chain.record.seq, chain.record.hash)
                .where(chain.record.seq <= after)
                .order_by(chain.record.seq.desc())
                .limit(1)
            ).first()
            expected, previous = (1, GENESIS) if before is None else (before.seq + 1, before.hash)
        found.append(_Range(after, upto, expected, previous))
        after = upto
    return found


def _rows(connection: Connection, chain: ChainTable, batch: int, part: _Range) -> Generator[list[Any]]:
    columns = ", ".join(f"r.{name}" for name in ("seq", *chain.mirrored, "body", "hash", "mac")) + chain.more_columns
    query = text(
        f"SELECT {columns} FROM {chain.table} r{chain.join}"  # noqa: S608 (names from the code; bounds are bound)
        " WHERE r.seq > :after AND r.seq <= :upto ORDER BY r.seq"
    )
    after = _NO_SEQ_BELOW if part.after is None else part.after
    bounds = {"after": after, "upto": _NO_SEQ_ABOVE if part.upto is None else part.upto}
    # Closed explicitly: verification stops at the first problem, and PostgreSQL's server-side cursor
    # must not outlive it.
    with connection.execution_options(stream_results=True, yield_per=batch).execute(query, bounds) as result:
        for chunk in result.partitions(batch):
            yield list(chunk)


def _walk(
    engine: Engine,
    chain: ChainTable,
    part: _Range,
    *,
    mac_key: MacKey,
    checkpoints: dict[int, hashchain.Signed],
    batch: int,
    keys: Any = None,
) -> Verification:
    # Each stored row: seq, the mirrored columns, body, hash, mac, then `more_columns`.
    names, end = chain.mirrored, 1 + len(chain.mirrored)
    body_at, hash_at, mac_at = end, end + 1, end + 2

    def rows(stored: Iterator[list[Any]]) -> Iterator[hashchain.Row]:
        for chunk in stored:
            attached = [None] * len(chunk) if chain.attachments is None else chain.attachments(chunk, end + 3, lookup)
            for row, attachment in zip(chunk, attached, strict=True):
                yield hashchain.Row(
                    row[0], row[1], row[body_at], row[hash_at], row[mac_at], names, row[1:end], attachment
                )

    # A read: on SQLite, a plain BEGIN rather than the write lock the engine takes for a unit of work.
    with (
        engine.connect().execution_options(accord_read_only=True) as connection,
        closing(_rows(connection, chain, batch, part)) as stored,
    ):
        lookup = Lookup(connection, keys)
        return hashchain.walk(
            rows(stored),
            expected=part.expected,
            previous=part.previous,
            checkpoints=checkpoints,
            mac_ok=mac_key.mac_ok,
            messages=chain.messages,
            extra=chain.extra,
        )


def _walk_elsewhere(
    url: str,
    chain: ChainTable,
    part: _Range,
    mac_key: MacKey,
    checkpoints: dict[int, hashchain.Signed],
    batch: int,
    keys: Any,
) -> Verification:
    """`_walk` in a process of its own, with an engine of its own (and the key provider, opened here)."""
    engine = create_engine(url)
    try:
        return _walk(engine, chain, part, mac_key=mac_key, checkpoints=checkpoints, batch=batch, keys=keys)
    finally:
        engine.dispose()
