"""Why a record must not go yet, decided before any look-up: the one rule the sync and
``peersync map`` share."""

from __future__ import annotations

from connector.records import EncounterRecord
from connector.review import NO_REVIEW, ReviewRule
from connector.states import JobState
from connector.sync.model import Wait


def wait_rule(record: EncounterRecord, *, consent: str | None, sent_before: bool,
              review: ReviewRule = NO_REVIEW, cosigned: bool = False) -> Wait | None:
    """Why a record must not go yet, before any look-up: the one rule `map` shares.

    A note version the profile's ``[review]`` holds goes only once co-signed (in the
    source tool, or by a supervisor here): intake already holds it, this is the check
    that a version without a co-signature is never sent whatever put it in line.
    """
    if review.needs_review(record) and not cosigned:
        return Wait(JobState.WAITING_REVIEW, "review-required")
    if record.part2 and consent != "active":
        return Wait(JobState.WAITING_CONSENT, f"part2-consent-{consent or 'none'}")
    if record.status == "entered_in_error" and not sent_before:
        return Wait(JobState.SYNCED, "nothing-sent-nothing-to-retract")
    return None
