"""Azure Blob Storage as batchflow's Storage (azure-storage-blob 12.x); Azurite in the tests.

- Transfers run in parallel on a bounded thread pool and skip unchanged files. Each upload stores the
  file's MD5 as the blob's Content-MD5 and its modification time in the blob's metadata; one listing
  per container (not a request per blob) tells what is there. An upload is skipped when size and
  modification time match (rsync's quick check) or else the MD5 does; a download when the local
  file's MD5 matches, and every download is checked against the Content-MD5 before it is kept.
- Transient failures are retried by the SDK's retry policy (see blob_urls.RetrySettings). A file that
  still fails is never reported as transferred: the others finish, then TransferFailed lists what is
  missing; after a service failure no new transfer starts.
- Task inputs are read-only SAS URLs, task outputs go through a create/write-only container SAS URL, both
  valid for `sas_ttl` seconds: user delegation SAS under Entra ID, account-key SAS otherwise.
- Blobs are copied by the service (Copy Blob, from a short-lived read-only SAS URL of the source), in
  parallel like transfers; a copy the service answers "pending" is polled until it ends, within
  `copy_timeout` seconds (Azurite 3.37 copies at once; Azure may take a while for large blobs).
- No key or signature reaches a message or a log: every text from the SDK goes through `redact`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob import (
    BlobClient,
    BlobSasPermissions,
    BlobServiceClient,
    ContainerSasPermissions,
    UserDelegationKey,
    generate_blob_sas,
    generate_container_sas,
)

from batchflow.backends.azure.auth import BlobAuth, blob_auth
from batchflow.backends.azure.blob_listing import MTIME_KEY, BlobLister, RemoteBlob
from batchflow.backends.azure.enums import is_
from batchflow.backends.blob_urls import (
    RetrySettings,
    azure_error_code,
    content_settings,
    describe_azure_error,
    md5_file,
    md5_stream,
    temp_beside,
)
from batchflow.digests import version_key
from batchflow.errors import BatchflowError
from batchflow.model import CHANGED_SINCE_PLAN, BlobStat, TransferResult, UploadItem
from batchflow.names import check_blob_name, check_copies, download_name
from batchflow.redact import redact

log = logging.getLogger(__name__)

# Measured with bench/storage.py on 2 cores against Azurite: see BENCHMARKS.md.
DEFAULT_MAX_WORKERS = 8
# SAS validity starts this far in the past, so a node whose clock is behind can use it at once.
SAS_CLOCK_SKEW = timedelta(minutes=5)
# A user delegation key lives at most 7 days; one key signs every SAS of the next hour.
MAX_DELEGATION = timedelta(days=7)
_DELEGATION_MARGIN = timedelta(hours=1)
MAX_BLOB_NAME = 1024
_CONTAINER_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")
_LISTED_FAILURES = 10
_LIST_SAS_TTL = timedelta(minutes=15)
# A copy's source SAS outlives the longest wait for the copy by this much.
_COPY_SAS_MARGIN = timedelta(minutes=15)
DEFAULT_COPY_TIMEOUT = 600.0
_COPY_POLL_FIRST = 0.05  # seconds; doubled after each poll, up to _COPY_POLL_MAX
_COPY_POLL_MAX = 2.0
# Files up to azure-storage-blob's single-request size are read into memory once, as the SDK
# itself would, hashed and sent from there; larger ones are hashed first, then streamed in blocks.
_READ_WHOLE = 64 * 1024 * 1024
_NOT_ATTEMPTED = "not attempted after the failures above"


class TransferFailed(BatchflowError):
    """Some files were not transferred. `result` counts the ones that were; `failures` says why the
    others were not, one "container/blob: reason" line each."""

    def __init__(self, message: str, result: TransferResult, failures: tuple[str, ...]) -> None:
        super().__init__(message)
        self.result = result
        self.failures = failures


@dataclass(frozen=True)
class _Outcome:
    """What became of one transfer of a batch (an upload or a download)."""

    name: str  # what TransferResult.files reports: a blob name (upload) or a local path (download)
    size: int = 0
    skipped: bool = False
    error: str | None = None  # "container/blob: why", for a transfer that failed
    service_failed: bool = False  # the service, not this one file: start no new transfer


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def check_container_name(name: str) -> None:
    if not (3 <= len(name) <= 63) or _CONTAINER_NAME.match(name) is None:
        raise BatchflowError(
            f"invalid container name {name!r}: Azure container names are 3 to 63 lowercase letters, "
            "digits and single hyphens, starting and ending with a letter or digit"
        )


def check_upload_name(name: str) -> None:
    check_blob_name(name)
    if len(name) > MAX_BLOB_NAME:
        raise BatchflowError(
            f"blob name too long ({len(name)} characters, at most {MAX_BLOB_NAME}): {name!r}"
        )


class AzureBlobStorage:
    """The Storage protocol on an Azure Storage account (or Azurite). The constructor does no I/O."""

    def __init__(
        self,
        auth: BlobAuth,
        *,
        sas_ttl: float,
        max_workers: int = DEFAULT_MAX_WORKERS,
        retry: RetrySettings | None = None,
        client_options: Mapping[str, Any] | None = None,
        clock: Callable[[], datetime] = _utcnow,
        copy_timeout: float = DEFAULT_COPY_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`client_options`: more keyword arguments for the azure-storage-blob clients (e.g. `transport`,
        `proxies`, `raw_response_hook`); `clock` returns an aware UTC datetime (SAS start and expiry);
        `copy_timeout`: how long, in seconds of `sleep` between polls, a pending copy is waited for."""
        if sas_ttl <= 0:
            raise BatchflowError(f"SAS lifetime must be positive, not {sas_ttl} seconds")
        if copy_timeout < 0:
            raise BatchflowError(f"copy timeout must not be negative, not {copy_timeout} seconds")
        if max_workers < 1:
            raise BatchflowError(f"max_workers must be at least 1, not {max_workers}")
        if (
            auth.token_credential is not None
            and timedelta(seconds=sas_ttl) + _DELEGATION_MARGIN > MAX_DELEGATION
        ):
            raise BatchflowError(
                f"SAS lifetime {sas_ttl:.0f} s is too long for Entra ID sign-in: a user delegation key "
                "lives at most 7 days (shorten monitor.timeout)"
            )
        self.auth = auth
        self.sas_ttl = timedelta(seconds=sas_ttl)
        self.max_workers = max_workers
        self.retry = retry or RetrySettings()
        self._clock = clock
        self.copy_timeout = copy_timeout
        self._sleep = sleep
        credential: Any
        if auth.account_key is not None:
            credential = AzureNamedKeyCredential(auth.account_name or "", auth.account_key)
        elif auth.sas_token is not None:
            credential = AzureSasCredential(auth.sas_token)
        else:
            credential = auth.token_credential
        options = {
            **self.retry.client_options(auth.account_url, connections=max_workers),
            **(client_options or {}),
        }
        self._service = BlobServiceClient(auth.account_url, credential=credential, **options)
        self._lister = BlobLister(
            auth.account_url,
            api_version=self._service.api_version,
            sas=self._list_sas,
            retry=self.retry,
            transport=options["transport"],
        )
        self.account_name: str = auth.account_name or self._service.account_name or ""
        self._lock = threading.Lock()
        self._delegation: tuple[UserDelegationKey, datetime] | None = None

    @classmethod
    def from_environment(
        cls,
        *,
        sas_ttl: float,
        max_workers: int = DEFAULT_MAX_WORKERS,
        environ: Mapping[str, str] | None = None,
        retry: RetrySettings | None = None,
    ) -> AzureBlobStorage:
        """Credentials from the environment (see batchflow.backends.azure.auth); no network I/O."""
        return cls(blob_auth(environ), sas_ttl=sas_ttl, max_workers=max_workers, retry=retry)

    def close(self) -> None:
        self._lister.close()
        self._service.close()  # and the transport both use
        close = getattr(self.auth.token_credential, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> AzureBlobStorage:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def where(self) -> str:
        return self.auth.account_url

    # ---- containers -----------------------------------------------------------------------

    def ensure_container(self, name: str) -> bool:
        check_container_name(name)
        try:
            self._service.create_container(name)
        except ResourceExistsError as e:
            if is_(azure_error_code(e), "ContainerAlreadyExists"):
                return False
            raise self._error(f"cannot create container {name!r}", e) from None
        except AzureError as e:
            raise self._error(f"cannot create container {name!r}", e) from None
        log.debug("created container %s", name)
        return True

    def delete_container(self, name: str) -> bool:
        check_container_name(name)
        try:
            self._service.delete_container(name)
        except ResourceNotFoundError as e:
            if is_(azure_error_code(e), "ContainerNotFound"):
                return False
            raise self._error(f"cannot delete container {name!r}", e) from None
        except AzureError as e:
            raise self._error(f"cannot delete container {name!r}", e) from None
        log.debug("deleted container %s", name)
        return True

    def _error(self, what: str, e: AzureError) -> BatchflowError:
        return BatchflowError(f"{what} in {self.where}: {describe_azure_error(e, self.retry)}")

    # ---- listing --------------------------------------------------------------------------

    def list_blobs(self, container: str, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self.remote_blobs(container, prefix))

    def remote_blobs(self, container: str, prefix: str = "") -> list[RemoteBlob]:
        """Every blob under `prefix`, with size and Content-MD5: one request per 5,000 blobs."""
        check_container_name(container)
        return self._lister.list(container, prefix)

    def stat_blobs(self, container: str, prefix: str = "", *, md5: bool = True) -> dict[str, BlobStat]:
        """Size and Content-MD5 (None if the blob has none) of every blob under `prefix`, by name:
        the listing has them, so `md5` changes nothing (and there is no version)."""
        return {
            b.name: BlobStat(b.size, b.md5.hex() if b.md5 is not None and len(b.md5) == 16 else None)
            for b in sorted(self.remote_blobs(container, prefix), key=lambda b: b.name)
        }

    def _list_sas(self, container: str) -> str:
        """A list-only SAS for the lister, valid for a quarter of an hour (or the connection string's)."""
        if self.auth.account_key is None and self.auth.token_credential is None:
            return self.auth.sas_token or ""
        now = self._clock().replace(microsecond=0)
        expiry = now + _LIST_SAS_TTL
        key, udk = self._signing_key(expiry)
        return generate_container_sas(
            self.account_name,
            container,
            account_key=key,
            user_delegation_key=udk,
            permission=ContainerSasPermissions(list=True),
            start=now - SAS_CLOCK_SKEW,
            expiry=expiry,
            protocol=self._sas_protocol(),
        )

    # ---- upload ---------------------------------------------------------------------------

    def upload(self, items: Sequence[UploadItem]) -> TransferResult:
        """Upload in parallel; skip files whose MD5 equals the blob's Content-MD5."""
        by_container: dict[str, list[UploadItem]] = defaultdict(list)
        for item in items:
            check_container_name(item.container)
            check_upload_name(item.blob_name)
            by_container[item.container].append(item)
        remote: dict[str, dict[str, RemoteBlob]] = {}
        for container, its in by_container.items():
            # Character-wise on purpose: the listing's name prefix, not a folder.
            prefix = os.path.commonprefix([i.blob_name for i in its])  # noqa: RUF071
            remote[container] = {b.name: b for b in self.remote_blobs(container, prefix)}
        jobs = [
            (item.container, item.blob_name, partial(self._upload_one, item, remote[item.container]))
            for item in items
        ]
        return self._finish("upload", self._run(jobs))

    def _upload_one(self, item: UploadItem, remote: Mapping[str, RemoteBlob]) -> _Outcome:
        """Upload one file unless the blob holds its content already: same size and the same
        modification time as recorded at upload (rsync's quick check), or else the same MD5.

        The file is opened once: its MD5 and the bytes sent are of the version checked (the one
        input discovery saw). A write into it during the upload is seen (fstat after): the blob,
        torn, is deleted and the upload fails."""
        where = f"{item.container}/{item.blob_name}"
        path = item.local_path
        there = remote.get(item.blob_name)
        changed = _Outcome(item.blob_name, error=f"{where}: {path}: {CHANGED_SINCE_PLAN}")
        try:
            stat = path.stat()
            if item.changed_since_seen(stat.st_size, stat.st_mtime_ns, stat.st_ino):
                return changed
            if _quick_check(there, stat):
                return _Outcome(item.blob_name, skipped=True)
            f = path.open("rb")
        except FileNotFoundError:
            return _Outcome(item.blob_name, error=f"{where}: {path}: file not found")
        except OSError as e:
            return _Outcome(item.blob_name, error=f"{where}: {path}: {e.strerror or e}")
        with f:
            try:
                if version_key(os.fstat(f.fileno())) != version_key(stat):  # replaced since the stat
                    return changed
                data = f.read() if stat.st_size <= _READ_WHOLE else None
                md5 = _md5(data) if data is not None else md5_stream(f)
                if version_key(os.fstat(f.fileno())) != version_key(stat):  # written while it was read
                    return changed
            except OSError as e:
                return _Outcome(item.blob_name, error=f"{where}: {path}: {e.strerror or e}")
            if there is not None and there.md5 == md5 and there.size == stat.st_size:
                return _Outcome(item.blob_name, skipped=True)
            blob = self._service.get_blob_client(item.container, item.blob_name)
            options: dict[str, Any] = {
                "overwrite": True,
                "content_settings": content_settings(item.blob_name, md5),
                "metadata": {MTIME_KEY: str(stat.st_mtime_ns)},
            }
            try:
                if data is not None:
                    sent = blob.upload_blob(data, **options)
                else:
                    f.seek(0)
                    sent = blob.upload_blob(f, length=stat.st_size, **options)
                torn = data is None and version_key(os.fstat(f.fileno())) != version_key(stat)
            except AzureError as e:
                error = f"{where}: {describe_azure_error(e, self.retry)}"
                return _Outcome(item.blob_name, error=error, service_failed=True)
            except OSError as e:
                return _Outcome(item.blob_name, error=f"{where}: {path}: {e.strerror or e}")
        if torn:  # its bytes are of no one version, and its Content-MD5 of another: take it back
            try:  # unless someone else (another machine on the account) wrote it since
                blob.delete_blob(etag=sent["etag"], match_condition=MatchConditions.IfNotModified)
            except AzureError as e:
                log.warning("could not delete %s, uploaded while %s changed: %s", where, path, e)
            return changed
        log.debug("uploaded %s (%d bytes)", where, stat.st_size)
        return _Outcome(item.blob_name, size=stat.st_size)

    # ---- download -------------------------------------------------------------------------

    def download(
        self, container: str, prefix: str, destination: Path, *, skip: Sequence[str] = ()
    ) -> TransferResult:
        """Download blobs under `prefix`, except those under a `skip` prefix (see
        local_storage.download_name for where each lands).

        Every name is checked, and every target must lie inside `destination`, before anything is
        written. A file whose MD5 equals the blob's Content-MD5 is skipped.
        """
        blobs = [b for b in self.remote_blobs(container, prefix) if not b.name.startswith(tuple(skip))]
        root = destination.resolve()
        targets: list[tuple[RemoteBlob, Path]] = []
        for blob in sorted(blobs, key=lambda b: b.name):
            check_blob_name(blob.name)
            rel = download_name(blob.name, prefix)
            check_blob_name(rel)
            target = root.joinpath(*rel.split("/"))
            if not target.parent.resolve().is_relative_to(root):
                raise BatchflowError(
                    f"refusing to download blob {blob.name!r}: {target} is outside {destination}"
                )
            targets.append((blob, target))
        for folder in sorted({target.parent for _, target in targets} | {root}):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BatchflowError(f"cannot create {folder}: {e.strerror or e}") from None
        jobs = [
            (container, blob.name, partial(self._download_one, container, blob, target))
            for blob, target in targets
        ]
        return self._finish("download", self._run(jobs))

    def _download_one(self, container: str, blob: RemoteBlob, target: Path) -> _Outcome:
        """Stream the blob into a temporary file beside `target`, hashing as it arrives; rename it
        over `target` only if the MD5 matches the blob's Content-MD5 (when it has one)."""
        where = f"{container}/{blob.name}"
        try:
            if blob.md5 is not None and _same_file(target, blob):
                return _Outcome(str(target), skipped=True)
        except OSError as e:
            return _Outcome(str(target), error=f"{where}: {target}: {e.strerror or e}")
        tmp = temp_beside(target)
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        try:
            with tmp.open("wb") as f:
                for chunk in self._service.get_blob_client(container, blob.name).download_blob().chunks():
                    digest.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
            if blob.md5 is not None and digest.digest() != blob.md5:
                tmp.unlink()
                error = f"{where}: the data received does not match its Content-MD5"
                return _Outcome(str(target), error=error)
            tmp.replace(target)
        except AzureError as e:
            tmp.unlink(missing_ok=True)
            return _Outcome(
                str(target), error=f"{where}: {describe_azure_error(e, self.retry)}", service_failed=True
            )
        except OSError as e:
            tmp.unlink(missing_ok=True)
            return _Outcome(str(target), error=f"{where}: {target}: {e.strerror or e}")
        log.debug("downloaded %s to %s (%d bytes)", where, target, size)
        return _Outcome(str(target), size=size)

    # ---- copy -----------------------------------------------------------------------------

    def copy_blobs(self, container: str, pairs: Sequence[tuple[str, str]]) -> TransferResult:
        """Copy Blob, for each pair, on at most max_workers threads (one request per copy that the
        service completes at once). Content settings, Content-MD5 and metadata come with the copy."""
        check_container_name(container)
        check_copies(pairs)
        for _, dst in pairs:
            check_upload_name(dst)
        jobs = [(container, src, partial(self._copy_one, container, src, dst)) for src, dst in pairs]
        outcomes = self._run(jobs)
        if any(o.error is not None for o in outcomes) and not self._container_exists(container):
            raise BatchflowError(f"container {container!r} does not exist in {self.where}")
        return self._finish("copy", outcomes, past="copied")

    def delete_blobs(self, container: str, names: Sequence[str]) -> TransferResult:
        """One Delete Blob per name (with its snapshots), on at most max_workers threads."""
        check_container_name(container)
        for name in names:
            check_blob_name(name)
        jobs = [(container, n, partial(self._delete_one, container, n)) for n in names]
        return self._finish("delete", self._run(jobs), past="deleted")

    def _delete_one(self, container: str, blob: str) -> _Outcome:
        try:
            self._service.get_blob_client(container, blob).delete_blob(delete_snapshots="include")
        except ResourceNotFoundError:
            return _Outcome(blob, skipped=True)
        except AzureError as e:
            error = f"{container}/{blob}: {describe_azure_error(e, self.retry)}"
            return _Outcome(blob, error=error, service_failed=True)
        return _Outcome(blob)

    def _container_exists(self, container: str) -> bool:
        """False only if the service says there is no such container (Azurite answers a copy in a
        missing container as if its source were missing)."""
        try:
            self._service.get_container_client(container).get_container_properties()
        except ResourceNotFoundError as e:
            if is_(azure_error_code(e), "ContainerNotFound"):
                return False
            raise self._error(f"cannot read container {container!r}", e) from None
        except AzureError as e:
            raise self._error(f"cannot read container {container!r}", e) from None
        return True

    def _copy_one(self, container: str, src: str, dst: str) -> _Outcome:
        where = f"{container}/{src}"
        client = self._service.get_blob_client(container, dst)
        try:
            started = client.start_copy_from_url(self._copy_source(container, src))
            status = started.get("copy_status")
            why = None if is_(status, "success") else self._await_copy(client, started.get("copy_id"))
        except ResourceNotFoundError as e:
            code = azure_error_code(e)
            if is_(code, "CannotVerifyCopySource") or is_(code, "BlobNotFound"):
                return _Outcome(dst, error=f"{where}: source blob not found (to copy to {dst!r})")
            if is_(code, "ContainerNotFound"):  # (copy_blobs then says so)
                return _Outcome(dst, error=f"{where}: no container", service_failed=True)
            error = f"{where}: {describe_azure_error(e, self.retry)}"
            return _Outcome(dst, error=error, service_failed=True)
        except AzureError as e:
            error = f"{where}: {describe_azure_error(e, self.retry)} (copying to {dst!r})"
            return _Outcome(dst, error=error, service_failed=True)
        if why is not None:
            return _Outcome(dst, error=f"{where}: copy to {dst!r} {why}")
        log.debug("copied %s to %s", where, dst)
        return _Outcome(dst)

    def _copy_source(self, container: str, blob: str) -> str:
        """The source blob's URL with a read-only SAS that outlives the wait for the copy, or the
        connection string's SAS when signed in with one (it cannot sign another)."""
        url = self._service.get_blob_client(container, blob).url
        if self.auth.account_key is None and self.auth.token_credential is None:
            return f"{url}?{self.auth.sas_token}" if self.auth.sas_token else url
        now = self._clock().replace(microsecond=0)
        expiry = now + timedelta(seconds=self.copy_timeout) + _COPY_SAS_MARGIN
        key, udk = self._signing_key(expiry)
        token = generate_blob_sas(
            self.account_name,
            container,
            blob,
            account_key=key,
            user_delegation_key=udk,
            permission=BlobSasPermissions(read=True),
            start=now - SAS_CLOCK_SKEW,
            expiry=expiry,
            protocol=self._sas_protocol(),
        )
        return f"{url}?{token}"

    def _await_copy(self, client: BlobClient, copy_id: object) -> str | None:
        """Poll a pending copy until it ends: None if it succeeded, else why not ("failed: ...").
        A copy still pending after copy_timeout seconds is aborted."""
        delay, waited = _COPY_POLL_FIRST, 0.0
        while waited < self.copy_timeout:
            self._sleep(delay)
            waited += delay
            delay = min(2 * delay, _COPY_POLL_MAX)
            copy = client.get_blob_properties().copy
            if copy.id != copy_id:
                return "was replaced by another copy to the same blob"
            if not is_(copy.status, "pending"):
                return _copy_ended(copy.status, copy.status_description)
        try:
            client.abort_copy(str(copy_id))
        except HttpResponseError as e:
            if not is_(azure_error_code(e), "NoPendingCopyOperation"):
                raise
            copy = client.get_blob_properties().copy  # it ended between the last poll and the abort
            if copy.id == copy_id and not is_(copy.status, "pending"):
                return _copy_ended(copy.status, copy.status_description)
        return f"was still pending after {waited:g} s, and was aborted"

    # ---- SAS URLs -------------------------------------------------------------------------

    def resource_url(self, container: str, blob: str) -> str:
        """The blob's URL with a read-only SAS valid from a few minutes ago for `sas_ttl` seconds."""
        check_container_name(container)
        check_blob_name(blob)
        start, expiry = self._sas_window()
        permission = BlobSasPermissions(read=True)
        key, udk = self._signing_key(expiry)
        token = generate_blob_sas(
            self.account_name,
            container,
            blob,
            account_key=key,
            user_delegation_key=udk,
            permission=permission,
            start=start,
            expiry=expiry,
            protocol=self._sas_protocol(),
        )
        return f"{self._service.get_blob_client(container, blob).url}?{token}"

    def container_url(self, container: str) -> str:
        """The container's URL with a create/write-only SAS (no read, list or delete): output files."""
        check_container_name(container)
        start, expiry = self._sas_window()
        key, udk = self._signing_key(expiry)
        token = generate_container_sas(
            self.account_name,
            container,
            account_key=key,
            user_delegation_key=udk,
            permission=ContainerSasPermissions(create=True, write=True),
            start=start,
            expiry=expiry,
            protocol=self._sas_protocol(),
        )
        return f"{self._service.get_container_client(container).url}?{token}"

    def _sas_window(self) -> tuple[datetime, datetime]:
        now = self._clock().replace(microsecond=0)
        return now - SAS_CLOCK_SKEW, now + self.sas_ttl

    def _sas_protocol(self) -> str | None:
        """HTTPS only when the account is reached over HTTPS (Azurite speaks plain HTTP)."""
        return "https" if self.auth.account_url.lower().startswith("https://") else None

    def _signing_key(self, expiry: datetime) -> tuple[str | None, UserDelegationKey | None]:
        if self.auth.account_key is not None:
            return self.auth.account_key, None
        if self.auth.token_credential is None:
            raise BatchflowError(
                f"cannot make SAS URLs for {self.where}: signed in with a SAS ({self.auth.method}), which "
                "cannot sign new ones; use Entra ID sign-in or an account key (see README, Credentials)"
            )
        return None, self._delegation_key(expiry)

    def _delegation_key(self, expiry: datetime) -> UserDelegationKey:
        with self._lock:
            if self._delegation is not None and self._delegation[1] >= expiry:
                return self._delegation[0]
            now = self._clock().replace(microsecond=0)
            key_expiry = min(expiry + _DELEGATION_MARGIN, now + MAX_DELEGATION)
            try:
                key = self._service.get_user_delegation_key(now - SAS_CLOCK_SKEW, key_expiry)
            except AzureError as e:
                raise BatchflowError(
                    f"cannot get a user delegation key from {self.where} to sign SAS URLs "
                    f"(the identity needs the Storage Blob Data Contributor role): "
                    f"{describe_azure_error(e, self.retry)}"
                ) from None
            self._delegation = (key, key_expiry)
            return key

    # ---- the thread pool ------------------------------------------------------------------

    def _run(self, jobs: Sequence[tuple[str, str, Callable[[], _Outcome]]]) -> list[_Outcome]:
        """Run the jobs on at most max_workers threads. After a service failure, jobs not yet started
        are not started (reported as failures); on Ctrl-C, the running ones finish, no new one starts."""
        stop = threading.Event()

        def guarded(container: str, blob: str, job: Callable[[], _Outcome]) -> _Outcome:
            if stop.is_set():
                return _Outcome(blob, error=f"{container}/{blob}: {_NOT_ATTEMPTED}")
            outcome = job()
            if outcome.service_failed:
                stop.set()
            return outcome

        if not jobs:
            return []
        pool = ThreadPoolExecutor(
            max_workers=min(self.max_workers, len(jobs)), thread_name_prefix="batchflow-blob"
        )
        try:
            futures = [pool.submit(guarded, *job) for job in jobs]
            return [f.result() for f in futures]
        except BaseException:
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _finish(self, verb: str, outcomes: Sequence[_Outcome], *, past: str = "") -> TransferResult:
        done = [o for o in outcomes if o.error is None and not o.skipped]
        result = TransferResult(
            transferred=len(done),
            skipped=sum(1 for o in outcomes if o.skipped),
            bytes=sum(o.size for o in done),
            files=tuple(o.name for o in done),
        )
        failures = tuple(redact(o.error) for o in outcomes if o.error is not None)
        if failures:
            failed_first = tuple(sorted(failures, key=lambda f: f.endswith(_NOT_ATTEMPTED)))
            shown = failed_first[:_LISTED_FAILURES]
            more = len(failures) - len(shown)
            lines = [
                f"cannot {verb} {len(failures)} of {len(outcomes)} files ({self.where}):",
                *(f"  {line}" for line in shown),
                *([f"  ... and {more} more"] if more else []),
                f"{result.transferred} {verb}ed and {result.skipped} unchanged; "
                f"running again transfers only what is missing or changed"
                if not past
                else f"{result.transferred} {past}",
            ]
            raise TransferFailed("\n".join(lines), result, failed_first)
        return result


def _copy_ended(status: object, description: object) -> str | None:
    """None for a copy that succeeded, else why it did not."""
    if is_(status, "success"):
        return None
    return f"{status}: {description or 'the service gave no reason'}"


def _quick_check(there: RemoteBlob | None, stat: os.stat_result) -> bool:
    """The blob was uploaded by batchflow from a file of this size and modification time."""
    return (
        there is not None
        and there.md5 is not None
        and there.size == stat.st_size
        and there.mtime_ns == stat.st_mtime_ns
    )


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _same_file(target: Path, blob: RemoteBlob) -> bool:
    try:
        if target.stat().st_size != blob.size:
            return False
    except FileNotFoundError:
        return False
    return md5_file(target) == blob.md5
