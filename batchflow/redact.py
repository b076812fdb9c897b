"""Secrets never reach a terminal, a log or a state file: every output path goes through `redact`."""

from __future__ import annotations

import logging
import re

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # SAS signature in a URL or token string: sig=<base64, possibly URL-encoded>
    (re.compile(r"(?i)(\bsig=)[^&\s'\"]+"), r"\1REDACTED"),
    # Account keys and shared access signatures in connection strings.
    (re.compile(r"(?i)(AccountKey=)[^;\s'\"]+"), r"\1REDACTED"),
    (re.compile(r"(?i)(SharedAccessSignature=)[^;\s'\"]+"), r"\1REDACTED"),
    # Shared-key and bearer authorization headers.
    (
        re.compile(r"(?i)(Authorization['\"]?\s*[:=]\s*['\"]?(?:SharedKey|Bearer)\s+)[^\s'\",]+"),
        r"\1REDACTED",
    ),
)


# Secret values known at run time (account keys read from the environment): replaced wherever they
# appear, whatever the text around them.
_SECRETS: set[str] = set()
_MIN_SECRET = 8  # shorter values would redact ordinary words


def register_secret(value: str | None) -> None:
    """Redact `value` verbatim from now on (e.g. an account key read from the environment)."""
    if value and len(value) >= _MIN_SECRET:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "REDACTED")
    return text


class RedactingFilter(logging.Filter):
    """Redacts every record's final message before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True
