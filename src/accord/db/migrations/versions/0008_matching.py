"""matching: trained models, the blocking index, the review queue

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 19:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "identity_match_models",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("document", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_identity_match_models")),
    )
    op.create_table(
        "identity_match_keys",
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint("key", "profile_id", name=op.f("pk_identity_match_keys")),
    )
    op.create_index("ix_identity_match_keys_profile_id", "identity_match_keys", ["profile_id"], unique=False)
    op.create_table(
        "identity_match_reviews",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("left_id", sa.String(length=40), nullable=False),
        sa.Column("right_id", sa.String(length=40), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("match_weight", sa.Float(), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("levels", JSON, nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("message_id", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_match_reviews")),
        sa.UniqueConstraint("left_id", "right_id", name=op.f("uq_identity_match_reviews_left_id_right_id")),
    )
    op.create_index("ix_identity_match_reviews_status", "identity_match_reviews", ["status", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_identity_match_reviews_status", table_name="identity_match_reviews")
    op.drop_table("identity_match_reviews")
    op.drop_index("ix_identity_match_keys_profile_id", table_name="identity_match_keys")
    op.drop_table("identity_match_keys")
    op.drop_table("identity_match_models")
