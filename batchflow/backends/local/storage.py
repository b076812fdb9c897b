"""Storage in a folder: containers are folders `root/<container>/`, blobs are files at their names.

Copies are only made when needed (rsync's quick check: same size and mtime_ns = unchanged),
and always land atomically: a file is written under a temporary name in the target folder,
then renamed over the real one, so a crash never leaves half a file under a blob's name.

Blob names come from outside (other tools may fill a container), so every name is checked
before it becomes a path: `check_blob_name` refuses anything that could leave the container
or a download folder.

Blob MD5s (stat_blobs) are computed from the files, once per version of a file, and only when asked
(a run's ledger records each output's version instead, so a run never reads its outputs): a DigestCache
keeps them in `<root>/.batchflow-digests.json`, beside the containers (a name starting with '.' is
never a container). Copies (copy_blobs) are hard links, which cost no space.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from stat import S_ISREG

from batchflow.backends.files import (
    TMP_PREFIX,
    SourceChanged,
    fs_now,
    replace_with_copy,
    replace_with_link,
    same_file_stat,
)
from batchflow.digests import DigestCache, FileChanged, version_key
from batchflow.errors import BatchflowError
from batchflow.model import CHANGED_SINCE_PLAN, BlobStat, TransferResult, UploadItem
from batchflow.names import blob_name_problem, check_blob_name, check_copies, download_name

DIGEST_CACHE = ".batchflow-digests.json"
# Files hashed at once by stat_blobs (hashlib releases the GIL while it hashes).
_HASHERS = min(8, os.cpu_count() or 1)
_READ_ATTEMPTS = 3  # reads of a file that keeps changing while it is hashed


class LocalStorage:
    """The Storage protocol over a folder. Not a cache: the folder is the storage."""

    def __init__(self, root: Path, *, digest_cache: Path | None = None) -> None:
        """`digest_cache`: where the blobs' MD5s are kept (default `<root>/.batchflow-digests.json`);
        read on first use."""
        self.root = root.absolute()
        self.digests = DigestCache(digest_cache or self.root / DIGEST_CACHE)
        self._resolved_containers: dict[str, Path] = {}

    # ---- containers -----------------------------------------------------------------------

    def container_path(self, name: str) -> Path:
        # Names starting with '.' are batchflow's own files beside the containers (the digest cache).
        if not name or "/" in name or name.startswith(".") or blob_name_problem(name) is not None:
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
        self._resolved_containers.pop(name, None)
        self.digests.forget(path)
        self.digests.save()
        return True

    def delete_blobs(self, container: str, names: Sequence[str]) -> TransferResult:
        """Unlink each blob's file, then the folders that held only them."""
        root = self._existing(container)
        deleted: list[str] = []
        skipped = 0
        folders: set[Path] = set()
        for name in names:
            path = self.path_of(container, name)
            try:
                path.unlink()
            except FileNotFoundError:
                skipped += 1
                continue
            deleted.append(name)
            folders.add(path.parent)
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            while folder != root and folder.is_relative_to(root):
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    break
                folder = folder.parent
        return TransferResult(transferred=len(deleted), skipped=skipped, files=tuple(deleted))

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
        """A file:// URL: the local compute copies the file into the task working dir. The container's
        folder is resolved (symlinks and all) once, not for each of its blobs: a blob's name cannot
        leave it (check_blob_name)."""
        check_blob_name(blob)
        return self._resolved(container).joinpath(*blob.split("/")).as_uri()

    def container_url(self, container: str) -> str:
        return self._resolved(container).as_uri()

    def _resolved(self, container: str) -> Path:
        found = self._resolved_containers.get(container)
        if found is None:
            found = self._resolved_containers[container] = self.container_path(container).resolve()
        return found

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

    def stat_blobs(self, container: str, prefix: str = "", *, md5: bool = True) -> dict[str, BlobStat]:
        """Size, MD5 and version of every blob under `prefix`; an MD5 is read from the file only the
        first time this version of the file is seen (and again once if it was written just before:
        see batchflow.digests on racy entries). `md5=False`: an MD5 not known is None, and only the
        files written in the file system's current timestamp tick are read (a version alone cannot
        tell them from a rewrite of the same size in that tick: they have an MD5 and no version)."""
        base = self._existing(container)
        now = fs_now(base)  # (before the stats: see fs_now)
        found: dict[str, BlobStat | None] = {}
        unknown: list[tuple[str, Path, os.stat_result]] = []
        # Each file by its name as a str, what base.joinpath(*name.split("/")) would name (a listed
        # name has no empty, '.' or '..' part): a Path for each of 100,000 blobs was half the time.
        head = str(base) + "/"
        known = self.digests.known
        for name in self.list_blobs(container, prefix):
            path = head + name
            try:
                stat = os.stat(path)  # noqa: PTH116 (a str: see above)
            except FileNotFoundError:
                continue  # deleted since the listing
            digest = known(path, stat)
            racy = now is None or stat.st_mtime_ns >= now
            if digest is None and (md5 or racy):
                found[name] = None
                unknown.append((name, base.joinpath(*name.split("/")), stat))
            else:
                found[name] = BlobStat(stat.st_size, digest, None if racy else _version(stat))
        if unknown:
            job = functools.partial(self._hash, now=now)
            try:
                if len(unknown) == 1:
                    hashed = [job(*unknown[0])]
                else:
                    with ThreadPoolExecutor(_HASHERS, thread_name_prefix="batchflow-md5") as pool:
                        hashed = list(pool.map(lambda u: job(*u), unknown))
            finally:
                self.digests.save()  # what was hashed stays hashed, even if a file failed
            found.update(hashed)
        return {name: stat for name, stat in found.items() if stat is not None}

    def _hash(
        self, name: str, path: Path, stat: os.stat_result, *, now: int | None
    ) -> tuple[str, BlobStat | None]:
        """(name, its BlobStat), None for a file deleted meanwhile. A file that changes while it is
        read is stat'ed and read again. `now`: fs_now before the first stat (None: no version)."""
        for _ in range(_READ_ATTEMPTS):
            try:
                digest = self.digests.md5(path, stat)
                racy = now is None or stat.st_mtime_ns >= now
                return name, BlobStat(stat.st_size, digest, None if racy else _version(stat))
            except FileChanged:
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    return name, None
            except FileNotFoundError:
                return name, None
            except OSError as e:
                raise BatchflowError(f"cannot read blob {name!r} ({path}): {e.strerror or e}") from e
        raise BatchflowError(f"cannot read blob {name!r} ({path}): it keeps changing while it is read")

    def copy_blobs(self, container: str, pairs: Sequence[tuple[str, str]]) -> TransferResult:
        """Each copy is a hard link (a copy where links are impossible), replacing `dst` atomically.
        A destination whose source digest is known gets the same digest, without reading it."""
        check_copies(pairs)
        base = self._existing(container)
        missing: list[str] = []
        files: list[str] = []
        try:
            for src, dst in pairs:
                if self._copy_one(base, src, dst):
                    files.append(dst)
                else:
                    missing.append(src)
        finally:
            self.digests.save()
        if missing:
            shown = ", ".join(repr(m) for m in missing[:10]) + (
                f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            )
            raise BatchflowError(
                f"cannot copy {len(missing)} of {len(pairs)} blobs in container {container!r} of "
                f"{self.root}: source blob not found: {shown} ({len(files)} copied)"
            )
        return TransferResult(transferred=len(files), files=tuple(files))

    def _copy_one(self, base: Path, src: str, dst: str) -> bool:
        """Link blob `src` at `dst`. False if there is no blob `src`."""
        src_path = base.joinpath(*src.split("/"))
        dst_path = base.joinpath(*dst.split("/"))
        try:
            src_stat = src_path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not S_ISREG(src_stat.st_mode):  # a folder: no blob of that name
            return False
        try:
            dst_path.parent.mkdir(parents=True, exist_ok=True)
            replace_with_link(src_path, dst_path)
            dst_stat = dst_path.stat()
        except OSError as e:
            raise BatchflowError(f"cannot copy blob {src!r} to {dst!r} in {base}: {e.strerror or e}") from e
        md5 = self.digests.known(src_path, src_stat)
        if md5 is not None and dst_stat.st_ino == src_stat.st_ino:  # linked, not copied
            self.digests.record(dst_path, dst_stat, md5, trusted=True)
        return True

    def close(self) -> None:
        """Save the digest cache (the Storage protocol's close)."""
        self.digests.save()

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
        folders: set[Path] = set()  # made (or found) already: one mkdir per folder, not per file
        for item in items:
            if item.container not in checked:
                self._existing(item.container)
                checked.add(item.container)
            dst = self.path_of(item.container, item.blob_name)
            try:
                src_stat = item.local_path.stat()
            except FileNotFoundError:
                raise BatchflowError(f"cannot upload {item.local_path}: file not found") from None
            if item.changed_since_seen(src_stat.st_size, src_stat.st_mtime_ns, src_stat.st_ino):
                raise BatchflowError(f"cannot upload {item.local_path}: {CHANGED_SINCE_PLAN}")
            if _unchanged(src_stat, dst):
                skipped += 1
                continue
            try:
                if dst.parent not in folders:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    folders.add(dst.parent)
                # The version just checked, copied whole: not one that a write during the copy tore.
                replace_with_copy(item.local_path, dst, expect=version_key(src_stat))
            except SourceChanged:
                raise BatchflowError(f"cannot upload {item.local_path}: {CHANGED_SINCE_PLAN}") from None
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


def _version(stat: os.stat_result) -> str:
    """BlobStat.version: what a later run compares to know a stored file is the one recorded, as
    the digest cache does (with the size, compared on its own); a copy of the folder elsewhere has
    other inodes, so its files are hashed again."""
    return f"{stat.st_mtime_ns}:{stat.st_ino}"
