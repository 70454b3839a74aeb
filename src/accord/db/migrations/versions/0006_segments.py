"""segments: definitions, versions, memberships, transitions

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 19:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("condition", JSON, nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("backfill_after", sa.String(length=40), nullable=True),
        sa.Column("backfill_done", sa.Integer(), nullable=False),
        sa.Column("backfill_total", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_segments")),
    )
    op.create_table(
        "segment_versions",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("condition", JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("key", "version", name=op.f("pk_segment_versions")),
    )
    op.create_table(
        "segment_memberships",
        sa.Column("segment_key", sa.String(length=100), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("segment_key", "profile_id", name=op.f("pk_segment_memberships")),
    )
    op.create_index("ix_segment_memberships_profile", "segment_memberships", ["profile_id"])
    op.create_table(
        "segment_transitions",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("segment_key", sa.String(length=100), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_transitions")),
    )
    op.create_index("ix_segment_transitions_profile", "segment_transitions", ["profile_id", "id"])
    op.create_index("ix_segment_transitions_segment", "segment_transitions", ["segment_key", "at"])


def downgrade() -> None:
    op.drop_table("segment_transitions")
    op.drop_table("segment_memberships")
    op.drop_table("segment_versions")
    op.drop_table("segments")
