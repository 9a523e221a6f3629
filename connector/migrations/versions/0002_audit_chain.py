"""audit chain head

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 09:00:00.000000

The one row of ``audit_chain_head`` holds the audit chain's last sequence
number and MAC (connector/audit.py). Rows written before this revision have
no MAC: the chain starts after them (``peersync audit verify`` lists them as
unsigned), so an existing database keeps verifying.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

GENESIS_MAC = "0" * 64


def upgrade() -> None:
    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("last_mac", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_head")),
    )
    last_seq = None
    if not context.is_offline_mode():
        last_seq = op.get_bind().execute(sa.text("SELECT max(seq) FROM audit_events")).scalar()
    op.bulk_insert(head, [{"id": 1, "last_seq": int(last_seq or 0), "last_mac": GENESIS_MAC}])


def downgrade() -> None:
    op.drop_table("audit_chain_head")
