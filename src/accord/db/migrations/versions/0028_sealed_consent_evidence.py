"""consent: the evidence of each ledger record is sealed under the data key of the record's profile

The ledger's digests cover the canonical plaintext and do not change: the chain verifies as before, and
verification now opens each evidence to compare it. Rows are converted in batches, keyed by record id.

Revision ID: 0028
Revises: 0027
Create Date: 2026-11-30 05:40:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from accord.security.crypto import BINARY_PREFIX, Keyring, Undecryptable, aad, binary_key_id, open_bytes, seal_bytes

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVIDENCE = sa.table(
    "consent_evidence",
    sa.column("record_id", sa.String),
    sa.column("profile_id", sa.String),
    sa.column("body", sa.LargeBinary),
)
BATCH = 2000


def _keyring() -> Keyring:
    keyring = context.config.attributes.get("keyring")
    if not isinstance(keyring, Keyring):
        raise RuntimeError("sealing consent evidence needs the key files: run `accord migrate`")
    return keyring


def _where(record_id: str) -> bytes:
    return aad("consent_evidence", "body", record_id)


def _ciphers(bind: sa.Connection, keyring: Keyring) -> Any:
    """`cipher(key_id, create=...)`: a data key's cipher, read once; None when it is gone (unless made)."""
    ciphers: dict[str, Any] = {}
    now = datetime.now(UTC)
    if bind.dialect.name == "sqlite":
        now = now.replace(tzinfo=None)

    def cipher(key_id: str, *, create: bool) -> Any:
        if key_id not in ciphers:
            found = bind.execute(
                sa.text("SELECT kek_id, wrapped FROM data_keys WHERE id = :id"), {"id": key_id}
            ).first()
            if found is not None:
                ciphers[key_id] = keyring.cipher(key_id, found[0], bytes(found[1]))
            elif create:
                made, kek_id, wrapped = keyring.new_data_key(key_id)
                bind.execute(
                    sa.text("INSERT INTO data_keys (id, kek_id, wrapped, created_at) VALUES (:id, :kek, :w, :at)"),
                    {"id": key_id, "kek": kek_id, "w": wrapped, "at": now},
                )
                ciphers[key_id] = made
            else:
                ciphers[key_id] = None
        return ciphers[key_id]

    return cipher


def _batches(bind: sa.Connection) -> Any:
    """The evidence rows, BATCH at a time, in record id order (each batch read after the one before is
    rewritten)."""
    after = ""
    while True:
        rows = bind.execute(
            sa.select(EVIDENCE.c.record_id, EVIDENCE.c.profile_id, EVIDENCE.c.body)
            .where(EVIDENCE.c.record_id > after)
            .order_by(EVIDENCE.c.record_id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        yield [(record_id, profile_id, bytes(body)) for record_id, profile_id, body in rows]
        after = rows[-1][0]


def _update(bind: sa.Connection, updates: list[dict[str, Any]]) -> None:
    if updates:
        bind.execute(
            EVIDENCE.update().where(EVIDENCE.c.record_id == sa.bindparam("r")).values(body=sa.bindparam("b")), updates
        )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.execute(sa.select(EVIDENCE.c.record_id).limit(1)).first() is None:
        return  # nothing stored: no key files needed
    cipher = _ciphers(bind, _keyring())
    for rows in _batches(bind):
        _update(
            bind,
            [
                {"r": record_id, "b": seal_bytes(cipher(profile_id, create=True), profile_id, body, _where(record_id))}
                for record_id, profile_id, body in rows
                if not body.startswith(BINARY_PREFIX)
            ],
        )


def downgrade() -> None:
    """Open the sealed evidence again (the code before 0026 reads clear evidence only). One whose data key
    is gone, or that does not open, stays as it is."""
    bind = op.get_bind()
    if bind.execute(sa.select(EVIDENCE.c.record_id).limit(1)).first() is None:
        return
    cipher = _ciphers(bind, _keyring())
    for rows in _batches(bind):
        updates = []
        for record_id, _, body in rows:
            if not body.startswith(BINARY_PREFIX):
                continue
            try:
                found = cipher(binary_key_id(body), create=False)
                if found is not None:
                    updates.append({"r": record_id, "b": open_bytes(found, body, _where(record_id))})
            except Undecryptable:
                continue
        _update(bind, updates)
