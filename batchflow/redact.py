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


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter(logging.Filter):
    """Redacts every record's final message before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True
