"""matching: the blocking index is rebuilt with keyed hashes (HMAC under the blind-index key) instead of
unkeyed ones, which anyone could reproduce by hashing guessed names

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-30 03:00:00
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.orm import Session

from accord.security.crypto import Keyring

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM identity_match_models")).scalar() == 0:
        return  # no model trained: no index kept
    keyring = context.config.attributes.get("keyring")
    if not isinstance(keyring, Keyring):
        raise RuntimeError("rebuilding the matching index needs the key files: run `accord migrate`")
    # The index is derived data: rebuilt from the live profiles with the code that keeps it, as training does.
    # The profiles are read here as this revision stores them (traits in clear; 0025 encrypts the personal
    # ones later), not through the application's reader, which expects the newest schema.
    from accord.identity import match_index

    with Session(bind=bind, info={"keyring": keyring}) as session:
        model = match_index.current_model(session)
        assert model is not None
        live = session.execute(sa.text("SELECT id, traits FROM profiles WHERE merged_into IS NULL ORDER BY id"))
        profiles = ((str(pid), _document(traits)) for pid, traits in live.all())
        match_index.rebuild(session, model.settings, profiles)
        session.flush()


def _document(traits: object) -> dict[str, object]:
    """A JSON column as read through text(): a dict on PostgreSQL, a string on SQLite."""
    value = json.loads(traits) if isinstance(traits, str | bytes) else traits
    return value if isinstance(value, dict) else {}


def downgrade() -> None:
    """The keyed index cannot be turned back into the unkeyed one without the code that made it: empty it;
    training again (`accord identity train`) rebuilds it."""
    op.execute("DELETE FROM identity_match_keys")
