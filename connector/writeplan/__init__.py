"""The EHR write plan: what PeerSync writes to this EHR, and how.

Resolved once from the preset (``[ehr] preset``), the ``[ehr]`` keys set
explicitly in ``peersync.toml`` (they override the preset), and, for
``mode = "auto"``, the EHR's CapabilityStatement. The planner, the senders,
recovery, ``config check`` and the SMART scopes all consult this one object:
no module asks "which EHR is this?" on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector.writeplan.catalogue import (
    BY_NAME,
    CATALOGUE,
    CONTAINED,
    CREATE,
    MATCH,
    MATCH_ACTIONS,
    NONE,
    STAGES,
    WRITE,
)
from connector.writeplan.presets import PRESETS, NoteRules, Preset, load_preset

if TYPE_CHECKING:
    from connector.config import EhrConfig

__all__ = ["MATCH_ACTIONS", "PRESETS", "STAGES", "NoteRules", "Preset", "WritePlan", "resolve_plan",
           "system_interactions"]

_V2_ORDER = "cruds"


@dataclass(frozen=True, slots=True)
class WritePlan:
    preset: Preset
    mode: str  # transaction | batch | single
    conditional_create: bool
    conditional_update: bool
    resources: dict[str, str]
    note: NoteRules
    organization_id: str = ""
    why: dict[str, str] = field(default_factory=dict)  # resource type or "mode" -> reason

    # -- the questions the sync asks ---------------------------------------

    def action(self, resource_type: str) -> str:
        return self.resources[resource_type]

    def creates(self, resource_type: str) -> bool:
        return self.resources[resource_type] in (WRITE, CREATE)

    def updates(self, resource_type: str) -> bool:
        return self.resources[resource_type] == WRITE

    @property
    def staged(self) -> bool:
        return self.mode != "transaction"

    @property
    def encounter(self) -> str:
        """create (our own Encounter) | ehr (match the EHR's) | contained (inside the note)."""
        action = self.resources["Encounter"]
        return {WRITE: "create", MATCH: "ehr", CONTAINED: "contained"}[action]

    @property
    def provenance(self) -> bool:
        """A Provenance resource per change (else little-p: author and custodian on the note)."""
        return self.creates("Provenance")

    @property
    def practitioner_by(self) -> str:
        return self.preset.practitioner_by

    @property
    def organization_by(self) -> str:
        return self.preset.organization_by

    @property
    def part2_in_labels(self) -> bool:
        """The Part 2 notice can travel as labels + content[1] (else inside content[0])."""
        return self.note.keeps_security_labels and self.note.max_content >= 2

    # -- what to ask the EHR for -------------------------------------------

    def permissions(self, *, create_patients: bool) -> dict[str, str]:
        """SMART v2 permission letters per resource type: exactly what is written or read."""
        out: dict[str, str] = {}
        for kind in CATALOGUE:
            action = self.resources[kind.name]
            if action in (NONE, CONTAINED):
                continue
            perms = "rs"
            if action == WRITE or (action == CREATE and (kind.name != "Patient"
                                                         or create_patients)):
                perms += "c"
            if action == WRITE:
                perms += "u"
            out[kind.name] = "".join(ch for ch in _V2_ORDER if ch in perms)
        return out

    def smart_scopes(self, *, create_patients: bool) -> str:
        perms = self.permissions(create_patients=create_patients)
        if self.preset.scopes == "v2":
            return " ".join(f"system/{rtype}.{p}" for rtype, p in perms.items())
        out: list[str] = []
        for rtype, p in perms.items():
            out.append(f"system/{rtype}.read")
            if set(p) & set("cud"):
                out.append(f"system/{rtype}.write")
        return " ".join(out)

    def searches(self, resource_type: str) -> tuple[str, ...]:
        """The search parameters PeerSync uses on a type under this plan."""
        action = self.resources[resource_type]
        if action in (NONE, CONTAINED):
            return ()
        if resource_type == "Organization" and self.organization_by == "id":
            return ("_id",)
        if resource_type == "Encounter" and action == MATCH:
            return ("subject", "date")
        if resource_type == "DocumentReference" and self.note.find_by == "marker":
            return ("patient", "type", self.note.search_window)
        return BY_NAME[resource_type].searches

    def interactions(self, resource_type: str, *, create_patients: bool) -> tuple[str, ...]:
        """The type-level interactions the plan needs on ``resource_type``."""
        perms = self.permissions(create_patients=create_patients).get(resource_type, "")
        out = []
        if "c" in perms:
            out.append("create")
        if "u" in perms:
            out.append("update")
        if perms:
            out.append("search-type")
        return tuple(out)

    # -- the table `config check` prints ----------------------------------

    def rows(self, *, create_patients: bool) -> list[tuple[str, str, str]]:
        """(resource type, what PeerSync does, why) for every catalogued type."""
        rows = []
        for kind in CATALOGUE:
            action = self.resources[kind.name]
            if kind.name == "Patient" and action == CREATE and not create_patients:
                what = "match only (by MRN)"
            else:
                what = _DESCRIBE[action]
                if kind.name == "DocumentReference":
                    what = ("create; amend = new note that replaces the old"
                            if self.note.amendment == "replace"
                            else "create; amend in place (docStatus amended)")
                searched = self.searches(kind.name)
                if searched and action != NONE:
                    what += f"; found by {', '.join(searched)}"
            rows.append((kind.name, what, self.why.get(kind.name, f"preset {self.preset.name}")))
        return rows


_DESCRIBE = {
    WRITE: "create + update",
    CREATE: "create once, then match",
    MATCH: "match only",
    CONTAINED: "contained in the note",
    NONE: "not written",
}


def system_interactions(capability: Mapping[str, Any] | None) -> set[str]:
    if not capability:
        return set()
    for rest in capability.get("rest") or []:
        if isinstance(rest, dict) and rest.get("mode", "server") == "server":
            return {str(i.get("code")) for i in rest.get("interaction") or []
                    if isinstance(i, dict)}
    return set()


def resolve_plan(
    ehr: EhrConfig,
    *,
    folder: Path | None = None,
    capability: Mapping[str, Any] | None = None,
) -> WritePlan:
    """The write plan of this deployment: the preset, overridden by explicit ``[ehr]`` keys."""
    preset = load_preset(ehr.preset, folder=folder)
    explicit = ehr.explicit
    why: dict[str, str] = {}
    resources = dict(preset.resources)
    note = preset.note
    mode = preset.mode
    if "mode" in explicit:
        mode = ehr.mode
        why["mode"] = f"ehr.mode = {ehr.mode!r}"
    else:
        why["mode"] = f"preset {preset.name}"
    if mode == "auto":
        listed = system_interactions(capability)
        mode = next((m for m in ("transaction", "batch") if m in listed), "single")
        why["mode"] = ("mode = auto: " + (f"'{mode}' listed in the CapabilityStatement"
                                          if mode != "single" else "no bundles listed"
                                          if capability else "no CapabilityStatement read"))
    conditional_create, conditional_update = preset.conditional_create, preset.conditional_update
    if "conditional" in explicit:
        conditional_create = conditional_update = ehr.conditional
    if "create_encounters" in explicit:
        resources["Encounter"] = WRITE if ehr.create_encounters else MATCH
        why["Encounter"] = f"ehr.create_encounters = {str(ehr.create_encounters).lower()}"
    if "note_content_type" in explicit and ehr.note_content_type != "text/plain":
        note = replace(note, content_type=ehr.note_content_type,
                       content_type_update=ehr.note_content_type)
    if preset.organization_by == "id" and not ehr.organization_id \
            and resources["Organization"] == MATCH:
        resources["Organization"] = NONE
        why["Organization"] = (f"preset {preset.name} finds it by _id only and "
                               "ehr.organization_id is not set: custodian by name only")
    return WritePlan(
        preset=preset, mode=mode, conditional_create=conditional_create,
        conditional_update=conditional_update, resources=resources, note=note,
        organization_id=ehr.organization_id, why=why,
    )
