"""MD5 digests of local files, each computed once per version of the file.

A version of a file is its (path, size, st_mtime_ns, st_ino): writing a file changes its
modification time, replacing it (an atomic rename, a new download) changes its inode. A hard link
changes neither, only the ctime, which is why the ctime is not part of the key.

`DigestCache` keeps the digests in a JSON file, loaded once (on first use) and saved atomically
(a temporary file renamed over it). A missing, unreadable or damaged file is an empty cache; a
failed save is logged and tried again at the next save. The caller passes each file's stat, so a
warm lookup costs a dict lookup and a tuple comparison: no I/O.

Racy entries (git's "racily clean" problem): a file rewritten with the same size within the same
timestamp tick as the version just hashed keeps its key. So a digest computed less than RACY_NS
after the file's modification time is recorded but not trusted: lookups hash the file again until
one comes RACY_NS after the write, whose digest is trusted from then on.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from batchflow.errors import BatchflowError

log = logging.getLogger(__name__)

FORMAT = "batchflow-digests"
VERSION = 1
# Wider than any file system's timestamp tick (FAT's is 2 s; ext4's a few ms), with room for a
# network file system's clock being a little off ours.
RACY_NS = 2_000_000_000
_SMALL = 64 * 1024
_CHUNK = 1024 * 1024
_tmp_counter = itertools.count()
_MD5_HEX = re.compile(r"[0-9a-f]{32}")

Key = tuple[int, int, int]  # (size, mtime_ns, inode)
# size, mtime_ns, inode, md5 hex, trusted
_Entry = tuple[int, int, int, str, bool]


class FileStat(Protocol):
    """What this module reads of a stat: an os.stat_result, or a FileVersion."""

    @property
    def st_size(self) -> int: ...
    @property
    def st_mtime_ns(self) -> int: ...
    @property
    def st_ino(self) -> int: ...


class FileVersion(NamedTuple):
    """A version of a file as a stat saw it earlier (input discovery's), without stat'ing it again."""

    st_size: int
    st_mtime_ns: int
    st_ino: int


class FileChanged(BatchflowError):
    """The file changed before or while it was read: the digest is of no one version of it."""


def version_key(stat: FileStat) -> Key:
    """What tells one version of a file from another (with its path)."""
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino)


def md5_of(path: Path, stat: FileStat) -> str:
    """The MD5 (32 lowercase hex digits) of the version of `path` that `stat` describes.

    Raises FileChanged when the file read is not that version (changed since `stat`, or while it
    was read: stat again and retry), OSError when it cannot be read."""
    want = version_key(stat)
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb", buffering=0) as f:
        if version_key(os.fstat(f.fileno())) != want:
            raise FileChanged(f"{path} changed before it could be read")
        if stat.st_size <= _SMALL:  # most inputs: one read, no 1 MiB buffer to allocate
            digest.update(f.read(_SMALL + 1))
        else:
            buffer = bytearray(_CHUNK)
            view = memoryview(buffer)
            while n := f.readinto(buffer):
                digest.update(view[:n])
        # The open file is the version read even if the path was replaced since: only a write
        # into this very file changes what fstat says.
        if version_key(os.fstat(f.fileno())) != want:
            raise FileChanged(f"{path} changed while it was read")
    return digest.hexdigest()


class DigestCache:
    """MD5 digests of files by version, kept in `file` across runs. Thread-safe.

    Paths are keys as given (relative ones are made absolute): pass each file by one name."""

    def __init__(self, file: Path, *, clock: Callable[[], int] = time.time_ns) -> None:
        """`clock`: the time in ns since the epoch, on the clock file modification times use."""
        self.file = file
        self._clock = clock
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._entries: dict[str, _Entry] | None = None  # None until loaded
        self._dirty = False

    # ---- lookups --------------------------------------------------------------------------

    def known(self, path: Path | str, stat: FileStat) -> str | None:
        """The trusted MD5 of this version of `path`, or None. No I/O but loading the cache once.
        (No lock: a dict lookup is atomic, and entries are replaced whole.) `path` may be given as
        its str (what str(path) is), sparing a caller that has one a Path for each of its files."""
        entries = self._entries if self._entries is not None else self._load()
        entry = entries.get(_name(path))
        if (
            entry is not None
            and entry[4]
            and entry[0] == stat.st_size
            and entry[1] == stat.st_mtime_ns
            and entry[2] == stat.st_ino
        ):
            return entry[3]
        return None

    def md5(self, path: Path, stat: FileStat) -> str:
        """The MD5 of the version of `path` that `stat` describes: from the cache, else read and
        recorded. Raises FileChanged (stat again and retry) or OSError, as md5_of."""
        md5 = self.known(path, stat)
        if md5 is not None:
            return md5
        started = self._clock()
        md5 = md5_of(path, stat)
        self.record(path, stat, md5, trusted=stat.st_mtime_ns < started - RACY_NS)
        return md5

    def record(self, path: Path, stat: FileStat, md5: str, *, trusted: bool) -> None:
        """Record `md5` as the digest of this version of `path` (e.g. a new hard link to a file
        whose digest is known). `trusted`: see the module's note on racy entries."""
        entry: _Entry = (stat.st_size, stat.st_mtime_ns, stat.st_ino, md5, trusted)
        name = _name(path)
        entries = self._load()
        with self._lock:
            if entries.get(name) != entry:
                entries[name] = entry
                self._dirty = True

    def forget(self, folder: Path) -> None:
        """Drop the entries of every file under `folder` (a deleted folder)."""
        head = _name(folder).rstrip("/") + "/"
        entries = self._load()
        with self._lock:
            gone = [name for name in entries if name.startswith(head)]
            for name in gone:
                del entries[name]
            self._dirty = self._dirty or bool(gone)

    def __len__(self) -> int:
        return len(self._load())

    # ---- the file -------------------------------------------------------------------------

    def _load(self) -> dict[str, _Entry]:
        with self._lock:
            if self._entries is None:
                self._entries = _read(self.file)
            return self._entries

    def save(self) -> None:
        """Write the cache to its file atomically, if anything changed since it was read or saved.
        A failure is logged, not raised (a cache is never worth a failed run)."""
        with self._save_lock:
            with self._lock:
                if not self._dirty or self._entries is None:
                    return
                snapshot = dict(self._entries)
                self._dirty = False
            data = {
                "format": FORMAT,
                "version": VERSION,
                "entries": {name: list(entry) for name, entry in snapshot.items()},
            }
            tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}-{next(_tmp_counter)}.tmp")
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
                tmp.replace(self.file)
            except OSError as e:
                log.warning("cannot save the digest cache %s: %s", self.file, e.strerror or e)
                with self._lock:
                    self._dirty = True
                with contextlib.suppress(OSError):  # a partial temporary file, if one was made
                    tmp.unlink(missing_ok=True)


def _name(path: Path | str) -> str:
    name = str(path)  # a Path keeps its str once made
    return name if name.startswith("/") else str(Path(name).absolute())


def _read(file: Path) -> dict[str, _Entry]:
    """The entries in `file`; {} for a missing, unreadable or damaged file, and without any entry
    that is not well formed."""
    try:
        data = json.loads(_text_of(file))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        log.warning("ignoring the digest cache %s: %s", file, e)
        return {}
    if not (
        isinstance(data, dict)
        and data.get("format") == FORMAT
        and data.get("version") == VERSION
        and isinstance(data.get("entries"), dict)
    ):
        log.warning("ignoring the digest cache %s: not a version %d digest cache", file, VERSION)
        return {}
    # Each entry made a tuple in place (no second dict of 100,000), those not well formed dropped.
    entries: dict[str, Any] = data["entries"]
    damaged = []
    md5_hex = _MD5_HEX.fullmatch
    for name, value in entries.items():  # (100,000 of them: no generator, no call but one)
        if type(value) is list and len(value) == 5:  # (json.loads makes no subclass of list or str)
            size, mtime_ns, inode, md5, trusted = value
            if (
                type(size) is int
                and type(mtime_ns) is int
                and type(inode) is int
                and type(md5) is str
                and type(trusted) is bool
                and md5_hex(md5) is not None
            ):
                entries[name] = (size, mtime_ns, inode, md5, trusted)
                continue
        damaged.append(name)
    for name in damaged:
        del entries[name]
    return entries


def _text_of(file: Path) -> str:
    """What json.loads(file.read_bytes()) decodes the bytes to, without holding the bytes while
    it parses: a cache of 100,000 files is 16 MB, as much again as text."""
    raw = file.read_bytes()
    return raw.decode(json.detect_encoding(raw), "surrogatepass")
