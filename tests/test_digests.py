"""batchflow.digests: MD5s of files, each computed once per version of the file, kept in a JSON file."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from batchflow.digests import RACY_NS, DigestCache, FileChanged, md5_of

LONG_AGO = 1_000_000_000 * 1_600_000_000  # 2020, in ns: a version hashed since is trusted at once


def _file(path: Path, data: bytes, *, mtime_ns: int | None = LONG_AGO) -> Path:
    """A file written long ago (None: now, as a file just written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 1024 * 1024, 2 * 1024 * 1024 + 17])
def test_md5_of_is_hashlib_md5(tmp_path: Path, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    path = _file(tmp_path / "f.bin", data)
    assert md5_of(path, path.stat()) == _md5(data)


def test_md5_of_a_file_changed_since_its_stat_fails(tmp_path: Path) -> None:
    path = _file(tmp_path / "f.bin", b"one")
    stat = path.stat()
    _file(path, b"two", mtime_ns=LONG_AGO + 1)  # same size, another mtime
    with pytest.raises(FileChanged) as e:
        md5_of(path, stat)
    assert str(e.value) == f"{path} changed before it could be read"


def test_a_known_version_is_answered_without_reading_the_file(tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "digests.json")
    path = _file(tmp_path / "f.bin", b"content")
    stat = path.stat()
    assert cache.known(path, stat) is None
    assert cache.md5(path, stat) == _md5(b"content")
    path.unlink()  # a lookup that tried to read it would fail now
    assert cache.md5(path, stat) == cache.known(path, stat) == _md5(b"content")


def test_another_version_is_read_again(tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "digests.json")
    path = _file(tmp_path / "f.bin", b"one")
    assert cache.md5(path, path.stat()) == _md5(b"one")
    _file(path, b"two", mtime_ns=LONG_AGO + 1)  # rewritten: same size, another mtime
    assert cache.md5(path, path.stat()) == _md5(b"two")
    replaced = _file(tmp_path / "new.bin", b"six", mtime_ns=LONG_AGO + 1)
    replaced.replace(path)  # renamed over it with the same size and mtime: another inode
    assert cache.md5(path, path.stat()) == _md5(b"six")
    assert len(cache) == 1  # one entry per path: the latest version


def test_a_digest_taken_just_after_a_write_is_not_trusted(tmp_path: Path) -> None:
    """Within a timestamp tick of the write, the file may still change without changing its key."""
    now = [0]
    cache = DigestCache(tmp_path / "digests.json", clock=lambda: now[0])
    path = _file(tmp_path / "f.bin", b"fresh", mtime_ns=LONG_AGO)
    stat = path.stat()
    now[0] = LONG_AGO + RACY_NS  # hashed right after the write
    assert cache.md5(path, stat) == _md5(b"fresh")
    assert cache.known(path, stat) is None  # recorded, not trusted
    now[0] = LONG_AGO + RACY_NS + 1  # later: the next lookup reads the file again, and trusts that
    assert cache.md5(path, stat) == _md5(b"fresh")
    assert cache.known(path, stat) == _md5(b"fresh")
    path.unlink()
    assert cache.md5(path, stat) == _md5(b"fresh")  # trusted: not read


def test_the_cache_is_saved_and_read_back(tmp_path: Path) -> None:
    file = tmp_path / "state" / "digests.json"
    cache = DigestCache(file)
    a = _file(tmp_path / "a.bin", b"a")
    b = _file(tmp_path / "b.bin", b"bb", mtime_ns=None)  # just written: not trusted yet
    cache.md5(a, a.stat())
    cache.md5(b, b.stat())
    assert not file.exists()  # nothing written before save()
    cache.save()
    st = a.stat()
    entries = json.loads(file.read_text(encoding="utf-8"))
    assert entries["format"] == "batchflow-digests" and entries["version"] == 1
    assert entries["entries"][str(a)] == [1, st.st_mtime_ns, st.st_ino, _md5(b"a"), True]
    assert entries["entries"][str(b)][3:] == [_md5(b"bb"), False]
    assert sorted(p.name for p in file.parent.iterdir()) == ["digests.json"]  # no temporary file left

    again = DigestCache(file)
    assert again.known(a, st) == _md5(b"a")
    assert again.known(b, b.stat()) is None
    mtime = file.stat().st_mtime_ns
    again.save()  # nothing changed: not written
    assert file.stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"format": "batchflow-digests", "version": 99, "entries": {}}',
        b'{"format": "other", "version": 1, "entries": {}}',
        b'{"format": "batchflow-digests", "version": 1, "entries": []}',
    ],
)
def test_a_damaged_cache_file_is_an_empty_cache(tmp_path: Path, content: bytes) -> None:
    file = _file(tmp_path / "digests.json", content)
    cache = DigestCache(file)
    path = _file(tmp_path / "f.bin", b"f")
    assert cache.known(path, path.stat()) is None
    assert cache.md5(path, path.stat()) == _md5(b"f")
    cache.save()
    assert DigestCache(file).known(path, path.stat()) == _md5(b"f")


def test_entries_that_are_not_well_formed_are_dropped(tmp_path: Path) -> None:
    path = _file(tmp_path / "f.bin", b"f")
    st = path.stat()
    good = [st.st_size, st.st_mtime_ns, st.st_ino, _md5(b"f"), True]
    bad = [
        [st.st_size, st.st_mtime_ns, st.st_ino, _md5(b"f")],
        [st.st_size, st.st_mtime_ns, st.st_ino, "0" * 31, True],
        [st.st_size, st.st_mtime_ns, st.st_ino, _md5(b"f").upper(), True],
        [True, st.st_mtime_ns, st.st_ino, _md5(b"f"), True],
        [st.st_size, str(st.st_mtime_ns), st.st_ino, _md5(b"f"), True],
        [st.st_size, st.st_mtime_ns, st.st_ino, _md5(b"f"), 1],
        "nope",
    ]
    entries = {str(path): good} | {f"/bad/{i}": value for i, value in enumerate(bad)}
    data = {"format": "batchflow-digests", "version": 1, "entries": entries}
    file = _file(tmp_path / "digests.json", json.dumps(data).encode())
    cache = DigestCache(file)
    assert len(cache) == 1
    assert cache.known(path, st) == _md5(b"f")


def test_a_cache_that_cannot_be_saved_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _file(tmp_path / "a-file", b"")
    cache = DigestCache(tmp_path / "a-file" / "digests.json")  # its folder cannot be made
    path = _file(tmp_path / "f.bin", b"f")
    with caplog.at_level(logging.WARNING, logger="batchflow.digests"):
        assert cache.md5(path, path.stat()) == _md5(b"f")
        cache.save()
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot save the digest cache {tmp_path / 'a-file' / 'digests.json'}: File exists"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "f.bin"]


def test_forget_drops_a_folders_entries(tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "digests.json")
    files = [_file(tmp_path / name, b"x") for name in ["c/a.bin", "c/d/b.bin", "cc/a.bin"]]
    for f in files:
        cache.md5(f, f.stat())
    cache.forget(tmp_path / "c")
    assert [cache.known(f, f.stat()) for f in files] == [None, None, _md5(b"x")]


def test_relative_paths_are_keyed_as_absolute_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = DigestCache(tmp_path / "digests.json")
    path = _file(tmp_path / "f.bin", b"f")
    monkeypatch.chdir(tmp_path)
    cache.md5(Path("f.bin"), path.stat())
    assert cache.known(path, path.stat()) == _md5(b"f")


def test_threads_share_one_cache(tmp_path: Path) -> None:
    file = tmp_path / "digests.json"
    cache = DigestCache(file)
    files = [_file(tmp_path / "in" / f"{i}.bin", str(i).encode() * 3000) for i in range(200)]
    failures: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for f in files[offset:] + files[:offset]:
                assert cache.md5(f, f.stat()) == _md5(f.read_bytes())
                if offset % 2:
                    cache.save()
        except BaseException as e:  # reported below
            failures.append(e)

    threads = [threading.Thread(target=work, args=(i * 25,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    cache.save()
    again = DigestCache(file)
    assert all(again.known(f, f.stat()) == _md5(f.read_bytes()) for f in files)


def test_a_warm_lookup_among_100000_takes_microseconds(tmp_path: Path) -> None:
    path = _file(tmp_path / "f.bin", b"f")
    st = path.stat()
    cache = DigestCache(tmp_path / "digests.json")
    paths = [tmp_path / "inputs" / f"{i:06d}.mp4" for i in range(100_000)]
    for p in paths:
        cache.record(p, st, _md5(b"f"), trusted=True)
    want = _md5(b"f")
    started = time.perf_counter()
    assert all(cache.md5(p, st) == want for p in paths)
    per_lookup = (time.perf_counter() - started) / len(paths)
    assert per_lookup < 20e-6  # about 0.4 us here; generous for a busy machine
