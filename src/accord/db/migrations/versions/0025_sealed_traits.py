"""profiles: personal traits stored as one ciphertext under the profile's data key; a name-word index

Existing rows are converted: the personal traits (by name, and those a mapping flags `pii: true`) leave
`traits` for `traits_enc`, encrypted under the profile's data key (made here when missing), and the words
of each live profile's name are indexed blind in `profile_words`.

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-30 02:30:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from accord.security.crypto import Keyring, aad, is_ciphertext, key_id_of, open_sealed, seal

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
PROFILES = sa.table(
    "profiles",
    sa.column("id", sa.String),
    sa.column("merged_into", sa.String),
    sa.column("traits", JSON),
    sa.column("traits_enc", sa.Text),
)
MAPPINGS = (
    sa.table("import_runs", sa.column("mapping", JSON)).c.mapping,
    sa.table("source_mappings", sa.column("document", JSON)).c.document,
)
BATCH = 1000


def _ciphers(bind: sa.Connection, keyring: Any) -> Any:
    ciphers: dict[str, Any] = {}
    now = datetime.now(UTC)
    if bind.dialect.name == "sqlite":
        now = now.replace(tzinfo=None)

    def cipher(owner: str, *, create: bool) -> Any:
        if owner not in ciphers:
            found = bind.execute(sa.text("SELECT kek_id, wrapped FROM data_keys WHERE id = :id"), {"id": owner}).first()
            if found is not None:
                ciphers[owner] = keyring.cipher(owner, found[0], bytes(found[1]))
            elif create:
                made, kek_id, wrapped = keyring.new_data_key(owner)
                bind.execute(
                    sa.text("INSERT INTO data_keys (id, kek_id, wrapped, created_at) VALUES (:id, :kek, :w, :at)"),
                    {"id": owner, "kek": kek_id, "w": wrapped, "at": now},
                )
                ciphers[owner] = made
            else:
                return None
        return ciphers[owner]

    return cipher


def upgrade() -> None:
    from accord.profiles.private import WORD_KIND, Personal, _flags, name_words, split

    op.add_column("profiles", sa.Column("traits_enc", sa.Text(), nullable=True))
    op.create_table(
        "profile_words",
        sa.Column("word", sa.String(length=60), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint("word", "profile_id", name=op.f("pk_profile_words")),
    )
    op.create_index(op.f("ix_profile_words_profile_id"), "profile_words", ["profile_id"], unique=False)
    bind = op.get_bind()
    keyring = context.config.attributes.get("keyring")
    flagged: set[str] = set()
    seen: set[bytes] = set()
    for column in MAPPINGS:
        documents = bind.execute(sa.select(column)).scalars()
        _flags((orjson.loads(d) if isinstance(d, str) else d for d in documents), flagged, seen)
    personal = Personal(frozenset(flagged))
    cipher = _ciphers(bind, keyring)
    last = ""
    while True:
        rows = bind.execute(
            sa.select(PROFILES.c.id, PROFILES.c.merged_into, PROFILES.c.traits)
            .where(PROFILES.c.id > last, PROFILES.c.traits_enc.is_(None))
            .order_by(PROFILES.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        last = rows[-1][0]
        updates, words = [], []
        for profile_id, merged_into, traits in rows:
            clear, private = split(traits or {}, personal)
            if not private:
                continue
            if not isinstance(keyring, Keyring):
                raise RuntimeError("encrypting the stored traits needs the key files: run `accord migrate`")
            where = aad("profiles", "traits_enc", profile_id)
            sealed = seal(cipher(profile_id, create=True), profile_id, orjson.dumps(private), where)
            updates.append({"pid": profile_id, "clear": clear, "sealed": sealed})
            if merged_into is None:
                words += [{"word": keyring.blind(WORD_KIND, w), "pid": profile_id} for w in sorted(name_words(private))]
        if updates:
            bind.execute(
                PROFILES.update()
                .where(PROFILES.c.id == sa.bindparam("pid"))
                .values(traits=sa.bindparam("clear"), traits_enc=sa.bindparam("sealed")),
                updates,
            )
        if words:
            bind.execute(sa.text("INSERT INTO profile_words (word, profile_id) VALUES (:word, :pid)"), words)


def downgrade() -> None:
    """Put the personal traits back into `traits` (the code before 0025 reads them there only)."""
    bind = op.get_bind()
    keyring = context.config.attributes.get("keyring")
    cipher = _ciphers(bind, keyring)
    last = ""
    while True:
        rows = bind.execute(
            sa.select(PROFILES.c.id, PROFILES.c.traits, PROFILES.c.traits_enc)
            .where(PROFILES.c.id > last, PROFILES.c.traits_enc.is_not(None))
            .order_by(PROFILES.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        last = rows[-1][0]
        updates = []
        for profile_id, traits, token in rows:
            if not is_ciphertext(token):
                continue
            if not isinstance(keyring, Keyring):
                raise RuntimeError("opening the stored traits needs the key files: run `accord migrate`")
            found = cipher(key_id_of(token), create=False)
            private: dict[str, Any] = {}
            if found is not None:  # else shredded: nothing to open
                private = orjson.loads(open_sealed(found, token, aad("profiles", "traits_enc", profile_id)))
            updates.append({"pid": profile_id, "whole": {**(traits or {}), **private}})
        if updates:
            bind.execute(
                PROFILES.update().where(PROFILES.c.id == sa.bindparam("pid")).values(traits=sa.bindparam("whole")),
                updates,
            )
    op.drop_index(op.f("ix_profile_words_profile_id"), table_name="profile_words")
    op.drop_table("profile_words")
    # Not a batch (which copies the table: other tables' foreign keys point at it); SQLite >= 3.35 drops a
    # column in place.
    op.execute("ALTER TABLE profiles DROP COLUMN traits_enc")
