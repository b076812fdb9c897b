"""Storage in a folder: containers are folders `root/<container>/`, blobs are files at their names.

Copies are only made when needed (rsync's quick check: same size and mtime_ns = unchanged),
and always land atomically: a file is written under a temporary name in the target folder,
then renamed over the real one, so a crash never leaves half a file under a blob's name.

Blob names come from outside (other tools may fill a container), so every name is checked
before it becomes a path: `check_blob_name` refuses anything that could leave the container
or a download folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from batchflow.backends.files import (
    TMP_PREFIX,
    replace_with_copy,
    replace_with_link,
    same_file_stat,
)
from batchflow.errors import BatchflowError
from batchflow.model import TransferResult, UploadItem
from batchflow.names import blob_name_problem, check_blob_name, download_name


class LocalStorage:
    """The Storage protocol over a folder. Not a cache: the folder is the storage."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    # ---- containers -----------------------------------------------------------------------

    def container_path(self, name: str) -> Path:
        if not name or "/" in name or blob_name_problem(name) is not None:
            raise BatchflowError(f"invalid container name {name!r}")
        return self.root / name

    def ensure_container(self, name: str) -> bool:
        path = self.container_path(name)
        if path.is_dir():
            return False
        path.mkdir(parents=True, exist_ok=True)
        return True

    def delete_container(self, name: str) -> bool:
        path = self.container_path(name)
        if not path.is_dir():
            return False
        shutil.rmtree(path)
        return True

    def _existing(self, container: str) -> Path:
        path = self.container_path(container)
        if not path.is_dir():
            raise BatchflowError(f"container {container!r} does not exist in {self.root}")
        return path

    # ---- blobs ----------------------------------------------------------------------------

    def path_of(self, container: str, blob: str) -> Path:
        """The file that holds `blob`. Raises BatchflowError for a name that would leave the container."""
        check_blob_name(blob)
        return self.container_path(container).joinpath(*blob.split("/"))

    def resource_url(self, container: str, blob: str) -> str:
        """A file:// URL: the local compute links the file into the task working dir."""
        return self.path_of(container, blob).resolve().as_uri()

    def container_url(self, container: str) -> str:
        return self.container_path(container).resolve().as_uri()

    def list_blobs(self, container: str, prefix: str = "") -> list[str]:
        base = self._existing(container)
        # Walk only the folder the prefix names, not the whole container.
        folder = prefix[: prefix.rfind("/") + 1]
        start = (
            base.joinpath(*folder[:-1].split("/"))
            if folder and blob_name_problem(folder[:-1]) is None
            else base
        )
        names: list[str] = []
        for dirpath, _dirnames, filenames in os.walk(start):
            rel = Path(dirpath).relative_to(base).as_posix()
            head = "" if rel == "." else rel + "/"
            names.extend(
                head + f for f in filenames if not f.startswith(TMP_PREFIX) and (head + f).startswith(prefix)
            )
        names.sort()
        return names

    def close(self) -> None:
        """Nothing to release (the Storage protocol's close)."""

    def put_file(self, src: Path, container: str, blob: str) -> None:
        """Store `src` as `blob`, replacing any previous blob atomically. A hard link where possible:
        callers hand over files they no longer change (a finished task's outputs)."""
        dst = self.path_of(container, blob)
        self._existing(container)
        dst.parent.mkdir(parents=True, exist_ok=True)
        replace_with_link(src, dst)

    def upload(self, items: Sequence[UploadItem]) -> TransferResult:
        transferred = skipped = size = 0
        files: list[str] = []
        checked: set[str] = set()
        for item in items:
            if item.container not in checked:
                self._existing(item.container)
                checked.add(item.container)
            dst = self.path_of(item.container, item.blob_name)
            try:
                src_stat = item.local_path.stat()
            except FileNotFoundError:
                raise BatchflowError(f"cannot upload {item.local_path}: file not found") from None
            if _unchanged(src_stat, dst):
                skipped += 1
                continue
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                replace_with_copy(item.local_path, dst)
            except OSError as e:
                raise BatchflowError(
                    f"cannot upload {item.local_path} to {item.container}/{item.blob_name}: {e.strerror or e}"
                ) from e
            transferred += 1
            size += src_stat.st_size
            files.append(item.blob_name)
        return TransferResult(transferred=transferred, skipped=skipped, bytes=size, files=tuple(files))

    def download(
        self, container: str, prefix: str, destination: Path, *, skip: Sequence[str] = ()
    ) -> TransferResult:
        """Copy blobs under `prefix`, except those under a `skip` prefix, into `destination` (see
        `download_name` for where each lands).

        Every name is checked first, and the resolved target folder must lie inside `destination`
        (a symlinked subfolder cannot redirect a write elsewhere).
        """
        blobs = [b for b in self.list_blobs(container, prefix) if not b.startswith(tuple(skip))]
        for blob in blobs:
            check_blob_name(blob)
        destination.mkdir(parents=True, exist_ok=True)
        root = destination.resolve()
        transferred = skipped = size = 0
        files: list[str] = []
        for blob in blobs:
            rel = download_name(blob, prefix)
            check_blob_name(rel)
            target = root.joinpath(*rel.split("/"))
            if not target.parent.resolve().is_relative_to(root):
                raise BatchflowError(f"refusing to download blob {blob!r}: {target} is outside {destination}")
            src = self.path_of(container, blob)
            src_stat = src.stat()
            if _unchanged(src_stat, target):
                skipped += 1
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            replace_with_copy(src, target)
            transferred += 1
            size += src_stat.st_size
            files.append(str(target))
        return TransferResult(transferred=transferred, skipped=skipped, bytes=size, files=tuple(files))


def _unchanged(src_stat: os.stat_result, dst: Path) -> bool:
    try:
        return same_file_stat(src_stat, dst.stat())
    except FileNotFoundError:
        return False
