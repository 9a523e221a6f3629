"""The audit page's CSV export and chain check (issue 8, findings 13 and 14).

The export holds exactly the rows the page's filters select, never cached, its
cells escaped against formula injection, with its anchor offered for download;
the chain check fails without a real audit key.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from connector.cli import main
from tests.webapp_support import Home, import_examples, logged_in, make_app
from webapp.views import agency_tz

SEQ = re.compile(r"<tr>\s*<td[^>]*>(\d+)</td>")


@pytest.fixture
def home(home: Home) -> Home:
    import_examples(home, "batch.jsonl", "in-person-session.json", "part2-without-consent.json")
    return home


def page_seqs(client: FlaskClient, query: str) -> list[int]:
    html = client.get(f"/audit/?{query}").get_data(as_text=True)
    return sorted(int(seq) for seq in SEQ.findall(html))


def csv_rows(client: FlaskClient, query: str) -> list[dict[str, str]]:
    response = client.get(f"/audit/export.csv?{query}")
    assert response.status_code == 200
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True), newline="")))


def test_the_export_holds_exactly_the_rows_the_page_shows(app: Flask) -> None:
    # Finding 14: the page showed 8 rows and the CSV 70 (only "from" was honoured).
    auditor = logged_in(app, "auditor")
    rows = csv_rows(auditor, "")
    everything = [int(r["seq"]) for r in rows]
    # The filters take days in the agency's time zone: the day of the newest web row
    # there, not the clock's (a run that crosses midnight logged its rows yesterday).
    newest = max(r["at"] for r in rows if r["actor"].startswith("web:"))
    with app.app_context():
        today = datetime.fromisoformat(newest).astimezone(agency_tz()).date().isoformat()
    for query in (f"from={today}&to={today}&actor=web:*", "actor=test", "actor=web:",
                  "record=ps-2026-000124", "outcome=login.ok", "outcome=pending",
                  "to=2000-01-01", "actor=import:*&outcome=record.accepted",
                  "record=ps-2026-000124&outcome=record.accepted"):
        shown = page_seqs(auditor, query)
        exported = [int(r["seq"]) for r in csv_rows(auditor, query)]
        assert exported == shown, query
        if query != "to=2000-01-01":
            assert 0 < len(exported) < len(everything), query


def test_the_export_link_carries_every_filter_and_the_anchor_is_offered(app: Flask) -> None:
    auditor = logged_in(app, "auditor")
    html = auditor.get("/audit/?actor=web:*&outcome=login.ok&record=r-1&from=2026-01-02"
                       "&to=2026-12-31").get_data(as_text=True)
    link = re.search(r'id="export-csv" href="([^"]+)"', html)
    assert link
    href = link.group(1).replace("&amp;", "&")
    for part in ("actor=web:*", "outcome=login.ok", "record=r-1", "from=2026-01-02",
                 "to=2026-12-31"):
        assert part in href.replace("%3A", ":").replace("%2A", "*"), part
    assert 'id="export-anchor" href="/audit/anchor.json"' in html


def test_exports_and_anchors_are_never_cached_and_the_export_links_its_anchor(
    app: Flask, home: Home
) -> None:
    auditor = logged_in(app, "auditor")
    export = auditor.get("/audit/export.csv?actor=web:*")
    assert export.get_data(as_text=True).startswith("seq,at,actor,")
    assert export.headers["Cache-Control"] == "no-store"
    seq, _, mac = export.headers["X-PeerSync-Anchor"].partition(":")
    link = re.fullmatch(r'<([^>]+)>; rel="describedby"; type="application/json"',
                        export.headers["Link"])
    assert link and link.group(1) == f"/audit/anchor.json?seq={seq}"
    anchor = auditor.get(link.group(1))
    assert anchor.status_code == 200 and anchor.mimetype == "application/json"
    assert anchor.headers["Cache-Control"] == "no-store"
    assert "attachment" in anchor.headers["Content-Disposition"]
    taken = json.loads(anchor.get_data(as_text=True))
    assert (taken["last_seq"], taken["last_mac"]) == (int(seq), mac)
    assert taken["count"] == int(seq) and taken["anchored_at"].endswith("Z")
    # the export's own audit row names its filters, never their values
    rows = csv_rows(auditor, "outcome=audit.exported")
    assert json.loads(rows[-1]["detail"])["filters"] == ["actor"]
    assert "web:*" not in rows[-1]["detail"]

    head = json.loads(auditor.get("/audit/anchor.json").get_data(as_text=True))
    assert head["last_seq"] > int(seq)  # the export and the anchor download were audited

    # the anchor downloaded from the page is what `peersync audit verify --anchor` takes
    anchor_file = home.path / "anchor.json"
    anchor_file.write_text(json.dumps(head))
    result = CliRunner().invoke(main, ["audit", "verify", "--anchor", str(anchor_file)])
    assert result.exit_code == 0, result.output
    from sqlalchemy import delete, update

    from connector.schema import audit_chain_head, audit_events

    store = home.store()
    try:  # cut the tail and move the head back
        with store.engine.begin() as conn:
            conn.execute(delete(audit_events).where(audit_events.c.seq >= head["last_seq"]))
            last = conn.execute(audit_events.select().order_by(audit_events.c.seq.desc())
                                .limit(1)).one()
            conn.execute(update(audit_chain_head).values(last_seq=last.seq, last_mac=last.mac))
    finally:
        store.close()
    assert CliRunner().invoke(main, ["audit", "verify"]).exit_code == 0
    result = CliRunner().invoke(main, ["audit", "verify", "--anchor", str(anchor_file)])
    assert result.exit_code == 1 and f"seq {head['last_seq']}: truncated" in result.output


def test_record_ids_and_actors_that_start_a_formula_are_escaped(app: Flask, home: Home) -> None:
    store = home.store()
    try:
        with store.begin() as conn:
            for record_id in ("-2+3", "=cmd|'/c calc'!A0", "@SUM(1)", "+1"):
                store.audit(conn, actor="-w1", action="record.accepted", source="peer-tool",
                            record_id=record_id)
    finally:
        store.close()
    rows = csv_rows(logged_in(app, "auditor"), "actor=-w1")
    assert [r["record_id"] for r in rows] == ["'-2+3", "'=cmd|'/c calc'!A0", "'@SUM(1)", "'+1"]
    assert {r["actor"] for r in rows} == {"'-w1"}


def test_the_chain_check_fails_without_a_real_audit_key(home: Home) -> None:
    # Finding 13 on the page: with peersync.key gone the app falls back to the public key.
    (home.path / "peersync.key").unlink()
    from webapp import close_app

    app = make_app(home)
    try:
        html = logged_in(app, "auditor").get("/audit/verify").get_data(as_text=True)
    finally:
        close_app(app)
    assert "Audit log NOT intact" in html
    assert "unproven (no audit key is configured" in html
    assert "cannot detect a\ncut-off tail" in html or "cannot detect a cut-off tail" in html
