"""cost ledger: HS23-hours held (billable capacity) beside HS23-hours delivered (busy)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 07:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cost_ledger", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hs23_hours_held", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("cost_ledger", schema=None) as batch_op:
        batch_op.drop_column("hs23_hours_held")
