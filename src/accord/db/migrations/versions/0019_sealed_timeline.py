"""timeline: payloads stored before encryption at rest are encrypted under their profile's data key

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-29 23:30:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from accord.security.crypto import Keyring, aad, is_ciphertext, key_id_of, open_sealed, seal

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
EVENTS = sa.table(
    "events",
    sa.column("id", sa.BigInteger),
    sa.column("profile_id", sa.String),
    sa.column("source_id", sa.String),
    sa.column("message_id", sa.String),
    sa.column("payload", JSON),
)
BATCH = 1000


def upgrade() -> None:
    bind = op.get_bind()
    keyring = context.config.attributes.get("keyring")
    ciphers: dict[str, Any] = {}
    now = datetime.now(UTC)
    if bind.dialect.name == "sqlite":
        now = now.replace(tzinfo=None)

    def cipher(owner: str) -> Any:
        if owner not in ciphers:
            found = bind.execute(sa.text("SELECT kek_id, wrapped FROM data_keys WHERE id = :id"), {"id": owner}).first()
            if found is None:
                made, kek_id, wrapped = keyring.new_data_key(owner)
                bind.execute(
                    sa.text("INSERT INTO data_keys (id, kek_id, wrapped, created_at) VALUES (:id, :kek, :w, :at)"),
                    {"id": owner, "kek": kek_id, "w": wrapped, "at": now},
                )
                ciphers[owner] = made
            else:
                ciphers[owner] = keyring.cipher(owner, found[0], bytes(found[1]))
        return ciphers[owner]

    last = 0
    while True:
        rows = bind.execute(
            sa.select(EVENTS.c.id, EVENTS.c.profile_id, EVENTS.c.source_id, EVENTS.c.message_id, EVENTS.c.payload)
            .where(EVENTS.c.id > last)
            .order_by(EVENTS.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        last = rows[-1][0]
        updates = []
        for event_id, profile_id, source_id, message_id, payload in rows:
            if isinstance(payload, dict) and len(payload) == 1 and is_ciphertext(payload.get("sealed")):
                continue
            if not isinstance(keyring, Keyring):
                raise RuntimeError("encrypting the stored timeline needs the key files: run `accord migrate`")
            where = aad("events", "payload", f"{source_id}\0{message_id}")
            sealed = seal(cipher(profile_id), profile_id, orjson.dumps(payload), where)
            updates.append({"event_id": event_id, "sealed": {"sealed": sealed}})
        if updates:
            bind.execute(
                EVENTS.update().where(EVENTS.c.id == sa.bindparam("event_id")).values(payload=sa.bindparam("sealed")),
                updates,
            )


def downgrade() -> None:
    """Open the sealed payloads again (the code before 0016 reads plain ones only)."""
    bind = op.get_bind()
    keyring = context.config.attributes.get("keyring")
    last = 0
    while True:
        rows = bind.execute(
            sa.select(EVENTS.c.id, EVENTS.c.source_id, EVENTS.c.message_id, EVENTS.c.payload)
            .where(EVENTS.c.id > last)
            .order_by(EVENTS.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        last = rows[-1][0]
        updates = []
        for event_id, source_id, message_id, payload in rows:
            if not (isinstance(payload, dict) and len(payload) == 1 and is_ciphertext(payload.get("sealed"))):
                continue
            if not isinstance(keyring, Keyring):
                raise RuntimeError("opening the stored timeline needs the key files: run `accord migrate`")
            token = payload["sealed"]
            key_id = key_id_of(token)
            found = bind.execute(
                sa.text("SELECT kek_id, wrapped FROM data_keys WHERE id = :id"), {"id": key_id}
            ).first()
            if found is None:
                continue  # shredded: nothing to open
            where = aad("events", "payload", f"{source_id}\0{message_id}")
            plain = open_sealed(keyring.cipher(key_id, found[0], bytes(found[1])), token, where)
            updates.append({"event_id": event_id, "plain": orjson.loads(plain)})
        if updates:
            bind.execute(
                EVENTS.update().where(EVENTS.c.id == sa.bindparam("event_id")).values(payload=sa.bindparam("plain")),
                updates,
            )
