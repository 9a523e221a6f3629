"""Where a note is, in words: from its job's state and reason, what will release it.

Shown after a submit (never "documented" for a note that will wait) and on the
record page. Reason codes are described by :func:`connector.reasons.describe`;
the code stays visible for support.
"""

from __future__ import annotations

from dataclasses import dataclass

from connector.reasons import describe


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # sent | waiting | failed | retracted
    headline: str
    release: str  # what releases it ("" when nothing is needed)
    reason: str  # the reason in words ("" for none)
    code: str  # the reason code, for support


def describe_reason(code: str) -> str:
    return describe(code) if code else ""


_STATES: dict[str, tuple[str, str, str]] = {
    "synced": ("sent", "Sent: the EHR holds this note.", ""),
    "pending": ("waiting", "Saved, not sent yet: it goes to the EHR at the next sync.",
                "The sync worker sends it; nothing is needed from you."),
    "in_flight": ("waiting", "Being sent to the EHR now.", ""),
    "retry_scheduled": ("waiting", "Saved; the EHR could not take it just now.",
                        "It is sent again automatically; nothing is needed from you."),
    "unknown": ("waiting", "Sent, but the EHR's answer was lost.",
                "The next sync looks it up in the EHR before anything is sent again."),
    "needs_attention": ("failed", "Saved, but the EHR refused it.",
                        "An admin must fix the cause and retry it (the reason is below)."),
    "waiting_review": ("waiting", "Waiting for review: not sent until a supervisor "
                       "co-signs it.", "A supervisor's co-signature sends it to the EHR."),
    "returned": ("failed", "Returned by a supervisor with a comment: it will not be sent.",
                 "Its author edits it and submits it again (a note written in this app: "
                 "Edit and resubmit, on this page; a note from another tool: in that tool)."),
    "waiting_patient": ("waiting", "Waiting for a participant match: not in the EHR yet.",
                        "Sent once the participant's EHR record is found: an admin links "
                        "it (Waiting for a match), or you amend the note with the right MRN."),
    "waiting_consent": ("waiting", "Waiting for consent: a 42 CFR Part 2 note is not sent "
                        "without the participant's active consent to disclose.",
                        "Sent once active consent is on file (an admin records it under "
                        "Waiting for consent, or a later note carries it)."),
    "waiting_staff": ("waiting", "Waiting for your staff record in the EHR: not sent yet.",
                      "Sent once an admin links your staff id to an EHR Practitioner, or "
                      "once a note gives your family name so that one can be created."),
    "waiting_encounter": ("waiting", "Waiting for the EHR's own encounter: not sent yet.",
                          "Sent once the EHR has the session's encounter and an admin "
                          "links it (Waiting for an encounter)."),
}


def outcome(state: str, reason: str | None = None, status: str | None = None) -> Outcome:
    code = reason or ""
    if status == "entered_in_error" and state == "synced":
        return Outcome("retracted", "Retracted: marked entered in error in the EHR.", "",
                       describe_reason(code), code)
    kind, headline, release = _STATES.get(
        state, ("waiting", f"In state {state}.", ""))
    return Outcome(kind, headline, release, describe_reason(code), code)


def flash_text(result: Outcome) -> str:
    return " ".join(part for part in (result.headline, result.release) if part)
