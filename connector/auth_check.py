"""The ``[ehr.auth]`` checks of `peersync config check`: the settings in one line,
a token, and the scopes granted against those asked.

Details name file paths, variable *names* and scopes: never a secret or a token.
Part of :func:`connector.setup_check.check_setup` (which re-exports the public
names).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from connector.config_show import auth_key_shown_as
from connector.errors import ConnectorError

if TYPE_CHECKING:
    import requests

    from connector.fhir_client import FhirClient
    from connector.setup_check import CheckReport


def describe_auth(cfg: Mapping[str, Any], auth: object = None) -> str:
    """``[ehr.auth]`` in one line: file paths and variable names, never their contents."""
    kind = str(cfg.get("type", "none"))
    if kind == "none":
        return "type none: no Authorization header is sent"
    parts: list[str] = []
    for key, value in cfg.items():
        if key in ("type", "scope"):
            continue
        how = auth_key_shown_as(key)
        if how == "file":
            parts.append(f"{key.removesuffix('_file')} from file {value}")
        elif how == "env":
            parts.append(f"{key.removesuffix('_env')} from ${value}")
        elif how == "value":
            parts.append(f"{key} {value}")
        else:
            parts.append(f"{key} <hidden>")
    scope = getattr(auth, "scope", None)
    if isinstance(scope, str) and scope:
        parts.append(f"asks for {len(scope.split())} scope(s)")
    return f"type {kind}: " + ", ".join(parts)


def check_token(report: CheckReport, client: FhirClient) -> bool:
    """Get a token (token-based auths) and report the scopes granted; False when refused."""
    from connector.auth import TokenAuth

    auth = client.auth
    if not isinstance(auth, TokenAuth):
        return True
    seen: dict[str, Any] = {}

    def capture(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        # the token response: keep the granted scope and lifetime, never the token
        if resp.request.method != "POST" or resp.status_code != 200:
            return
        try:
            body = json.loads(resp.content or b"null")
        except ValueError:
            return
        if isinstance(body, dict):
            seen["scope"] = body.get("scope")
            seen["expires_in"] = body.get("expires_in")
            seen["answered"] = True

    session = auth.session
    hooks = session.hooks.setdefault("response", [])
    hooks.append(capture)
    try:
        auth.access_token()
    except ConnectorError as exc:
        report.add("auth token", "fail", str(exc))
        return False
    finally:
        hooks.remove(capture)
    asked = auth.scope.split()
    where = f"from {auth.token_url}" if auth.token_url else "from the token endpoint"
    lifetime = seen.get("expires_in")
    valid = f", valid {lifetime} s" if isinstance(lifetime, int | float) else ""
    granted_text = seen.get("scope")
    if not seen.get("answered"):
        report.add("auth token", "ok", f"token held{valid}; asked for: {' '.join(asked)}")
        return True
    if not isinstance(granted_text, str) or not granted_text.strip():
        # RFC 6749 5.1: scope omitted means granted as asked
        report.add("auth token", "ok",
                   f"token {where}{valid}; scopes granted as asked (none named): "
                   f"{' '.join(asked)}")
        return True
    granted = granted_text.split()
    missing = [s for s in asked if not scopes_covered(s, granted)]
    shown = " ".join(s for s in granted if _looks_like_scope(s))
    if missing:
        report.add("auth token", "fail",
                   f"token {where}{valid} but scopes not granted: {' '.join(missing)} "
                   f"(granted: {shown or 'none'}); register them for the client in the EHR")
    else:
        report.add("auth token", "ok",
                   f"token {where}{valid}; granted {len(asked)} of {len(asked)} scopes asked: "
                   f"{' '.join(asked)}" + ("" if shown == " ".join(asked) else f" (as {shown})"))
    return True


def _looks_like_scope(text: str) -> bool:
    return len(text) <= 80 and all(ch.isalnum() or ch in "/._*-:" for ch in text)


_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


def _perms(scope: str) -> tuple[str, str, set[str]] | None:
    """``system/Patient.rs`` -> ("system", "Patient", {"r", "s"}); v1 ``.read``/``.write``."""
    context, _, rest = scope.partition("/")
    rtype, _, perms = rest.partition(".")
    if not context or not rtype or not perms:
        return None
    if perms in _V1:
        letters = set(_V1[perms])
    else:
        perms = perms.split("?", 1)[0]  # v2 granular scopes: ?category=... narrows, ignore
        if not perms or set(perms) - set("cruds"):
            return None
        letters = set(perms)
    return context, rtype, letters


def scopes_covered(asked: str, granted: list[str]) -> bool:
    """Whether the ``granted`` scopes (v1 or v2, wildcards) cover everything ``asked`` allows."""
    want = _perms(asked)
    if want is None:
        return asked in granted
    context, rtype, letters = want
    have: set[str] = set()
    for scope in granted:
        got = _perms(scope)
        if got is None or got[0] != context or got[1] not in (rtype, "*"):
            continue
        if "?" in scope.split(".", 1)[-1]:
            continue  # a narrowed scope does not cover the whole type
        have |= got[2]
    return letters <= have
