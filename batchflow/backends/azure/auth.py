"""Azure credentials, from the environment only (never from the workflow file): one function per service.

Blob Storage (`blob_auth`) is chosen from these variables, first match wins:

1. Entra ID (recommended): `AZURE_STORAGE_ACCOUNT_URL`, e.g. `https://myaccount.blob.core.windows.net`,
   with `AZURE_STORAGE_KEY` unset. batchflow signs in with azure-identity's `DefaultAzureCredential`
   (environment variables, workload or managed identity, `az login`, ...) and makes user delegation
   SAS URLs for the nodes. The identity needs the "Storage Blob Data Contributor" role on the account
   (it includes the right to get a user delegation key).
2. `AZURE_STORAGE_CONNECTION_STRING`: a connection string with an `AccountKey`, as shown under the
   account's "Access keys" in the Azure portal. SAS URLs are signed with the account key.
   `UseDevelopmentStorage=true` means Azurite on its default port (127.0.0.1:10000).
3. `AZURE_STORAGE_ACCOUNT` and `AZURE_STORAGE_KEY`: account name and key. Add `AZURE_STORAGE_ACCOUNT_URL`
   for an endpoint other than `https://<account>.blob.core.windows.net`, such as Azurite
   (`http://127.0.0.1:10000/devstoreaccount1`). SAS URLs are signed with the account key.

An empty variable counts as unset. Keys and signatures never appear in batchflow's messages or logs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from batchflow.errors import ConfigurationError
from batchflow.redact import redact, register_secret

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

ACCOUNT_URL = "AZURE_STORAGE_ACCOUNT_URL"
CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT = "AZURE_STORAGE_ACCOUNT"
KEY = "AZURE_STORAGE_KEY"

_ACCOUNT_NAME = re.compile(r"^[a-z0-9]{3,24}$")
_URL = re.compile(r"^https?://[^/?#\s]+(/[^?#\s]*)?$")
# Azurite's account, published in Microsoft's Azurite documentation; what UseDevelopmentStorage=true means.
DEV_ACCOUNT = "devstoreaccount1"
DEV_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEV_BLOB_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"


@dataclass(frozen=True)
class BlobAuth:
    """Where the Blob service is and how to sign in. repr() never shows a key or a token credential."""

    method: str  # what a person reads: "Entra ID (DefaultAzureCredential)", "connection string", ...
    account_url: str  # e.g. https://myaccount.blob.core.windows.net, no query string
    account_name: str | None  # None: the SDK derives it from the URL
    account_key: str | None = field(default=None, repr=False)  # shared key: signs requests and SAS
    sas_token: str | None = field(default=None, repr=False)  # a connection string's SharedAccessSignature
    token_credential: TokenCredential | None = field(default=None, repr=False)  # Entra ID

    @property
    def can_sign_sas(self) -> bool:
        return self.account_key is not None or self.token_credential is not None


def blob_auth(environ: Mapping[str, str] | None = None) -> BlobAuth:
    """Blob Storage credentials from `environ` (default os.environ). No network I/O.

    Raises ConfigurationError (exit 2) naming the variables to set when none of the three ways is
    configured.
    """
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if v}
    register_secret(env.get(KEY))
    url, key, account = env.get(ACCOUNT_URL), env.get(KEY), env.get(ACCOUNT)
    if key is not None and account is None:
        raise ConfigurationError(
            f"{KEY} is set but {ACCOUNT} is not: set {ACCOUNT} to the storage account name"
        )
    if url is not None and key is None:
        return BlobAuth(
            method="Entra ID (DefaultAzureCredential)",
            account_url=_check_url(url),
            account_name=None,
            token_credential=entra_credential(),
        )
    if CONNECTION_STRING in env:
        return _from_connection_string(env[CONNECTION_STRING])
    if key is not None and account is not None:
        if _ACCOUNT_NAME.match(account) is None and url is None:
            raise ConfigurationError(
                f"{ACCOUNT}={account!r} is not a storage account name (3-24 lowercase letters and digits)"
            )
        return BlobAuth(
            method="account key",
            account_url=_check_url(url) if url else f"https://{account}.blob.core.windows.net",
            account_name=account,
            account_key=key,
        )
    if account is not None:
        raise ConfigurationError(
            f"{ACCOUNT} is set but neither {KEY} (account key) nor {ACCOUNT_URL} (Entra ID sign-in) is"
        )
    raise ConfigurationError(
        "no Azure Storage credentials: set "
        f"{ACCOUNT_URL} (Entra ID sign-in), or {CONNECTION_STRING}, or {ACCOUNT} and {KEY}"
    )


def entra_credential() -> TokenCredential:
    """azure-identity's DefaultAzureCredential (no I/O until a token is needed); shared by every service."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _check_url(url: str) -> str:
    if _URL.match(url) is None:
        raise ConfigurationError(
            f"{ACCOUNT_URL}={redact(url)!r} is not an account URL like "
            "https://myaccount.blob.core.windows.net (no query string: credentials never go in it)"
        )
    return url.rstrip("/")


def parse_connection_string(text: str) -> dict[str, str]:
    """`Key=value;Key=value` -> {lowercased key: value}. Values may contain '=' (base64 keys do)."""
    parts: dict[str, str] = {}
    for segment in text.split(";"):
        segment = segment.strip()
        if not segment:
            continue
        name, sep, value = segment.partition("=")
        if not sep or not name.strip():
            raise ConfigurationError(
                f"{CONNECTION_STRING} is not a connection string (Key=value;Key=value;...)"
            )
        parts[name.strip().lower()] = value.strip()
    return parts


def _from_connection_string(text: str) -> BlobAuth:
    parts = parse_connection_string(text)
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        parts = {
            "accountname": DEV_ACCOUNT,
            "accountkey": DEV_ACCOUNT_KEY,
            "blobendpoint": DEV_BLOB_ENDPOINT,
        }
    account = parts.get("accountname")
    endpoint = parts.get("blobendpoint")
    if endpoint is None:
        if account is None:
            raise ConfigurationError(f"{CONNECTION_STRING} has neither AccountName nor BlobEndpoint")
        protocol = parts.get("defaultendpointsprotocol", "https")
        suffix = parts.get("endpointsuffix", "core.windows.net")
        endpoint = f"{protocol}://{account}.blob.{suffix}"
    key = parts.get("accountkey")
    sas = parts.get("sharedaccesssignature")
    register_secret(key)
    register_secret(sas)
    if key is not None and account is None:
        raise ConfigurationError(f"{CONNECTION_STRING} has an AccountKey but no AccountName")
    if key is None and sas is None:
        raise ConfigurationError(f"{CONNECTION_STRING} has neither AccountKey nor SharedAccessSignature")
    return BlobAuth(
        method="connection string",
        account_url=_endpoint(endpoint),
        account_name=account,
        account_key=key,
        sas_token=None if key is not None else sas.lstrip("?") if sas else None,
    )


def _endpoint(endpoint: str) -> str:
    if _URL.match(endpoint) is None:
        raise ConfigurationError(f"{CONNECTION_STRING} has a BlobEndpoint that is not an http(s) URL")
    return endpoint.rstrip("/")


# ---- Azure Batch ------------------------------------------------------------------------------

BATCH_ENDPOINT = "AZURE_BATCH_ENDPOINT"
BATCH_ACCOUNT = "AZURE_BATCH_ACCOUNT"
BATCH_KEY = "AZURE_BATCH_ACCESS_KEY"
_BATCH_URL = re.compile(r"^(https?)://([^/?#\s:]+)(:\d+)?/?$")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


@dataclass(frozen=True)
class BatchAuth:
    """Where the Batch account is and how to sign in. repr() never shows a key or a credential.

    The same variables as the Azure CLI's: AZURE_BATCH_ENDPOINT (the account URL, e.g.
    https://myaccount.westeurope.batch.azure.com), then either AZURE_BATCH_ACCOUNT and
    AZURE_BATCH_ACCESS_KEY (shared key) or nothing more (Entra ID through DefaultAzureCredential;
    the identity needs the "Azure Batch Data Contributor" role, or Contributor, on the account).
    """

    method: str
    endpoint: str
    account_name: str | None = None
    account_key: str | None = field(default=None, repr=False)
    token_credential: TokenCredential | None = field(default=None, repr=False)

    def credential(self) -> object:
        """What BatchClient takes: an AzureNamedKeyCredential or the token credential."""
        if self.account_key is not None:
            from azure.core.credentials import AzureNamedKeyCredential

            return AzureNamedKeyCredential(self.account_name or "", self.account_key)
        return self.token_credential


def batch_auth(environ: Mapping[str, str] | None = None) -> BatchAuth:
    """Batch credentials from `environ` (default os.environ). No network I/O.

    Plain http:// is accepted only for a loopback host (a local emulator), and only with a shared key.
    """
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if v}
    endpoint, account, key = env.get(BATCH_ENDPOINT), env.get(BATCH_ACCOUNT), env.get(BATCH_KEY)
    register_secret(key)
    if endpoint is None:
        raise ConfigurationError(
            f"no Azure Batch account: set {BATCH_ENDPOINT} to the account URL "
            "(e.g. https://myaccount.westeurope.batch.azure.com), and for shared-key sign-in "
            f"{BATCH_ACCOUNT} and {BATCH_KEY} (without them batchflow signs in with Entra ID)"
        )
    match = _BATCH_URL.match(endpoint.strip())
    if match is None:
        raise ConfigurationError(
            f"{BATCH_ENDPOINT}={redact(endpoint)!r} is not a Batch account URL like "
            "https://myaccount.westeurope.batch.azure.com"
        )
    scheme, host = match.group(1), match.group(2).lower()
    url = endpoint.strip().rstrip("/")
    if key is not None and account is None:
        raise ConfigurationError(
            f"{BATCH_KEY} is set but {BATCH_ACCOUNT} is not: set it to the Batch account name"
        )
    if account is not None and key is None:
        raise ConfigurationError(
            f"{BATCH_ACCOUNT} is set but {BATCH_KEY} is not: set the account's access key, or unset "
            f"{BATCH_ACCOUNT} to sign in with Entra ID"
        )
    if scheme == "http" and (host not in _LOOPBACK or key is None):
        raise ConfigurationError(
            f"{BATCH_ENDPOINT} must be an https:// URL (plain http is only for a local emulator on "
            "127.0.0.1 with a shared key)"
        )
    if key is not None:
        return BatchAuth("shared key", url, account_name=account, account_key=key)
    return BatchAuth("Entra ID (DefaultAzureCredential)", url, token_credential=entra_credential())
