"""What looks like a credential in a workflow file: names of variables, and string values.

Credentials never go in the workflow file (they would end up in git, in task command lines and in
logs); they come from the environment. These rules find the usual mistakes, not every secret.
"""

from __future__ import annotations

import itertools
import re

ADVICE = 'credentials never go in the workflow file; set them in the environment (see README "Credentials")'

# A name containing one of these words anywhere names a credential: DB_PASSWORD, client_secret, SAS_URL.
_ALWAYS = frozenset(
    {
        "secret",
        "secrets",
        "password",
        "passwd",
        "pwd",
        "sas",
        "credential",
        "credentials",
        "connectionstring",
        "apikey",
        "accesskey",
        "accountkey",
        "privatekey",
        "secretkey",
        "sastoken",
        "accesstoken",
        "authtoken",
    }
)
# These only when they end the name: ACCOUNT_KEY and github_token are credentials, but key_id,
# token_name and keyframe (one word) are not.
_AS_LAST_WORD = frozenset({"key", "keys", "token", "tokens"})

_VALUE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\bsig="), "a SAS token"),
    (re.compile(r"(?i)\bAccountKey="), "a storage connection string"),
    (re.compile(r"(?i)\bSharedAccessSignature="), "a storage connection string"),
)


def name_words(name: str) -> list[str]:
    """Lowercase words of an identifier: split on '_', '-', '.', spaces and camelCase humps."""
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", name)
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", spaced)
    return [w for w in re.split(r"[\s_.\-]+", spaced.lower()) if w]


def looks_like_credential_name(name: str) -> bool:
    """True for ACCOUNT_KEY, sas_token, dbPassword, AZURE_STORAGE_CONNECTION_STRING; False for keyframe."""
    words = name_words(name)
    if any(w in _ALWAYS for w in words):
        return True
    if any(a == "connection" and b == "string" for a, b in itertools.pairwise(words)):
        return True
    return bool(words) and words[-1] in _AS_LAST_WORD


def secret_in_value(value: str) -> str | None:
    """Why `value` looks like it holds a secret, or None. E.g. "contains 'sig=', which looks like ..."."""
    for pattern, what in _VALUE_PATTERNS:
        m = pattern.search(value)
        if m is not None:
            return f"contains '{m.group(0)}', which looks like part of {what}"
    return None
