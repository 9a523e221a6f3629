"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 18:08:47.890476
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('audit_events',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=48), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=True),
    sa.Column('record_id', sa.String(length=64), nullable=True),
    sa.Column('record_version_id', sa.Integer(), nullable=True),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('state_from', sa.String(length=24), nullable=True),
    sa.Column('state_to', sa.String(length=24), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.Column('mac', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_events'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_events_at', ['at'], unique=False)
        batch_op.create_index('ix_audit_events_record', ['source', 'record_id'], unique=False)

    op.create_table('consents',
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('participant_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('consent_id', sa.String(length=64), nullable=True),
    sa.Column('updated_by', sa.String(length=128), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('source', 'participant_id', name=op.f('pk_consents'))
    )
    op.create_table('links',
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('ehr_id', sa.String(length=128), nullable=False),
    sa.Column('linked_by', sa.String(length=128), nullable=False),
    sa.Column('linked_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('kind', 'key', name=op.f('pk_links'))
    )
    op.create_table('record_versions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('record_id', sa.String(length=64), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_by', sa.String(length=128), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('participant_id', sa.String(length=64), nullable=False),
    sa.Column('specialist_id', sa.String(length=64), nullable=False),
    sa.Column('note_id', sa.String(length=64), nullable=True),
    sa.Column('note_version', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('part2', sa.Boolean(), nullable=False),
    sa.Column('start_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('documentation_minutes', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_record_versions')),
    sa.UniqueConstraint('source', 'record_id', 'content_hash', name='uq_record_versions_content')
    )
    with op.batch_alter_table('record_versions', schema=None) as batch_op:
        batch_op.create_index('ix_record_versions_key', ['source', 'record_id'], unique=False)
        batch_op.create_index('ix_record_versions_specialist', ['specialist_id'], unique=False)

    op.create_table('specialists',
    sa.Column('specialist_id', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('specialist_id', name=op.f('pk_specialists'))
    )
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('record_version_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('record_id', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=24), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claimed_from', sa.String(length=24), nullable=True),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.String(length=200), nullable=True),
    sa.Column('outcome_text', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('synced_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['record_version_id'], ['record_versions.id'], name=op.f('fk_jobs_record_version_id_record_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('record_version_id', name=op.f('uq_jobs_record_version_id'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_key', ['source', 'record_id'], unique=False)
        batch_op.create_index('ix_jobs_state_due', ['state', 'next_attempt_at'], unique=False)

    op.create_table('ledger',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('record_version_id', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=64), nullable=True),
    sa.Column('record_id', sa.String(length=64), nullable=True),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('identifier_system', sa.String(length=255), nullable=False),
    sa.Column('identifier_value', sa.String(length=128), nullable=False),
    sa.Column('ehr_id', sa.String(length=128), nullable=True),
    sa.Column('ehr_version', sa.String(length=64), nullable=True),
    sa.Column('action', sa.String(length=24), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('written_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['record_version_id'], ['record_versions.id'], name=op.f('fk_ledger_record_version_id_record_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger'))
    )
    with op.batch_alter_table('ledger', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_identifier', ['resource_type', 'identifier_system', 'identifier_value'], unique=False)
        batch_op.create_index('ix_ledger_record', ['source', 'record_id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('ledger', schema=None) as batch_op:
        batch_op.drop_index('ix_ledger_record')
        batch_op.drop_index('ix_ledger_identifier')

    op.drop_table('ledger')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_state_due')
        batch_op.drop_index('ix_jobs_key')

    op.drop_table('jobs')
    op.drop_table('specialists')
    with op.batch_alter_table('record_versions', schema=None) as batch_op:
        batch_op.drop_index('ix_record_versions_specialist')
        batch_op.drop_index('ix_record_versions_key')

    op.drop_table('record_versions')
    op.drop_table('links')
    op.drop_table('consents')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_record')
        batch_op.drop_index('ix_audit_events_at')

    op.drop_table('audit_events')

