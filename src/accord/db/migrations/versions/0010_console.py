"""console: recently viewed customers per user, and agents' notes about customers

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 19:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_recent_views",
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("viewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_console_recent_views_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "profile_id", name=op.f("pk_console_recent_views")),
    )
    op.create_table(
        "profile_notes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("author_id", sa.String(length=40), nullable=False),
        sa.Column("author_email", sa.String(length=254), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profile_notes")),
    )
    op.create_index("ix_profile_notes_profile", "profile_notes", ["profile_id", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_profile_notes_profile", table_name="profile_notes")
    op.drop_table("profile_notes")
    op.drop_table("console_recent_views")
