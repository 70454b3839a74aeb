"""console: agents' notes about a customer are sealed under the customer's data key

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-30 03:20:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from accord.security.crypto import Keyring, aad, is_ciphertext, key_id_of, open_sealed, seal

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOTES = sa.table(
    "profile_notes", sa.column("id", sa.BigInteger), sa.column("profile_id", sa.String), sa.column("text", sa.Text)
)


def _keyring() -> Keyring:
    keyring = context.config.attributes.get("keyring")
    if not isinstance(keyring, Keyring):
        raise RuntimeError("sealing notes needs the key files: run `accord migrate`")
    return keyring


def _update(updates: list[dict[str, Any]]) -> None:
    if updates:
        op.get_bind().execute(
            NOTES.update().where(NOTES.c.id == sa.bindparam("i")).values(text=sa.bindparam("t")), updates
        )


def _cipher(ciphers: dict[str, Any], key_id: str, *, create: bool) -> Any:
    bind = op.get_bind()
    if key_id not in ciphers:
        found = bind.execute(sa.text("SELECT kek_id, wrapped FROM data_keys WHERE id = :id"), {"id": key_id}).first()
        if found is None:
            if not create:
                return None
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


def upgrade() -> None:
    rows = [r for r in op.get_bind().execute(sa.select(NOTES)).all() if not is_ciphertext(r[2])]
    ciphers: dict[str, Any] = {}
    _update(
        [
            {
                "i": i,
                "t": seal(
                    _cipher(ciphers, profile_id, create=True),
                    profile_id,
                    text.encode(),
                    aad("profile_notes", "text", str(i)),
                ),
            }
            for i, profile_id, text in rows
        ]
    )


def downgrade() -> None:
    """Open the sealed notes again (the code before 0024 reads clear ones only); a shredded one stays sealed."""
    rows = [r for r in op.get_bind().execute(sa.select(NOTES)).all() if is_ciphertext(r[2])]
    ciphers: dict[str, Any] = {}
    updates = []
    for i, _, token in rows:
        cipher = _cipher(ciphers, key_id_of(token), create=False)
        if cipher is not None:
            updates.append({"i": i, "t": open_sealed(cipher, token, aad("profile_notes", "text", str(i))).decode()})
    _update(updates)
