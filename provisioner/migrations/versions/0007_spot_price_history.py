"""spot price history per zone, and the zone each resource runs in

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 07:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.add_column(sa.Column("zone", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    op.create_table(
        "spot_prices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("backend", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("zone", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("instance_type", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("price_micro_per_hour", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("backend", "zone", "instance_type", "at", name="uq_spot_price_point"),
    )
    with op.batch_alter_table("spot_prices") as batch:
        batch.create_index("ix_spot_prices_lookup", ["backend", "instance_type", "zone", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("spot_prices") as batch:
        batch.drop_index("ix_spot_prices_lookup")
    op.drop_table("spot_prices")
    with op.batch_alter_table("resources") as batch:
        batch.drop_column("zone")
