"""Password rules for every password PeerSync sets (``peersync user add``/``passwd``).

Beyond a length of 12-1024 characters, a password is refused when it is one of
the commonest passwords (:mod:`connector.common_passwords`), or such a word
padded with digits and symbols (``Password2024!``); when it is one character,
or one short run, repeated (``aaaaaaaaaaaa``, ``abcabcabcabc``); when it has
fewer than five different characters; or when it is a simple sequence, forwards
or backwards (``abcdefghijkl``, ``123456789012``, ``qwertyuiopas``).
The messages never echo the password.
"""

from __future__ import annotations

import re

from connector.common_passwords import COMMON_PASSWORDS
from connector.errors import ConnectorError

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # hashing a megabyte on every guess is a denial of service
MIN_DISTINCT_CHARACTERS = 5

_SEQUENCES = (
    "abcdefghijklmnopqrstuvwxyz",
    "0123456789",
    "qwertyuiopasdfghjklzxcvbnm",
    "qwertzuiopasdfghjklyxcvbnm",
    "azertyuiopqsdfghjklmwxcvbn",
    "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p",
    "1q2w3e4r5t6y7u8i9o0p",
    "q1w2e3r4t5y6u7i8o9p0",
    "!@#$%^&*()_+",
)
_PADDING = re.compile(r"^[\W\d_]*(.*?)[\W\d_]*$", re.DOTALL)
_LEET = str.maketrans({"@": "a", "4": "a", "0": "o", "1": "i", "3": "e", "$": "s", "5": "s",
                       "7": "t", "!": "i"})


class PasswordRuleError(ConnectorError):
    """A password the rules refuse (the message says why, never what it was)."""


def check_password_rules(password: str) -> None:
    """Raise :class:`PasswordRuleError` (an AccountError too, via accounts) if refused."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordRuleError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise PasswordRuleError(f"the password must be at most {MAX_PASSWORD_LENGTH} characters")
    why = weakness(password)
    if why:
        raise PasswordRuleError(f"the password is too easy to guess: {why}")


def weakness(password: str) -> str | None:
    """Why a password (of any length) is easy to guess, or None."""
    lowered = password.lower()
    if _is_repeated(lowered):
        return "it repeats one character or one short run"
    if len(set(lowered)) < MIN_DISTINCT_CHARACTERS:
        return f"it has fewer than {MIN_DISTINCT_CHARACTERS} different characters"
    if _is_sequence(lowered):
        return "it is a simple sequence of letters, digits or keys"
    if _is_common(lowered):
        return "it is one of the commonest passwords"
    return None


def _is_repeated(text: str) -> bool:
    size = len(text)
    for unit in range(1, size // 2 + 1):
        if size % unit == 0 and text[:unit] * (size // unit) == text:
            return True
        if unit <= 4 and (text[:unit] * (size // unit + 1))[:size] == text:
            return True
    return False


def _is_sequence(text: str) -> bool:
    for sequence in _SEQUENCES:
        for run in (sequence * 3, sequence[::-1] * 3):
            if text in run:
                return True
    return False


def _is_common(text: str) -> bool:
    if text in COMMON_PASSWORDS:
        return True
    match = _PADDING.match(text)
    core = match.group(1) if match else text
    candidates = {core, text.translate(_LEET), core.translate(_LEET)}
    if core and _is_repeated(core) and len(core) >= 4:
        return True
    for candidate in candidates:
        if candidate in COMMON_PASSWORDS:
            return True
        half = len(candidate) // 2
        if half and candidate[:half] == candidate[half:] and candidate[:half] in COMMON_PASSWORDS:
            return True  # "passwordpassword"
    return False
