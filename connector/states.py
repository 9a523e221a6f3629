"""The outbox job states, named once and used everywhere (store, sync, CLI, web app)."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "pending"  # accepted, not yet tried
    IN_FLIGHT = "in_flight"  # claimed by a worker holding a lease
    SYNCED = "synced"  # the EHR holds it (ledger rows written)
    RETRY_SCHEDULED = "retry_scheduled"  # transient failure; due again at next_attempt_at
    NEEDS_ATTENTION = "needs_attention"  # refused or conflicting: an admin must act
    WAITING_PATIENT = "waiting_patient"  # no MRN or no unique EHR Patient for the MRN
    WAITING_STAFF = "waiting_staff"  # no Practitioner for the staff id and no name to create one
    WAITING_CONSENT = "waiting_consent"  # 42 CFR Part 2 record without active consent
    WAITING_ENCOUNTER = "waiting_encounter"  # EHR cannot create Encounters and none matches
    UNKNOWN = "unknown"  # sent, no answer: settled by an identifier search before any re-send
    WAITING_REVIEW = "waiting_review"  # [review] policy = "cosign": waits for a supervisor
    RETURNED = "returned"  # a supervisor returned it with a comment: never sent (terminal)


ALL_STATES: tuple[str, ...] = tuple(state.value for state in JobState)

WAITING_STATES = frozenset(
    {
        JobState.WAITING_PATIENT,
        JobState.WAITING_STAFF,
        JobState.WAITING_CONSENT,
        JobState.WAITING_ENCOUNTER,
        JobState.WAITING_REVIEW,
    }
)

# The waiting states a sync looks at again once per run (a new Patient, Practitioner or
# Encounter may have appeared). A record waiting for review is released only by a
# supervisor's co-signature (connector.store.review), never by a sync pass.
RESOLVED_BY_SYNC = WAITING_STATES - {JobState.WAITING_REVIEW}

# A later version of the same record is held back until every earlier one has
# left these states, so that two versions of one record never travel together
# and an amendment always follows the note it replaces.
UNFINISHED_STATES = frozenset(
    {
        JobState.PENDING,
        JobState.IN_FLIGHT,
        JobState.RETRY_SCHEDULED,
        JobState.UNKNOWN,
    }
    | WAITING_STATES
)
