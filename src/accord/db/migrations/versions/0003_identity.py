"""identity: rules, limits (dropped identifiers, clusters), homes, separations, history kinds

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 16:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "identity_rules",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("document", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_identity_rules")),
    )
    op.create_table(
        "identity_separations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("cluster_id", sa.String(length=40), nullable=False),
        sa.Column("merge_id", sa.BigInteger(), nullable=False),
        sa.Column("left", JSON, nullable=False),
        sa.Column("right", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_separations")),
    )
    op.create_index(op.f("ix_identity_separations_cluster_id"), "identity_separations", ["cluster_id"], unique=False)
    op.create_table(
        "consent_subjects",
        sa.Column("record_id", sa.String(length=40), nullable=False),
        sa.Column("profile_id", sa.String(length=40), nullable=False),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("record_id", name=op.f("pk_consent_subjects")),
    )
    op.create_index(op.f("ix_consent_subjects_profile_id"), "consent_subjects", ["profile_id"], unique=False)
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.alter_column("profile_id", existing_type=sa.String(length=40), nullable=True)
        batch_op.add_column(sa.Column("home_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("cluster_id", sa.String(length=40), nullable=True))
    op.create_index(
        "ix_identities_cluster_id",
        "identities",
        ["cluster_id"],
        unique=False,
        postgresql_where=sa.text("cluster_id IS NOT NULL"),
        sqlite_where=sa.text("cluster_id IS NOT NULL"),
    )
    op.execute("UPDATE identities SET home_id = profile_id")
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("identity_counts", JSON, nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("cluster_id", sa.String(length=40), nullable=True))
    op.create_index(
        "ix_profiles_cluster_id",
        "profiles",
        ["cluster_id"],
        unique=False,
        postgresql_where=sa.text("cluster_id IS NOT NULL"),
        sqlite_where=sa.text("cluster_id IS NOT NULL"),
    )
    _backfill_identity_counts()
    with op.batch_alter_table("merges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=20), nullable=False, server_default="merge"))
        batch_op.add_column(sa.Column("actor", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("details", JSON, nullable=True))
        batch_op.add_column(sa.Column("undone_by", sa.BigInteger(), nullable=True))
        batch_op.alter_column("identity_type", existing_type=sa.String(length=40), nullable=True)
        batch_op.alter_column("identity_value", existing_type=sa.String(length=400), nullable=True)
        batch_op.alter_column("source_id", existing_type=sa.String(length=40), nullable=True)
        batch_op.alter_column("message_id", existing_type=sa.String(length=200), nullable=True)


def _backfill_identity_counts() -> None:
    bind = op.get_bind()
    counts: dict[str, dict[str, int]] = {}
    for profile_id, kind, n in bind.execute(
        sa.text(
            "SELECT profile_id, type, count(*) FROM identities WHERE profile_id IS NOT NULL GROUP BY profile_id, type"
        )
    ):
        counts.setdefault(profile_id, {})[kind] = int(n)
    profiles = sa.table("profiles", sa.column("id", sa.String()), sa.column("identity_counts", JSON))
    for profile_id, value in counts.items():
        bind.execute(profiles.update().where(profiles.c.id == profile_id).values(identity_counts=value))


def downgrade() -> None:
    with op.batch_alter_table("merges", schema=None) as batch_op:
        batch_op.drop_column("undone_by")
        batch_op.drop_column("details")
        batch_op.drop_column("actor")
        batch_op.drop_column("kind")
    op.drop_index("ix_profiles_cluster_id", table_name="profiles")
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.drop_column("cluster_id")
        batch_op.drop_column("identity_counts")
    op.drop_index("ix_identities_cluster_id", table_name="identities")
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_column("cluster_id")
        batch_op.drop_column("home_id")
    op.drop_index(op.f("ix_consent_subjects_profile_id"), table_name="consent_subjects")
    op.drop_table("consent_subjects")
    op.drop_index(op.f("ix_identity_separations_cluster_id"), table_name="identity_separations")
    op.drop_table("identity_separations")
    op.drop_table("identity_rules")
