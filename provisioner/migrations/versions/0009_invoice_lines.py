"""invoice lines: provider invoices (AWS CUR, GCP billing export) to reconcile the ledger with

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 07:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    op.create_table(
        "invoice_lines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("line_key", text(), nullable=False),
        sa.Column("source", text(), nullable=False),
        sa.Column("file", text(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("usage_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("usage_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("service", text(), nullable=False),
        sa.Column("usage_type", text(), nullable=False),
        sa.Column("line_type", text(), nullable=False),
        sa.Column("category", text(), nullable=False),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.Column("currency", text(), nullable=False),
        sa.Column("provider_resource", text(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("usage_amount", sa.Float(), nullable=True),
        sa.Column("account", text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("line_key", name="uq_invoice_line_key"),
    )
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.create_index("ix_invoice_usage_start", ["usage_start"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_invoice_lines_provider_resource"), ["provider_resource"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoice_lines_provider_resource"))
        batch_op.drop_index("ix_invoice_usage_start")
    op.drop_table("invoice_lines")
