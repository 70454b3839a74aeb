"""a single sign-on session keeps the provider's ID token, for logging out at the provider too

`console_sessions.id_token`: the ID token the provider issued at sign-in, sent back as `id_token_hint`
when the person logs out, so that the provider ends its session as well (OpenID Connect RP-Initiated
Logout). Null for password logins and for sessions begun before this revision.

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-01 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0031"
down_revision: str | None = "0030"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("console_sessions") as batch:
        batch.add_column(sa.Column("id_token", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("console_sessions") as batch:
        batch.drop_column("id_token")
