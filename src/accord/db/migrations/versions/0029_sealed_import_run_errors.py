"""a failed import run's error is sealed under the run's key, and schedules no longer copy it

The reader's or DuckDB's message about an input as a whole (a file that does not parse, a value a column
cannot take, a table query that fails) can quote a value of the input. `import_runs.error` is sealed under the
run's data key (`rej-...`, the key of its rejected rows, made when the run has none), bound to
(`import_runs`, `error`, run id). A table schedule's `last_result` ended with a copy of its failed run's error;
it now ends with where to read it (`accord import show <run>`). The downgrade opens the errors and puts the
copies back.

Revision ID: 0029
Revises: 0028
Create Date: 2026-11-30 06:05:00
"""

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from accord.security.crypto import Keyring, Undecryptable, aad, is_ciphertext, key_id_of, open_sealed, seal

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNS = sa.table("import_runs", sa.column("id", sa.String), sa.column("error", sa.Text))
SCHEDULES = sa.table(
    "schedules",
    sa.column("name", sa.String),
    sa.column("kind", sa.String),
    sa.column("last_status", sa.String),
    sa.column("last_result", sa.Text),
)
# As accord.sources.imports.PURGED_ERROR and accord.sources.schedules.ERROR_WITH_RUN at this revision.
PURGED_ERROR = "(removed with the run's rejects after their retention: it could quote the input)"
ERROR_WITH_RUN = "the error is kept with the run: accord import show "
BATCH = 1000


def _keyring() -> Keyring:
    keyring = context.config.attributes.get("keyring")
    if not isinstance(keyring, Keyring):
        raise RuntimeError("sealing import run errors needs the key files: run `accord migrate`")
    return keyring


def _ciphers() -> Callable[[str], Any]:
    """A data key's cipher by id (None when it was destroyed), made and stored when asked to."""
    bind = op.get_bind()
    ciphers: dict[str, Any] = {}

    def cipher(key_id: str, *, create: bool = False) -> Any:
        if ciphers.get(key_id) is None:
            found = bind.execute(
                sa.text("SELECT kek_id, wrapped FROM data_keys WHERE id = :id"), {"id": key_id}
            ).first()
            if found is not None:
                ciphers[key_id] = _keyring().cipher(key_id, found[0], bytes(found[1]))
            elif create:
                made, kek_id, wrapped = _keyring().new_data_key(key_id)
                now = datetime.now(UTC)
                bind.execute(
                    sa.text("INSERT INTO data_keys (id, kek_id, wrapped, created_at) VALUES (:id, :kek, :w, :at)"),
                    {
                        "id": key_id,
                        "kek": kek_id,
                        "w": wrapped,
                        "at": now.replace(tzinfo=None) if bind.dialect.name == "sqlite" else now,
                    },
                )
                ciphers[key_id] = made
            else:
                ciphers[key_id] = None
        return ciphers[key_id]

    return cipher


def _run_key(run_id: str) -> str:
    return "rej-" + hashlib.sha256(run_id.encode()).hexdigest()[:32]


def _where(run_id: str) -> bytes:
    return aad("import_runs", "error", run_id)


def _runs_with_errors() -> list[tuple[str, str]]:
    query = sa.select(RUNS.c.id, RUNS.c.error).where(RUNS.c.error.is_not(None)).order_by(RUNS.c.id)
    return [(str(i), str(e)) for i, e in op.get_bind().execute(query)]


def _set_errors(updates: list[dict[str, Any]]) -> None:
    for start in range(0, len(updates), BATCH):
        op.get_bind().execute(
            RUNS.update().where(RUNS.c.id == sa.bindparam("i")).values(error=sa.bindparam("v")),
            updates[start : start + BATCH],
        )


def _failed_table_results() -> list[tuple[str, str]]:
    query = sa.select(SCHEDULES.c.name, SCHEDULES.c.last_result).where(
        SCHEDULES.c.kind == "table", SCHEDULES.c.last_status == "failed", SCHEDULES.c.last_result.like("run %")
    )
    return [(str(n), str(r)) for n, r in op.get_bind().execute(query)]


def _set_results(updates: list[dict[str, Any]]) -> None:
    if updates:
        op.get_bind().execute(
            SCHEDULES.update().where(SCHEDULES.c.name == sa.bindparam("n")).values(last_result=sa.bindparam("v")),
            updates,
        )


def upgrade() -> None:
    cipher = _ciphers()
    updates = []
    for run_id, error in _runs_with_errors():
        if is_ciphertext(error):
            continue
        key_id = _run_key(run_id)
        value = seal(cipher(key_id, create=True), key_id, error.encode(), _where(run_id))
        updates.append({"i": run_id, "v": value})
    _set_errors(updates)
    # "run <id>: read N, imported N, rejected N; <the run's error>" keeps the counts and points to the run.
    results = []
    for name, result in _failed_table_results():
        summary, sep, rest = result.partition("; ")
        run_id = summary[len("run ") :].partition(":")[0]
        if sep and not rest.startswith(ERROR_WITH_RUN):
            results.append({"n": name, "v": f"{summary}; {ERROR_WITH_RUN}{run_id}"})
    _set_results(results)


def downgrade() -> None:
    """Open the sealed errors (one whose key was destroyed reads as the purge placeholder) and put each failed
    run's error back into its schedule's result."""
    cipher = _ciphers()
    opened: dict[str, str] = {}
    for run_id, error in _runs_with_errors():
        if not is_ciphertext(error):
            opened[run_id] = error
            continue
        found = cipher(key_id_of(error))
        try:
            opened[run_id] = PURGED_ERROR if found is None else open_sealed(found, error, _where(run_id)).decode()
        except Undecryptable:
            opened[run_id] = PURGED_ERROR
    _set_errors([{"i": i, "v": v} for i, v in opened.items()])
    results = []
    for name, result in _failed_table_results():
        summary, _, rest = result.partition("; ")
        if rest.startswith(ERROR_WITH_RUN) and rest[len(ERROR_WITH_RUN) :] in opened:
            results.append({"n": name, "v": f"{summary}; {opened[rest[len(ERROR_WITH_RUN) :]]}"[:2000]})
    _set_results(results)
