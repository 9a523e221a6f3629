"""The proof suite: every record synced exactly once, none lost, none needs_attention,
0 duplicates counted on the EHR, the audit chain intact, under

- 20 % of requests faulted (5xx, 429 + Retry-After, resets before and after the EHR
  applied, timeouts, 504 after applying), 100 records per cell (600 in all);
- a worker SIGKILLed at each step of a send (before and after the EHR applied it);
- the EHR unreachable (connections refused) for 30 s mid-sync with workers running;

for each cell of the matrix: the generic preset in transaction, batch and single mode
without conditional requests, and the us-core-notes, epic and oracle-health presets
through their emulators. The scenarios, the records and the checker are shared with
``scripts/reliability.py`` (tests/reliability/harness.py). Each test prints one
``RELIABILITY`` line with its figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import harness
from tests.reliability.conftest import report

pytestmark = pytest.mark.integration

FAULT_RECORDS = 100
KILL_RECORDS = 30
OUTAGE_RECORDS = 60
OUTAGE_S = 30.0
CELLS = list(harness.CELLS)


@pytest.mark.parametrize("cell", CELLS)
def test_faults_on_a_fifth_of_requests(cell: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    result = harness.run_faults(harness.CELLS[cell], FAULT_RECORDS, tmp_path, monkeypatch)
    report(result)
    assert all(result["faults"][k] > 0 for k in harness.FAULT_RATES), result["faults"]
    harness.assert_exactly_once(result)


@pytest.mark.parametrize("cell", CELLS)
def test_worker_killed_at_each_step_of_a_send(cell: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    result = harness.run_kills(harness.CELLS[cell], KILL_RECORDS, tmp_path, monkeypatch)
    report(result)
    assert result["kills"] == len(harness.CELLS[cell].kills)
    harness.assert_exactly_once(result)


@pytest.mark.parametrize("cell", ["transaction", "epic"])
def test_ehr_unreachable_for_30_s_mid_sync(cell: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections refused at the proxy for 30 s while two workers run (backoff and the EHR
    gate's probe interval scaled down by config): every record waits, none is given up,
    all go once the EHR answers again."""
    result = harness.run_outage(harness.CELLS[cell], OUTAGE_RECORDS, tmp_path, monkeypatch,
                                outage_s=OUTAGE_S, workers=2)
    report(result)
    assert 0 < result["synced_before_outage"] < OUTAGE_RECORDS, "the outage was not mid-sync"
    assert result["worker_exits"] == [0, 0], result
    harness.assert_exactly_once(result)
