"""What looks like a credential in a workflow file: names of variables, and string values.

Credentials never go in the workflow file (they would end up in git, in task command lines and in
logs); they come from the environment. These rules find the usual mistakes, not every secret.
"""

from __future__ import annotations

import functools
import itertools
import re

ADVICE = 'credentials never go in the workflow file; set them in the environment (see README "Credentials")'
# Why `vars: {k: {env: AZURE_STORAGE_KEY}}` is refused, and what to do instead.
VAR_FROM_CREDENTIAL = (
    "looks like a credential: a var's value ends up in task command lines, which Batch shows to anyone "
    "who can read the job; let the task read the secret itself (from a secret store such as Azure Key "
    "Vault; locally, name the variable in local.pass_env) and keep vars and tasks.environment for "
    "values that are not secret"
)

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
        "signature",
        "signatures",
        "passphrase",
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


@functools.lru_cache(maxsize=4096)  # redaction asks this of every environment variable, often
def looks_like_credential_name(name: str) -> bool:
    """True for ACCOUNT_KEY, ACCOUNT_KEY2, sas_token, dbPassword, AZURE_STORAGE_CONNECTION_STRING; False
    for keyframe and key_id."""
    words = name_words(name)
    if any(w in _ALWAYS for w in words):
        return True
    if any(a == "connection" and b == "string" for a, b in itertools.pairwise(words)):
        return True
    while words and words[-1].isdigit():  # ACCOUNT_KEY_2
        words.pop()
    return bool(words) and words[-1].rstrip("0123456789") in _AS_LAST_WORD


# Environment variables the shell itself sets, whose names only look like credentials (PWD is the
# working directory, not a password).
_SHELL_VARIABLES = frozenset({"PWD"})


def is_credential_variable(name: str) -> bool:
    """Whether the environment variable `name` holds a credential: the one rule for redacting the
    environment's values and for refusing a credential as a var's `env` source."""
    return name not in _SHELL_VARIABLES and looks_like_credential_name(name)


def secret_in_value(value: str) -> str | None:
    """Why `value` looks like it holds a secret, or None. E.g. "contains 'sig=', which looks like ..."."""
    for pattern, what in _VALUE_PATTERNS:
        m = pattern.search(value)
        if m is not None:
            return f"contains '{m.group(0)}', which looks like part of {what}"
    return None
