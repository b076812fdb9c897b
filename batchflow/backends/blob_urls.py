"""One file through one URL: how compute backends use Storage.resource_url and Storage.container_url.

`fetch_url` GETs a task input, `put_to_container_url` stores a task output. A file:// URL (LocalStorage)
is served without importing Azure (an input is the task's own copy, a reflink where the filesystem has
them; an output is hard-linked into the container, a copy across filesystems); an http(s) URL with a SAS
(AzureBlobStorage) goes through azure-storage-blob, imported only then. Also here, because both the
storage and the compute backends talk to Blob Storage: the retry settings of every client, and the
one way an Azure error becomes text (redacted: no signature or key ever reaches a message).
"""

from __future__ import annotations

import hashlib
import itertools
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlsplit

from batchflow.backends.files import TMP_PREFIX, clone_new, replace_with_clone, replace_with_link
from batchflow.digests import version_key
from batchflow.errors import BatchflowError, first_line
from batchflow.names import check_blob_name
from batchflow.redact import redact

if TYPE_CHECKING:
    from azure.core.pipeline.transport import RequestsTransport
    from azure.storage.blob import ContentSettings, ExponentialRetry

_CHUNK = 1024 * 1024
_tmp_counter = itertools.count()  # next() is atomic under the GIL: unique names across threads


@dataclass(frozen=True)
class RetrySettings:
    """How every Blob Storage request is retried: azure-storage-blob's ExponentialRetry policy.

    Connection failures, timeouts, 408 and 5xx (but 501, 505) are retried `total` times; the n-th
    retry waits initial_backoff + increment_base**(n-1) seconds (plus or minus `jitter`), so the
    defaults wait about 2, 5, 11 and 29 seconds before giving up.
    """

    total: int = 4
    initial_backoff: float = 2.0
    increment_base: float = 3.0
    jitter: float = 1.0
    connection_timeout: float = 20.0  # seconds to open a connection
    read_timeout: float = 60.0  # seconds between bytes of a response

    def retry_policy(self) -> ExponentialRetry:
        from azure.storage.blob import ExponentialRetry

        policy: dict[str, Any] = {
            "initial_backoff": self.initial_backoff,
            "increment_base": self.increment_base,
            "random_jitter_range": self.jitter,
            "retry_total": self.total,
            "retry_connect": self.total,
            "retry_read": self.total,
            "retry_status": self.total,
        }
        return ExponentialRetry(**policy)

    def client_options(self, url: str, *, connections: int = 10) -> dict[str, Any]:
        """Keyword arguments for an azure-storage-blob client of `url`: this retry policy and a
        transport keeping up to `connections` connections open (one per thread that uses it)."""
        return {"retry_policy": self.retry_policy(), "transport": http_transport(url, self, connections)}


def http_transport(url: str, retry: RetrySettings, connections: int = 10) -> RequestsTransport:
    """azure-core's requests transport for the host of `url`, with two changes.

    - Proxy and CA-bundle variables are read once: requests re-reads the whole environment on
      every request to find proxies, a sixth of the CPU time of a small upload (bench/storage.py).
      Every request goes to one host, so HTTP(S)_PROXY / NO_PROXY are resolved for it here.
    - The connection pool holds `connections` (requests keeps 10 per host; more threads than that
      would open and discard connections).
    """
    import requests
    import requests.adapters
    import requests.utils
    from azure.core.pipeline.transport import RequestsTransport
    from urllib3.util.retry import Retry

    session = requests.Session()
    session.trust_env = False
    session.proxies.update(requests.utils.get_environ_proxies(url))
    # Retries belong to the pipeline's policy, never to urllib3 (as in azure-core's own session).
    adapter = requests.adapters.HTTPAdapter(
        pool_maxsize=max(connections, 1),
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    options: dict[str, Any] = {}
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if ca_bundle:
        options["connection_verify"] = ca_bundle
    return RequestsTransport(
        session=session,
        session_owner=True,
        connection_timeout=retry.connection_timeout,
        read_timeout=retry.read_timeout,
        connection_data_block_size=256 * 1024,  # what azure-storage-blob gives its own transports
        **options,
    )


def describe_azure_error(error: Exception, retry: RetrySettings | None = None) -> str:
    """One redacted line: 'HTTP 503 ServerBusy: The server is busy. (gave up after 4 retries)'."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    retried = False
    if isinstance(error, HttpResponseError):
        head = " ".join(
            p
            for p in (f"HTTP {error.status_code}" if error.status_code else "", azure_error_code(error) or "")
            if p
        )
        text = first_line(error.message or str(error))
        text = f"{head}: {text}" if head and text else head or text
        retried = error.status_code is not None and error.status_code >= 500
    elif isinstance(error, ServiceRequestError):
        text, retried = f"cannot connect: {first_line(str(error))}", True
    elif isinstance(error, ServiceResponseError):
        text, retried = f"connection lost: {first_line(str(error))}", True
    else:
        text = f"{type(error).__name__}: {first_line(str(error))}"
    if retried and retry is not None and retry.total > 0:
        text += f" (gave up after {retry.total} retries)"
    return redact(text)


def azure_error_code(error: Exception) -> str | None:
    """The service's error code (ContainerNotFound, ServerBusy, ...), which azure-storage-blob sets."""
    code = getattr(error, "error_code", None)
    return code if isinstance(code, str) and code else None


def md5_file(path: Path) -> bytes:
    """The MD5 digest of a file, read in 1 MiB chunks (Blob Storage's Content-MD5, not a security hash)."""
    with path.open("rb") as f:
        return md5_stream(f)


def md5_stream(f: BinaryIO, size: int | None = None) -> bytes:
    """The MD5 digest of what is left to read in `f` (at most `size` bytes), read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    left = -1 if size is None else size
    while left and (chunk := f.read(_CHUNK if left < 0 else min(_CHUNK, left))):
        digest.update(chunk)
        left -= len(chunk) if left > 0 else 0
    return digest.digest()


def content_settings(blob: str, md5: bytes) -> ContentSettings:
    """Content-Type from the name and the whole file's Content-MD5, which the SDK does not compute
    for blobs it uploads in blocks; downloads and re-uploads compare it to skip unchanged files."""
    from azure.storage.blob import ContentSettings

    content_type = mimetypes.guess_type(blob)[0] or "application/octet-stream"
    return ContentSettings(content_type=content_type, content_md5=bytearray(md5))


def without_query(url: str) -> str:
    """`url` without its query string (a SAS), for messages: the rest says which blob or container."""
    return redact(url.split("?", 1)[0])


def file_url_path(url: str) -> Path:
    """The path of a file:// URL as made by Path.as_uri() (percent-encoded UTF-8, empty host)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost") or parts.query:
        raise BatchflowError(f"not a local file URL: {without_query(url)}")
    # url2pathname on POSIX, without importing urllib.request (http.client, ssl, email: ~10 ms).
    return Path(unquote(parts.path))


def fetch_url(url: str, dest: Path, *, retry: RetrySettings | None = None, in_place: bool = False) -> int:
    """Place the file at `url` at `dest` (replacing it atomically); return its size in bytes.

    file:// -> a file of its own, as a node downloads one (a reflink where the filesystem supports it,
    else a copy: never a hard link, so a task that edits its input never changes the stored blob, and
    `gzip -k` accepts it); http(s):// -> a GET through
    azure-storage-blob (a blob URL with a read SAS), written under a temporary name, then renamed.
    `in_place`: `dest` is new, in an existing folder nobody reads yet (a task's fresh wd/), so a
    file:// copy is written under its own name, without a temporary one.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        src = file_url_path(url)
        try:
            if in_place:
                return clone_new(src, dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            replace_with_clone(src, dest)
        except FileNotFoundError:
            raise BatchflowError(f"cannot fetch {src}: file not found") from None
        return dest.stat().st_size
    if scheme in ("http", "https"):
        return _fetch_http(url, dest, retry or RetrySettings())
    raise BatchflowError(
        f"cannot fetch {without_query(url)}: only file://, http:// and https:// URLs are supported"
    )


def put_to_container_url(
    container_url: str, blob: str, src: Path, *, retry: RetrySettings | None = None, growing: bool = False
) -> str:
    """Store `src` as `blob` under a container URL; return "container/blob".

    file:// -> a hard link in the container folder, which must exist (a copy across filesystems);
    http(s):// -> an upload through a container SAS URL (create/write permission is enough), with
    the file's Content-MD5 so later downloads can skip it when unchanged. The bytes sent and their
    MD5 are the file's first st_size bytes as it was opened; a file that changed meanwhile is
    refused (BatchflowError), unless `growing` (a log something may still append to: what it held
    when opened is sent).
    """
    check_blob_name(blob)
    scheme = urlsplit(container_url).scheme.lower()
    if scheme == "file":
        folder = file_url_path(container_url)
        if not folder.is_dir():
            raise BatchflowError(f"cannot store {blob!r}: container folder {folder} does not exist")
        dst = folder.joinpath(*blob.split("/"))
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            replace_with_link(src, dst)
        except FileNotFoundError:
            raise BatchflowError(f"cannot store {src}: file not found") from None
        return f"{folder.name}/{blob}"
    if scheme in ("http", "https"):
        return _put_http(container_url, blob, src, retry or RetrySettings(), growing)
    raise BatchflowError(
        f"cannot store {blob!r} under {without_query(container_url)}: "
        "only file://, http:// and https:// URLs are supported"
    )


def temp_beside(path: Path) -> Path:
    """A hidden temporary name in `path`'s folder (list_blobs and downloads never show it)."""
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{next(_tmp_counter)}")


def _fetch_http(url: str, dest: Path, retry: RetrySettings) -> int:
    from azure.core.exceptions import AzureError
    from azure.storage.blob import BlobClient

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(dest)
    try:
        with (
            BlobClient.from_blob_url(url, **retry.client_options(url)) as client,
            tmp.open("wb") as f,
        ):
            size = client.download_blob().readinto(f)
        tmp.replace(dest)
    except AzureError as e:
        raise BatchflowError(
            f"cannot download {without_query(url)}: {describe_azure_error(e, retry)}"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return size


def _put_http(container_url: str, blob: str, src: Path, retry: RetrySettings, growing: bool) -> str:
    from azure.core.exceptions import AzureError
    from azure.storage.blob import ContainerClient

    try:
        f = src.open("rb")
    except FileNotFoundError:
        raise BatchflowError(f"cannot store {src}: file not found") from None
    # One open for the MD5 and the bytes sent, and a look at the file before and after. The node's
    # SAS cannot delete: a file that changed during the upload leaves a blob the run does not
    # count (its task fails), and a later run overwrites.
    changed = BatchflowError(f"cannot store {src}: it changed while it was uploaded")
    with f:
        try:
            seen = os.fstat(f.fileno())
            md5 = md5_stream(f, seen.st_size)
            if not growing and version_key(os.fstat(f.fileno())) != version_key(seen):
                raise changed
            f.seek(0)
        except OSError as e:
            raise BatchflowError(f"cannot store {src}: {e.strerror or e}") from None
        try:
            with ContainerClient.from_container_url(
                container_url, **retry.client_options(container_url)
            ) as client:
                client.upload_blob(
                    blob, f, length=seen.st_size, overwrite=True, content_settings=content_settings(blob, md5)
                )
                if not growing and version_key(os.fstat(f.fileno())) != version_key(seen):
                    raise changed
                return f"{client.container_name}/{blob}"
        except AzureError as e:
            raise BatchflowError(
                f"cannot upload {src} to {without_query(container_url)} as {blob!r}: "
                f"{describe_azure_error(e, retry)}"
            ) from None
