"""usage records: CPU time may be unknown (NULL) instead of an estimate

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 08:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.alter_column("cpu_seconds", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE usage_records SET cpu_seconds = 0 WHERE cpu_seconds IS NULL")
    with op.batch_alter_table("usage_records") as batch:
        batch.alter_column("cpu_seconds", existing_type=sa.Integer(), nullable=False)
