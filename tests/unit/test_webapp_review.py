"""The review queue (Flask test client): a supervisor sees only the notes of the specialists
they supervise, co-signs and returns them with CSRF-protected forms; other roles are refused;
the record page shows the review state."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from connector.accounts import add_user
from tests.webapp_support import (
    Home,
    csrf_token,
    import_examples,
    job_id,
    log_in,
    logged_in,
    make_app,
)

LEE = "lee-password-supervisor-91"


@pytest.fixture
def home(home: Home) -> Home:
    """A home under [review] policy = "cosign", with a supervisor of S-22 only (lee)."""
    from mappings.profile import default_profile_path

    text = default_profile_path().read_text("utf-8")
    (home.path / "agency.toml").write_text(
        text[: text.index("[review]")] + '[review]\npolicy = "cosign"\n', "utf-8")
    config = home.config.read_text("utf-8")
    home.config.write_text(re.sub(r'^profile = "default"', 'profile = "agency.toml"', config,
                                  flags=re.M), "utf-8")
    store = home.store()
    try:
        add_user(store, "lee", role="supervisor", specialist_id="S-91", supervises=["S-22"],
                 password=LEE, actor="test")
    finally:
        store.close()
    import_examples(home, "batch.jsonl")  # 124: S-17's note; 125: S-22's; 126: S-22, no note
    return home


@pytest.fixture
def sam(app: Flask) -> FlaskClient:
    return logged_in(app, "supervisor")  # sam: S-90, supervises every specialist


@pytest.fixture
def lee(app: Flask) -> Iterator[FlaskClient]:
    client = app.test_client()
    assert log_in(client, "lee", LEE).status_code == 302
    yield client


def _state(home: Home, record_id: str) -> str:
    store = home.store()
    try:
        return next(r["state"] for r in store.jobs_overview(limit=100)
                    if r["record_id"] == record_id)
    finally:
        store.close()


def test_the_supervisor_lands_on_the_queue_with_the_notes_and_unique_names(
        home: Home, sam: FlaskClient) -> None:
    assert sam.get("/").headers["Location"] == "/review/"
    html = sam.get("/review/").get_data(as_text=True)
    assert "Sam Okafor" in html and "Renée Dubois" in html  # both specialists' notes
    assert "Lee Park" not in html  # a no-show without a note waits for nothing
    assert "housing" in html or "Okafor" in html
    assert "Co-sign<span class=\"vh\"> note of Sam Okafor, 21 Nov</span>" in html
    assert "Return<span class=\"vh\"> note of Sam Okafor, 21 Nov</span>" in html
    labels = re.findall(r'<label for="(comment-\d+)"', html)
    assert len(labels) == 2 and all(f'id="{name}"' in html for name in labels)
    assert "<script" not in html
    assert _state(home, "ps-2026-000126") == "pending"


def test_a_limited_supervisor_sees_only_their_specialists(home: Home, lee: FlaskClient) -> None:
    html = lee.get("/review/").get_data(as_text=True)
    assert "Renée Dubois" in html and "Sam Okafor" not in html
    token = csrf_token(lee, "/review/")
    other = job_id(home, "ps-2026-000124")  # S-17's: not lee's to sign
    assert lee.post(f"/review/{other}/cosign", data={"csrf_token": token}).status_code == 404
    assert _state(home, "ps-2026-000124") == "waiting_review"
    assert lee.get(f"/records/{other}").status_code == 404  # nor to read
    assert lee.get(f"/records/{job_id(home, 'ps-2026-000125')}").status_code == 200


def test_co_sign_releases_the_note_and_the_record_page_says_who(home: Home,
                                                                sam: FlaskClient) -> None:
    job = job_id(home, "ps-2026-000124")
    page = sam.get(f"/records/{job}").get_data(as_text=True)
    assert "Waiting for review by" in page and "sam" in page
    response = sam.post(f"/review/{job}/cosign", data={"csrf_token": csrf_token(sam, "/review/")})
    assert response.status_code == 302
    assert _state(home, "ps-2026-000124") == "pending"
    page = sam.get(f"/records/{job}").get_data(as_text=True)
    assert "Co-signed by S-90 (sam)" in page
    assert "Sam Okafor" not in sam.get("/review/").get_data(as_text=True)


def test_return_needs_a_comment_and_the_specialist_sees_it(home: Home, app: Flask,
                                                          sam: FlaskClient) -> None:
    job = job_id(home, "ps-2026-000124")
    token = csrf_token(sam, "/review/")
    empty = sam.post(f"/review/{job}/return", data={"csrf_token": token, "comment": "  "},
                     follow_redirects=True)
    assert "Not returned: write a comment" in empty.get_data(as_text=True)
    assert _state(home, "ps-2026-000124") == "waiting_review"
    sam.post(f"/review/{job}/return", data={"csrf_token": token,
                                            "comment": "Name the next step with Sam."})
    assert _state(home, "ps-2026-000124") == "returned"
    alex = logged_in(app, "specialist")  # S-17, the author
    page = alex.get(f"/records/{job}").get_data(as_text=True)
    assert "Returned by S-90 (sam)" in page and "Name the next step with Sam." in page
    auditor = logged_in(app, "auditor").get(f"/records/{job}").get_data(as_text=True)
    assert "Returned by S-90" in auditor and "Name the next step" not in auditor  # no PHI


def test_posts_need_csrf_and_other_roles_are_refused(home: Home, app: Flask,
                                                      sam: FlaskClient) -> None:
    job = job_id(home, "ps-2026-000124")
    assert sam.post(f"/review/{job}/cosign").status_code == 400  # no CSRF token
    assert _state(home, "ps-2026-000124") == "waiting_review"
    for role in ("admin", "specialist", "auditor"):
        client = logged_in(app, role)
        assert client.get("/review/").status_code == 403
        token = csrf_token(client, "/records/")  # a valid token: the role is what refuses
        assert client.post(f"/review/{job}/cosign",
                           data={"csrf_token": token}).status_code == 403
    assert _state(home, "ps-2026-000124") == "waiting_review"


def test_policy_none_shows_an_empty_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    from tests.webapp_support import make_home
    from webapp import close_app

    plain = make_home(tmp_path / "plain", monkeypatch)
    import_examples(plain, "batch.jsonl")
    application = make_app(plain)
    try:
        html = logged_in(application, "supervisor").get("/review/").get_data(as_text=True)
        assert "Nothing waits for your review." in html
        assert _state(plain, "ps-2026-000124") == "pending"
    finally:
        close_app(application)


def test_the_records_filter_and_the_dashboard_know_the_review_states(home: Home,
                                                                      app: Flask) -> None:
    admin = logged_in(app, "admin")
    html = admin.get("/records/?state=waiting_review").get_data(as_text=True)
    assert 'value="waiting_review"' in html and 'value="returned"' in html  # filter choices
    assert "ps-2026-000124" in html and "ps-2026-000125" in html
    assert "ps-2026-000126" not in html  # pending: no note to review
    assert "waiting for a supervisor" in admin.get("/dashboard/").get_data(as_text=True)
