"""`peersync serve`: the admin app under gunicorn, a production WSGI server.

gunicorn is started in-process through its ``BaseApplication`` (so no
gunicorn config file or ``GUNICORN_CMD_ARGS`` is read: what runs is what this
module says). Each worker builds the app with :func:`webapp.create_app`.

* **Cookies are Secure** unless ``--insecure-http`` (plain HTTP on a loopback
  address: the local demo). Put a TLS-terminating proxy in front and say so
  with ``--behind-proxy`` (one hop) or ``[web] trusted_proxies = N``: the app
  then takes the client's scheme, address and host from that many hops of
  ``X-Forwarded-Proto``/``-For``/``-Host``/``-Port`` (werkzeug's ProxyFix)
  and sends HSTS on HTTPS. gunicorn's own forwarded-header handling is off,
  so nothing else trusts those headers.
* ``Server: gunicorn``, no version.
* The access log has the method and the path, never the query string or the
  referrer (search values may be PHI).
* The worker timeout is more than twice ``[ehr] timeout_s``: a form, a retry
  or a link runs one sync pass inside the request.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.config import Config, WebConfig, is_loopback_host

THREADS = 4  # per worker (gthread): a slow client or a slow EHR holds one thread, not a worker
MAX_WORKERS = 64
# %(U)s is the path without the query; no %(f)s (the referrer carries the previous query)
ACCESS_LOG_FORMAT = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%(a)s"'


class ServeUsageError(ValueError):
    """Options that do not go together (the CLI exits 2)."""


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 2
    trusted_proxies: int = 0
    insecure_http: bool = False


def resolve_options(web: WebConfig, *, host: str, port: int, workers: int | None,
                    behind_proxy: bool, insecure_http: bool) -> ServeOptions:
    """The command line over ``[web]``; refuses combinations that would weaken cookies."""
    if behind_proxy and insecure_http:
        raise ServeUsageError(
            "--behind-proxy and --insecure-http exclude each other: behind a TLS proxy "
            "the session cookie must be Secure")
    trusted = 1 if behind_proxy else web.trusted_proxies
    if insecure_http and trusted:
        raise ServeUsageError(
            f"--insecure-http with [web] trusted_proxies = {trusted}: behind a TLS proxy "
            "the session cookie must be Secure")
    if insecure_http and not is_loopback_host(host):
        raise ServeUsageError(
            "--insecure-http is for a loopback address only (127.0.0.1, ::1, localhost): "
            "session cookies would cross the network in clear")
    count = web.workers if workers is None else workers
    if not 1 <= count <= MAX_WORKERS:
        raise ServeUsageError(f"--workers must be between 1 and {MAX_WORKERS}")
    if not 0 <= port <= 65535:
        raise ServeUsageError("--port must be between 0 and 65535")
    return ServeOptions(host=host, port=port, workers=count, trusted_proxies=trusted,
                        insecure_http=insecure_http)


def worker_timeout(config: Config) -> int:
    """Seconds before gunicorn restarts a silent worker: > 2 x the EHR timeout."""
    return int(2 * config.ehr.timeout_s) + 30


def bind_address(host: str, port: int) -> str:
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"


def app_settings(config: Config, options: ServeOptions) -> dict[str, Any]:
    """What ``create_app`` is given in each worker."""
    return {
        "PEERSYNC_CONFIG": str(config.path),
        "SESSION_COOKIE_SECURE": not options.insecure_http,
        "PEERSYNC_TRUSTED_PROXIES": options.trusted_proxies,
        "PEERSYNC_IDLE_TIMEOUT_S": config.web.idle_timeout_s,
    }


def gunicorn_settings(config: Config, options: ServeOptions) -> dict[str, Any]:
    """gunicorn's settings (names as in its documentation)."""
    return {
        "bind": [bind_address(options.host, options.port)],
        "workers": options.workers,
        "worker_class": "gthread",
        "threads": THREADS,
        "timeout": worker_timeout(config),
        "graceful_timeout": 30,
        "keepalive": 5,
        "preload_app": False,  # each worker opens its own database engine
        "accesslog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "errorlog": "-",
        "loglevel": "info",
        # X-Forwarded-* are the app's business (ProxyFix, [web] trusted_proxies)
        "forwarded_allow_ips": "",
        "proxy_allow_ips": "",
        "control_socket_disable": True,
        "proc_name": "peersync",
    }


def _application_class() -> type:
    from gunicorn.app.base import BaseApplication

    class PeerSyncApplication(BaseApplication):  # type: ignore[misc]
        """gunicorn, configured by :func:`gunicorn_settings`, serving ``create_app``."""

        def __init__(self, settings: dict[str, Any], app_config: dict[str, Any]) -> None:
            self._settings = settings
            self._app_config = app_config
            super().__init__()

        def load_config(self) -> None:
            for key, value in self._settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from webapp import create_app

            return create_app(self._app_config)

    return PeerSyncApplication


def application(config: Config, options: ServeOptions) -> Any:
    """The gunicorn application (``.run()`` serves until SIGINT/SIGTERM)."""
    return _application_class()(gunicorn_settings(config, options),
                                app_settings(config, options))


def run(config: Config, options: ServeOptions) -> None:
    application(config, options).run()


def serve_in_subprocess(folder: Path, *, port: int, insecure_http: bool) -> int:
    """``peersync serve`` for ``folder``'s config in a child process; its exit code.

    For ``peersync demo``: gunicorn forks its workers, which must not carry the
    demo's own clean-up (stopping the demo EHR) with them. Ctrl-C reaches both.
    """
    args = [sys.executable, "-c", "from connector.cli import main; main()", "serve",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if insecure_http:
        args.append("--insecure-http")
    env = dict(os.environ, PEERSYNC_HOME=str(folder))
    try:
        return subprocess.run(args, env=env, check=False).returncode
    except KeyboardInterrupt:
        return 0
