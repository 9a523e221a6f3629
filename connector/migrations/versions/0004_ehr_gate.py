"""ehr_gate: one row saying whether the EHR is reachable (connector.gate)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:00:00.000000
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ehr_gate",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("probes", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("probe_owner", sa.String(length=128), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ehr_gate")),
    )
    op.bulk_insert(
        sa.table(
            "ehr_gate",
            sa.column("id", sa.Integer()),
            sa.column("state", sa.String()),
            sa.column("failures", sa.Integer()),
            sa.column("probes", sa.Integer()),
            sa.column("updated_at", sa.DateTime(timezone=True)),
        ),
        [{"id": 1, "state": "open", "failures": 0, "probes": 0,
          "updated_at": datetime.now(UTC)}],
    )


def downgrade() -> None:
    op.drop_table("ehr_gate")
