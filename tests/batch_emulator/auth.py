"""Request authentication, as the Batch service checks it: Shared Key signatures or a bearer token.

The string to sign mirrors azure-batch's own BatchSharedKeyAuthPolicy (azure/batch/_patch.py), which
follows the service's documented scheme:

    VERB \\n  content-encoding \\n content-language \\n content-length \\n content-md5 \\n content-type \\n
    date \\n if-modified-since \\n if-match \\n if-none-match \\n if-unmodified-since \\n range \\n
    ocp-*:value \\n ... (sorted)   /account/path   \\nname:value (query parameters, sorted, first value)

with content-length "0" for a request other than GET/HEAD that has none. The signature is
base64(HMAC-SHA256(base64decode(key), string_to_sign)).

A wrong signature is 403 AuthenticationFailed (what the service answers; the SDK maps only 401 to
ClientAuthenticationError, so it surfaces as HttpResponseError). A missing or unknown Authorization
scheme, or a wrong bearer token, is 401 AuthenticationFailed.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qs, urlparse

from .wire import Request, ServiceError, now

SIGNED_HEADERS = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)
MAX_CLOCK_SKEW = 15 * 60.0  # seconds, as Azure's shared-key services allow


def string_to_sign(method: str, url: str, headers: Mapping[str, str], account: str) -> str:
    parsed = urlparse(url)
    values = {k.lower(): v for k, v in headers.items() if v}
    if method not in ("GET", "HEAD") and "content-length" not in values:
        values["content-length"] = "0"
    out = method + "\n" + "\n".join(values.get(h, "") for h in SIGNED_HEADERS) + "\n"
    # The SDK selects ocp- headers by a case-sensitive substring test on the name as sent.
    ocp = sorted((k.lower(), v) for k, v in headers.items() if "ocp-" in k and v)
    out += "".join(f"{name}:{value}\n" for name, value in ocp)
    out += f"/{account}{parsed.path}"
    query = parse_qs(parsed.query)
    for name in sorted(query):
        if query[name][0]:
            out += f"\n{name}:{query[name][0]}"
    return out


def sign(key: str, text: str) -> str:
    digest = hmac.new(base64.b64decode(key), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class Authenticator:
    """Checks each request against the account's key (and an optional accepted bearer token)."""

    def __init__(self, account: str, key: str, token: str | None = None) -> None:
        try:
            base64.b64decode(key, validate=True)
        except binascii.Error:
            raise ValueError(f"the account key must be base64, not {key!r}") from None
        self.account = account
        self.key = key
        self.token = token

    def check(self, request: Request) -> None:
        header = next((v for k, v in request.headers.items() if k.lower() == "authorization"), None)
        if header is None:
            raise _failed(401, "The request has no Authorization header.")
        scheme, _, credential = header.partition(" ")
        if scheme == "Bearer":
            if self.token is None or not hmac.compare_digest(credential, self.token):
                raise _failed(401, "The bearer token is not one this account accepts.")
            return
        if scheme != "SharedKey":
            raise _failed(401, f"Unsupported authorization scheme {scheme!r}.")
        account, _, signature = credential.partition(":")
        if account != self.account:
            raise _failed(
                403, f"The account name {account!r} in the Authorization header is not {self.account!r}."
            )
        self._check_date(request.headers)
        expected_text = string_to_sign(request.method, request.url, request.headers, self.account)
        if not hmac.compare_digest(signature, sign(self.key, expected_text)):
            raise _failed(
                403,
                f"The MAC signature found in the HTTP request '{signature}' is not the same as any computed "
                f"signature. Server used following string to sign: '{expected_text}'.",
            )

    def _check_date(self, headers: Mapping[str, str]) -> None:
        value = next((v for k, v in headers.items() if k.lower() in ("ocp-date", "date")), None)
        if value is None:
            raise _failed(403, "The request has neither an ocp-date nor a Date header.")
        try:
            sent = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            raise _failed(403, f"The date {value!r} is not an RFC 1123 date.") from None
        skew = abs((now() - sent).total_seconds())
        if skew > MAX_CLOCK_SKEW:
            raise _failed(403, f"The request date {value!r} is more than 15 minutes from the server's time.")


def _failed(status: int, detail: str) -> ServiceError:
    return ServiceError(status, "AuthenticationFailed", values={"AuthenticationErrorDetail": detail})
