"""drafts: the document form's drafts saved on the server (issue 10)

- drafts: a user's unsent document form (its fields, the record id's nonce, the
  documentation seconds counted so far and the end of the last interval counted);
- record_versions (specialist_id, participant_id, id): a specialist's caseload, its
  participants and each one's latest version, from the index alone.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drafts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("record_id", sa.String(length=64), nullable=True),
        sa.Column("nonce", sa.String(length=32), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("documentation_s", sa.Float(), nullable=False),
        sa.Column("counted_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_drafts_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drafts")),
    )
    op.create_index("ix_drafts_user_id", "drafts", ["user_id", "updated_at"])
    op.create_index("ix_record_versions_caseload", "record_versions",
                    ["specialist_id", "participant_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_record_versions_caseload", table_name="record_versions")
    op.drop_index("ix_drafts_user_id", table_name="drafts")
    op.drop_table("drafts")
