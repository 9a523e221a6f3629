"""The reliability proof suite: the matrix of tests/reliability/harness.py at the suite's
sizes (runner.SIZES["suite"]; scripts/reliability.py --full runs it larger)."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def report(result: dict[str, Any]) -> None:
    """One ``RELIABILITY`` line per run (see it with ``-s`` or ``-rP``)."""
    figures = {k: v for k, v in result.items() if k not in ("audit_output", "refusals")}
    print(f"\nRELIABILITY {json.dumps(figures, default=str)}", flush=True)
