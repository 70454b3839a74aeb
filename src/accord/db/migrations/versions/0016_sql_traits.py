"""sources: SQL computed traits kept as definitions; schedules versioned

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-29 23:00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "sql_traits",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("sql", sa.Text(), nullable=False),
        sa.Column("pii", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("running_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_id", sa.String(length=40), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.String(length=20), nullable=True),
        sa.Column("last_result", JSON, nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_sql_traits")),
    )
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("actor", sa.String(length=100), nullable=True))
    _keep_inline_queries()


def _keep_inline_queries() -> None:
    """Computed schedules kept their query inline ({"trait", "sql"}); it becomes the SQL trait they name."""
    schedules = sa.table(
        "schedules", sa.column("name", sa.String), sa.column("kind", sa.String), sa.column("spec", JSON)
    )
    traits = sa.table(
        "sql_traits",
        *(sa.column(c, t) for c, t in (("key", sa.String), ("sql", sa.Text), ("pii", sa.Boolean))),
        *(sa.column(c, t) for c, t in (("description", sa.Text), ("version", sa.Integer), ("actor", sa.String))),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    bind = op.get_bind()
    now = datetime.now(UTC)
    made: set[str] = set()
    for name, spec in bind.execute(sa.select(schedules.c.name, schedules.c.spec).where(schedules.c.kind == "computed")):
        if not isinstance(spec, dict) or "sql" not in spec:
            continue
        trait = str(spec["trait"])
        if trait not in made:
            made.add(trait)
            bind.execute(
                traits.insert().values(
                    key=trait,
                    sql=str(spec["sql"]),
                    pii=bool(spec.get("pii")),
                    description=f"from schedule {name}",
                    version=1,
                    actor="migration",
                    created_at=now,
                    updated_at=now,
                )
            )
        bind.execute(schedules.update().where(schedules.c.name == name).values(spec={"trait": trait}))


def downgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("actor")
        batch.drop_column("updated_at")
        batch.drop_column("version")
    op.drop_table("sql_traits")
