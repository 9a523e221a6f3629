"""`peersync config check` without a real EHR: the CapabilityStatement compared with [ehr]
(served by ``responses``), scope coverage, and `config show` masking."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

from connector.capability_check import check_capabilities
from connector.config import CAPABILITY_KEYS, Config, load_config, write_config
from connector.fhir_client import FhirClient
from connector.setup_check import (
    CheckReport,
    check_setup,
    render_config,
    scopes_covered,
)
from connector.store import Store
from connector.writeplan import resolve_plan
from mappings.profile import Profile, default_profile_path, load_profile

BASE = "https://ehr.example.org/fhir"
ALL = ["read", "vread", "update", "create", "search-type"]
PARAMS = {
    "Encounter": ["identifier", "subject", "date"],
    "Provenance": ["target"],
}


def capability(**changes: Any) -> dict[str, Any]:
    resources = []
    for rtype in ("Encounter", "DocumentReference", "Practitioner", "Provenance",
                  "Organization", "Device", "Patient"):
        resources.append({
            "type": rtype,
            "conditionalCreate": True,
            "conditionalUpdate": True,
            "interaction": [{"code": c} for c in ALL],
            "searchParam": [{"name": n, "type": "token"}
                            for n in PARAMS.get(rtype, ["identifier"])],
        })
    cs: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "software": {"name": "Test EHR", "version": "9"},
        "rest": [{
            "mode": "server",
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "resource": resources,
        }],
    }
    cs.update(changes)
    return cs


def resource(cs: dict[str, Any], rtype: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in cs["rest"][0]["resource"] if r["type"] == rtype)
    return found


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = write_config(tmp_path, base_url=BASE, database_url="sqlite:///peersync.db")
    return load_config(path, environ={})


@pytest.fixture
def profile() -> Profile:
    return load_profile(default_profile_path())


def with_ehr(config: Config, **changes: Any) -> Config:
    """[ehr] keys as if set in peersync.toml: a capability key set there overrides the preset."""
    explicit = config.ehr.explicit | {k for k in changes if k in CAPABILITY_KEYS}
    return dataclasses.replace(config, ehr=dataclasses.replace(config.ehr, explicit=explicit,
                                                               **changes))


def compare(cs: dict[str, Any], config: Config, profile: Profile) -> CheckReport:
    plan = resolve_plan(config.ehr, folder=config.folder, capability=cs)
    return check_capabilities(cs, plan, profile)


def status(report: CheckReport, name: str) -> tuple[str, str]:
    check = report.get(name)
    assert check is not None, [c.name for c in report]
    return check.status, check.detail


# -- the comparison -----------------------------------------------------------

def test_a_capable_ehr_passes_every_check(config: Config, profile: Profile) -> None:
    report = compare(capability(), config, profile)
    assert report.ok and not report.warnings, report.lines()
    state, detail = status(report, "mode")
    assert state == "ok" and detail.startswith("transaction: listed in rest.interaction")
    assert status(report, "FHIR version")[0] == "ok"


def test_transaction_mode_without_transaction_fails_naming_it(
    config: Config, profile: Profile
) -> None:
    cs = capability()
    cs["rest"][0]["interaction"] = [{"code": "batch"}]
    report = compare(cs, config, profile)
    state, detail = status(report, "mode")
    assert state == "fail"
    assert "'transaction'" in detail and "mode = 'batch'" in detail
    assert report.exit_code == 1
    # batch mode is fine with the same EHR, single mode with any
    assert status(compare(cs, with_ehr(config, mode="batch"), profile), "mode")[0] == "ok"
    cs["rest"][0].pop("interaction")
    assert status(compare(cs, with_ehr(config, mode="batch"), profile), "mode")[0] == "fail"
    assert status(compare(cs, with_ehr(config, mode="single"), profile), "mode")[0] == "ok"


def test_conditional_update_missing_on_encounter_is_named(
    config: Config, profile: Profile
) -> None:
    cs = capability()
    resource(cs, "Encounter")["conditionalUpdate"] = False
    state, detail = status(compare(cs, config, profile), "conditional")
    assert state == "fail"
    assert "Encounter" in detail and "DocumentReference" not in detail
    assert "conditional = false" in detail
    # not needed when the config says the EHR has no conditional ops
    report = compare(cs, with_ehr(config, conditional=False), profile)
    assert status(report, "conditional")[0] == "ok" and report.ok


def test_conditional_create_missing_fails_naming_the_type(
    config: Config, profile: Profile
) -> None:
    cs = capability()
    del resource(cs, "Practitioner")["conditionalCreate"]
    report = compare(cs, config, profile)
    state, detail = status(report, "conditional")
    assert state == "fail"
    assert detail.startswith("no conditionalCreate on Practitioner:")
    assert "Encounter" not in detail and "conditional = false" in detail
    assert report.exit_code == 1
    # fine once the config says the EHR has no conditional ops
    assert status(compare(cs, with_ehr(config, conditional=False), profile),
                  "conditional")[0] == "ok"


def test_encounter_create_needed_only_when_peersync_creates_encounters(
    config: Config, profile: Profile
) -> None:
    cs = capability()
    resource(cs, "Encounter")["interaction"] = [{"code": "read"}, {"code": "search-type"}]
    state, detail = status(compare(cs, config, profile), "capability Encounter")
    assert state == "fail" and "does not list create, update" in detail
    assert "ehr.create_encounters = false" in detail  # names the key to change
    # notes attached to the EHR's own Encounter: found by subject + date, never written
    owned = with_ehr(config, create_encounters=False, conditional=False)
    assert status(compare(cs, owned, profile), "capability Encounter")[0] == "ok"
    resource(cs, "Encounter")["searchParam"] = [{"name": "identifier"}, {"name": "subject"}]
    state, detail = status(compare(cs, owned, profile), "capability Encounter")
    assert state == "fail" and "search parameter date" in detail


def test_missing_resource_types_and_search_params_are_named(
    config: Config, profile: Profile
) -> None:
    cs = capability()
    cs["rest"][0]["resource"] = [r for r in cs["rest"][0]["resource"] if r["type"] != "Device"]
    resource(cs, "Organization")["searchParam"] = [{"name": "name"}]
    resource(cs, "Provenance")["searchParam"] = [{"name": "patient"}]
    report = compare(cs, config, profile)
    state, detail = status(report, "capability Device")
    assert state == "fail" and detail.startswith("Device is not listed")
    assert "create" in detail
    state, detail = status(report, "capability Organization")
    assert state == "fail" and "search parameter identifier" in detail
    # Provenance?target= settles a lost answer: the write plan uses it, so it is named
    state, detail = status(report, "capability Provenance")
    assert state == "fail" and "search parameter target" in detail


def test_patient_create_needed_only_when_the_profile_creates_patients(
    config: Config, profile: Profile
) -> None:
    cs = capability()
    resource(cs, "Patient")["interaction"] = [{"code": "read"}, {"code": "search-type"}]
    assert status(compare(cs, config, profile), "capability Patient")[0] == "ok"
    creating = dataclasses.replace(profile, create_patients=True)
    state, detail = status(compare(cs, config, creating), "capability Patient")
    assert state == "fail" and "does not list create" in detail


def test_fhir_version_other_than_r4_fails(config: Config, profile: Profile) -> None:
    for version, expected in (("4.0.1", "ok"), ("4.0.0", "ok"), ("4.3.0", "fail"),
                              ("5.0.0", "fail"), (None, "fail")):
        cs = capability(fhirVersion=version)
        assert status(compare(cs, config, profile), "FHIR version")[0] == expected, version


def test_xhtml_notes_are_only_informational(config: Config, profile: Profile) -> None:
    report = compare(capability(), with_ehr(config, note_content_type="application/xhtml+xml"),
                     profile)
    assert status(report, "note format")[0] == "ok"
    assert report.get("note format") is not None
    assert compare(capability(), config, profile).get("note format") is None


# -- the whole check with a mocked EHR -------------------------------------------

@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    return sqlite_store


def _mock_agency(rsps: responses.RequestsMock) -> None:
    for rtype, rid in (("Organization", "org-1"), ("Device", "dev-1")):
        rsps.get(f"{BASE}/{rtype}", json={"resourceType": "Bundle", "type": "searchset"})
        rsps.post(f"{BASE}/{rtype}", status=201,
                  json={"resourceType": rtype, "id": rid, "meta": {"versionId": "1"}})
        rsps.get(f"{BASE}/{rtype}/{rid}", json={"resourceType": rtype, "id": rid})


def test_check_setup_fails_on_a_missing_transaction_and_still_links_the_agency(
    rsps: responses.RequestsMock, config: Config, profile: Profile, store: Store
) -> None:
    cs = capability()
    cs["rest"][0]["interaction"] = [{"code": "batch"}]
    rsps.get(f"{BASE}/metadata", json=cs)
    _mock_agency(rsps)
    report = check_setup(config, profile=profile, store=store,
                         client_factory=lambda: FhirClient(base_url=BASE))
    assert report.exit_code == 1
    assert [c.name for c in report.failed] == ["mode"]
    assert (report.organization_id, report.device_id) == ("org-1", "dev-1")
    assert status(report, "agency Organization")[1].endswith("created now; id stored")
    assert "Test EHR 9" in status(report, "EHR reachable")[1]
    assert report.lines()[-1].startswith("not ready: ")


def test_check_setup_reports_an_ehr_that_serves_no_capability_statement(
    rsps: responses.RequestsMock, config: Config, profile: Profile, store: Store
) -> None:
    rsps.get(f"{BASE}/metadata", status=404, json={"resourceType": "OperationOutcome"})
    report = check_setup(config, profile=profile, store=store,
                         client_factory=lambda: FhirClient(base_url=BASE))
    state, detail = status(report, "EHR reachable")
    assert state == "fail" and "ehr.base_url" in detail
    assert report.get("agency Organization") is None  # nothing after an unreachable EHR


def test_check_setup_names_a_bad_auth_setting(
    config: Config, profile: Profile, store: Store
) -> None:
    from connector.errors import ConfigError

    def factory() -> FhirClient:
        raise ConfigError("ehr.auth.private_key_file: file not found (/nowhere/key.pem)")

    report = check_setup(config, profile=profile, store=store, client_factory=factory)
    assert status(report, "ehr.auth") == (
        "fail", "ehr.auth.private_key_file: file not found (/nowhere/key.pem)")
    assert report.exit_code == 1


# -- scopes -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("asked", "granted", "covered"),
    [
        ("system/Patient.rs", ["system/Patient.rs"], True),
        ("system/Patient.rs", ["system/Patient.r"], False),
        ("system/Patient.rs", ["system/*.*"], True),
        ("system/Patient.rs", ["system/*.read"], True),
        ("system/Encounter.crus", ["system/Encounter.read", "system/Encounter.write"], True),
        ("system/Encounter.crus", ["system/Encounter.read"], False),
        ("system/Provenance.crs", ["system/Provenance.rs"], False),
        ("system/Provenance.crs", ["system/Provenance.cruds"], True),
        ("system/Patient.rs", ["patient/Patient.rs"], False),
        ("system/Patient.rs", ["system/Patient.rs?category=x"], False),
        ("system/Patient.read", ["system/Patient.rs"], True),
        ("launch", ["launch"], True),
    ],
)
def test_scope_coverage(asked: str, granted: list[str], covered: bool) -> None:
    assert scopes_covered(asked, granted) is covered


# -- config show ------------------------------------------------------------------

def test_config_show_masks_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, base_url=BASE,
                        database_url="postgresql+psycopg://peersync:s3cret@db.example/peersync")
    text = path.read_text()
    text = text.replace('type = "none"                   # none | basic | bearer | client_secret'
                        ' | smart',
                        'type = "client_secret"\nclient_id = "peersync"\n'
                        'client_secret_env = "EHR_SECRET"\ntoken_url = "https://ehr.example.org/t"')
    path.write_text(text)
    monkeypatch.setenv("EHR_SECRET", "top-secret-value")
    config = load_config(path, environ={})
    shown = render_config(config, environ={})
    assert "s3cret" not in shown and "top-secret-value" not in shown
    assert 'client_secret_env = "EHR_SECRET"' in shown
    assert 'client_id = "peersync"' in shown
    assert "peersync:***@db.example" in shown
    assert f'base_url = "{BASE}"' in shown

    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n")
    smart = {"type": "smart", "client_id": "peersync", "private_key_file": str(key),
             "key_id": "k1", "algorithm": "RS384"}
    config = with_ehr(config, auth=smart)
    shown = render_config(config, environ={})
    assert f'private_key_file = "{key}"' in shown and "BEGIN" not in shown
    assert json.dumps("k1") in shown


def test_stored_agency_ids_missing_from_the_ehr_fail(
    rsps: responses.RequestsMock, config: Config, profile: Profile, store: Store
) -> None:
    org, dev = profile.organization, profile.device
    store.set_link("organization", f"{org.system}|{org.value}", "org-old", linked_by="create")
    store.set_link("device", f"{dev.system}|{dev.value}", "dev-1", linked_by="create")
    rsps.get(f"{BASE}/metadata", json=capability())
    rsps.get(f"{BASE}/Organization/org-old", status=404,
             json={"resourceType": "OperationOutcome"})
    rsps.get(f"{BASE}/Device/dev-1", json={"resourceType": "Device", "id": "dev-1"})
    report = check_setup(config, profile=profile, store=store,
                         client_factory=lambda: FhirClient(base_url=BASE))
    state, detail = status(report, "agency Organization")
    assert state == "fail" and "Organization/org-old" in detail and "no longer" in detail
    assert status(report, "connector Device")[1].endswith("stored earlier, still in the EHR")
    assert [c.name for c in report.failed] == ["agency Organization"]
