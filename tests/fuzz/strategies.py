"""Hypothesis strategies: hostile records built from a valid one.

Every string the fuzzer injects (value or key) carries CANARY, so a message
that echoes input is caught by a plain substring test.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from connector.intake import CSV_COLUMNS
from tests.conftest import example_dict

CANARY = "PHI~XQ"  # "~" is not allowed in an id: a valid id never carries it
ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
PATHS = sorted(CSV_COLUMNS) + ["participant", "specialist", "service", "note", "consent"]


def fuzz_settings(examples: int) -> settings:
    """Deterministic, no example database, no shrinking."""
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: keep failures fast
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                               HealthCheck.data_too_large],
    )


texts = st.text(max_size=12).map(lambda s: CANARY + s)
hostile_strings = st.one_of(
    texts,
    st.sampled_from(["\x00", "\x1b[2J", "\ud800", "\n", '"', ",", "{", "["]).map(
        lambda s: CANARY + s + CANARY
    ),
    st.sampled_from(
        [
            "9999-12-31T23:59:00-01:00",
            "0001-01-01T00:30:00+01:00",
            "2026-02-30T10:00:00Z",
            "2026-11-20T10:00:00",
            "2026-11-20",
        ]
    ),
)
leaves = st.one_of(
    hostile_strings,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)
    ),
    max_leaves=6,
)


def base(rid: str) -> dict[str, Any]:
    record = copy.deepcopy(example_dict("in-person-session.json"))
    record["id"] = rid
    return record


def put(record: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    target: Any = record
    for name in parents:
        if not isinstance(target.get(name), dict):
            target[name] = {}
        target = target[name]
    target[leaf] = value


@st.composite
def malformed(draw: st.DrawFn, rid: str) -> dict[str, Any]:
    """A valid record with 1-3 fields replaced, deleted, or unknown ones added."""
    record = base(rid)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "delete", "unknown"]))
        if kind == "unknown":
            put(record, draw(st.sampled_from(["", "participant.", "note."])) + CANARY + "k",
                draw(values))
            continue
        path = draw(st.sampled_from(PATHS))
        if kind == "set":
            put(record, path, draw(values))
        else:
            *parents, leaf = path.split(".")
            target: Any = record
            for name in parents:
                target = target.get(name) if isinstance(target, dict) else None
            if isinstance(target, dict):
                target.pop(leaf, None)
    if draw(st.booleans()):
        record["id"] = draw(st.one_of(st.just(rid), hostile_strings))
    return record


def no_echo(text: str, record: object) -> None:
    """The message holds no injected string and no big injected number."""
    assert CANARY not in text, text
    stack = [record]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**7:
            assert str(value) not in text, text
