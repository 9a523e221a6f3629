"""PeerSync's exceptions: one base class and a small tree under it.

Each class says whether re-sending is safe. Messages carry field paths, record
ids, HTTP status, resource types and OperationOutcome *codes*: never names,
birth dates, MRNs or note text (they are PHI). An OperationOutcome's
diagnostics text is kept on the exception for admins (stored, shown in the
admin app) but is not part of ``str(exc)``, so it never reaches a log line.

    ConnectorError
    ├── ConfigError            bad peersync.toml or agency profile; fix and restart
    ├── RecordInvalid          a record breaks the intake contract; never retried
    └── EhrError               anything the EHR exchange raised
        ├── EhrUnavailable     nothing reached the server (DNS, refused, connect
        │                      timeout): safe to retry
        ├── EhrOutcomeUnknown  the request may have been applied (read timeout,
        │                      reset after sending): look it up before re-sending
        └── EhrHttpError       the server answered with an error status
            ├── EhrTransient   429, 5xx: retry later (``retry_after`` seconds)
            └── EhrRejected    other 4xx: permanent until someone fixes the data
                ├── EhrAuthError      401, 403 (missing scope named)
                ├── EhrNotFound       404
                └── EhrConflict       409, 412 (multiple matches, stale If-Match)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConnectorError(Exception):
    """Base class of every error PeerSync raises on purpose."""

    retry_safe: bool = False


class ConfigError(ConnectorError):
    """The deployment config or the agency profile is invalid (file and key named)."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One contract violation: where (dotted path) and what (never the value)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class RecordInvalid(ConnectorError):
    """A record breaks the intake contract. Never retried: the source must fix it."""

    def __init__(
        self,
        errors: list[FieldError],
        *,
        source: str | None = None,
        position: int | None = None,
        record_id: str | None = None,
    ) -> None:
        self.errors = errors
        self.source = source
        self.position = position
        self.record_id = record_id
        super().__init__(self.describe())

    @property
    def where(self) -> str:
        parts = []
        if self.source:
            parts.append(f"{self.source}:")
        label = "record"
        if self.position is not None:
            label += f" {self.position}"
        if self.record_id is not None:
            label += f" (id={self.record_id})"
        parts.append(label)
        return " ".join(parts)

    def lines(self) -> list[str]:
        return [f"{self.where}: {err}" for err in self.errors]

    def describe(self) -> str:
        return "; ".join(self.lines())


@dataclass(frozen=True, slots=True)
class OutcomeIssue:
    severity: str
    code: str
    diagnostics: str = ""  # may quote input: shown to admins, never logged
    expression: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """The parts of an OperationOutcome we keep."""

    issues: tuple[OutcomeIssue, ...] = ()
    raw: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def codes(self) -> list[str]:
        return [issue.code for issue in self.issues]

    @property
    def text(self) -> str:
        """Human-readable text for the admin app (may contain PHI: not for logs)."""
        return "; ".join(
            f"{i.severity} {i.code}: {i.diagnostics}".rstrip(": ") for i in self.issues
        )

    @classmethod
    def from_json(cls, data: Any) -> Outcome | None:
        if not isinstance(data, dict) or data.get("resourceType") != "OperationOutcome":
            return None
        issues = []
        for issue in data.get("issue") or []:
            if not isinstance(issue, dict):
                continue
            details = issue.get("details") or {}
            text = issue.get("diagnostics") or details.get("text") or ""
            issues.append(
                OutcomeIssue(
                    severity=str(issue.get("severity", "error")),
                    code=str(issue.get("code", "unknown")),
                    diagnostics=str(text),
                    expression=tuple(issue.get("expression") or ()),
                )
            )
        return cls(issues=tuple(issues), raw=data)


class EhrError(ConnectorError):
    """Base of every failure talking to the EHR.

    ``method`` and ``url`` name the request (the URL without query values);
    ``str(exc)`` is safe to log.
    """

    def __init__(self, message: str, *, method: str = "", url: str = "") -> None:
        self.method = method
        self.url = url
        super().__init__(message)

    @property
    def outcome_text(self) -> str:
        return ""


class EhrUnavailable(EhrError):
    """The request never reached the server (connect error or connect timeout). Retry is safe."""

    retry_safe = True


class EhrOutcomeUnknown(EhrError):
    """The request was sent but no answer came (read timeout, reset).

    It may have been applied: look the resource up by identifier before
    sending again.
    """


class EhrHttpError(EhrError):
    """The server answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        method: str = "",
        url: str = "",
        outcome: Outcome | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.outcome = outcome
        self.retry_after = retry_after
        super().__init__(message, method=method, url=url)

    @property
    def outcome_text(self) -> str:
        return self.outcome.text if self.outcome else ""


class EhrTransient(EhrHttpError):
    """429 or 5xx: the server may accept the same request later. Retry is safe."""

    retry_safe = True


class EhrRejected(EhrHttpError):
    """A 4xx: the request is wrong for this server; re-sending it unchanged will fail again."""


class EhrAuthError(EhrRejected):
    """401 or 403: credentials refused or a scope missing (named in the message when known).

    ``missing_scope`` is the SMART scope a 403 asked for (not PHI); ``oauth_error``
    is the OAuth ``error`` code a token endpoint answered with (e.g. ``invalid_client``).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        method: str = "",
        url: str = "",
        outcome: Outcome | None = None,
        retry_after: float | None = None,
        missing_scope: str | None = None,
        oauth_error: str | None = None,
    ) -> None:
        self.missing_scope = missing_scope
        self.oauth_error = oauth_error
        super().__init__(
            message,
            status=status,
            method=method,
            url=url,
            outcome=outcome,
            retry_after=retry_after,
        )


class EhrNotFound(EhrRejected):
    """404: the resource or endpoint does not exist."""


class EhrConflict(EhrRejected):
    """409 or 412: multiple matches for a conditional operation, a duplicate, or a stale If-Match.

    A data problem for an admin, not a retry.
    """


def error_class_for(status: int) -> type[EhrHttpError]:
    """The exception class for an HTTP error status: whole responses and batch entries alike."""
    if status in (401, 403):
        return EhrAuthError
    if status == 429 or status >= 500:
        return EhrTransient
    if status == 404:
        return EhrNotFound
    if status in (409, 412):
        return EhrConflict
    return EhrRejected
