"""Supervisor review (issue 10): which note versions wait for a co-signature, and its value.

The agency profile's ``[review]`` decides (:class:`ReviewRule`): under
``policy = "cosign"`` every new version of a note waits in ``waiting_review``
until a supervisor co-signs it (then it goes on as ``pending``) or returns it
with a comment (``returned``: terminal, never sent). ``service_codes`` limits
review to those codes (a record naming no code has the profile's default).

What is reviewed, and what is not:

- a note version of a completed, cancelled or no-show encounter: reviewed (the
  note is what a supervisor signs, and it would reach the EHR);
- a record without a note (a cancellation or no-show with nothing written): not
  reviewed, there is nothing to sign (the EHR gets a cancelled Encounter);
- a retraction (``status: entered_in_error``): not reviewed; withdrawing a note
  is never held back behind a signature;
- a record that arrives already co-signed in its source tool (``note.cosigned_by``
  and ``note.cosigned_at``): not held; that co-signature goes to the EHR.

``policy = "none"`` (the default) holds nothing: PeerSync behaves as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from connector.states import JobState

if TYPE_CHECKING:
    from connector.records import EncounterRecord
    from mappings.profile import Profile

APPROVED = "approved"
RETURNED = "returned"
MAX_COMMENT = 2000  # characters of a return's comment


@dataclass(frozen=True, slots=True)
class ReviewRule:
    """The profile's ``[review]``, applied to one record at a time (pure)."""

    policy: str = "none"
    service_codes: frozenset[str] = field(default_factory=frozenset)
    default_code: str = "H0038"

    @classmethod
    def of(cls, profile: Profile) -> ReviewRule:
        return cls(policy=profile.review_policy,
                   service_codes=frozenset(profile.review_service_codes),
                   default_code=profile.service_code)

    def needs_review(self, record: EncounterRecord) -> bool:
        """This version needs a supervisor's co-signature before it may go to the EHR."""
        if self.policy != "cosign" or record.note is None or record.status == "entered_in_error":
            return False
        code = record.service.code or self.default_code
        return not self.service_codes or code in self.service_codes

    def initial_state(self, record: EncounterRecord) -> JobState:
        """The state a new version of ``record`` starts in."""
        if self.needs_review(record) and carried_cosignature(record) is None:
            return JobState.WAITING_REVIEW
        return JobState.PENDING


NO_REVIEW = ReviewRule()


@dataclass(frozen=True, slots=True)
class Cosignature:
    """Who co-signed a note version, and when."""

    staff_id: str  # the supervisor's staff id: the EHR's authenticator (a Practitioner)
    at: datetime
    user: str | None = None  # the PeerSync account that signed; None: signed in the source tool


def carried_cosignature(record: EncounterRecord) -> Cosignature | None:
    """The co-signature a record arrived with (contract v2: note.cosigned_by/_at)."""
    note = record.note
    if note is None or not note.cosigned_by or note.cosigned_at is None:
        return None
    return Cosignature(staff_id=note.cosigned_by, at=note.cosigned_at)


class ReviewRefused(Exception):
    """A co-signature or return that may not be done as asked (ids and codes only).

    ``code`` names why for the audit log: not-supervisor, inactive, own-note,
    not-supervised, not-waiting, bad-password, no-staff-id, no-comment.
    """

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code
