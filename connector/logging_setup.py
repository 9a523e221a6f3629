"""Log redaction at the boundary: no URL query value, SQL parameter or row in any log line.

PeerSync's own log lines name paths and codes only; libraries are less careful:

- urllib3 logs request URLs with their query strings: ``Retrying (...) after connection
  broken by ...: /fhir/Patient?identifier=...%7CMRN-70011`` (a WARNING, printed with the
  EHR down), ``"GET /fhir/Patient?identifier=... HTTP/1.1" 200`` (DEBUG), and its
  ``MaxRetryError`` text ("Max retries exceeded with url: ...") reaches tracebacks;
- werkzeug's access log holds each request line (``GET /records/?q=... HTTP/1.1``);
- SQLAlchemy, when its loggers are turned up, logs SQL parameters and result rows, and its
  exceptions carry ``[parameters: ...]`` and the database's ``DETAIL:`` line.

:func:`install` (called by the CLI's ``main()`` and by ``webapp.create_app``) wraps the
log record factory, so every record, whichever logger made it, is redacted before any
handler (or pytest's caplog) sees it; :func:`protect_library_loggers` puts the same
redaction on the urllib3 loggers as a filter (done by :mod:`connector.fhir_client` on
import, so the client is safe even in a process that never called :func:`install`).

Redaction keeps parameter names: ``/Patient?identifier=<redacted>&_count=<redacted>``.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "LIBRARY_LOGGERS",
    "REDACTED",
    "RedactingFilter",
    "install",
    "installed",
    "protect_library_loggers",
    "redact_record",
    "redact_text",
    "uninstall",
]

REDACTED = "<redacted>"

# Loggers of the libraries that may see URLs, request lines or SQL.
LIBRARY_LOGGERS: tuple[str, ...] = (
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
    "requests",
    "werkzeug",
    "gunicorn.access",
    "gunicorn.error",
    "sqlalchemy.engine",
    "sqlalchemy.engine.Engine",
    "sqlalchemy.pool",
    "py.warnings",
)
_URLLIB3_LOGGERS = tuple(name for name in LIBRARY_LOGGERS if name.startswith("urllib3"))

_NAME_RE = re.compile(r"^[A-Za-z0-9_:.\-]{1,100}$")
_METHODS = r"(?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS|TRACE|CONNECT)"
# A request line (werkzeug, gunicorn, urllib3): everything between "?" and " HTTP/x"
# is the query, spaces included (werkzeug decodes the path before logging it).
_REQUEST_LINE_RE = re.compile(
    rf"(?P<head>(?<![A-Z]){_METHODS} [^?\s]*)\?(?P<query>.*?)(?P<tail> HTTP/\d(?:\.\d)?)"
)
# Any other "?name=value..." run, up to white space or a fragment.
_QUERY_RE = re.compile(r"\?(?P<query>(?=[^\s#]*=)[^\s#]*)")
# SQLAlchemy's StatementError text and PostgreSQL's DETAIL line (may quote a failing row).
_SQL_PARAMS_RE = re.compile(r"\[parameters: [^\n]*")
_DETAIL_RE = re.compile(r"(?m)^(?P<head>\s*DETAIL:)[^\n]*")
# SQLAlchemy's lazy reprs of parameters and rows (sqlalchemy.sql.util)
_SQL_REPR_TYPES = frozenset({"_repr_params", "_repr_row"})


def _redact_query(query: str) -> str:
    parts = []
    for part in query.split("&"):
        if not part:
            continue
        name, eq, _ = part.partition("=")
        if not eq:
            parts.append(REDACTED)
        else:
            parts.append(f"{name if _NAME_RE.match(name) else '<param>'}={REDACTED}")
    return "&".join(parts)


def redact_text(text: str) -> str:
    """``text`` with every URL query value, SQL parameter list and DETAIL line redacted.

    Idempotent: redacting twice changes nothing more.
    """
    if "?" in text:
        text = _REQUEST_LINE_RE.sub(
            lambda m: f"{m['head']}?{_redact_query(m['query'])}{m['tail']}", text
        )
        text = _QUERY_RE.sub(lambda m: "?" + _redact_query(m["query"]), text)
    if "[parameters: " in text:
        text = _SQL_PARAMS_RE.sub("[parameters: hidden]", text)
    if "DETAIL:" in text:
        text = _DETAIL_RE.sub(lambda m: f"{m['head']} (hidden)", text)
    return text


def _hide_sql_reprs(args: Any) -> Any:
    if isinstance(args, tuple) and any(type(a).__name__ in _SQL_REPR_TYPES for a in args):
        return tuple("[hidden]" if type(a).__name__ in _SQL_REPR_TYPES else a for a in args)
    return args


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact one record in place (message, exception text, stack) and return it.

    The message is formatted once; when redaction changes it, ``msg`` becomes the redacted
    text and ``args`` is emptied. A message that cannot be formatted is replaced by its
    redacted template, so logging's error report never prints the arguments.
    """
    if getattr(record, "_peersync_redacted", False):
        return record
    setattr(record, "_peersync_redacted", True)  # noqa: B010 - not a LogRecord field
    record.args = _hide_sql_reprs(record.args)
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format must not print its arguments
        record.msg = redact_text(str(record.msg)) + " (log arguments hidden: bad format)"
        record.args = ()
    else:
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = redact_text(text)
    elif record.exc_text:
        record.exc_text = redact_text(record.exc_text)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)
    return record


class RedactingFilter(logging.Filter):
    """A filter that redacts (never drops) every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_FILTER = RedactingFilter()
_lock = threading.Lock()
_previous_factory: Callable[..., logging.LogRecord] | None = None


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    assert _previous_factory is not None
    return redact_record(_previous_factory(*args, **kwargs))


def protect_library_loggers(names: Iterable[str] = _URLLIB3_LOGGERS) -> None:
    """Put the redacting filter on these loggers (idempotent).

    A logger's filter sees only the records made by that very logger, before they
    propagate to any handler: ``urllib3.connectionpool``'s own, not its children's.
    """
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def installed() -> bool:
    """Whether :func:`install` has wrapped the log record factory (and still does)."""
    return logging.getLogRecordFactory() is _redacting_factory


def install() -> None:
    """Redact every log record of the process from now on (idempotent, thread-safe).

    Wraps the current log record factory (keeping it) and filters the library loggers.
    """
    global _previous_factory
    with _lock:
        protect_library_loggers(LIBRARY_LOGGERS)
        current = logging.getLogRecordFactory()
        if current is _redacting_factory:
            return
        _previous_factory = current
        logging.setLogRecordFactory(_redacting_factory)


def uninstall() -> None:
    """Undo :func:`install`'s factory (tests); the logger filters stay, they are harmless."""
    global _previous_factory
    with _lock:
        if logging.getLogRecordFactory() is _redacting_factory and _previous_factory:
            logging.setLogRecordFactory(_previous_factory)
        _previous_factory = None
