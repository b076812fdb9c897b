"""Files placed atomically: a file is written under a temporary name beside its target, then renamed
over it (a hard link under a new name is made at once: it appears whole), so a crash never leaves
half a file under a real name; clone_new, for folders nobody reads yet, writes in place. Shared by
the folder storage (local/storage.py) and the node-side transfers (blob_urls.py), so neither
backend imports the other.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import shutil
import stat
import sys
from pathlib import Path

from batchflow.digests import version_key

# In-progress copies are hidden under this prefix; list_blobs never shows them.
TMP_PREFIX = ".batchflow-tmp-"
_tmp_counter = itertools.count()
# Hard links are not always possible: another filesystem, a filesystem without them, too many links.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})
_FICLONE = 0x40049409  # Linux's ioctl to share a file's blocks with a new file (fcntl.FICLONE in 3.12+)
_NO_REFLINK: set[tuple[int, int]] = set()  # (source, target) filesystems without FICLONE between them
_SENDFILE = sys.platform.startswith("linux")  # sendfile(2) between two files: Linux only


def same_file_stat(a: os.stat_result, b: os.stat_result) -> bool:
    """rsync's quick check: same size and same modification time."""
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


class SourceChanged(OSError):
    """The file being copied was not the version expected, or changed while it was copied: the copy
    would be of no one version of it (nothing was put in place)."""


def fs_now(folder: Path) -> int | None:
    """The time now as the file system of `folder` stamps files (its clock, its timestamp tick): the
    mtime_ns of a file made there, and removed. None where none can be made (a read-only folder).
    A file stat'ed after this call whose mtime is older was last written in an earlier tick, so any
    later write changes its mtime; one as new may still be rewritten unseen (git's "racily clean")."""
    marker = folder / f"{TMP_PREFIX}now-{os.getpid()}-{next(_tmp_counter)}"
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            marker.unlink()


def replace_with_copy(src: Path, dst: Path, *, expect: tuple[int, int, int] | None = None) -> None:
    """Copy `src` (content, mode and times: what rsync's quick check compares) to `dst` atomically:
    temp file beside `dst`, then os.replace. A reflink where the filesystem has them, as
    replace_with_clone. (Extended attributes are not copied: a blob has none.)

    Raises SourceChanged, leaving `dst` as it was, if `src` changes while it is copied, or if the
    file opened is not the version `expect` names (its st_size, st_mtime_ns, st_ino)."""
    tmp = dst.with_name(f"{TMP_PREFIX}{os.getpid()}-{next(_tmp_counter)}")
    try:
        st = _clone(src, tmp, expect)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        tmp.replace(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_with_clone(src: Path, dst: Path) -> None:
    """Make `dst` a file of its own with `src`'s content and mode, atomically: a reflink (the
    filesystem shares the blocks until either file is written: btrfs, XFS, bcachefs) where the
    filesystem supports it, else a copy. Never a hard link: what a task does to its input files
    (append, `gzip -k`, which refuses linked files) must not reach the stored blob."""
    tmp = dst.with_name(f"{TMP_PREFIX}{os.getpid()}-{next(_tmp_counter)}")
    try:
        clone_new(src, tmp)
        tmp.replace(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def clone_new(src: Path, dst: Path) -> int:
    """Create `dst`, which must not exist (FileExistsError), as replace_with_clone does, but in place:
    for a folder nobody reads yet (a task's fresh wd/), where a temporary name and a rename buy
    nothing. Returns the size copied. After an error `dst` may be there, partly written.

    A pair of filesystems that refused a reflink once (EOPNOTSUPP, EXDEV, EINVAL, ENOTTY...) is not
    asked again; a real problem (no space, no permission) then surfaces from the copy."""
    return _clone(src, dst).st_size


def _clone(src: Path, dst: Path, expect: tuple[int, int, int] | None = None) -> os.stat_result:
    """clone_new; returns `src`'s stat (as it was opened, and still after the copy: else
    SourceChanged, as for a version other than `expect`)."""
    fd_in = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd_in)
        if expect is not None and version_key(st) != expect:
            raise SourceChanged(errno.ESTALE, "it changed before it could be copied", str(src))
        mode = stat.S_IMODE(st.st_mode)
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode & 0o777)
        try:
            out = os.fstat(fd_out)
            devices = (st.st_dev, out.st_dev)
            try:
                if devices in _NO_REFLINK or not _ficlone(fd_out, fd_in, devices):
                    _copy_fd(fd_in, fd_out, st.st_size)
            except OSError as e:  # name the files, as shutil.copyfile does ("No space left": where)
                e.filename, e.filename2 = str(src), str(dst)
                raise
            if stat.S_IMODE(out.st_mode) != mode:  # the umask took bits away (or mode has setuid...)
                os.fchmod(fd_out, mode)
        finally:
            os.close(fd_out)
        # Only a write into this very file changes what fstat says (a rename over its name does not).
        if version_key(os.fstat(fd_in)) != version_key(st):
            raise SourceChanged(errno.ESTALE, "it changed while it was copied", str(src))
    finally:
        os.close(fd_in)
    return st


def _ficlone(fd_out: int, fd_in: int, devices: tuple[int, int]) -> bool:
    try:
        fcntl.ioctl(fd_out, _FICLONE, fd_in)
    except OSError:
        _NO_REFLINK.add(devices)
        return False
    return True


def _copy_fd(fd_in: int, fd_out: int, size: int) -> None:
    """The first `size` bytes of fd_in (its size when opened) into fd_out: inside the kernel on Linux
    (sendfile, as shutil.copyfile does), elsewhere through a buffer."""
    if _SENDFILE:
        offset = 0
        while offset < size:
            sent = os.sendfile(fd_out, fd_in, offset, size - offset)
            if sent == 0:  # it shrank meanwhile
                return
            offset += sent
        return
    left = size
    while left > 0 and (chunk := os.read(fd_in, min(left, 1 << 20))):
        left -= len(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd_out, view) :]


def replace_with_link(src: Path, dst: Path) -> None:
    """Make `dst` a hard link to `src` atomically (a copy where links are impossible). A new name
    is linked at once (a link appears whole); an existing one is replaced through a temporary name."""
    try:
        if _link(src, dst):
            return
    except FileExistsError:
        tmp = dst.with_name(f"{TMP_PREFIX}{os.getpid()}-{next(_tmp_counter)}")
        if _link(src, tmp):
            try:
                tmp.replace(dst)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return
    replace_with_copy(src, dst)


def _link(src: Path, dst: Path) -> bool:
    """os.link, False where links are impossible (_NO_LINK)."""
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
        return False
    return True


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` at a new path `dst` (which must not exist), copying where links are impossible."""
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
        shutil.copy2(src, dst)
