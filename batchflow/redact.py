"""Secrets never reach a terminal, a log or a state file: every output path goes through `redact`.

Three kinds are replaced: signatures and keys recognised by their shape (`sig=...`, `AccountKey=...`),
values registered at run time (`register_secret`), and the value of every environment variable
whose name looks like a credential (credentials.is_credential_variable), read from the environment
as it is at each call, whether batchflow uses the variable or not.
"""

from __future__ import annotations

import functools
import json
import json.encoder
import os
import re
from collections.abc import Callable, Container, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from batchflow.credentials import is_credential_variable

if TYPE_CHECKING:
    import logging

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


_PATTERN_WORDS = ("sig=", "accountkey=", "sharedaccesssignature=", "authorization")
# Case aside, the regex engine matches 'i' with U+0131 and U+0130 (dotless i, dotted capital I) and
# 's' with U+017F (long s), which str.lower() makes U+0131, 'i' + U+0307 (combining dot) and U+017F;
# every other character it matches with a letter of those words lowercases to that letter.
_FOLD = str.maketrans({"\u0131": "i", "\u017f": "s", "\u0307": None})


def _may_hold_a_pattern(text: str) -> bool:
    """False when `text` cannot match _ANY_PATTERN, found without its slow scan (a case-insensitive
    search takes 5 to 30 us over a plan task's 500 characters; this, one): lowercased and folded
    as above, a text that matches holds one of _PATTERN_WORDS (tests/test_redact_json.py checks the
    folding against every character there is)."""
    folded = text.lower()
    if not folded.isascii():
        folded = folded.translate(_FOLD)
    sig, key, sas, auth = _PATTERN_WORDS
    return sig in folded or key in folded or sas in folded or auth in folded


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
    if _may_hold_a_pattern(text) and _ANY_PATTERN.search(text):  # the common case: none of them
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
    return JsonRedactor(**dumps).dumps(obj)


def write_json_rows(out: TextIO, obj: Mapping[str, Any], rows: Container[str]) -> None:
    """`obj` redacted, as json.dumps(obj, indent=2) prints it, except that each entry of a mapping
    named in `rows` stands on one line, compact (`run --output json`'s tasks): json's C encoder
    does not indent, and its pure-Python one takes 50 us per task record (5 s at 100,000 tasks)."""
    pretty, line = JsonRedactor(indent=2), JsonRedactor()
    out.write("{")
    for n, (key, value) in enumerate(obj.items()):
        out.write(("," if n else "") + "\n  " + line.dumps(key) + ": ")
        if key in rows and isinstance(value, Mapping) and value:
            out.write("{")
            for m, entry in enumerate(value.items()):
                out.write(("," if m else "") + "\n    " + line.dumps(dict([entry]))[1:-1])
            out.write("\n  }")
        else:
            out.write(pretty.dumps(value).replace("\n", "\n  "))
    out.write("\n}\n" if obj else "}\n")


class JsonRedactor:
    """redact_json for many objects (each line of a long output), with the secrets of the moment
    gathered once.

    Most objects hold nothing to redact, and for those the dumped text says so by itself: JSON
    escapes each character on its own, so a string holding a secret dumps to text holding the
    secret's dumped form, and every pattern's first words (_ANY_PATTERN) are plain ASCII, which
    dumps as itself. So an object whose dumped text holds neither is dumped as it is (json's C
    encoder, once); any other is walked and each of its strings redacted first, as always."""

    def __init__(self, **dumps: Any) -> None:
        self._secrets = _secrets_now()
        self._encoder = json.JSONEncoder(**dumps)
        self._dumped_secrets = [self._encoder.encode(s)[1:-1] for s in self._secrets]
        self._quick = one_shot(self._encoder)

    def dumps(self, obj: object) -> str:
        try:
            text = self._quick(obj)
        except (TypeError, ValueError, RecursionError):  # a Mapping that is not a dict (the walk makes
            text = ""  # it one), or what the encoder refuses, said by it below
        if text and not self.suspect(text):
            return text
        return self._encoder.encode(self._walk(obj))

    def suspect(self, text: str) -> bool:
        """Whether JSON `text` may hold a secret or a pattern's match in one of its strings (if not,
        nothing in the object it was dumped from is redacted)."""
        if _may_hold_a_pattern(text) and _ANY_PATTERN.search(text):
            return True
        return bool(self._dumped_secrets) and any(s in text for s in self._dumped_secrets)

    def _walk(self, obj: object) -> object:
        secrets = self._secrets
        seen: dict[str, str] = {}  # the same text (a state, a folder name) is redacted once per object

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

        return walk(obj)


def one_shot(encoder: json.JSONEncoder) -> Callable[[object], str]:
    """encoder.encode, with json's C encoder built once rather than at every call (as
    JSONEncoder.iterencode builds it: the same options, less the check for circular references,
    which here would only turn a circular object's RecursionError into a ValueError)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    indent: object = encoder.indent  # (typeshed says never None)
    if make is None or indent is not None:
        return encoder.encode
    strings = json.encoder.encode_basestring_ascii if encoder.ensure_ascii else json.encoder.encode_basestring
    c_encode = make(
        None,
        encoder.default,
        strings,
        None,
        encoder.key_separator,
        encoder.item_separator,
        encoder.sort_keys,
        encoder.skipkeys,
        encoder.allow_nan,
    )

    def encode(obj: object) -> str:
        if isinstance(obj, str):
            return encoder.encode(obj)
        return "".join(c_encode(obj, 0))

    return encode


class RedactingFilter:
    """Redacts every record's final message before any handler formats it. A logging filter is any
    object with a `filter` method (logging.Filterer, Python 3.2+), so this module, on every
    command's path, does not import logging."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True
