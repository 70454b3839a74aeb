"""matching: the blocking index is rebuilt with keyed hashes (HMAC under the blind-index key) instead of
unkeyed ones, which anyone could reproduce by hashing guessed names

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-30 03:00:00
"""

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
    from accord.identity import linkage, match_index

    with Session(bind=bind, info={"keyring": keyring}) as session:
        model = match_index.current_model(session)
        assert model is not None
        match_index.rebuild(session, model.settings, linkage.live_profiles(session))
        session.flush()


def downgrade() -> None:
    """The keyed index cannot be turned back into the unkeyed one without the code that made it: empty it;
    training again (`accord identity train`) rebuilds it."""
    op.execute("DELETE FROM identity_match_keys")
