"""MemoryStorage: the Storage protocol in this process's memory, reached by nodes through mem:// URLs.

A store is a process-wide service with a name (the backend names it after the workspace), so two
storages of one name (a run, then `batchflow download` in the same process) see the same blobs. A
node reaches a store only through the URLs the storage hands out, each granting one permission:
`mem://<store>/<container>/<blob>?sp=r` (read that blob) and `mem://<store>/<container>?sp=w` (write
under that container). `fetch` and `put` are what a node does with them.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from batchflow.errors import BatchflowError
from batchflow.model import BlobStat, TransferResult, UploadItem
from batchflow.names import BATCH_ID, check_blob_name, check_copies, download_name

SCHEME = "mem"


@dataclass(eq=False)
class _Store:
    lock: threading.Lock = field(default_factory=threading.Lock)
    containers: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def container(self, name: str) -> dict[str, bytes]:
        """The container's blobs (lock held)."""
        try:
            return self.containers[name]
        except KeyError:
            raise BatchflowError(f"container {name!r} does not exist") from None


_SERVICE: dict[str, _Store] = {}
_SERVICE_LOCK = threading.Lock()


def _store(name: str) -> _Store:
    with _SERVICE_LOCK:
        return _SERVICE.setdefault(name, _Store())


def _check_name(kind: str, name: str) -> None:
    if not BATCH_ID.fullmatch(name):
        raise BatchflowError(f"invalid {kind} name {name!r}")


class MemoryStorage:
    def __init__(self, name: str) -> None:
        _check_name("store", name)
        self.name = name
        self._store = _store(name)

    def ensure_container(self, name: str) -> bool:
        _check_name("container", name)
        with self._store.lock:
            if name in self._store.containers:
                return False
            self._store.containers[name] = {}
            return True

    def upload(self, items: Sequence[UploadItem]) -> TransferResult:
        transferred = skipped = size = 0
        files: list[str] = []
        for item in items:
            check_blob_name(item.blob_name)
            try:
                data = item.local_path.read_bytes()
            except FileNotFoundError:
                raise BatchflowError(f"cannot upload {item.local_path}: file not found") from None
            with self._store.lock:
                blobs = self._store.container(item.container)
                if blobs.get(item.blob_name) == data:
                    skipped += 1
                    continue
                blobs[item.blob_name] = data
            transferred += 1
            size += len(data)
            files.append(item.blob_name)
        return TransferResult(transferred, skipped, size, tuple(files))

    def download(
        self, container: str, prefix: str, destination: Path, *, skip: Sequence[str] = ()
    ) -> TransferResult:
        with self._store.lock:
            blobs = {
                b: d
                for b, d in self._store.container(container).items()
                if b.startswith(prefix) and not b.startswith(tuple(skip))
            }
        destination.mkdir(parents=True, exist_ok=True)
        root = destination.resolve()
        transferred = skipped = size = 0
        files: list[str] = []
        for blob, data in sorted(blobs.items()):
            rel = download_name(blob, prefix)
            check_blob_name(rel)
            target = root.joinpath(*rel.split("/"))
            if not target.parent.resolve().is_relative_to(root):
                raise BatchflowError(f"refusing to download blob {blob!r}: {target} is outside {destination}")
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_file() and target.read_bytes() == data:
                skipped += 1
                continue
            write_atomically(target, data)
            transferred += 1
            size += len(data)
            files.append(str(target))
        return TransferResult(transferred, skipped, size, tuple(files))

    def list_blobs(self, container: str, prefix: str = "") -> list[str]:
        with self._store.lock:
            return sorted(b for b in self._store.container(container) if b.startswith(prefix))

    def stat_blobs(self, container: str, prefix: str = "", *, md5: bool = True) -> dict[str, BlobStat]:
        with self._store.lock:
            blobs = {b: d for b, d in self._store.container(container).items() if b.startswith(prefix)}
        return {
            b: BlobStat(len(d), hashlib.md5(d, usedforsecurity=False).hexdigest())
            for b, d in sorted(blobs.items())
        }

    def copy_blobs(self, container: str, pairs: Sequence[tuple[str, str]]) -> TransferResult:
        check_copies(pairs)
        with self._store.lock:
            blobs = self._store.container(container)
            missing = [src for src, _ in pairs if src not in blobs]
            copied = tuple(dst for src, dst in pairs if src in blobs)
            for src, dst in pairs:
                if src in blobs:
                    blobs[dst] = blobs[src]
        if missing:
            raise BatchflowError(f"cannot copy in container {container!r}: source blob not found: {missing}")
        return TransferResult(transferred=len(copied), files=copied)

    def resource_url(self, container: str, blob: str) -> str:
        check_blob_name(blob)
        return f"{SCHEME}://{self.name}/{container}/{quote(blob)}?sp=r"

    def container_url(self, container: str) -> str:
        return f"{SCHEME}://{self.name}/{container}?sp=w"

    def delete_container(self, name: str) -> bool:
        with self._store.lock:
            return self._store.containers.pop(name, None) is not None

    def delete_blobs(self, container: str, names: Sequence[str]) -> TransferResult:
        with self._store.lock:
            blobs = self._store.container(container)
            deleted = tuple(n for n in names if blobs.pop(n, None) is not None)
        return TransferResult(transferred=len(deleted), skipped=len(names) - len(deleted), files=deleted)

    def close(self) -> None:
        """Nothing to release: the store outlives its clients, as a service does."""


def _parse(url: str, permission: str) -> tuple[_Store, str, str]:
    """(store, container, blob) of a mem:// URL that grants `permission`."""
    parts = urlsplit(url)
    container, _, blob = parts.path.lstrip("/").partition("/")
    if parts.scheme != SCHEME or not BATCH_ID.fullmatch(parts.netloc) or not container:
        raise BatchflowError(f"not a {SCHEME}:// URL: {url.split('?', 1)[0]}")
    if parts.query != f"sp={permission}":
        raise BatchflowError(f"{url.split('?', 1)[0]}: the URL does not grant {permission!r}")
    with _SERVICE_LOCK:
        store = _SERVICE.get(parts.netloc)
    if store is None:
        raise BatchflowError(f"no store {parts.netloc!r}")
    return store, container, unquote(blob)


def fetch(url: str) -> bytes:
    """The blob a read URL names."""
    store, container, blob = _parse(url, "r")
    with store.lock:
        try:
            return store.container(container)[blob]
        except KeyError:
            raise BatchflowError(f"blob {container}/{blob} not found") from None


def put(container_url: str, blob: str, data: bytes) -> str:
    """Store `data` as `blob` under a write URL; returns "container/blob"."""
    check_blob_name(blob)
    store, container, rest = _parse(container_url, "w")
    if rest:
        raise BatchflowError(f"not a container URL: {container_url.split('?', 1)[0]}")
    with store.lock:
        store.container(container)[blob] = data
    return f"{container}/{blob}"


def write_atomically(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{target.name}")
    try:
        tmp.write_bytes(data)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
