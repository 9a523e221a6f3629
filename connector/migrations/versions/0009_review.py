"""review: supervisor co-signature of note versions (issue 10)

``supervision``: the staff ids a supervisor account supervises (no row: all).
``reviews``: a supervisor's decision on one record version (approved: the
co-signature, staff id and time; returned: the comment for the specialist).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "supervision",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("specialist_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_supervision_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", "specialist_id", name=op.f("pk_supervision")),
    )
    op.create_table(
        "reviews",
        sa.Column("record_version_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("user_name", sa.String(length=64), nullable=False),
        sa.Column("staff_id", sa.String(length=64), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["record_version_id"], ["record_versions.id"],
                                name=op.f("fk_reviews_record_version_id_record_versions")),
        sa.PrimaryKeyConstraint("record_version_id", name=op.f("pk_reviews")),
    )


def downgrade() -> None:
    op.drop_table("reviews")
    op.drop_table("supervision")
