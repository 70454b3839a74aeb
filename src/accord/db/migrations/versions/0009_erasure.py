"""erasure: tombstones of erased profiles and keyed digests of their identifiers

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 19:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("erasure_id", sa.String(length=40), nullable=False),
        sa.Column("person_id", sa.String(length=40), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("suppressed_events", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("last_suppressed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("profile_id", name=op.f("pk_erasures")),
    )
    with op.batch_alter_table("erasures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_erasures_erasure_id"), ["erasure_id"], unique=False)
    op.create_table(
        "erased_identifiers",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("erasure_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_erased_identifiers")),
    )
    with op.batch_alter_table("erased_identifiers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_erased_identifiers_erasure_id"), ["erasure_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("erased_identifiers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_erased_identifiers_erasure_id"))
    op.drop_table("erased_identifiers")
    with op.batch_alter_table("erasures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_erasures_erasure_id"))
    op.drop_table("erasures")
