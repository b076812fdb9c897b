"""List Blobs (one REST call per 5,000 blobs), read straight from its XML: name, size, Content-MD5
and the modification time batchflow records in each blob it uploads.

azure-storage-blob turns each listed blob into a model of some thirty properties; that costs about
0.2 ms per blob, four times what Azurite needs to produce the listing (bench/storage.py), and a
re-upload of unchanged files is mostly that listing. batchflow needs three fields per blob, so it sends
the documented List Blobs request itself, through an azure-core pipeline with the same retry policy
and transport settings as the SDK clients, authorized by a short-lived list-only SAS.
https://learn.microsoft.com/rest/api/storageservices/list-blobs
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from azure.core import PipelineClient
from azure.core.exceptions import AzureError
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest

from batchflow.backends.azure.enums import is_
from batchflow.backends.blob_urls import RetrySettings, describe_azure_error
from batchflow.errors import BatchflowError
from batchflow.redact import redact

# Blob metadata batchflow sets on upload: the source file's st_mtime_ns, for the quick check.
MTIME_KEY = "batchflow_mtime_ns"


@dataclass(frozen=True)
class RemoteBlob:
    """One blob of a listing: its name, size, Content-MD5 and, if batchflow uploaded it, the file's
    modification time."""

    name: str
    size: int
    md5: bytes | None  # Content-MD5; None when whoever stored the blob did not set it
    mtime_ns: int | None = None  # the uploaded file's modification time, if batchflow uploaded it


class BlobLister:
    """`sas(container)` returns a SAS query string allowing at least List on the container."""

    def __init__(
        self,
        account_url: str,
        *,
        api_version: str,
        sas: Callable[[str], str],
        retry: RetrySettings,
        transport: HttpTransport[Any, Any],
    ) -> None:
        """`transport` may be shared with the SDK clients of the same account (one connection pool)."""
        self._account_url = account_url.rstrip("/")
        self._api_version = api_version
        self._sas = sas
        self._retry = retry
        self._client: PipelineClient[HttpRequest, Any] = PipelineClient(
            base_url=self._account_url, policies=[retry.retry_policy()], transport=transport
        )

    def close(self) -> None:
        self._client.close()

    def list(self, container: str, prefix: str = "") -> list[RemoteBlob]:
        """Every blob under `prefix`, in the service's order (by name). Raises BatchflowError."""
        blobs: list[RemoteBlob] = []
        marker = ""
        base = f"{self._account_url}/{quote(container)}?restype=container&comp=list&include=metadata"
        if prefix:
            base += f"&prefix={quote(prefix, safe='')}"
        sas = self._sas(container)
        while True:
            url = f"{base}&marker={quote(marker, safe='')}&{sas}" if marker else f"{base}&{sas}"
            root = self._get(container, url)
            blobs.extend(_blob(node) for node in root.iter("Blob"))
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return blobs

    def _get(self, container: str, url: str) -> ET.Element:
        try:
            response = self._client.send_request(
                HttpRequest("GET", url, headers={"x-ms-version": self._api_version})
            )
            body = response.read()
        except AzureError as e:
            raise self._failed(container, describe_azure_error(e, self._retry)) from None
        if response.status_code == 200:
            try:
                return ET.fromstring(body)  # noqa: S314 - see the import
            except ET.ParseError as e:
                raise self._failed(container, f"unreadable listing ({e})") from None
        code = response.headers.get("x-ms-error-code", "")
        if is_(code, "ContainerNotFound"):
            raise BatchflowError(f"container {container!r} does not exist in {self._account_url}")
        why = " ".join(p for p in (f"HTTP {response.status_code}", code) if p)
        message = _error_message(body)
        if message:
            why += f": {message}"
        if response.status_code >= 500 and self._retry.total > 0:
            why += f" (gave up after {self._retry.total} retries)"
        raise self._failed(container, redact(why))

    def _failed(self, container: str, why: str) -> BatchflowError:
        return BatchflowError(f"cannot list container {container!r} in {self._account_url}: {why}")


def _blob(node: ET.Element) -> RemoteBlob:
    name_node = node.find("Name")
    name = (name_node.text or "") if name_node is not None else ""
    if name_node is not None and name_node.get("Encoded") == "true":
        name = unquote(name)  # names with characters XML cannot carry come percent-encoded
    props = node.find("Properties")
    size = int(props.findtext("Content-Length") or 0) if props is not None else 0
    md5_text = props.findtext("Content-MD5") if props is not None else None
    md5: bytes | None = None
    if md5_text:
        try:
            md5 = base64.b64decode(md5_text, validate=True)
        except binascii.Error:
            md5 = None  # not an MD5 we could compare: the blob counts as changed
    mtime = node.findtext(f"Metadata/{MTIME_KEY}")
    return RemoteBlob(name, size, md5, int(mtime) if mtime and mtime.isdigit() else None)


def _error_message(body: bytes) -> str:
    try:
        text = ET.fromstring(body).findtext("Message") or ""  # noqa: S314
    except ET.ParseError:
        return ""
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""
