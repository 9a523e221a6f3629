"""The PeerSync admin app (Flask). ``flask --app webapp run`` or ``peersync serve``.

Built like Flask's tutorial app: ``create_app()`` takes defaults, then the
PeerSync config named by PEERSYNC_CONFIG (or $PEERSYNC_HOME/peersync.toml),
then ``FLASK_*`` environment variables; the store lives on ``g`` for one
request. Pages read and write only through connector functions.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from flask import Flask, g


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=False)
    app.config.from_mapping(
        SECRET_KEY=os.environ.get("PEERSYNC_SECRET_KEY") or secrets.token_hex(32),
        PEERSYNC_CONFIG=None,
        PAGE_SIZE=50,
    )
    app.config.from_prefixed_env()
    if test_config:
        app.config.update(test_config)

    from webapp import records

    app.register_blueprint(records.bp)
    app.add_url_rule("/", endpoint="index", view_func=records.index)
    app.teardown_appcontext(_close_store)

    @app.after_request
    def security_headers(response: Any) -> Any:
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
        )
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    return app


def peersync_config() -> Any:
    """The deployment config for this app (loaded once per app)."""
    from flask import current_app

    from connector.config import load_config

    cached = current_app.extensions.get("peersync_config")
    if cached is None:
        path = current_app.config.get("PEERSYNC_CONFIG")
        from pathlib import Path

        cached = load_config(Path(path) if path else None)
        current_app.extensions["peersync_config"] = cached
    return cached


def get_store() -> Any:
    """The store for this request (one engine per app, kept on the app)."""
    from flask import current_app

    from connector.store import Store

    if "store" not in g:
        store = current_app.extensions.get("peersync_store")
        if store is None:
            store = Store.from_url(peersync_config().database_url)
            current_app.extensions["peersync_store"] = store
        g.store = store
    return g.store


def _close_store(_exc: BaseException | None) -> None:
    g.pop("store", None)
