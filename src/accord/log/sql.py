"""The sql adapter of the event log: a table, written with group commit, consumed as a queue.

Appends from many requests are gathered by one writer thread and committed together, so each
acknowledged request costs a share of one fsync rather than one of its own. Acknowledged records are
deleted: the lasting record of every event is the per-profile event store.

Payloads are sealed (AES-GCM) under the current log key (`accord.security.logkeys`), bound to their
record's seq: the database holds no event in clear, and a payload copied into another record does not
open. Seqs are therefore taken before the insert, in the writer's transaction.

On SQLite the log lives in a file of its own beside the main database, so that appends never wait
for a worker's transaction on the main file (SQLite has one write lock per file). On PostgreSQL it is
a table in the main database, and workers claim records with FOR UPDATE SKIP LOCKED.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import cast

import orjson
import structlog
from sqlalchemy import Connection, Table, bindparam, delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from accord.db.engine import Database
from accord.ingest.spec import encode_events
from accord.log.models import LogRecord
from accord.log.port import Claim, Delivery, NewRecord
from accord.security.crypto import BINARY_PREFIX, Undecryptable, aad, seal_bytes
from accord.security.logkeys import LogKeys

log = structlog.get_logger(__name__)
_STOP = object()
# Records in one claim, at most: a bound on the statements' parameters (the delete names each record).
# Runs are bounded by events (ACCORD_WORKER_MAX_BATCH_SIZE); a log of one-event records (a browser's
# /v1/track calls) must be able to fill them.
MAX_CLAIM_RECORDS = 10_000
UNREADABLE_AFTER = 5  # failed reads of one record (the worker waits a second between them) before it is set aside
# The log file's own schema version (PRAGMA user_version). 2: payloads sealed; a file of version 1 has
# its waiting payloads sealed in place when opened.
LOG_FILE_SCHEMA = 2
_PG_SEQS = text("SELECT nextval(pg_get_serial_sequence('event_log', 'seq')) FROM generate_series(1, :n)")
_SQLITE_LAST_SEQ = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'event_log'), 0),"
    " coalesce((SELECT max(seq) FROM event_log), 0))"
)


# The claim's statements, built once, run on a connection without a session (the ORM adds nothing here,
# and building them and a session cost more than running them, on SQLite).
_RECORDS = cast(Table, LogRecord.__table__)
_OLDEST = (
    select(_RECORDS.c.seq, _RECORDS.c.source_id, _RECORDS.c.event_count, _RECORDS.c.payload)
    .order_by(_RECORDS.c.seq)
    .limit(bindparam("limit"))
)
_OLDEST_LOCKED = _OLDEST.with_for_update(skip_locked=True)
_OLDEST_AFTER = _OLDEST.where(_RECORDS.c.seq > bindparam("after"))  # SQLite: past those awaiting deletion
# How often acknowledgements that wait for the worker's commits to be durable are written (SQLite).
ACK_SECONDS = 0.1
_DELETE = delete(_RECORDS).where(_RECORDS.c.seq.in_(bindparam("seqs", expanding=True)))


def payload_aad(seq: int) -> bytes:
    return aad("event_log", "payload", str(seq))


class SqlEventLog:
    def __init__(self, db: Database, keys: LogKeys, *, max_group: int = 256) -> None:
        self.db = db
        self.keys = keys
        self.max_group = max_group
        self._queue: queue.SimpleQueue[tuple[NewRecord, Future[None]] | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()
        self.appended = threading.Event()  # set after each commit: wakes an in-process worker
        self.listeners: list[Callable[[], None]] = []  # called after each commit: nudge workers elsewhere
        self._typical_count = 1  # events per record in the last claim
        self._failures: dict[tuple[int, int], int] = {}  # (seq, hash of the bytes): failed opens
        self._acks: Database | None = None  # SQLite: the connection acknowledgements are written through
        # SQLite, `acknowledge_when_durable`: the records processed and not deleted yet, and the last of them
        self._durable: Callable[[], None] | None = None
        self._undeleted: list[int] = []
        self._deleting = threading.Lock()  # one deletion at a time: a caller returns after one under way
        self._claimed_through = 0
        self._acker: threading.Thread | None = None
        self._stop_acking = threading.Event()

    def ensure_file_schema(self) -> None:
        """Create the log table in a log file of its own (SQLite); the main migrations cover PostgreSQL."""
        with self.db.engine.begin() as connection:
            version = connection.exec_driver_sql("PRAGMA user_version").scalar()
            if version == LOG_FILE_SCHEMA:
                return
            if version not in (0, 1):
                raise RuntimeError(
                    f"the event log file {self.db.url} has schema {version}, this Accord expects {LOG_FILE_SCHEMA}; "
                    "drain it with the Accord that wrote it, then delete it"
                )
            cast(Table, LogRecord.__table__).create(connection, checkfirst=True)
            with Session(connection) as session:
                self.seal_clear_records(session)
            connection.exec_driver_sql(f"PRAGMA user_version = {LOG_FILE_SCHEMA}")
        self.db.checkpoint_wal()  # the clear payloads' old pages must not stay behind in the WAL

    def seal_clear_records(self, session: Session) -> int:
        """Seal the payloads stored in clear before the log was encrypted (migration); returns how many."""
        done = 0
        for seq, payload in session.execute(select(LogRecord.seq, LogRecord.payload)).all():
            if bytes(payload).startswith(BINARY_PREFIX):
                continue
            session.execute(update(LogRecord).where(LogRecord.seq == seq).values(payload=self.seal(seq, payload)))
            done += 1
        return done

    # -- sealing ---------------------------------------------------------------------------------
    def seal(self, seq: int, payload: bytes) -> bytes:
        return self.keys.seal(payload, payload_aad(seq))

    def open(self, seq: int, payload: bytes) -> bytes:
        """A record's payload in clear; Undecryptable, naming the record, when it does not open."""
        try:
            return self.keys.open(bytes(payload), payload_aad(seq))
        except Undecryptable as error:
            raise Undecryptable(f"event log record {seq}: {error}") from None

    # -- appending -------------------------------------------------------------------------------
    def append(self, record: NewRecord) -> None:
        self.submit(record).result()

    def submit(self, record: NewRecord) -> Future[None]:
        """Queue a record for the next group commit; the future resolves once it is durable."""
        self._ensure_writer()
        future: Future[None] = Future()
        self._queue.put((record, future))
        return future

    def _ensure_writer(self) -> None:
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_loop, name="accord-log-writer", daemon=True)
                    self._writer.start()

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join(timeout=10)
            self._writer = None
        if self._acker is not None:
            self._stop_acking.set()
            self._acker.join(timeout=30)
            self._acker = None
            self.delete_acknowledged()
        if self._acks is not None:
            self._acks.dispose()
            self._acks = None

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            group = [item]
            stop = False
            while len(group) < self.max_group:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                group.append(more)
            self._write_group(group)  # type: ignore[arg-type]
            if stop:
                return

    def _write_group(self, group: list[tuple[NewRecord, Future[None]]]) -> None:
        try:
            payloads = [record.payload or encode_events(record.events) for record, _ in group]
            key_id, cipher = self.keys.current()
            with self.db.unit_of_work() as session:
                seqs = self._next_seqs(session, len(group))
                rows = [
                    {
                        "seq": seq,
                        "source_id": record.source_id,
                        "received_at": record.received_at,
                        "event_count": len(record.events),
                        "payload": seal_bytes(cipher, key_id, payload, payload_aad(seq)),
                    }
                    for seq, (record, _), payload in zip(seqs, group, payloads, strict=True)
                ]
                session.execute(insert(LogRecord), rows)
        except Exception as error:  # every waiting request must hear of the failure; the writer lives on
            for _, future in group:
                future.set_exception(error)
            return
        for _, future in group:
            future.set_result(None)
        self.appended.set()
        for listener in self.listeners:
            listener()

    def _next_seqs(self, session: Session, count: int) -> list[int]:
        """Seqs for `count` new records, before they are written (each payload is bound to its seq). On
        SQLite the transaction holds the file's write lock, so no other writer takes the same ones."""
        if self.db.dialect == "postgresql":
            return sorted(int(seq) for (seq,) in session.execute(_PG_SEQS, {"n": count}))
        # The driver directly: through the ORM this one-row read cost a tenth of a group commit.
        last = int(session.connection().exec_driver_sql(_SQLITE_LAST_SEQ).scalar() or 0)
        return list(range(last + 1, last + 1 + count))

    # -- consuming -------------------------------------------------------------------------------
    @contextmanager
    def claim(self, max_events: int) -> Iterator[Claim]:
        if self.db.dialect == "postgresql":
            # The row locks hold the claim against other workers until this transaction ends.
            with self.db.engine.begin() as connection:
                claim = Claim(self._read(connection, max_events, lock=True))
                yield claim
                if claim.acknowledged:
                    self._delete(connection, claim)
            return
        # SQLite: one worker per database; read without holding the file's write lock meanwhile.
        with self.db.read_connection() as connection:
            claim = Claim(self._read(connection, max_events, lock=False, after=self._claimed_through))
        yield claim
        if not (claim.acknowledged and claim.deliveries):
            return
        if self._durable is None:
            with self._ack_db().engine.begin() as connection:
                self._delete(connection, claim)
            return
        seqs = [d.seq for d in claim.deliveries]
        with self._lock:
            self._undeleted.extend(seqs)
            self._claimed_through = max(self._claimed_through, *seqs)

    def acknowledge_when_durable(self, main: Database, every: float = ACK_SECONDS) -> bool:
        """SQLite: let the worker's commits return without waiting for the disk, and delete the records it
        acknowledges only once its commits are durable: a thread syncs the main database and deletes them
        every `every` seconds, so that a worker run no longer waits for an fsync of its own. Meanwhile the
        worker's claims go on past them. If the machine loses power or the process dies first, the records
        are delivered again and their events dropped as already stored (by messageId) or, for effects the
        lost commits took with them, processed again. False (nothing changed) on PostgreSQL, where a claim
        is deleted in its own transaction, or where `main` cannot commit that way."""
        if self.db.dialect != "sqlite" or self._acker is not None or not main.commit_without_waiting_for_disk():
            return False
        self._durable = main.sync_to_disk
        self._stop_acking.clear()
        self._acker = threading.Thread(target=self._ack_loop, args=(every,), name="accord-log-acks", daemon=True)
        self._acker.start()
        return True

    def _ack_loop(self, every: float) -> None:
        while not self._stop_acking.wait(every):
            try:
                self.delete_acknowledged()
            except Exception as error:  # a busy log file, say: the records wait for the next turn
                log.warning("deleting acknowledged log records failed; retrying", error=type(error).__name__)

    def delete_acknowledged(self) -> int:
        """Make the worker's commits so far durable, then delete the records they acknowledged; returns how
        many. On failure the records stay, and the next call tries them again. A call made while the
        thread is deleting waits for it, so that every record acknowledged before the call is gone when it
        returns."""
        with self._deleting:
            with self._lock:
                seqs, self._undeleted = self._undeleted, []
            if not seqs or self._durable is None:
                return 0
            try:
                self._durable()  # every commit of these records' effects ended before: on disk after this
                with self._ack_db().engine.begin() as connection:
                    connection.execute(_DELETE, {"seqs": seqs})
            except BaseException:
                with self._lock:
                    self._undeleted[:0] = seqs
                raise
            return len(seqs)

    def _ack_db(self) -> Database:
        """SQLite: acknowledgements (deletes of processed records) commit without waiting for the disk
        (synchronous=NORMAL on a connection of their own). Their effects are already durable in the main
        database; if the machine loses a delete, the records come back and the processor drops their
        events as already stored (by messageId). Appends keep the configured durability: an acknowledged
        request is on disk. This saves each batch one of its two fsyncs."""
        if self._acks is None:
            with self._lock:
                if self._acks is None:
                    self._acks = Database(
                        self.db.url,
                        sqlite_synchronous="NORMAL",
                        pool_size=1,
                        autocheckpoint=not self.db.checkpoints_in_background,
                    )
        return self._acks

    def _read(self, connection: Connection, max_events: int, *, lock: bool, after: int = 0) -> list[Delivery]:
        """The oldest records, up to `max_events` events (at least one record). The query asks for about as
        many records as that many events fill, judged by the size of the records read last time: rows
        beyond them would be fetched (their payloads copied out of the database) or, on PostgreSQL, locked
        away from the other workers for nothing."""
        wanted = max(1, max_events)
        limit = min(MAX_CLAIM_RECORDS, max(1, -(-wanted // self._typical_count) + 1))
        deliveries: list[Delivery] = []
        total = 0
        # Core rows, fetched as they are read: the loop stops at the first record that does not fit.
        query = _OLDEST_LOCKED if lock else _OLDEST_AFTER
        for seq, source_id, count, payload in connection.execute(query, {"limit": limit, "after": after}):
            if deliveries and total + count > wanted:
                break
            try:
                events = orjson.loads(self.open(seq, payload))
            except (Undecryptable, orjson.JSONDecodeError) as error:
                if not self._give_up_on((seq, hash(bytes(payload)))):
                    raise  # perhaps passing (a key this process has not seen yet): the worker tries again
                deliveries.append(Delivery(seq, source_id, [], unreadable=str(error), raw=bytes(payload)))
                total += 1
                continue
            deliveries.append(Delivery(seq=seq, source_id=source_id, events=events))
            total += count
        if deliveries:
            self._typical_count = max(1, total // len(deliveries))
        return deliveries

    def _give_up_on(self, record: tuple[int, int]) -> bool:
        """Whether a record (seq, hash of its stored bytes) that failed to open has failed often enough to
        be set aside: a record altered on disk must not stop the log behind it, a key this process has
        not seen yet must not set good records aside."""
        with self._lock:
            self._failures[record] = self._failures.get(record, 0) + 1
            if len(self._failures) > 1000:
                self._failures.pop(next(iter(self._failures)))
            return self._failures[record] >= UNREADABLE_AFTER

    @staticmethod
    def _delete(connection: Connection, claim: Claim) -> None:
        if claim.deliveries:
            connection.execute(_DELETE, {"seqs": [d.seq for d in claim.deliveries]})

    def pending(self) -> int:
        with self.db.read() as session:
            return int(session.scalar(select(func.coalesce(func.sum(LogRecord.event_count), 0))) or 0)
