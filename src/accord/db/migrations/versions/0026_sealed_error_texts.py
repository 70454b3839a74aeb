"""error texts: a quarantined event's error and a rejected import row's reason are sealed like their rows

Both may quote the value that failed ("field points: 'abc' is not an integer"). The quarantine's error is
sealed under the log key that sealed its event, bound to (`quarantine`, `error`, source and messageId); a
reject's reason under its run's key, bound to (`import_rejects`, `reason`, run, origin, position).

Revision ID: 0026
Revises: 0025
Create Date: 2026-11-30 05:40:00
"""

import hashlib
import secrets
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from accord.security.crypto import Keyring, aad, is_ciphertext, key_id_of, open_sealed, seal

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
QUARANTINE = sa.table(
    "quarantine",
    sa.column("id", sa.BigInteger),
    sa.column("source_id", sa.String),
    sa.column("message_id", sa.String),
    sa.column("payload", JSON),
    sa.column("error", sa.Text),
)
REJECTS = sa.table(
    "import_rejects",
    sa.column("id", sa.BigInteger),
    sa.column("run_id", sa.String),
    sa.column("origin", sa.String),
    sa.column("position", sa.BigInteger),
    sa.column("reason", sa.Text),
)
BATCH = 1000


def _keyring() -> Keyring:
    keyring = context.config.attributes.get("keyring")
    if not isinstance(keyring, Keyring):
        raise RuntimeError("sealing error texts needs the key files: run `accord migrate`")
    return keyring


def _ciphers() -> Callable[[str], Any]:
    """A data key's cipher by id, made (and stored) when it does not exist."""
    bind = op.get_bind()
    ciphers: dict[str, Any] = {}

    def cipher(key_id: str) -> Any:
        if key_id not in ciphers:
            found = bind.execute(
                sa.text("SELECT kek_id, wrapped FROM data_keys WHERE id = :id"), {"id": key_id}
            ).first()
            if found is None:
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
                ciphers[key_id] = _keyring().cipher(key_id, found[0], bytes(found[1]))
        return ciphers[key_id]

    return cipher


def _batches(table: Any) -> Iterator[Sequence[Any]]:
    last = 0
    while True:
        rows = op.get_bind().execute(sa.select(table).where(table.c.id > last).order_by(table.c.id).limit(BATCH)).all()
        if not rows:
            return
        last = rows[-1][0]
        yield rows


def _quarantine_where(source_id: str, message_id: str) -> bytes:
    return aad("quarantine", "error", f"{source_id}\0{message_id}")


def _reject_where(run_id: str, origin: str, position: int) -> bytes:
    return aad("import_rejects", "reason", f"{run_id}\0{origin}\0{position}")


def _reject_key(run_id: str) -> str:
    return "rej-" + hashlib.sha256(run_id.encode()).hexdigest()[:32]


def _log_key() -> str:
    """The newest log key (for an event whose payload names none), made when there is none."""
    found = (
        op.get_bind()
        .execute(sa.text("SELECT id FROM data_keys WHERE id LIKE 'log-%' ORDER BY created_at DESC, id DESC"))
        .first()
    )
    return str(found[0]) if found is not None else f"log-{secrets.token_hex(16)}"


def _set(table: Any, column: str, updates: list[dict[str, Any]]) -> None:
    if updates:
        op.get_bind().execute(
            table.update().where(table.c.id == sa.bindparam("i")).values({column: sa.bindparam("v")}), updates
        )


def upgrade() -> None:
    cipher = _ciphers()
    for rows in _batches(QUARANTINE):
        updates = []
        for i, source_id, message_id, payload, error in rows:
            if is_ciphertext(error):
                continue
            sealed = payload.get("sealed") if isinstance(payload, dict) else None
            key_id = key_id_of(sealed) if is_ciphertext(sealed) else _log_key()
            value = seal(cipher(key_id), key_id, error.encode(), _quarantine_where(source_id, message_id))
            updates.append({"i": i, "v": value})
        _set(QUARANTINE, "error", updates)
    for rows in _batches(REJECTS):
        updates = []
        for i, run_id, origin, position, reason in rows:
            if is_ciphertext(reason):
                continue
            key_id = _reject_key(run_id)
            value = seal(cipher(key_id), key_id, reason.encode(), _reject_where(run_id, origin, position))
            updates.append({"i": i, "v": value})
        _set(REJECTS, "reason", updates)


def downgrade() -> None:
    """Open the sealed error texts again (the code before 0026 reads clear ones only)."""
    cipher = _ciphers()
    for rows in _batches(QUARANTINE):
        updates = [
            {
                "i": i,
                "v": open_sealed(cipher(key_id_of(error)), error, _quarantine_where(source_id, message_id)).decode(),
            }
            for i, source_id, message_id, _, error in rows
            if is_ciphertext(error)
        ]
        _set(QUARANTINE, "error", updates)
    for rows in _batches(REJECTS):
        updates = [
            {
                "i": i,
                "v": open_sealed(cipher(key_id_of(reason)), reason, _reject_where(run_id, origin, position)).decode(),
            }
            for i, run_id, origin, position, reason in rows
            if is_ciphertext(reason)
        ]
        _set(REJECTS, "reason", updates)
