"""Files placed atomically: a file is written under a temporary name beside its target, then renamed
over it, so a crash never leaves half a file under a real name. Shared by the folder storage
(local/storage.py) and the node-side transfers (blob_urls.py), so neither backend imports the other.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import shutil
from pathlib import Path

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
