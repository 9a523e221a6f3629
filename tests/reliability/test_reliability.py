"""The proof suite: every record synced exactly once, none lost, none needs_attention,
0 duplicates counted on the EHR, the audit chain intact, under

- 20 % of requests faulted (5xx, 429 + Retry-After, resets before and after the EHR
  applied, timeouts, 504 after applying), 300 records per cell;
- a worker SIGKILLed at each step of a send (before and after the EHR applied it),
  300 records per cell;
- the EHR unreachable (connections refused) for 30 s mid-sync with two workers running,
  300 records per cell;

for each cell of the matrix: the generic preset in transaction, batch and single mode
without conditional requests, and the us-core-notes, epic and oracle-health presets
through their emulators. The scenarios, the records and the checker are shared with
``scripts/reliability.py`` (tests/reliability/harness.py, scenarios.py). The eighteen
runs go side by side, each in a process of its own with its own sekmet
(tests/reliability/runner.py): the module's fixture starts the selected ones when the
first test asks, each test waits for its own run's figures, prints them on one
``RELIABILITY`` line and asserts them, naming the cell.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.reliability import harness, runner
from tests.reliability.conftest import report

pytestmark = pytest.mark.integration

CELLS = list(harness.CELLS)
SIZES = runner.SIZES["suite"]
OUTAGE_S = SIZES["outage_s"]
# Runs side by side on the 2-core machine (each: a sekmet, the connector, for the
# presets the emulator). Measured: see README "Reliability and security".
CONCURRENCY = 6
# The connector's read timeout in the fault runs (an injected timeout holds 0.5 s longer).
FAULT_TIMEOUT_S = 1.0
# Every run of the suite is over by then (a run still going is stopped and fails).
SUITE_DEADLINE_S = 280.0

_SCENARIO_OF = {"test_faults_on_a_fifth_of_requests": "faults",
                "test_worker_killed_at_each_step_of_a_send": "kills",
                "test_ehr_unreachable_for_30_s_mid_sync": "outage"}


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[runner.Matrix]:
    """The selected runs (of this module's collected tests), started side by side."""
    wanted = {f"{_SCENARIO_OF[item.originalname]}/{item.callspec.params['cell']}"
              for item in request.session.items
              if isinstance(item, pytest.Function) and item.module is request.module
              and item.originalname in _SCENARIO_OF}
    jobs = [j for j in runner.jobs("suite", CELLS, timeout_s=FAULT_TIMEOUT_S)
            if j.key in wanted]
    m = runner.Matrix(jobs, tmp_path_factory.mktemp("reliability"), concurrency=CONCURRENCY,
                      deadline_s=SUITE_DEADLINE_S)
    m.start()
    try:
        yield m
    finally:
        m.close()


def figures(matrix: runner.Matrix, scenario: str, cell: str) -> dict[str, Any]:
    result = matrix.result(f"{scenario}/{cell}")
    report(result)
    assert not result.get("error"), f"{scenario}/{cell} did not finish: {result}"
    return result


@pytest.mark.parametrize("cell", CELLS)
def test_faults_on_a_fifth_of_requests(cell: str, matrix: runner.Matrix) -> None:
    result = figures(matrix, "faults", cell)
    assert result["records"] == SIZES["faults"], result
    assert all(result["faults"][k] > 0 for k in harness.FAULT_RATES), (cell, result["faults"])
    harness.assert_exactly_once(result)


@pytest.mark.parametrize("cell", CELLS)
def test_worker_killed_at_each_step_of_a_send(cell: str, matrix: runner.Matrix) -> None:
    result = figures(matrix, "kills", cell)
    assert result["records"] == SIZES["kills"], result
    assert result["kills"] == len(harness.CELLS[cell].kills), result
    harness.assert_exactly_once(result)


@pytest.mark.parametrize("cell", CELLS)
def test_ehr_unreachable_for_30_s_mid_sync(cell: str, matrix: runner.Matrix) -> None:
    """Connections refused at the proxy for 30 s while two workers run (backoff and the EHR
    gate's probe interval scaled down by config): every record waits, none is given up,
    all go once the EHR answers again."""
    result = figures(matrix, "outage", cell)
    assert result["records"] == SIZES["outage"] and result["outage_s"] == OUTAGE_S, result
    assert 0 < result["synced_before_outage"] < result["records"], \
        f"outage/{cell}: the outage was not mid-sync: {result}"
    assert result["worker_exits"] == [0, 0], result
    harness.assert_exactly_once(result)
