"""LocalStorage on real folders: quick-check skips, atomic copies, and blob names that try to escape."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from batchflow.backends.local.storage import LocalStorage
from batchflow.errors import BatchflowError
from batchflow.model import BlobStat, TransferResult, UploadItem
from batchflow.names import check_blob_name, download_name


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _item(path: Path, container: str, blob: str) -> UploadItem:
    return UploadItem(local_path=path, container=container, blob_name=blob, size=path.stat().st_size)


def test_containers_are_folders(storage: LocalStorage) -> None:
    assert storage.ensure_container("input") is True
    assert storage.ensure_container("input") is False
    assert (storage.root / "input").is_dir()
    assert storage.delete_container("input") is True
    assert storage.delete_container("input") is False
    assert not (storage.root / "input").exists()


def test_container_names_cannot_be_paths(storage: LocalStorage) -> None:
    with pytest.raises(BatchflowError) as e:
        storage.ensure_container("../outside")
    assert str(e.value) == "invalid container name '../outside'"


def test_upload_copies_then_skips_unchanged_then_recopies_changed(
    storage: LocalStorage, tmp_path: Path
) -> None:
    storage.ensure_container("input")
    a = _write(tmp_path / "src" / "a.txt", "aaaa")
    b = _write(tmp_path / "src" / "sub" / "b.txt", "bb")
    items = [_item(a, "input", "a.txt"), _item(b, "input", "sub/b.txt")]

    assert storage.upload(items) == TransferResult(
        transferred=2, skipped=0, bytes=6, files=("a.txt", "sub/b.txt")
    )
    assert storage.path_of("input", "sub/b.txt").read_text(encoding="utf-8") == "bb"
    assert storage.upload(items) == TransferResult(transferred=0, skipped=2, bytes=0, files=())

    # Same size, new content and mtime: the quick check sees the change.
    a.write_text("AAAA", encoding="utf-8")
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 1_000_000_000))
    assert storage.upload(items) == TransferResult(transferred=1, skipped=1, bytes=4, files=("a.txt",))
    assert storage.path_of("input", "a.txt").read_text(encoding="utf-8") == "AAAA"
    assert storage.list_blobs("input") == ["a.txt", "sub/b.txt"]


def test_upload_into_a_missing_container_fails(storage: LocalStorage, tmp_path: Path) -> None:
    a = _write(tmp_path / "a.txt", "a")
    with pytest.raises(BatchflowError) as e:
        storage.upload([_item(a, "nope", "a.txt")])
    assert str(e.value) == f"container 'nope' does not exist in {storage.root}"


def test_upload_of_a_vanished_file_fails(storage: LocalStorage, tmp_path: Path) -> None:
    storage.ensure_container("input")
    a = _write(tmp_path / "a.txt", "a")
    item = _item(a, "input", "a.txt")
    a.unlink()
    with pytest.raises(BatchflowError) as e:
        storage.upload([item])
    assert str(e.value) == f"cannot upload {a}: file not found"


def test_list_blobs_sorted_by_prefix_and_hides_partial_copies(storage: LocalStorage) -> None:
    storage.ensure_container("c")
    root = storage.root / "c"
    for name in ["b/2.txt", "a.txt", "b/1.txt", "ba.txt", "b/.batchflow-tmp-123-0"]:
        _write(root / name, name)
    assert storage.list_blobs("c") == ["a.txt", "b/1.txt", "b/2.txt", "ba.txt"]
    assert storage.list_blobs("c", "b") == ["b/1.txt", "b/2.txt", "ba.txt"]
    assert storage.list_blobs("c", "b/") == ["b/1.txt", "b/2.txt"]
    assert storage.list_blobs("c", "b/1") == ["b/1.txt"]
    assert storage.list_blobs("c", "zzz/") == []


def test_put_file_replaces_a_blob(storage: LocalStorage, tmp_path: Path) -> None:
    storage.ensure_container("out")
    storage.put_file(_write(tmp_path / "one", "1"), "out", "x/y.txt")
    storage.put_file(_write(tmp_path / "two", "2"), "out", "x/y.txt")
    assert storage.path_of("out", "x/y.txt").read_text(encoding="utf-8") == "2"
    assert storage.list_blobs("out") == ["x/y.txt"]


def test_path_of_refuses_names_that_leave_the_container(storage: LocalStorage) -> None:
    with pytest.raises(BatchflowError) as e:
        storage.path_of("c", "../other/x")
    assert str(e.value) == "unsafe blob name '../other/x': contains a '..' segment"


def test_download_copies_then_skips(storage: LocalStorage, tmp_path: Path) -> None:
    storage.ensure_container("out")
    _write(storage.root / "out" / "mp3" / "a.mp3", "a")
    _write(storage.root / "out" / "mp3" / "deep" / "b.mp3", "bb")
    _write(storage.root / "out" / "other.txt", "o")
    dest = tmp_path / "dest"

    first = storage.download("out", "mp3/", dest)
    assert first == TransferResult(
        transferred=2, skipped=0, bytes=3, files=(str(dest / "a.mp3"), str(dest / "deep" / "b.mp3"))
    )
    assert (dest / "deep" / "b.mp3").read_text(encoding="utf-8") == "bb"
    assert storage.download("out", "mp3/", dest) == TransferResult(
        transferred=0, skipped=2, bytes=0, files=()
    )

    everything = storage.download("out", "", tmp_path / "all")
    assert sorted(everything.files) == sorted(
        str(tmp_path / "all" / p) for p in ["mp3/a.mp3", "mp3/deep/b.mp3", "other.txt"]
    )


def test_download_name_drops_the_folder_part_of_the_prefix() -> None:
    assert download_name("mp3/a.mp3", "mp3/") == "a.mp3"
    assert download_name("mp3/run1-a.mp3", "mp3/run1-") == "run1-a.mp3"
    assert download_name("run1-a.mp3", "run1-") == "run1-a.mp3"
    assert download_name("a/b/c.txt", "") == "a/b/c.txt"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a\\b", "unsafe blob name 'a\\\\b': contains a backslash"),
        ("C:evil.txt", "unsafe blob name 'C:evil.txt': starts with a drive letter"),
    ],
)
def test_download_refuses_hostile_names_found_in_a_container(
    storage: LocalStorage, tmp_path: Path, name: str, message: str
) -> None:
    storage.ensure_container("out")
    _write(storage.root / "out" / "fine.txt", "fine")
    _write(storage.root / "out" / name, "evil")
    dest = tmp_path / "dest"
    with pytest.raises(BatchflowError) as e:
        storage.download("out", "", dest)
    assert str(e.value) == message
    assert not dest.exists() or list(dest.iterdir()) == []  # refused before writing anything


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../x", "unsafe blob name '../x': contains a '..' segment"),
        ("a/../../x", "unsafe blob name 'a/../../x': contains a '..' segment"),
        ("/etc/passwd", "unsafe blob name '/etc/passwd': absolute path"),
        ("C:/Windows/x", "unsafe blob name 'C:/Windows/x': starts with a drive letter"),
        ("c:x", "unsafe blob name 'c:x': starts with a drive letter"),
        ("x:y", "unsafe blob name 'x:y': starts with a drive letter"),
        ("a\\..\\x", "unsafe blob name 'a\\\\..\\\\x': contains a backslash"),
        ("a\x00b", "unsafe blob name 'a\\x00b': contains a NUL character"),
        ("", "unsafe blob name '': empty name"),
        ("a//b", "unsafe blob name 'a//b': contains an empty segment"),
        ("a/", "unsafe blob name 'a/': contains an empty segment"),
        ("./a", "unsafe blob name './a': contains a '.' segment"),
    ],
)
def test_check_blob_name_refuses(name: str, message: str) -> None:
    with pytest.raises(BatchflowError) as e:
        check_blob_name(name)
    assert str(e.value) == message


@pytest.mark.parametrize("name", ["a.txt", "a/b/c.mp3", "..a", "a..b/c", "ab:c", "x/c:d", "name with spaces"])
def test_check_blob_name_accepts(name: str) -> None:
    check_blob_name(name)


def test_download_never_follows_a_symlink_out_of_the_destination(
    storage: LocalStorage, tmp_path: Path
) -> None:
    storage.ensure_container("out")
    _write(storage.root / "out" / "sub" / "x.txt", "x")
    dest = tmp_path / "dest"
    elsewhere = tmp_path / "elsewhere"
    dest.mkdir()
    elsewhere.mkdir()
    (dest / "sub").symlink_to(elsewhere)
    with pytest.raises(BatchflowError) as e:
        storage.download("out", "", dest)
    assert str(e.value) == (
        f"refusing to download blob 'sub/x.txt': {dest.resolve() / 'sub' / 'x.txt'} is outside {dest}"
    )
    assert list(elsewhere.iterdir()) == []


# ---- stat_blobs' digest cache and copy_blobs' hard links ------------------------------------

LONG_AGO = 1_000_000_000 * 1_600_000_000  # ns: a file hashed since is trusted at once (digests.RACY_NS)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _aged(path: Path, mtime_ns: int = LONG_AGO) -> Path:
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_blob_md5s_are_kept_in_a_digest_cache_beside_the_containers(
    storage: LocalStorage, tmp_path: Path
) -> None:
    storage.ensure_container("out")
    a = _aged(_write(storage.path_of("out", "runs/r1/a.txt"), "aaaa"))
    assert storage.stat_blobs("out") == {"runs/r1/a.txt": BlobStat(4, _md5("aaaa"))}

    cache = storage.root / ".batchflow-digests.json"
    st = a.stat()
    entries = json.loads(cache.read_text(encoding="utf-8"))["entries"]
    assert entries == {str(a): [4, st.st_mtime_ns, st.st_ino, _md5("aaaa"), True]}
    assert storage.digests.known(a, st) == _md5("aaaa")  # the next stat_blobs reads no file
    assert storage.list_blobs("out") == ["runs/r1/a.txt"]
    with pytest.raises(BatchflowError) as e:
        storage.ensure_container(".batchflow-digests.json")
    assert str(e.value) == "invalid container name '.batchflow-digests.json'"

    _aged(_write(a, "AAAA"), LONG_AGO + 1)  # same size, new content and mtime: a new version
    fresh = LocalStorage(storage.root)  # another process: the cache comes from the file
    assert fresh.stat_blobs("out") == {"runs/r1/a.txt": BlobStat(4, _md5("AAAA"))}
    assert json.loads(cache.read_text(encoding="utf-8"))["entries"][str(a)][3] == _md5("AAAA")


def test_a_damaged_digest_cache_is_rebuilt(storage: LocalStorage) -> None:
    storage.ensure_container("out")
    _aged(_write(storage.path_of("out", "a.txt"), "a"))
    cache = _write(storage.root / ".batchflow-digests.json", '{"format": "batchflow-dig')
    assert storage.stat_blobs("out") == {"a.txt": BlobStat(1, _md5("a"))}
    assert len(json.loads(cache.read_text(encoding="utf-8"))["entries"]) == 1


def test_the_digest_cache_can_live_elsewhere(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage", digest_cache=tmp_path / "ws" / "digests.json")
    storage.ensure_container("out")
    _write(storage.path_of("out", "a.txt"), "a")
    assert storage.stat_blobs("out") == {"a.txt": BlobStat(1, _md5("a"))}
    assert (tmp_path / "ws" / "digests.json").is_file()
    assert sorted(p.name for p in storage.root.iterdir()) == ["out"]


def test_a_deleted_container_leaves_no_digests(storage: LocalStorage) -> None:
    for container in ["keep", "gone"]:
        storage.ensure_container(container)
        _aged(_write(storage.path_of(container, "a.txt"), "a"))
        storage.stat_blobs(container)
    storage.delete_container("gone")
    entries = json.loads((storage.root / ".batchflow-digests.json").read_text(encoding="utf-8"))["entries"]
    assert list(entries) == [str(storage.path_of("keep", "a.txt"))]


def test_copies_are_hard_links_that_inherit_the_known_digest(storage: LocalStorage) -> None:
    storage.ensure_container("out")
    src = _aged(_write(storage.path_of("out", "runs/r1/a.mp3"), "mp3 data"))
    _write(storage.path_of("out", "runs/r2/a.mp3"), "an older copy")
    storage.stat_blobs("out", "runs/r1/")
    assert storage.copy_blobs("out", [("runs/r1/a.mp3", "runs/r2/a.mp3")]) == TransferResult(
        transferred=1, files=("runs/r2/a.mp3",)
    )
    dst = storage.path_of("out", "runs/r2/a.mp3")
    assert (dst.stat().st_ino, dst.stat().st_nlink) == (src.stat().st_ino, 2)  # no space taken
    assert storage.digests.known(dst, dst.stat()) == _md5("mp3 data")  # known without reading it
    assert sorted(p.name for p in dst.parent.iterdir()) == ["a.mp3"]  # no temporary file left


def test_without_md5s_a_file_is_read_only_if_written_in_the_current_timestamp_tick(
    storage: LocalStorage,
) -> None:
    """stat_blobs(md5=False), what a run's ledger records: an older file has its version and is not
    read; one as new as a file made now could still be rewritten at the same size unseen (the same
    mtime), so it is read, and has an MD5 and no version."""
    storage.ensure_container("out")
    old = _aged(_write(storage.path_of("out", "runs/r1/old.txt"), "old"))
    new = _write(storage.path_of("out", "runs/r1/new.txt"), "new")
    ahead = new.stat().st_mtime_ns + 10**10
    os.utime(new, ns=(ahead, ahead))  # (as new as now on any clock: this tick, whatever its length)
    found = storage.stat_blobs("out", "runs/r1/", md5=False)
    st = old.stat()
    assert found == {"runs/r1/new.txt": BlobStat(3, _md5("new")), "runs/r1/old.txt": BlobStat(3, None)}
    assert (found["runs/r1/old.txt"].version, found["runs/r1/new.txt"].version) == (
        f"{st.st_mtime_ns}:{st.st_ino}",
        None,
    )
    assert storage.digests.known(old, st) is None  # never read
    assert storage.list_blobs("out") == ["runs/r1/new.txt", "runs/r1/old.txt"]  # no marker left
    assert sorted(p.name for p in storage.path_of("out", "runs/r1").iterdir()) == ["new.txt", "old.txt"]
    # With MD5s asked, every file is read, as before; the versions are the same.
    both = storage.stat_blobs("out", "runs/r1/", md5=True)
    assert both == {"runs/r1/new.txt": BlobStat(3, _md5("new")), "runs/r1/old.txt": BlobStat(3, _md5("old"))}
    assert [b.version for b in both.values()] == [None, f"{st.st_mtime_ns}:{st.st_ino}"]
