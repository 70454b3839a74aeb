"""import rejects: the rows and lines kept from import runs are sealed under a data key per run

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-30 02:45:00
"""

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from accord.security.crypto import Keyring, aad, is_ciphertext, key_id_of, open_sealed, seal

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
REJECTS = sa.table(
    "import_rejects",
    sa.column("id", sa.BigInteger),
    sa.column("run_id", sa.String),
    sa.column("origin", sa.String),
    sa.column("position", sa.BigInteger),
    sa.column("row", JSON),
    sa.column("text", sa.Text),
)
BATCH = 1000


def _keyring() -> Keyring:
    keyring = context.config.attributes.get("keyring")
    if not isinstance(keyring, Keyring):
        raise RuntimeError("sealing import rejects needs the key files: run `accord migrate`")
    return keyring


def _where(field: str, run_id: str, origin: str, position: int) -> bytes:
    return aad("import_rejects", field, f"{run_id}\0{origin}\0{position}")


def _sealed_row(row: Any) -> bool:
    return isinstance(row, dict) and len(row) == 1 and is_ciphertext(row.get("sealed"))


def _batches() -> Any:
    last = 0
    while True:
        rows = (
            op.get_bind()
            .execute(sa.select(REJECTS).where(REJECTS.c.id > last).order_by(REJECTS.c.id).limit(BATCH))
            .all()
        )
        if not rows:
            return
        last = rows[-1][0]
        yield rows


def upgrade() -> None:
    bind = op.get_bind()
    ciphers: dict[str, Any] = {}
    now = datetime.now(UTC)
    if bind.dialect.name == "sqlite":
        now = now.replace(tzinfo=None)

    def cipher(key_id: str) -> Any:
        if key_id not in ciphers:
            found = bind.execute(
                sa.text("SELECT kek_id, wrapped FROM data_keys WHERE id = :id"), {"id": key_id}
            ).first()
            if found is None:
                made, kek_id, wrapped = _keyring().new_data_key(key_id)
                bind.execute(
                    sa.text("INSERT INTO data_keys (id, kek_id, wrapped, created_at) VALUES (:id, :kek, :w, :at)"),
                    {"id": key_id, "kek": kek_id, "w": wrapped, "at": now},
                )
                ciphers[key_id] = made
            else:
                ciphers[key_id] = _keyring().cipher(key_id, found[0], bytes(found[1]))
        return ciphers[key_id]

    for rows in _batches():
        updates = []
        for reject_id, run_id, origin, position, row, line in rows:
            if (row is None or _sealed_row(row)) and (line is None or is_ciphertext(line)):
                continue
            key_id = "rej-" + hashlib.sha256(run_id.encode()).hexdigest()[:32]
            if row is not None and not _sealed_row(row):
                row = {
                    "sealed": seal(cipher(key_id), key_id, orjson.dumps(row), _where("row", run_id, origin, position))
                }
            if line is not None and not is_ciphertext(line):
                line = seal(cipher(key_id), key_id, line.encode(), _where("text", run_id, origin, position))
            updates.append({"i": reject_id, "r": row, "t": line})
        if updates:
            bind.execute(
                REJECTS.update()
                .where(REJECTS.c.id == sa.bindparam("i"))
                .values(row=sa.bindparam("r"), text=sa.bindparam("t")),
                updates,
            )


def downgrade() -> None:
    """Open the sealed rejects again (the code before 0021 reads clear ones only)."""
    bind = op.get_bind()
    ciphers: dict[str, Any] = {}

    def cipher(key_id: str) -> Any:
        if key_id not in ciphers:
            found = bind.execute(sa.text("SELECT kek_id, wrapped FROM data_keys WHERE id = :id"), {"id": key_id}).one()
            ciphers[key_id] = _keyring().cipher(key_id, found[0], bytes(found[1]))
        return ciphers[key_id]

    for rows in _batches():
        updates = []
        for reject_id, run_id, origin, position, row, line in rows:
            if not _sealed_row(row) and not is_ciphertext(line):
                continue
            if _sealed_row(row):
                token = row["sealed"]
                row = orjson.loads(
                    open_sealed(cipher(key_id_of(token)), token, _where("row", run_id, origin, position))
                )
            if is_ciphertext(line):
                line = open_sealed(cipher(key_id_of(line)), line, _where("text", run_id, origin, position)).decode()
            updates.append({"i": reject_id, "r": row, "t": line})
        if updates:
            bind.execute(
                REJECTS.update()
                .where(REJECTS.c.id == sa.bindparam("i"))
                .values(row=sa.bindparam("r"), text=sa.bindparam("t")),
                updates,
            )
