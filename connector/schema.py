"""The store's tables (SQLAlchemy Core). Changes go through Alembic migrations.

- ``record_versions``: append-only; one row per distinct content of a record,
  keyed by (source, record_id, content_hash). Re-importing identical content
  adds nothing.
- ``jobs``: the outbox; one job per record version, in one of the JobState
  states.
- ``ledger``: append-only write ledger: which EHR resource (type, id, version)
  a record version's write produced, keyed by the identifier we sent, so that
  a create is never repeated (the ledger, not the server, decides create or
  update, and a lost response is settled by an identifier search).
- ``links``: EHR ids we matched or created once: patients (by source and
  participant id), practitioners (by staff id), the agency Organization and
  the connector Device.
- ``consents``: the latest known Part 2 consent per participant.
- ``specialists``: the latest name/credential seen per staff id, so a
  Practitioner can be created from any record of that specialist.
- ``audit_events``: append-only; every state change and EHR exchange. Never
  names, MRNs or note text.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

record_versions = Table(
    "record_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("record_id", String(64), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("received_by", String(128), nullable=False),
    Column("payload", Text, nullable=False),  # canonical contract JSON (PHI: never logged)
    Column("participant_id", String(64), nullable=False),
    Column("specialist_id", String(64), nullable=False),
    Column("note_id", String(64)),
    Column("note_version", Integer),
    Column("status", String(24), nullable=False),
    Column("part2", Boolean, nullable=False),
    Column("start_at", DateTime(timezone=True), nullable=False),
    Column("documentation_minutes", Float),
    UniqueConstraint("source", "record_id", "content_hash", name="uq_record_versions_content"),
)
Index("ix_record_versions_key", record_versions.c.source, record_versions.c.record_id)
# (migration 0007) a specialist's versions and a date range's, read from the index alone
Index("ix_record_versions_specialist_id", record_versions.c.specialist_id, record_versions.c.id)
Index("ix_record_versions_start", record_versions.c.start_at, record_versions.c.id)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "record_version_id",
        Integer,
        ForeignKey("record_versions.id"),
        nullable=False,
        unique=True,
    ),
    Column("source", String(64), nullable=False),
    Column("record_id", String(64), nullable=False),
    Column("state", String(24), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("lease_owner", String(128)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("claimed_from", String(24)),  # the state a claim took it from (in the same UPDATE)
    Column("run_id", String(64)),  # the sync run that last looked at it
    Column("reason", String(200)),  # why it waits or failed: codes and ids, no PHI
    Column("outcome_text", Text),  # the EHR's OperationOutcome text, for admins only
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("synced_at", DateTime(timezone=True)),
)
Index("ix_jobs_state_due", jobs.c.state, jobs.c.next_attempt_at)
Index("ix_jobs_key", jobs.c.source, jobs.c.record_id)
# (migration 0007) the admin pages on a large store: a state's jobs newest first and the
# counts by state; each waiting state's oldest; the last syncs; on PostgreSQL, a version's
# job id from an index. Two partial indexes, made by the migration only (declaring them
# here would load both SQL dialects into every command): ix_jobs_reason_set on
# (reason, id) WHERE reason IS NOT NULL and ix_jobs_outcome_set on (id) WHERE
# outcome_text IS NOT NULL, for the error-text search.
Index("ix_jobs_state_id", jobs.c.state, jobs.c.id)
Index("ix_jobs_state_created", jobs.c.state, jobs.c.created_at, jobs.c.id)
Index("ix_jobs_synced_at", jobs.c.synced_at)
Index("ix_jobs_version_job", jobs.c.record_version_id, jobs.c.id).ddl_if(dialect="postgresql")

ledger = Table(
    "ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("record_version_id", Integer, ForeignKey("record_versions.id")),
    Column("source", String(64)),
    Column("record_id", String(64)),
    Column("resource_type", String(64), nullable=False),
    Column("identifier_system", String(255), nullable=False),
    Column("identifier_value", String(128), nullable=False),
    Column("ehr_id", String(128)),  # null while a write's outcome is unknown
    Column("ehr_version", String(64)),
    Column("action", String(24), nullable=False),  # create | update | supersede | retract | match
    Column("state", String(16), nullable=False),  # sent | confirmed
    Column("written_at", DateTime(timezone=True), nullable=False),
)
Index(
    "ix_ledger_identifier",
    ledger.c.resource_type,
    ledger.c.identifier_system,
    ledger.c.identifier_value,
)
Index("ix_ledger_record", ledger.c.source, ledger.c.record_id)

links = Table(
    "links",
    metadata,
    Column("kind", String(24), primary_key=True),  # patient | practitioner | organization | device
    Column("key", String(255), primary_key=True),  # "<source>|<participant id>", staff id, ...
    Column("ehr_id", String(128), nullable=False),
    Column("linked_by", String(128), nullable=False),  # "match", "create", or a user
    Column("linked_at", DateTime(timezone=True), nullable=False),
)

consents = Table(
    "consents",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("participant_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("consent_id", String(64)),
    Column("updated_by", String(128), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

specialists = Table(
    "specialists",
    metadata,
    Column("specialist_id", String(64), primary_key=True),
    Column("payload", JSON, nullable=False),  # {given, family, credential, npi}
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(48), nullable=False),
    Column("source", String(64)),
    Column("record_id", String(64)),
    Column("record_version_id", Integer),
    Column("job_id", Integer),
    Column("state_from", String(24)),
    Column("state_to", String(24)),
    Column("detail", JSON),  # ids, codes, statuses, durations: never PHI
    Column("mac", String(64)),
)
Index("ix_audit_events_at", audit_events.c.at)
Index("ix_audit_events_record", audit_events.c.source, audit_events.c.record_id)

# One row (id 1): the audit chain's last sequence number and MAC. Appends lock
# it first (connector.audit.append), so parallel writers never fork the chain,
# and a tail cut off the log no longer matches it.
audit_chain_head = Table(
    "audit_chain_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_seq", Integer, nullable=False),
    Column("last_mac", String(64), nullable=False),
)

# -- accounts (connector.accounts) --------------------------------------------
# Web app users: a vetted password hash (scrypt), never the password. A
# specialist account is tied to the staff id it documents as.
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),  # lower case
    Column("role", String(16), nullable=False),  # admin | specialist | auditor
    Column("specialist_id", String(64)),  # the staff id of a specialist account
    Column("password_hash", String(255), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=False),
)

# API and metrics bearer tokens: the SHA-256 of the token, never the token.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),  # the token's first characters, for listings
    Column("kind", String(16), nullable=False),  # source | metrics
    Column("source", String(64)),  # a source token's source: its records' source
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

# Failed logins per key ("user:<name>", "ip:<address>") in the current window,
# in the database so that every worker process throttles the same attempts.
login_throttle = Table(
    "login_throttle",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=False),
)

# -- the EHR gate (connector.gate) ---------------------------------------------
# One row (id 1): whether the EHR is reachable. When a send finds it unreachable
# every worker stops claiming until ``closed_until``; then one worker takes the
# probe (moving ``closed_until`` on in the same UPDATE) and, when the EHR answers,
# opens the gate and releases the records that waited on the outage.
ehr_gate = Table(
    "ehr_gate",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("state", String(16), nullable=False),  # open | closed
    Column("since", DateTime(timezone=True)),  # unreachable since (the outage's first failure)
    Column("closed_until", DateTime(timezone=True)),  # no claims before this, but the probe
    Column("failures", Integer, nullable=False),  # outage failures in a row (probes included)
    Column("probes", Integer, nullable=False),  # probes taken in this outage
    Column("reason", String(200)),  # error class and status of the last failure: no PHI
    Column("probe_owner", String(128)),  # the worker that took the last probe
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# -- web sessions (webapp.sessions) --------------------------------------------
# A logged-in browser session: the cookie holds a random token, this table its
# SHA-256, the user and the session's data. Logout, a new password or a disabled
# account deletes the rows; a session idle too long (or too old) is refused.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # SHA-256 (hex) of the cookie's token
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("data", Text, nullable=False),  # the Flask session (tagged JSON): no PHI
)
Index("ix_web_sessions_user_id", web_sessions.c.user_id)
Index("ix_web_sessions_last_seen", web_sessions.c.last_seen)

# -- the EHR's rate limit (connector.ratelimit) --------------------------------
# One token bucket per EHR base URL, shared by every worker: ``[ehr]
# max_requests_per_minute``. A worker takes a few tokens at a time in one
# conditional UPDATE (refill, check and take together); times are Unix seconds so
# that the refill is plain arithmetic on SQLite and PostgreSQL alike.
ehr_rate_limit = Table(
    "ehr_rate_limit",
    metadata,
    Column("key", String(200), primary_key=True),  # the EHR base URL (or its SHA-256)
    Column("tokens", Float, nullable=False),  # left after the last take, as of refilled_at
    Column("refilled_at", Float, nullable=False),  # Unix time of the last take (never goes back)
)

# -- EHR look-ups shared by every worker (connector.sync.resolve) ---------------
# A unique search match (today: an MRN's Patient) found by one worker, reused by
# the others for ``[sync] match_reuse_s``: two workers of a back-fill otherwise
# search the same participants each. The search is kept as a SHA-256 of its query
# (no MRN in this table); a row is a cache entry, never a link an admin made.
ehr_matches = Table(
    "ehr_matches",
    metadata,
    Column("resource_type", String(24), primary_key=True),
    Column("query_sha256", String(64), primary_key=True),
    Column("ehr_id", String(128), nullable=False),
    Column("found_at", DateTime(timezone=True), nullable=False),
)

# -- the document form's drafts (webapp.drafts, issue 10) ----------------------
# A specialist's unsent form, kept on the server: the form's fields (PHI, like a
# record's payload: never logged), the record id's nonce (so a resumed draft
# still stores one record however often it is submitted) and the documentation
# time counted so far: the sum of the intervals the form was open, each measured
# by the server from a signed start to a save, capped (webapp.docform.INTERVAL_CAP).
drafts = Table(
    "drafts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("mode", String(16), nullable=False),  # new | amend | resubmit
    Column("record_id", String(64)),  # the record amended or resubmitted (mode != new)
    Column("nonce", String(32), nullable=False),  # a new note's record id is wf-<nonce>
    Column("fields", JSON, nullable=False),  # the form's values (PHI)
    Column("documentation_s", Float, nullable=False),  # seconds counted so far
    Column("counted_until", DateTime(timezone=True)),  # the end of the last interval counted
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_drafts_user_id", drafts.c.user_id, drafts.c.updated_at)
# (migration 0010) a specialist's caseload: its participants and their latest version,
# read from the index alone
Index("ix_record_versions_caseload", record_versions.c.specialist_id,
      record_versions.c.participant_id, record_versions.c.id)

# -- supervisor review (connector.store.review) ----------------------------------
# The staff ids a supervisor account supervises; no row: every specialist.
supervision = Table(
    "supervision",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("specialist_id", String(64), primary_key=True),
)

# A supervisor's decision on one record version: co-signed (approved) or returned with a
# comment. One per version; the job's state says what follows (pending, or returned).
reviews = Table(
    "reviews",
    metadata,
    Column("record_version_id", Integer, ForeignKey("record_versions.id"), primary_key=True),
    Column("decision", String(16), nullable=False),  # approved | returned
    Column("user_name", String(64), nullable=False),  # the supervisor account
    Column("staff_id", String(64), nullable=False),  # the supervisor's staff id (co-signer)
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Column("comment", Text),  # a return's comment, shown to the specialist (may be PHI)
)
