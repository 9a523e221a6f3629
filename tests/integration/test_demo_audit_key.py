"""`peersync demo` keys its audit chain with a real key, so `peersync audit verify` passes.

Issue 8, finding 13: the demo used to write its chain with the public development
key, which `audit verify` now fails (exit 1). Runs the demo end to end (sekmet
in memory, the samples imported and synced) without serving the admin app.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from connector.ehr_sandbox import free_port

PEERSYNC = Path(sys.executable).parent / "peersync"


def test_the_demo_creates_a_real_audit_key_and_its_chain_verifies(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PEERSYNC_AUDIT_KEY", "PEERSYNC_DATABASE_URL", "PEERSYNC_EHR_URL")}
    env["PEERSYNC_HOME"] = str(home)
    demo = subprocess.run([str(PEERSYNC), "demo", "--port", str(free_port()), "--web-port",
                           str(free_port()), "--no-serve"], env=env, capture_output=True,
                          text=True, timeout=240, check=False)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    for line in ("imported ", "synced: ", "status: ", "log in at http://127.0.0.1:"):
        assert line in demo.stdout  # what scripts/demo.sh shows is still there
    assert "development key" not in demo.stdout + demo.stderr
    key_file = home / "peersync.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()

    verified = subprocess.run([str(PEERSYNC), "audit", "verify"], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("audit log intact: ")
    assert "development key" not in verified.stdout + verified.stderr

    # a second run keeps the key (a new database, the same key file)
    again = subprocess.run([str(PEERSYNC), "demo", "--port", str(free_port()), "--web-port",
                            str(free_port()), "--no-serve"], env=env, capture_output=True,
                           text=True, timeout=240, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert key_file.read_text().strip() == key
    assert subprocess.run([str(PEERSYNC), "audit", "verify"], env=env, capture_output=True,
                          text=True, timeout=120, check=False).returncode == 0
