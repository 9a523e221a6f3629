"""Agency profiles: the packaged ones load, and every kind of bad one is refused at load."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from connector.errors import ConfigError
from mappings.profile import (
    NOTE_TYPES,
    Identity,
    Profile,
    default_profile_path,
    load_profile,
)

PROFILES = Path(__file__).resolve().parents[2] / "mappings" / "profiles"
EXAMPLE = PROFILES / "example-agency.toml"
DEFAULT_TEXT = default_profile_path().read_text(encoding="utf-8")


# --- the packaged profiles -------------------------------------------------


def test_default_profile_path_is_the_packaged_default() -> None:
    path = default_profile_path()
    assert path == PROFILES / "default.toml"
    assert path.is_file()


def test_default_profile_loads() -> None:
    profile = load_profile(default_profile_path())
    assert isinstance(profile, Profile)
    assert profile.name == "Riverside Peer Recovery Center"
    assert profile.source_file == default_profile_path()
    assert profile.time_zone == "America/New_York"
    assert profile.tz == ZoneInfo("America/New_York")
    assert profile.reentry_minutes == 7.0
    assert profile.organization == Identity(
        "Riverside Peer Recovery Center", "https://riverside-peer.example/fhir/sid/org", "riverside"
    )
    assert profile.device == Identity(
        "PeerSync connector", "https://riverside-peer.example/fhir/sid/device", "peersync-1"
    )
    assert profile.staff_system == "https://riverside-peer.example/fhir/sid/staff"
    assert profile.mrn_system == "urn:oid:2.16.840.1.113883.3.7418.1"
    assert profile.service_code == "H0038"
    assert profile.note_type_code == "11506-3"
    assert profile.note_type_display == "Progress note"
    assert profile.allow_markdown is False
    assert profile.create_patients is False
    base = "https://riverside-peer.example/fhir/sid/peersync/tool-a"
    assert profile.encounter_system("tool-a") == f"{base}/encounter"
    assert profile.note_system("tool-a") == f"{base}/note"
    assert profile.note_version_system("tool-a") == f"{base}/note-version"
    assert profile.participant_system("tool-a") == f"{base}/participant"


def test_default_part2_notice_is_the_2_32_statement() -> None:
    notice = load_profile(default_profile_path()).part2_notice
    assert notice.startswith(
        "This record which has been disclosed to you is protected by Federal "
        "confidentiality rules (42 CFR part 2)."
    )
    assert "42 CFR 2.31" in notice
    assert "  " not in notice  # TOML line continuations joined cleanly
    assert not notice.startswith("\n")


def test_example_profile_loads_with_its_own_choices() -> None:
    example = load_profile(EXAMPLE)
    default = load_profile(default_profile_path())
    assert example.time_zone == "America/Chicago"
    assert example.tz == ZoneInfo("America/Chicago")
    assert example.note_type_code == "34904-3"
    assert example.note_type_display == "Mental health Progress note"
    assert example.allow_markdown is True
    assert example.create_patients is True
    for system in ("encounter_system", "note_system", "note_version_system", "participant_system"):
        assert getattr(example, system)("x") != getattr(default, system)("x")
    assert example.staff_system != default.staff_system
    assert example.mrn_system != default.mrn_system
    assert example.organization != default.organization


def test_profile_is_frozen() -> None:
    profile = load_profile(default_profile_path())
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.service_code = "X"  # type: ignore[misc]


def test_each_source_gets_its_own_systems() -> None:
    profile = load_profile(default_profile_path())
    for system in ("encounter_system", "note_system", "note_version_system", "participant_system"):
        method = getattr(profile, system)
        assert method("tool-a") != method("tool-b")
    systems = {
        profile.encounter_system("s"),
        profile.note_system("s"),
        profile.note_version_system("s"),
        profile.participant_system("s"),
    }
    assert len(systems) == 4


def test_a_source_name_is_made_uri_safe() -> None:
    profile = load_profile(default_profile_path())
    assert profile.encounter_system("web form/2").endswith("/peersync/web%20form%2F2/encounter")
    assert profile.encounter_system("a.b_c-d~e").endswith("/peersync/a.b_c-d~e/encounter")
    with pytest.raises(ValueError):
        profile.encounter_system("")


def _drop_table(text: str, header: str) -> str:
    start = text.index(header)
    end = text.index("\n\n", start)
    return text[:start] + text[end:]


def test_optional_tables_take_their_defaults(tmp_path: Path) -> None:
    text = DEFAULT_TEXT
    for table in ("[codes]", "[notes]", "[patients]"):
        text = _drop_table(text, table)
    path = tmp_path / "minimal.toml"
    path.write_text(text, encoding="utf-8")
    profile = load_profile(path)
    assert profile.service_code == "H0038"
    assert profile.note_type_code == "11506-3"
    assert profile.allow_markdown is False
    assert profile.create_patients is False


def test_note_types_are_the_two_loinc_progress_notes() -> None:
    assert NOTE_TYPES == {
        "11506-3": "Progress note",
        "34904-3": "Mental health Progress note",
    }


# --- bad profiles ----------------------------------------------------------


def _variant(old: str, new: str) -> str:
    assert DEFAULT_TEXT.count(old) == 1, old
    return DEFAULT_TEXT.replace(old, new)


def _without_line(start: str) -> str:
    lines = DEFAULT_TEXT.splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(start)]
    assert len(kept) == len(lines) - 1, start
    return "".join(kept)


TZ_LINE = 'time_zone = "America/New_York"'
MINUTES_LINE = "reentry_minutes = 7.0"
NOTE_LINE = 'note = "https://riverside-peer.example/fhir/sid/peersync/{source}/note"\n'
ENCOUNTER_LINE = (
    'encounter = "https://riverside-peer.example/fhir/sid/peersync/{source}/encounter"\n'
)
NOTE_VERSION_LINE = (
    'note_version = "https://riverside-peer.example/fhir/sid/peersync/{source}/note-version"\n'
)
STAFF_LINE = 'staff = "https://riverside-peer.example/fhir/sid/staff"'
NOTE_TYPE_LINE = 'note_type = "11506-3"'
MARKDOWN_LINE = "allow_markdown = false"

BAD_PROFILES = {
    # name: (profile text, dotted key the message must name)
    "missing key": (_without_line("time_zone ="), "agency.time_zone: missing"),
    "missing table": (DEFAULT_TEXT[: DEFAULT_TEXT.index("[part2]")], "part2.notice: missing"),
    "unknown key": (
        _variant(TZ_LINE, TZ_LINE + '\ntime_zome = "UTC"'),
        "agency.time_zome: unknown key (did you mean time_zone?)",
    ),
    "misspelt optional key": (
        _variant(MARKDOWN_LINE, "allow_markdwn = true"),
        "notes.allow_markdwn: unknown key",
    ),
    "unknown table": (
        "[agnecy]\nname = 'x'\n" + DEFAULT_TEXT,
        "agnecy: unknown table (did you mean agency?)",
    ),
    "table not a table": (
        "patients = true\n" + _drop_table(DEFAULT_TEXT, "[patients]"),
        "patients: must be a table",
    ),
    "bad time zone": (_variant(TZ_LINE, 'time_zone = "Mars/Olympus_Mons"'), "agency.time_zone"),
    "time zone path": (_variant(TZ_LINE, 'time_zone = "../../etc/passwd"'), "agency.time_zone"),
    "time zone not a string": (_variant(TZ_LINE, "time_zone = -5"), "agency.time_zone"),
    "template without {source}": (
        _variant(NOTE_LINE, 'note = "https://riverside-peer.example/fhir/sid/note"\n'),
        "identifiers.note: must contain {source}",
    ),
    "template not absolute": (
        _variant(NOTE_LINE, 'note = "peersync/{source}/note"\n'),
        "identifiers.note: must be an absolute URI",
    ),
    "template with spaces": (
        _variant(NOTE_LINE, 'note = "https://x.example/{source}/my note"\n'),
        "identifiers.note: must be an absolute URI",
    ),
    "template with a stray brace": (
        _variant(NOTE_LINE, 'note = "https://x.example/{source}/{sorce}"\n'),
        "identifiers.note: must be an absolute URI",
    ),
    "template as an OID": (
        _variant(ENCOUNTER_LINE, 'encounter = "urn:oid:2.16.840.1.113883.19.{source}"\n'),
        "identifiers.encounter: must not be an OID",
    ),
    "duplicate systems": (
        _variant(
            NOTE_VERSION_LINE,
            'note_version = "https://riverside-peer.example/fhir/sid/peersync/{source}/note"\n',
        ),
        "identifiers.note_version: must differ from identifiers.note",
    ),
    "agency system with {source}": (
        _variant(STAFF_LINE, 'staff = "https://x.example/{source}/staff"'),
        "identifiers.staff: must not contain {source}",
    ),
    "mrn not a URI": (
        _variant('mrn = "urn:oid:2.16.840.1.113883.3.7418.1"', 'mrn = "MRN"'),
        "identifiers.mrn: must be an absolute URI",
    ),
    "organization system not a URI": (
        _variant(
            'identifier_system = "https://riverside-peer.example/fhir/sid/org"',
            'identifier_system = "ftp://riverside.example/org"',
        ),
        "organization.identifier_system: must be an absolute URI",
    ),
    "bad note type": (
        _variant(NOTE_TYPE_LINE, 'note_type = "11488-4"'),
        "codes.note_type: must be one of 11506-3, 34904-3",
    ),
    "bad service code": (
        _variant('service_code = "H0038"', 'service_code = "h0038"'),
        "codes.service_code",
    ),
    "negative minutes": (
        _variant(MINUTES_LINE, "reentry_minutes = -1.0"),
        "agency.reentry_minutes: must be between 0 and 600",
    ),
    "minutes as a string": (
        _variant(MINUTES_LINE, 'reentry_minutes = "7"'),
        "agency.reentry_minutes: must be a number",
    ),
    "minutes as a boolean": (
        _variant(MINUTES_LINE, "reentry_minutes = true"),
        "agency.reentry_minutes: must be a number",
    ),
    "minutes not finite": (
        _variant(MINUTES_LINE, "reentry_minutes = nan"),
        "agency.reentry_minutes: must be a finite number",
    ),
    "boolean as a string": (
        _variant(MARKDOWN_LINE, 'allow_markdown = "yes"'),
        "notes.allow_markdown: must be true or false",
    ),
    "empty string": (
        _variant('name = "PeerSync connector"', 'name = "  "'),
        "device.name: must not be empty",
    ),
    "empty notice": (
        DEFAULT_TEXT[: DEFAULT_TEXT.index("[part2]")] + '[part2]\nnotice = ""\n',
        "part2.notice: must not be empty",
    ),
    "not TOML": ("[agency\nname = Riverside\n", "not valid TOML"),
}


@pytest.mark.parametrize("case", list(BAD_PROFILES))
def test_bad_profile_is_refused_naming_file_and_key(tmp_path: Path, case: str) -> None:
    text, expected = BAD_PROFILES[case]
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert message.count(f"{path}: ") == 1  # one fault, one problem: no knock-on noise


def test_message_is_exactly_file_key_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    Path("mappings/profiles").mkdir(parents=True)
    Path("mappings/profiles/x.toml").write_text(
        _variant(NOTE_TYPE_LINE, 'note_type = "11488-4"'), encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        load_profile("mappings/profiles/x.toml")
    assert str(info.value) == (
        "mappings/profiles/x.toml: codes.note_type: must be one of 11506-3, 34904-3"
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = _variant(NOTE_TYPE_LINE, 'note_type = "1"').replace(MINUTES_LINE, "reentry_minutes = -3")
    path = tmp_path / "two.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert "codes.note_type" in str(info.value)
    assert "agency.reentry_minutes" in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile(path)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(DEFAULT_TEXT.replace("Riverside", "Rivers\u00efde").encode("latin-1"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profile(path)
