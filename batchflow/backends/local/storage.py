"""Storage in a folder: containers are folders `root/<container>/`, blobs are files at their names.

Copies are only made when needed (rsync's quick check: same size and mtime_ns = unchanged),
and always land atomically: a file is written under a temporary name in the target folder,
then renamed over the real one, so a crash never leaves half a file under a blob's name.

Blob names come from outside (other tools may fill a container), so every name is checked
before it becomes a path: `check_blob_name` refuses anything that could leave the container
or a download folder.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from batchflow.errors import BatchflowError
from batchflow.model import TransferResult, UploadItem
from batchflow.names import blob_name_problem, check_blob_name, download_name

# In-progress copies are hidden under this prefix; list_blobs never shows them.
TMP_PREFIX = ".batchflow-tmp-"
_tmp_counter = itertools.count()
# Hard links are not always possible: another filesystem, a filesystem without them, too many links.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})
_FICLONE = 0x40049409  # Linux's ioctl to share a file's blocks with a new file (fcntl.FICLONE in 3.12+)
_NO_REFLINK: set[tuple[int, int]] = set()  # (source, target) filesystems without FICLONE between them


def same_file_stat(a: os.stat_result, b: os.stat_result) -> bool:
    """rsync's quick check: same size and same modification time."""
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


def replace_with_copy(src: Path, dst: Path) -> None:
    """Copy `src` (with its mtime) to `dst` atomically: temp file beside `dst`, then os.replace."""
    tmp = dst.with_name(f"{TMP_PREFIX}{os.getpid()}-{next(_tmp_counter)}")
    try:
        shutil.copy2(src, tmp)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def replace_with_clone(src: Path, dst: Path) -> None:
    """Make `dst` a file of its own with `src`'s content and mode, atomically: a reflink (the
    filesystem shares the blocks until either file is written: btrfs, XFS, bcachefs) where the
    filesystem supports it, else a copy. Never a hard link: what a task does to its input files
    (append, `gzip -k`, which refuses linked files) must not reach the stored blob."""
    tmp = dst.with_name(f"{TMP_PREFIX}{os.getpid()}-{next(_tmp_counter)}")
    try:
        if not _reflink(src, tmp):
            shutil.copyfile(src, tmp)
        shutil.copymode(src, tmp)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def _reflink(src: Path, dst: Path) -> bool:
    """Create `dst` as a reflink of `src` (Linux FICLONE). False where the filesystem has none
    (EOPNOTSUPP, EXDEV, EINVAL, ENOTTY...): `dst` is then absent or empty, for the caller's copy to
    overwrite, and a real problem (no space, no permission) surfaces from that copy. A pair of
    filesystems that refused once is not asked again (one open and ioctl less per input)."""
    devices = (src.stat().st_dev, dst.parent.stat().st_dev)
    if devices in _NO_REFLINK:
        return False
    with open(src, "rb") as source, open(dst, "wb") as target:
        try:
            fcntl.ioctl(target.fileno(), _FICLONE, source.fileno())
        except OSError:
            _NO_REFLINK.add(devices)
            return False
    return True


def replace_with_link(src: Path, dst: Path) -> None:
    """Make `dst` a hard link to `src` atomically (a copy where links are impossible)."""
    tmp = dst.with_name(f"{TMP_PREFIX}{os.getpid()}-{next(_tmp_counter)}")
    try:
        os.link(src, tmp)
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
        replace_with_copy(src, dst)
        return
    try:
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` at a new path `dst` (which must not exist), copying where links are impossible."""
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
        shutil.copy2(src, dst)


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
