"""The US Core clinical note (DocumentReference) of one note version, shaped for one EHR.

Pure, like every mapping: the record, the agency profile and a :class:`NoteShape`
(what the EHR keeps, from the write plan) in, a validated R4B model out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fhir.resources.R4B.documentreference import DocumentReference

from connector.errors import FieldError, RecordInvalid
from mappings.resources import (
    _MARKDOWN_CONTENT_TYPE,
    _MIME_TYPE_SUFFICIENT,
    _NOT_XML,
    _PLAIN_CONTENT_TYPE,
    DOCREF_CATEGORY,
    DOCREF_STATUSES,
    LOINC,
    NOTE_FORMATS,
    NOTE_PLAIN,
    NOTE_TITLE,
    NOTE_XHTML,
    PART2_NOTICE_TITLE,
    _concept,
    _instant,
    _part2_meta,
    _period,
    _ref,
    _require_note,
    note_identifier,
    note_version_identifier,
    validated,
)

if TYPE_CHECKING:
    from connector.records import EncounterRecord, Note
    from mappings.profile import Profile

MARKER_PREFIX = "Peer support note"
PART2_TRAILER_RULE = "\n\n" + "-" * 40 + "\n"


@dataclass(frozen=True, slots=True)
class NoteShape:
    """How the note is written for one EHR (the write plan's note rules, applied).

    The defaults are a full FHIR server's: identifiers, labels, a second content
    entry for the Part 2 notice, ``relatesTo``.
    """

    content_type: str | None = None  # contentType as the EHR wants it written (charset form)
    identifiers: bool = True
    part2_trailer: bool = False  # the notice inside content[0], after the note (no labels)
    marker_key: bytes | None = None  # set: title + creation carry a marker to find it again
    doc_status: str = "final"
    relates_to: bool = True


def note_marker(record: EncounterRecord, key: bytes) -> str:
    """A title that finds this note version again where the EHR drops identifiers.

    An HMAC (not the ids themselves) of source|note id, so the title carries no id.
    """
    note = _require_note(record)
    digest = hmac.new(key, f"{record.source}|{note.id}".encode(), hashlib.sha256).hexdigest()
    return f"{MARKER_PREFIX} \u00b7 {digest[:10]} v{note.version}"


def note_xhtml(text: str) -> str:
    """The note as an XHTML fragment: escaped, in ``<pre>`` so its line breaks show.

    Not byte-exact (XML turns CR LF into LF, and characters XML forbids become
    U+FFFD), which is why XHTML is only for EHRs that accept nothing else.
    """
    import html

    body = _NOT_XML.sub("\ufffd", html.escape(text, quote=False))
    return f'<div xmlns="http://www.w3.org/1999/xhtml"><pre>{body}</pre></div>'


def part2_trailer(profile: Profile) -> str:
    """What follows the note where the notice cannot travel on its own."""
    text = PART2_TRAILER_RULE + PART2_NOTICE_TITLE + "\n" + profile.part2_notice.strip()
    if profile.part2_consent_scope.strip():
        text += "\n\nConsent: " + profile.part2_consent_scope.strip()
    return text


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _note_bytes(record: EncounterRecord, text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a JSON "\ud800" escape
        raise RecordInvalid(
            [FieldError("note.text", "is not valid Unicode text (lone surrogate)")],
            source=record.source,
            record_id=record.id,
        ) from exc


def _note_attachment(
    record: EncounterRecord, note: Note, profile: Profile, note_format: str, shape: NoteShape
) -> dict[str, Any]:
    text = note.text + (part2_trailer(profile) if record.part2 and shape.part2_trailer else "")
    if note_format == NOTE_XHTML:
        content_type = NOTE_XHTML
        payload = note_xhtml(text).encode("utf-8")
    else:
        markdown = note.content_type == "text/markdown" and profile.allow_markdown
        content_type = _MARKDOWN_CONTENT_TYPE if markdown else _PLAIN_CONTENT_TYPE
        payload = _note_bytes(record, text)  # exactly as written: no normalisation
    if shape.content_type and not (note_format != NOTE_XHTML and content_type.startswith(
            "text/markdown")):
        content_type = shape.content_type
    attachment = {"contentType": content_type, "data": _b64(payload), "title": NOTE_TITLE}
    if shape.marker_key is not None:
        attachment["title"] = note_marker(record, shape.marker_key)
        attachment["creation"] = _instant(note.signed_at or record.end, "note.signed_at or end")
    return attachment


def document_reference_json(
    record: EncounterRecord,
    profile: Profile,
    *,
    patient_ref: str,
    practitioner_ref: str,
    encounter_ref: str | None,
    note_format: str = NOTE_PLAIN,
    status: str | None = None,
    replaces_ref: str | None = None,
    organization_ref: str | None = None,
    shape: NoteShape | None = None,
    contained: list[dict[str, Any]] | None = None,
    authenticator_ref: str | None = None,
) -> dict[str, Any]:
    """The US Core clinical note for one version of the record's note, as validated JSON.

    ``status`` overrides the status (``superseded`` for a replaced version);
    otherwise a retracted record gives ``entered-in-error`` and any other
    ``current``. ``replaces_ref`` points at the version this one amends.
    ``organization_ref`` "" names the agency as custodian by display only.
    ``contained`` resources travel inside the note (``encounter_ref`` "#id").
    ``authenticator_ref`` names the supervisor who co-signed it (a Practitioner).
    """
    shape = shape or NoteShape()
    note = _require_note(record)
    if note_format not in NOTE_FORMATS:
        raise ValueError(f"note_format must be one of {', '.join(NOTE_FORMATS)}")
    if status is None:
        status = "entered-in-error" if record.status == "entered_in_error" else "current"
    elif status not in DOCREF_STATUSES:
        raise ValueError(f"status must be one of {', '.join(DOCREF_STATUSES)}")

    note_type = _concept(LOINC, profile.note_type_code, profile.note_type_display)
    note_type["text"] = profile.note_type_display
    context: dict[str, Any] = {"period": _period(record)}
    if encounter_ref:
        context["encounter"] = [_ref(encounter_ref)]
    content = [
        {
            "attachment": _note_attachment(record, note, profile, note_format, shape),
            "format": _MIME_TYPE_SUFFICIENT,
        }
    ]

    data: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": status,
        "docStatus": shape.doc_status,
        "type": note_type,
        "category": [_concept(DOCREF_CATEGORY, "clinical-note", "Clinical Note")],
        "subject": _ref(patient_ref),
        "date": _instant(note.signed_at or record.end, "note.signed_at or end"),
        "author": [_ref(practitioner_ref)],
        "content": content,
        "context": context,
    }
    if shape.identifiers:
        data["identifier"] = [
            note_identifier(record, profile).as_fhir(),
            note_version_identifier(record, profile).as_fhir(),
        ]
    if authenticator_ref:
        data["authenticator"] = _ref(authenticator_ref)
    if contained:
        data["contained"] = contained
    if organization_ref:
        data["custodian"] = _ref(organization_ref)
    elif organization_ref == "":
        data["custodian"] = {"display": profile.organization.name}
    if replaces_ref and shape.relates_to:
        data["relatesTo"] = [{"code": "replaces", "target": _ref(replaces_ref)}]
    if record.part2 and not shape.part2_trailer:
        data["meta"] = _part2_meta()
        # The §2.32 notice travels with the note, after it: content[0] stays the note.
        notice = profile.part2_notice
        if profile.part2_consent_scope.strip():
            notice += "\n\nConsent: " + profile.part2_consent_scope.strip()
        content.append(
            {
                "attachment": {
                    "contentType": shape.content_type or _PLAIN_CONTENT_TYPE,
                    "data": _b64(notice.encode("utf-8")),
                    "title": PART2_NOTICE_TITLE,
                },
                "format": _MIME_TYPE_SUFFICIENT,
            }
        )
    return validated(DocumentReference, data)


def map_document_reference(record: EncounterRecord, profile: Profile, **kwargs: Any
                           ) -> DocumentReference:
    """The US Core clinical note (see :func:`document_reference_json`)."""
    return DocumentReference.model_validate(document_reference_json(record, profile, **kwargs))
