"""journeys: definitions, versions, positions, transitions

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-29 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "journeys",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("definition", JSON, nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("backfill_after", sa.String(length=40), nullable=True),
        sa.Column("backfill_done", sa.Integer(), nullable=False),
        sa.Column("backfill_total", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_journeys")),
    )
    op.create_table(
        "journey_versions",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("definition", JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("key", "version", name=op.f("pk_journey_versions")),
    )
    op.create_table(
        "journey_positions",
        sa.Column("journey_key", sa.String(length=100), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("stage", sa.String(length=100), nullable=False),
        sa.Column("stage_entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(length=20), nullable=True),
        sa.Column("path", JSON, nullable=False),
        sa.PrimaryKeyConstraint("journey_key", "profile_id", name=op.f("pk_journey_positions")),
    )
    op.create_index("ix_journey_positions_profile", "journey_positions", ["profile_id"])
    op.create_index("ix_journey_positions_entered", "journey_positions", ["journey_key", "entered_at"])
    op.create_table(
        "journey_transitions",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("journey_key", sa.String(length=100), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("stage", sa.String(length=100), nullable=False),
        sa.Column("from_stage", sa.String(length=100), nullable=True),
        sa.Column("reason", sa.String(length=20), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journey_transitions")),
    )
    op.create_index("ix_journey_transitions_profile", "journey_transitions", ["profile_id", "id"])
    op.create_index("ix_journey_transitions_journey", "journey_transitions", ["journey_key", "id"])


def downgrade() -> None:
    op.drop_table("journey_transitions")
    op.drop_table("journey_positions")
    op.drop_table("journey_versions")
    op.drop_table("journeys")
