"""profiles: the values of SQL computed traits declared `pii` move to the encrypted traits

Before this revision a SQL computed trait declared `pii` was stored in clear unless its name was personal
or a mapping flagged it. Its values now leave `traits` for `traits_enc`, sealed under each profile's data
key like the other personal traits; the downgrade puts back in clear those that nothing else makes
personal (the code before reads them there, and compares them in SQL).

Revision ID: 0027
Revises: 0026
Create Date: 2026-11-30 05:50:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from accord.security.crypto import Keyring, aad, is_ciphertext, key_id_of, open_sealed, seal

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
PROFILES = sa.table(
    "profiles",
    sa.column("id", sa.String),
    sa.column("traits", JSON),
    sa.column("traits_enc", sa.Text),
)
MAPPINGS = (
    sa.table("import_runs", sa.column("mapping", JSON)).c.mapping,
    sa.table("source_mappings", sa.column("document", JSON)).c.document,
)
BATCH = 1000


def _keyring() -> Keyring:
    keyring = context.config.attributes.get("keyring")
    if not isinstance(keyring, Keyring):
        raise RuntimeError("sealing the traits declared pii needs the key files: run `accord migrate`")
    return keyring


def _ciphers(bind: sa.Connection) -> Any:
    ciphers: dict[str, Any] = {}

    def cipher(key_id: str, *, create: bool = True) -> Any:
        if key_id not in ciphers:
            found = bind.execute(
                sa.text("SELECT kek_id, wrapped FROM data_keys WHERE id = :id"), {"id": key_id}
            ).first()
            if found is None and not create:
                return None
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


def _declared(bind: sa.Connection) -> list[str]:
    rows = bind.execute(sa.text("SELECT key FROM sql_traits WHERE pii = :yes ORDER BY key"), {"yes": True})
    return [str(key) for (key,) in rows]


def _where(profile_id: str) -> bytes:
    return aad("profiles", "traits_enc", profile_id)


def _move(to_sealed: bool, names: set[str]) -> None:
    """Move the traits `names` between `traits` and `traits_enc` (the profile's key seals what is left)."""
    bind = op.get_bind()
    cipher = _ciphers(bind)
    last = ""
    while True:
        rows = bind.execute(
            sa.select(PROFILES.c.id, PROFILES.c.traits, PROFILES.c.traits_enc)
            .where(PROFILES.c.id > last)
            .order_by(PROFILES.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        last = rows[-1][0]
        updates = []
        for profile_id, traits, token in rows:
            clear = dict(traits or {})
            if (to_sealed and not names & clear.keys()) or (not to_sealed and not is_ciphertext(token)):
                continue
            private: dict[str, Any] = {}
            opener = cipher(key_id_of(token), create=False) if is_ciphertext(token) else None
            if opener is not None:  # else its key is destroyed: nothing to open, as the readers find
                private = orjson.loads(open_sealed(opener, token, _where(profile_id)))
            source, target = (clear, private) if to_sealed else (private, clear)
            moving = {k: source.pop(k) for k in sorted(names & source.keys())}
            if not moving:
                continue
            target.update(moving)
            sealed = (
                seal(cipher(profile_id), profile_id, orjson.dumps(private), _where(profile_id)) if private else None
            )
            updates.append({"pid": profile_id, "clear": clear, "sealed": sealed})
        if updates:
            bind.execute(
                PROFILES.update()
                .where(PROFILES.c.id == sa.bindparam("pid"))
                .values(traits=sa.bindparam("clear"), traits_enc=sa.bindparam("sealed")),
                updates,
            )


def upgrade() -> None:
    names = set(_declared(op.get_bind()))
    if names:
        _move(True, names)


def downgrade() -> None:
    """Put back in clear the traits only their `pii` declaration made personal."""
    from accord.profiles.private import _flags, is_pii_name

    bind = op.get_bind()
    flagged: set[str] = set()
    seen: set[bytes] = set()
    for column in MAPPINGS:
        documents = bind.execute(sa.select(column)).scalars()
        _flags((orjson.loads(d) if isinstance(d, str) else d for d in documents), flagged, seen)
    names = {name for name in _declared(bind) if not is_pii_name(name, flagged)}
    if names:
        _move(False, names)
