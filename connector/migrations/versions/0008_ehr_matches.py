"""ehr_matches: EHR look-ups shared by every worker (issue 9)

A unique Patient match one worker found, reused by the others for ``[sync]
match_reuse_s`` (the search kept as a SHA-256 of its query, no MRN).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ehr_matches",
        sa.Column("resource_type", sa.String(length=24), nullable=False),
        sa.Column("query_sha256", sa.String(length=64), nullable=False),
        sa.Column("ehr_id", sa.String(length=128), nullable=False),
        sa.Column("found_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "query_sha256", name=op.f("pk_ehr_matches")),
    )


def downgrade() -> None:
    op.drop_table("ehr_matches")
