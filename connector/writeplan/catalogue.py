"""The one catalogue of the FHIR resource types PeerSync touches.

Each entry says, once, what the planner, the senders, ``config check`` and the
SMART scopes need to know about a type: its role, the stage it is sent in (the
staged modes send Encounters, then notes pointing at their real ids, then
Provenance), the search parameters PeerSync uses to find one again, and which
write-plan actions make sense for it. A new resource type is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

# What PeerSync does with a resource type on one EHR (the write plan's verbs).
WRITE = "write"  # create, and update what it created
CREATE = "create"  # create once, never update (Practitioner, Organization, Device, Patient)
MATCH = "match"  # find the EHR's own; never written
CONTAINED = "contained"  # carried inside the note (US Core: author/encounter may be contained)
NONE = "none"  # not written and not referenced (e.g. Provenance on a little-p EHR)
ACTIONS = (WRITE, CREATE, MATCH, CONTAINED, NONE)
MATCH_ACTIONS = (WRITE, CREATE, MATCH)  # the EHR holds one PeerSync refers to by id


@dataclass(frozen=True, slots=True)
class ResourceKind:
    name: str
    role: str  # one line for the write-plan table
    allowed: tuple[str, ...]  # the actions that make sense for this type
    stage: int | None = None  # staged send order; None: resolved before planning
    searches: tuple[str, ...] = ()  # search parameters PeerSync uses on it


CATALOGUE: tuple[ResourceKind, ...] = (
    ResourceKind("Patient", "the participant, matched by MRN",
                 (CREATE, MATCH), searches=("identifier",)),
    ResourceKind("Practitioner", "the specialist, the note's author",
                 (CREATE, MATCH), searches=("identifier",)),
    ResourceKind("Encounter", "the session",
                 (WRITE, MATCH, CONTAINED), stage=0, searches=("identifier",)),
    ResourceKind("DocumentReference", "the note, one per version or amended in place",
                 (WRITE,), stage=1, searches=("identifier",)),
    ResourceKind("Provenance", "who wrote and who sent each change",
                 (CREATE, NONE), stage=2, searches=("target",)),
    ResourceKind("Organization", "the agency, the note's custodian",
                 (CREATE, MATCH, NONE), searches=("identifier",)),
    ResourceKind("Device", "the connector, Provenance's transmitter",
                 (CREATE, MATCH, NONE), searches=("identifier",)),
)
BY_NAME = {kind.name: kind for kind in CATALOGUE}
STAGES: tuple[str, ...] = tuple(
    kind.name for kind in sorted((k for k in CATALOGUE if k.stage is not None),
                                 key=lambda k: k.stage or 0)
)
