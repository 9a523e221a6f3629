"""page indexes: the dashboard and the records page on a large store (issue 9)

- jobs (state, id): a state's records newest first, and the counts by state;
- jobs (state, created_at, id): the oldest record of each waiting state;
- jobs (synced_at): the last sync and the syncs of the last days;
- jobs (reason, id) where a reason is set, jobs (id) where the EHR's answer is set:
  the error-text search reads the few jobs that have one (the reasons from the index);
- record_versions (start_at, id): the records of a date range, and (specialist_id, id)
  instead of (specialist_id): a specialist's records, both read from the index alone
  (PostgreSQL: no visit to the version rows, which carry the payloads);
- PostgreSQL only, jobs (record_version_id, id): those versions' job ids from the index
  (SQLite's unique index on record_version_id holds the row id, the job id, already).

Plain CREATE INDEX: on PostgreSQL, writes to these tables wait while it runs
(about a second for 200,000 jobs on 2 cores); reads go on.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

REASON_SET = sa.text("reason IS NOT NULL")
OUTCOME_SET = sa.text("outcome_text IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_jobs_state_id", "jobs", ["state", "id"])
    op.create_index("ix_jobs_state_created", "jobs", ["state", "created_at", "id"])
    op.create_index("ix_jobs_synced_at", "jobs", ["synced_at"])
    op.create_index("ix_jobs_reason_set", "jobs", ["reason", "id"],
                    sqlite_where=REASON_SET, postgresql_where=REASON_SET)
    op.create_index("ix_jobs_outcome_set", "jobs", ["id"],
                    sqlite_where=OUTCOME_SET, postgresql_where=OUTCOME_SET)
    op.create_index("ix_record_versions_start", "record_versions", ["start_at", "id"])
    if op.get_bind().dialect.name == "postgresql":  # SQLite's index holds the id already
        op.create_index("ix_jobs_version_job", "jobs", ["record_version_id", "id"])
    op.create_index("ix_record_versions_specialist_id", "record_versions",
                    ["specialist_id", "id"])
    op.drop_index("ix_record_versions_specialist", table_name="record_versions")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_jobs_version_job", table_name="jobs")
    op.create_index("ix_record_versions_specialist", "record_versions", ["specialist_id"])
    op.drop_index("ix_record_versions_specialist_id", table_name="record_versions")
    op.drop_index("ix_record_versions_start", table_name="record_versions")
    for name in ("ix_jobs_outcome_set", "ix_jobs_reason_set", "ix_jobs_synced_at",
                 "ix_jobs_state_created", "ix_jobs_state_id"):
        op.drop_index(name, table_name="jobs")
