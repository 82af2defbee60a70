"""policy versions: who applied each policy and why; the policy version every plan was made under

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 07:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("policies") as batch:
        batch.add_column(
            sa.Column("author", sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default="")
        )
        batch.add_column(
            sa.Column("comment", sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default="")
        )
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("policy_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.drop_column("policy_version")
    with op.batch_alter_table("policies") as batch:
        batch.drop_column("comment")
        batch.drop_column("author")
