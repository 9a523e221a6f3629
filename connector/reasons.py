"""Reason codes in words: one catalogue for every page (and anything else) that shows a reason.

The sync, the store and the write plan record *why* a record waits, failed or
was settled as a short code (``mrn-no-match``, ``mrn-matches-2-patients``, ...):
ids and codes only, never PHI. :func:`describe` gives the words for people,
:func:`label` the words with the code kept visible for support, e.g.
"No EHR patient has this MRN (mrn-no-match)". A reason that is not a known code
(an EHR error's own message) is shown as it is.

A code with a number or a status in it is a pattern: ``{n}`` stands for a
number, ``{word}`` for a word (a consent status, an encounter status).
tests/unit/test_reasons.py collects every code the source emits and checks that
each has words here.
"""

from __future__ import annotations

import re

# code (or pattern) -> words; {n} and {word} in the words are filled from the code
CATALOGUE: dict[str, str] = {
    # the participant's EHR Patient (connector/sync/resolve.py)
    "no-mrn": "The record has no MRN: link the participant to an EHR patient",
    "mrn-no-match": "No EHR patient has this MRN",
    "mrn-matches-{n}-patients": "{n} EHR patients have this MRN: link the right one",
    # the specialist's EHR Practitioner
    "no-npi-to-match": "This EHR matches practitioners by NPI and the record gives none",
    "staff-id-matches-{n}-practitioners":
        "{n} EHR practitioners have this staff id: link the right one",
    "staff-id-no-match-ehr-cannot-create":
        "No EHR practitioner has this staff id, and this EHR does not let PeerSync create one",
    "staff-id-no-match-no-name":
        "No EHR practitioner has this staff id, and the record gives no family name to "
        "create one",
    # the EHR's own Encounter
    "no-ehr-encounter-in-session-window":
        "The EHR has no encounter of this patient at the session's time",
    "{n}-ehr-encounters-in-session-window":
        "The EHR has {n} encounters of this patient at the session's time: link the right one",
    # consent (42 CFR Part 2) and retractions (connector/sync/engine.py)
    "part2-consent-none": "42 CFR Part 2 record with no consent on file",
    "part2-consent-{word}": "42 CFR Part 2 record whose consent is {word}, not active",
    "nothing-sent-nothing-to-retract":
        "Entered in error before anything was sent: nothing to retract in the EHR",
    "already-in-ehr": "The EHR already holds this version",
    "nothing-to-send-ehr-owns-the-encounter":
        "Nothing to send: the EHR keeps its own encounters and the record has no note",
    # a lost answer, settled by a search (connector/sync/recovery.py)
    "note-changed-in-ehr-meanwhile": "The note was changed in the EHR in the meantime",
    "marker-matches-{n}-notes": "{n} notes in the EHR carry this version's identifier",
    "note-not-found-yet-looking-again":
        "The EHR's answer was lost and the note is not found there yet: looking again",
    "settled-by-lookup": "The EHR's answer was lost; a search found the note there",
    # transient failures (connector/retry.py)
    "gave-up-after-outage": "The EHR could not be reached for longer than the give-up time",
    # supervisor review
    "review-required": "Waits for a supervisor's co-signature",
    "returned-by-supervisor":
        "Returned by a supervisor with a comment: never sent; edit and submit it again",
    # what an EHR cannot carry (connector/sync/planner.py: omitted_parts)
    "encounter-status-{word}:ehr-owns-encounters":
        "The encounter's status ({word}) is not written: the EHR keeps its own encounters",
    "encounter-retraction:ehr-owns-encounters":
        "The encounter is not marked entered in error: the EHR keeps its own encounters",
    "goals:ehr-owns-encounters":
        "The goals are not written: the EHR keeps its own encounters",
    # how a 42 CFR Part 2 notice travels (planner)
    "labels+content[1]": "Part 2 security labels and the notice as a second content entry",
    "notice-in-content[0]": "The Part 2 notice inside the note's one content entry",
}

_FIELDS = {"{n}": r"(?P<n>\d+)", "{word}": r"(?P<word>[a-z0-9_]+(?:-[a-z0-9_]+)*?)"}


def _compile(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\{n\}|\{word\})", pattern)
    return re.compile("".join(_FIELDS.get(p, re.escape(p)) for p in parts) + r"\Z")


_PATTERNS = [(_compile(code), words) for code, words in CATALOGUE.items()
             if "{" in code]


# a prefix that says whose look-up it was: the co-signing supervisor's, not the author's
# (connector/sync/cosign.py); the rest of the code is described as usual
PREFIXES = {"cosigner-": "The co-signing supervisor: "}


def describe(code: str | None) -> str:
    """The words for a reason code; a reason that is no known code comes back as it is."""
    if not code:
        return ""
    text = code.strip()
    for prefix, whose in PREFIXES.items():
        rest = text[len(prefix):]
        if text.startswith(prefix) and rest and describe(rest) != rest:
            inner = describe(rest)
            return whose + inner[:1].lower() + inner[1:]
    words = CATALOGUE.get(text)
    if words is not None and "{" not in text:
        return words
    for pattern, template in _PATTERNS:
        found = pattern.match(text)
        if found:
            values = found.groupdict()
            return template.format(n=values.get("n", ""),
                                   word=(values.get("word") or "").replace("_", " "))
    return text


def known(code: str | None) -> bool:
    """True when ``code`` has words of its own in the catalogue."""
    return bool(code) and describe(code) != (code or "").strip()


def label(code: str | None) -> str:
    """The words and, for support, the code: "No EHR patient has this MRN (mrn-no-match)"."""
    if not code:
        return ""
    return f"{describe(code)} ({code.strip()})" if known(code) else code.strip()
