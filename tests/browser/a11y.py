"""What the accessibility browser tests share: the page list (from the app's url_map) and axe-core.

axe-core comes from npm (tests/browser/package.json, pinned in package-lock.json;
``npm ci`` in scripts/bootstrap.sh puts it in tests/browser/node_modules). It is
injected into each page through a ``bypass_csp`` browser context: the app's CSP
forbids every script, and that stays.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
AXE_JS = HERE / "node_modules" / "axe-core" / "axe.min.js"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
PHONE_WIDTHS = (320, 390)  # no horizontal scroll at either
AXE_WIDTHS = (390, 1280)  # 0 axe violations at either
HEIGHT = 844

# GET endpoints that are not pages (downloads, JSON, redirects) or not for a browser.
NOT_PAGES = {"static", "index", "auth.logout", "audit.export", "audit.anchor"}
NOT_PAGE_PREFIXES = ("api.", "metrics.")


@dataclass(frozen=True)
class Target:
    """One page to check: its endpoint and the URL (with the parameters a detail page needs)."""

    endpoint: str
    url: str
    label: str


def page_endpoints(app: Any) -> list[tuple[str, Any]]:
    """Every GET page of the app as (endpoint, rule): a new page joins the list by itself."""
    found = []
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or ()) or rule.endpoint in NOT_PAGES:
            continue
        if rule.endpoint.startswith(NOT_PAGE_PREFIXES):
            continue
        found.append((rule.endpoint, rule))
    return found


Params = Callable[[], Iterable[dict[str, Any]]]


def targets(app: Any, params: dict[str, Params]) -> tuple[list[Target], list[str]]:
    """The URLs to check, and the endpoints that need parameters nobody gave (a failure).

    An endpoint with URL arguments, or one listed in ``params`` (query arguments), is
    visited once per parameter set ``params[endpoint]()`` yields; any other is visited as is.
    """
    out: list[Target] = []
    missing = []
    with app.test_request_context():
        from flask import url_for

        for endpoint, rule in page_endpoints(app):
            if endpoint in params:
                sets = list(params[endpoint]())
            elif rule.arguments:
                missing.append(endpoint)
                continue
            else:
                sets = [{}]
            for kwargs in sets:
                url = url_for(endpoint, **kwargs)
                label = endpoint + ("" if not kwargs else " " + ",".join(
                    f"{k}={v}" for k, v in sorted(kwargs.items())))
                out.append(Target(endpoint, url, label))
    return out, missing


def axe_source() -> str:
    if not AXE_JS.exists():
        raise FileNotFoundError(f"{AXE_JS} missing: run `npm ci --no-audit --no-fund` in "
                                f"{HERE} (scripts/bootstrap.sh does)")
    return AXE_JS.read_text(encoding="utf-8")


def run_axe(page: Any, source: str) -> list[dict[str, Any]]:
    """axe-core's violations on the page as shown now (WCAG 2.0-2.2 A and AA rules)."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=source)
    result: dict[str, Any] = page.evaluate(
        "async (tags) => await axe.run(document, {runOnly: {type: 'tag', values: tags},"
        " resultTypes: ['violations']})", AXE_TAGS)
    return list(result["violations"])


def scroll_width(page: Any) -> int:
    width: int = page.evaluate("() => document.documentElement.scrollWidth")
    return width


def overflowing(page: Any) -> str:
    """The innermost elements that reach past the viewport's right edge (what to fix)."""
    found: list[str] = page.evaluate("""() => {
      const out = [];
      for (const e of document.querySelectorAll('body *')) {
        const r = e.getBoundingClientRect();
        if (r.right > innerWidth + 1 && ![...e.children].some(
              c => c.getBoundingClientRect().right > innerWidth + 1)) {
          out.push(`${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''}` +
                   `${e.className ? '.' + String(e.className).split(' ').join('.') : ''}` +
                   ` (right edge ${Math.round(r.right)})`);
        }
      }
      return out.slice(0, 3);
    }""")
    return "; ".join(found)


def target_problems(page: Any) -> list[str]:
    """Touch targets and names axe does not check: buttons >= 44 px tall, every other control
    and the links in tables, lists of links and the pager >= 24 x 24 px; no two buttons with
    the same name, no two links with the same name going to different places."""
    found: list[str] = page.evaluate("""() => {
      const out = [], shown = e => e.offsetParent !== null || e.getClientRects().length;
      const name = e => (e.getAttribute('aria-label') || e.textContent)
        .replace(/\\s+/g, ' ').trim();
      const where = e => `${e.tagName.toLowerCase()} "${name(e).slice(0, 40)}"`;
      const small = 'input[type=checkbox], input[type=radio], select, input:not([type=hidden]),'
        + ' textarea, td a, nav a, .counts a, .pager a, .card a, button.link, .error-summary a';
      for (const e of document.querySelectorAll(small)) {
        const r = e.getBoundingClientRect();
        if (shown(e) && (r.width < 24 || r.height < 24))
          out.push(`${where(e)} is ${Math.round(r.width)}x${Math.round(r.height)} px (< 24)`);
      }
      for (const e of document.querySelectorAll('button:not(.link), a.button')) {
        const r = e.getBoundingClientRect();
        if (shown(e) && r.height < 44)
          out.push(`${where(e)} is ${Math.round(r.height)} px tall (< 44)`);
      }
      const buttons = new Map(), links = new Map();
      for (const e of document.querySelectorAll('button')) {
        if (shown(e)) buttons.set(name(e), (buttons.get(name(e)) || 0) + 1);
      }
      for (const [n, count] of buttons) if (count > 1) out.push(`${count} buttons named "${n}"`);
      for (const e of document.querySelectorAll('a[href]')) {
        const hrefs = links.get(name(e)) || new Set();
        hrefs.add(e.href); links.set(name(e), hrefs);
      }
      for (const [n, hrefs] of links) if (hrefs.size > 1) out.push(
        `links named "${n}" go to ${hrefs.size} places`);
      return out;
    }""")
    return found


def describe(label: str, width: int, violation: dict[str, Any]) -> list[str]:
    lines = []
    for node in violation["nodes"][:5]:
        target = " ".join(str(t) for t in node.get("target", []))
        lines.append(f"{label} @{width}px: {violation['id']} ({violation['impact']}) "
                     f"at {target}: {_squash(node.get('failureSummary') or '')}")
    if len(violation["nodes"]) > 5:
        lines.append(f"{label} @{width}px: {violation['id']}: "
                     f"{len(violation['nodes']) - 5} more node(s)")
    return lines


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()[:200]
