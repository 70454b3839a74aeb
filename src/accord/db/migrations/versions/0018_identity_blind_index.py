"""identities: personal values (email, phone) stored as a blind index and a ciphertext

Existing rows are converted: `value` becomes the blind index, `value_enc` the value encrypted under the
data key of its profile (made here when missing); merge history names the blind index.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-29 23:10:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from accord.security.crypto import Keyring, aad, is_blind, seal

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PII = ("email", "phone")


def _pii_types(bind: sa.Connection) -> set[str]:
    kinds = set(PII)
    document = bind.execute(sa.text("SELECT document FROM identity_rules ORDER BY version DESC LIMIT 1")).scalar()
    if isinstance(document, str):
        import orjson

        document = orjson.loads(document)
    if isinstance(document, dict):
        for entry in document.get("identifiers", []):
            if isinstance(entry, dict) and entry.get("normalise") in PII:
                kinds.add(str(entry.get("type")))
    return kinds


def upgrade() -> None:
    with op.batch_alter_table("identities") as batch:
        batch.add_column(sa.Column("value_enc", sa.Text(), nullable=True))
    bind = op.get_bind()
    kinds = sorted(_pii_types(bind))
    rows = [
        r
        for r in bind.execute(
            sa.text(
                "SELECT type, value, profile_id, home_id, cluster_id FROM identities WHERE type IN :kinds"
            ).bindparams(sa.bindparam("kinds", expanding=True)),
            {"kinds": kinds},
        ).all()
        if not is_blind(r[1])
    ]
    merges = [
        r
        for r in bind.execute(
            sa.text(
                "SELECT DISTINCT identity_type, identity_value FROM merges WHERE identity_type IN :kinds"
            ).bindparams(sa.bindparam("kinds", expanding=True)),
            {"kinds": kinds},
        ).all()
        if r[1] is not None and not is_blind(r[1])
    ]
    if not rows and not merges:
        return
    keyring = context.config.attributes.get("keyring")
    if not isinstance(keyring, Keyring):
        raise RuntimeError("encrypting existing identifiers needs the key files: run `accord migrate`")
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

    for kind, value, profile_id, home_id, cluster_id in rows:
        owner = profile_id or home_id or cluster_id or "unowned"
        token = keyring.blind(kind, value)
        sealed = seal(cipher(owner), owner, value.encode(), aad("identities", kind, token))
        bind.execute(
            sa.text("UPDATE identities SET value = :token, value_enc = :sealed WHERE type = :type AND value = :value"),
            {"token": token, "sealed": sealed, "type": kind, "value": value},
        )
    for kind, value in merges:
        bind.execute(
            sa.text(
                "UPDATE merges SET identity_value = :token WHERE identity_type = :type AND identity_value = :value"
            ),
            {"token": keyring.blind(kind, value), "type": kind, "value": value},
        )


def downgrade() -> None:
    with op.batch_alter_table("identities") as batch:
        batch.drop_column("value_enc")
