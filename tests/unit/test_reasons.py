"""Every reason code the source emits has words (connector/reasons.py).

The codes are collected from the source itself (its syntax tree), not listed
here: a new ``Wait(..., "some-new-code")``, ``reason=`` or what-the-EHR-cannot-
carry code without words makes this test fail.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector import reasons

CONNECTOR = Path(reasons.__file__).resolve().parent
CODE = re.compile(r"[a-z0-9{}\[\]+]+(?:[-:][a-z0-9{}\[\]+_]+)+")  # a slug, not a sentence


def _template(node: ast.expr, constants: dict[str, str]) -> Iterator[str]:
    """The string(s) an expression can be: literals, f-strings ({} for each hole), both
    branches of ``a if c else b``, module constants."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.JoinedStr):
        yield "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    elif isinstance(node, ast.IfExp):
        yield from _template(node.body, constants)
        yield from _template(node.orelse, constants)
    elif isinstance(node, ast.Name) and node.id in constants:
        yield constants[node.id]


def _emitted(path: Path) -> Iterator[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                 and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                 for t in n.targets if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        found: list[ast.expr] = []
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name == "Wait" and len(node.args) > 1:  # Wait(state, reason)
                found.append(node.args[1])
            found += [k.value for k in node.keywords if k.arg in ("reason", "part2_form")]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(getattr(t, "id", getattr(t, "attr", "")) in ("reason", "part2_form")
                   for t in targets) and node.value is not None:
                found.append(node.value)
        elif isinstance(node, ast.FunctionDef) and node.name == "omitted_parts":
            found += [c.args[0] for c in ast.walk(node) if isinstance(c, ast.Call)
                      and getattr(c.func, "attr", "") == "append" and c.args]
        for expr in found:
            for text in _template(expr, constants):
                if CODE.fullmatch(text):
                    yield text, node.lineno


def emitted_codes() -> dict[str, str]:
    """{code template: where} for every reason code in connector/ ({} marks a value)."""
    out = {}
    for path in sorted(CONNECTOR.rglob("*.py")):
        if path.name == "reasons.py":
            continue
        for code, line in _emitted(path):
            out.setdefault(code, f"{path.relative_to(CONNECTOR.parent)}:{line}")
    return out


def test_the_collector_finds_the_codes_it_should() -> None:
    codes = emitted_codes()
    assert {"mrn-no-match", "no-mrn", "mrn-matches-{}-patients", "gave-up-after-outage",
            "staff-id-no-match-ehr-cannot-create", "goals:ehr-owns-encounters",
            "notice-in-content[0]"} <= set(codes)


@pytest.mark.parametrize("code, where", sorted(emitted_codes().items()))
def test_every_emitted_code_has_words(code: str, where: str) -> None:
    values = ("cancelled", "revoked") if "status" in code or "consent" in code else ("2",)
    for value in values:  # a status, or a count
        example = code.replace("{}", value)
        assert reasons.known(example), f"{where}: reason code {example!r} has no words"


def test_words_with_the_code_kept() -> None:
    assert reasons.label("mrn-no-match") == "No EHR patient has this MRN (mrn-no-match)"
    assert reasons.describe("mrn-matches-3-patients").startswith("3 EHR patients")
    assert reasons.describe("part2-consent-none") == "42 CFR Part 2 record with no consent on file"
    assert "revoked" in reasons.describe("part2-consent-revoked")
    assert "no show" in reasons.describe("encounter-status-no_show:ehr-owns-encounters")
    assert reasons.describe("2-ehr-encounters-in-session-window").startswith("The EHR has 2")


def test_unknown_reasons_stay_as_they_are() -> None:
    text = "HTTP 412 from the EHR: multiple-matches"
    assert reasons.describe(text) == text and reasons.label(text) == text
    assert reasons.label("some-new-code") == "some-new-code"
    assert reasons.label(None) == reasons.label("") == ""


def test_a_cosigners_look_up_is_described_as_the_supervisors() -> None:
    """connector/sync/cosign.py prefixes the supervisor's Practitioner look-up's reason with
    ``cosigner-``: every Practitioner reason so prefixed has words, naming the supervisor."""
    practitioner_codes = [c.replace("{}", "2") for c in emitted_codes()
                          if "staff-id" in c or "npi" in c]
    assert practitioner_codes
    for code in practitioner_codes:
        words = reasons.describe(f"cosigner-{code}")
        assert words.startswith("The co-signing supervisor: "), code
        assert words.lower().endswith(reasons.describe(code).lower()), code
    assert reasons.label("cosigner-unheard-of") == "cosigner-unheard-of"
