"""resume's check that an earlier task's outputs are still stored as recorded, on real folder storage:
by version where the ledger has one (no file read), else by MD5, reading only the outputs checked."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from batchflow.backends.local.storage import LocalStorage
from batchflow.ledger import Entry, Parts, StoredOutput
from batchflow.resume import _Stored

LONG_AGO = 1_600_000_000 * 10**9
PARTS = Parts("i" * 64, "c" * 64, "o" * 64, "p" * 64)


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    s = LocalStorage(tmp_path / "storage")
    s.ensure_container("out")
    return s


def _stored(storage: LocalStorage, name: str, text: str) -> Path:
    path = storage.path_of("out", f"runs/r1/{name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(LONG_AGO, LONG_AGO))
    return path


def _entry(*outputs: StoredOutput) -> Entry:
    return Entry("k", "t", "r1", True, PARTS, outputs, 1.0)


def _as_recorded(
    storage: LocalStorage, name: str, *, version: bool = True, md5: bool = False
) -> StoredOutput:
    path = storage.path_of("out", f"runs/r1/{name}")
    st = path.stat()
    return StoredOutput(
        "out",
        f"runs/r1/{name}",
        st.st_size,
        hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest() if md5 else None,
        f"{st.st_mtime_ns}:{st.st_ino}" if version else None,
    )


def _read(storage: LocalStorage, *names: str) -> list[str]:
    """Which of `names` the storage has hashed (its digest cache knows)."""
    return [n for n in names if storage.digests.known(p := storage.path_of("out", f"runs/r1/{n}"), p.stat())]


def test_the_very_file_recorded_is_held_without_reading_it(storage: LocalStorage) -> None:
    _stored(storage, "a.out", "AAA")
    assert _Stored(storage).holds(_entry(_as_recorded(storage, "a.out")))
    assert _read(storage, "a.out") == []


def test_a_file_written_since_with_no_md5_recorded_is_not_held(storage: LocalStorage) -> None:
    path = _stored(storage, "a.out", "AAA")
    recorded = _as_recorded(storage, "a.out")
    path.write_text("BBB", encoding="utf-8")  # the same size, a new mtime
    assert not _Stored(storage).holds(_entry(recorded))
    replaced = _stored(storage, "b.out", "BBB")
    recorded = _as_recorded(storage, "b.out")
    other = replaced.with_name("other")
    other.write_text("BBB", encoding="utf-8")
    os.utime(other, ns=(LONG_AGO, LONG_AGO))
    other.replace(replaced)  # the same size and mtime, another inode
    assert not _Stored(storage).holds(_entry(recorded))


def test_an_md5_recorded_is_checked_reading_only_the_outputs_checked(storage: LocalStorage) -> None:
    _stored(storage, "a.out", "AAA")
    _stored(storage, "b.out", "BBB")
    _stored(storage, "unrelated.out", "x" * 1000)
    recorded = _as_recorded(
        storage, "a.out", version=False, md5=True
    )  # (written in the tick it was recorded)
    assert _Stored(storage).holds(_entry(recorded))
    assert _read(storage, "a.out", "b.out", "unrelated.out") == ["a.out"]

    touched = _as_recorded(storage, "b.out", md5=True)
    path = storage.path_of("out", "runs/r1/b.out")
    os.utime(path, ns=(LONG_AGO + 10**9, LONG_AGO + 10**9))  # another version, the same content
    assert _Stored(storage).holds(_entry(touched))
    path.write_text("CCC", encoding="utf-8")  # and now other content of the same size
    assert not _Stored(storage).holds(_entry(touched))
    assert _read(storage, "unrelated.out") == []
