"""Browser tests: headless Chromium (Debian's /usr/bin/chromium) driven by Playwright,
against the admin app served on 127.0.0.1 with a real FHIR server (sekmet) behind it.

Playwright's own browser download is never used (`playwright install` is not run):
the launch fixture points at the system Chromium, and the tests skip with a
reason when it is missing (`.ci/run` installs it).
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent.parent
SHOTS = REPO / "test-artifacts" / "screenshots"
DOC_SHOTS = REPO / "docs" / "screenshots"
UPDATE_DOCS_ENV = "PEERSYNC_UPDATE_SCREENSHOTS"  # =1: also copy the screenshots into docs/
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} not found: `apt-get install -y chromium` "
                                   "(.ci/run does it) to run the browser tests")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def base_url() -> str | None:
    """Replaces pytest-playwright's fallback fixture, a method that pytest 9 warns about."""
    return None


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM),
            "args": CHROMIUM_ARGS, "headless": True}


@dataclass
class Live:
    """The served app, its PeerSync home and the EHR behind it."""

    url: str
    ehr_url: str
    home: Path
    passwords: dict[str, str]

    def cli(self, *args: str, expect: int | None = 0) -> Any:
        from connector.cli import main

        result = CliRunner().invoke(main, list(args), env={"PEERSYNC_HOME": str(self.home)},
                                    catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (args, result.output)
        return result

    def import_(self, *records: dict[str, Any], name: str) -> None:
        path = self.home / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        self.cli("import", "--source", "peer-tool", str(path))

    def post(self, resource: dict[str, Any]) -> str:
        resp = requests.post(f"{self.ehr_url}/{resource['resourceType']}", json=resource,
                             timeout=10)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    def search(self, resource_type: str, **params: str) -> list[dict[str, Any]]:
        resp = requests.get(f"{self.ehr_url}/{resource_type}", params=params, timeout=10)
        resp.raise_for_status()
        return [e["resource"] for e in resp.json().get("entry", [])]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from werkzeug.serving import make_server

    from connector.demo import seed_patients
    from connector.ehr_sandbox import SekmetServer
    from connector.fhir_client import FhirClient
    from mappings.profile import default_profile_path, load_profile
    from tests.conftest import DATA
    from tests.webapp_support import PASSWORDS, Home, add_users
    from webapp import close_app, create_app

    root = tmp_path_factory.mktemp("browser")
    ehr = SekmetServer(root / "ehr")
    ehr.start()
    server = thread = app = None
    try:
        with pytest.MonkeyPatch.context() as mp:
            import connector.accounts

            mp.setattr(connector.accounts, "HASH_METHOD", "scrypt:1024:8:1")
            for name in ("PEERSYNC_EHR_URL", "PEERSYNC_DATABASE_URL", "PEERSYNC_SECRET_KEY",
                         "PEERSYNC_AUDIT_KEY"):
                mp.delenv(name, raising=False)
            home = root / "home"
            live = Live("", ehr.base_url, home, PASSWORDS)
            live.cli("init", "--ehr-url", ehr.base_url)
            add_users(Home(home, home / "peersync.toml", ehr.base_url))
        with FhirClient(base_url=ehr.base_url, timeout_s=10) as client:
            seed_patients(client, load_profile(default_profile_path()),
                          [DATA / "in-person-session.json", DATA / "batch.jsonl"])
        app = create_app({"PEERSYNC_CONFIG": str(home / "peersync.toml"),
                          "SYNC_ON_ACTION": True, "EHR_CHECK_TTL_S": 0})
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, name="peersync-web",
                                  daemon=True)
        thread.start()
        live.url = f"http://127.0.0.1:{server.server_port}"
        yield live
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=10)
        if app is not None:
            close_app(app)
        ehr.stop()


@pytest.fixture
def shot(page: Any) -> Any:
    """``shot("name")``: a full-page screenshot kept in test-artifacts/screenshots/."""
    SHOTS.mkdir(parents=True, exist_ok=True)

    def take(name: str) -> Path:
        path = SHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if _update_docs():
            DOC_SHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOC_SHOTS / path.name)
        return path

    return take


def _update_docs() -> bool:
    import os

    return os.environ.get(UPDATE_DOCS_ENV) == "1"
