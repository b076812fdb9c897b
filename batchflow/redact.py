"""Secrets never reach a terminal, a log or a state file: every output path goes through `redact`.

Three kinds are replaced: signatures and keys recognised by their shape (`sig=...`, `AccountKey=...`),
values registered at run time (`register_secret`), and the value of every environment variable
whose name looks like a credential (credentials.is_credential_variable), read from the environment
as it is at each call, whether batchflow uses the variable or not.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchflow.credentials import is_credential_variable

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

# What each of _PATTERNS starts with (case aside): text without any of these matches none of them.
_ANY_PATTERN = re.compile(r"(?i)sig=|AccountKey=|SharedAccessSignature=|Authorization")

# Secret values known at run time (account keys read from the environment): replaced wherever they
# appear, whatever the text around them.
_SECRETS: set[str] = set()
_MIN_SECRET = 6  # shorter values would redact ordinary words and numbers
# Settings, not secrets, even under a credential-like name (HF_HUB_DISABLE_TOKEN=1, USE_KEYRING=true).
_NOT_SECRETS = frozenset({"true", "false", "yes", "no", "on", "off", "none", "null", "enabled", "disabled"})


def _is_secret_value(value: str) -> bool:
    return len(value) >= _MIN_SECRET and value.strip().lower() not in _NOT_SECRETS


def register_secret(value: str | None) -> None:
    """Redact `value` verbatim from now on (e.g. an account key read from the environment)."""
    if value and _is_secret_value(value):
        _SECRETS.add(value)


@functools.lru_cache(maxsize=8)
def _credential_variables(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n for n in names if is_credential_variable(n))


def environment_secrets() -> set[str]:
    """The values of the credential-like variables in the environment now, long enough to be secrets,
    less those that are paths of this machine (SECRETS_DIR=/home/me/keys names a folder; redacting
    it would garble every path under it, in output and in state files alike)."""
    # Called for every line batchflow prints or logs: names are checked once per set of names.
    values = (os.environ.get(n) for n in _credential_variables(tuple(os.environ)))
    return {v for v in values if v and _is_secret_value(v) and not _is_local_path(v)}


def _is_local_path(value: str) -> bool:
    return value.startswith(("/", "~", "./", "../")) and Path(value).expanduser().exists()


def redact(text: str) -> str:
    return _redact(text, _secrets_now())


def _secrets_now() -> list[str]:
    # Longest first, so a secret containing another is replaced whole.
    return sorted(_SECRETS | environment_secrets(), key=len, reverse=True)


def _redact(text: str, secrets: list[str]) -> str:
    # Every one of _PATTERNS needs a '=' or a ':' (characters without case): text with neither,
    # most of what is redacted (names, states, paths), is not scanned at all.
    if ("=" in text or ":" in text) and _ANY_PATTERN.search(text):  # one scan: none of them, mostly
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "REDACTED")
    return text


def redact_json(obj: object, **dumps: Any) -> str:
    """`obj` as JSON text (json.dumps with `dumps`' options), every string in it, keys included,
    redacted before it is dumped. Redacting the dumped text instead misses a secret whose JSON
    form is not its raw text (`ä` dumped as `\\u00e4`, a `"` or `\\` escaped), and a pattern that
    stops at a quote cuts an escape in two (`sig=abc\\"` -> `sig=REDACTED"`): invalid JSON."""
    secrets = _secrets_now()
    seen: dict[str, str] = {}  # the same text (a state, a folder name) is redacted once per call

    def clean(text: str) -> str:
        done = seen.get(text)
        if done is None:
            done = seen[text] = _redact(text, secrets)
        return done

    def walk(value: object) -> object:
        if isinstance(value, str):
            return clean(value)
        if isinstance(value, Mapping):
            return {clean(k) if isinstance(k, str) else k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        return value

    return json.dumps(walk(obj), **dumps)


class RedactingFilter(logging.Filter):
    """Redacts every record's final message before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True
