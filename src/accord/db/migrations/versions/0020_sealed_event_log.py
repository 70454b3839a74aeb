"""event log: payloads waiting in the log are sealed under a log key (PostgreSQL; on SQLite the log is a
file of its own, sealed by `SqlEventLog.ensure_file_schema`)

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-30 02:30:00
"""

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import context, op

from accord.security.crypto import BINARY_PREFIX, Keyring, aad, binary_key_id, open_bytes, seal_bytes

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOG = sa.table("event_log", sa.column("seq", sa.BigInteger), sa.column("payload", sa.LargeBinary))
BATCH = 1000


def _keyring() -> Keyring:
    keyring = context.config.attributes.get("keyring")
    if not isinstance(keyring, Keyring):
        raise RuntimeError("sealing the event log needs the key files: run `accord migrate`")
    return keyring


def _records() -> list[tuple[int, bytes]]:
    return [(seq, bytes(payload)) for seq, payload in op.get_bind().execute(sa.select(LOG.c.seq, LOG.c.payload))]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        return
    clear = [(seq, payload) for seq, payload in _records() if not payload.startswith(BINARY_PREFIX)]
    if not clear:
        return
    keyring = _keyring()
    key_id = f"log-{secrets.token_hex(16)}"
    cipher, kek_id, wrapped = keyring.new_data_key(key_id)
    bind.execute(
        sa.text("INSERT INTO data_keys (id, kek_id, wrapped, created_at) VALUES (:id, :kek, :w, :at)"),
        {"id": key_id, "kek": kek_id, "w": wrapped, "at": datetime.now(UTC)},
    )
    for start in range(0, len(clear), BATCH):
        bind.execute(
            LOG.update().where(LOG.c.seq == sa.bindparam("s")).values(payload=sa.bindparam("p")),
            [
                {"s": seq, "p": seal_bytes(cipher, key_id, payload, aad("event_log", "payload", str(seq)))}
                for seq, payload in clear[start : start + BATCH]
            ],
        )


def downgrade() -> None:
    """Open the sealed payloads again (the code before 0020 reads clear ones only)."""
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        return
    keyring = None
    ciphers = {}
    updates = []
    for seq, payload in _records():
        if not payload.startswith(BINARY_PREFIX):
            continue
        keyring = keyring or _keyring()
        key_id = binary_key_id(payload)
        if key_id not in ciphers:
            found = bind.execute(sa.text("SELECT kek_id, wrapped FROM data_keys WHERE id = :id"), {"id": key_id}).one()
            ciphers[key_id] = keyring.cipher(key_id, found[0], bytes(found[1]))
        plain = open_bytes(ciphers[key_id], payload, aad("event_log", "payload", str(seq)))
        updates.append({"s": seq, "p": plain})
    if updates:
        bind.execute(LOG.update().where(LOG.c.seq == sa.bindparam("s")).values(payload=sa.bindparam("p")), updates)
