"""quarantine: events that failed processing are sealed under the log key

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-30 03:10:00
"""

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from accord.security.crypto import Keyring, aad, is_ciphertext, key_id_of, open_sealed, seal

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
QUARANTINE = sa.table(
    "quarantine",
    sa.column("id", sa.BigInteger),
    sa.column("source_id", sa.String),
    sa.column("message_id", sa.String),
    sa.column("payload", JSON),
)


def _keyring() -> Keyring:
    keyring = context.config.attributes.get("keyring")
    if not isinstance(keyring, Keyring):
        raise RuntimeError("sealing the quarantine needs the key files: run `accord migrate`")
    return keyring


def _sealed(payload: Any) -> bool:
    return isinstance(payload, dict) and len(payload) == 1 and is_ciphertext(payload.get("sealed"))


def _where(source_id: str, message_id: str) -> bytes:
    return aad("quarantine", "payload", f"{source_id}\0{message_id}")


def _update(updates: list[dict[str, Any]]) -> None:
    if updates:
        op.get_bind().execute(
            QUARANTINE.update().where(QUARANTINE.c.id == sa.bindparam("i")).values(payload=sa.bindparam("p")), updates
        )


def upgrade() -> None:
    bind = op.get_bind()
    rows = [r for r in bind.execute(sa.select(QUARANTINE)).all() if not _sealed(r[3])]
    if not rows:
        return
    keyring = _keyring()
    found = bind.execute(
        sa.text("SELECT id, kek_id, wrapped FROM data_keys WHERE id LIKE 'log-%' ORDER BY created_at DESC, id DESC")
    ).first()
    if found is None:
        key_id = f"log-{secrets.token_hex(16)}"
        cipher, kek_id, wrapped = keyring.new_data_key(key_id)
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
    else:
        key_id = found[0]
        cipher = keyring.cipher(key_id, found[1], bytes(found[2]))
    _update(
        [
            {"i": i, "p": {"sealed": seal(cipher, key_id, orjson.dumps(payload), _where(source_id, message_id))}}
            for i, source_id, message_id, payload in rows
        ]
    )


def downgrade() -> None:
    """Open the sealed events again (the code before 0023 reads clear ones only)."""
    bind = op.get_bind()
    rows = [r for r in bind.execute(sa.select(QUARANTINE)).all() if _sealed(r[3])]
    ciphers: dict[str, Any] = {}
    updates = []
    for i, source_id, message_id, payload in rows:
        token = payload["sealed"]
        key_id = key_id_of(token)
        if key_id not in ciphers:
            found = bind.execute(sa.text("SELECT kek_id, wrapped FROM data_keys WHERE id = :id"), {"id": key_id}).one()
            ciphers[key_id] = _keyring().cipher(key_id, found[0], bytes(found[1]))
        updates.append({"i": i, "p": orjson.loads(open_sealed(ciphers[key_id], token, _where(source_id, message_id)))})
    _update(updates)
