"""The file placement helpers the folder storage and the local nodes share (backends/files.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchflow.backends import files
from batchflow.backends.files import (
    TMP_PREFIX,
    SourceChanged,
    clone_new,
    replace_with_copy,
    replace_with_link,
)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX))


@pytest.mark.parametrize("mode", [0o644, 0o755, 0o600, 0o640])
def test_clone_new_makes_a_file_of_its_own_with_its_mode_whatever_the_umask(
    tmp_path: Path, mode: int
) -> None:
    src = tmp_path / "src.sh"
    src.write_bytes(b"#!/bin/sh\necho hi\n")
    src.chmod(mode)
    old = os.umask(0o077)
    try:
        assert clone_new(src, tmp_path / "dst.sh") == 18
    finally:
        os.umask(old)
    dst = tmp_path / "dst.sh"
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_mode & 0o7777 == mode
    assert not dst.samefile(src)
    dst.write_bytes(b"changed")  # the task's own: the source stays as it was
    assert src.read_bytes() == b"#!/bin/sh\necho hi\n"


def test_clone_new_refuses_a_name_that_exists(tmp_path: Path) -> None:
    (tmp_path / "src").write_text("new", encoding="utf-8")
    (tmp_path / "dst").write_text("old", encoding="utf-8")
    with pytest.raises(FileExistsError):
        clone_new(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst").read_text(encoding="utf-8") == "old"


def test_replace_with_copy_keeps_content_mode_and_times_and_replaces(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"x" * 300_000)
    src.chmod(0o750)
    os.utime(src, ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    dst.write_text("old", encoding="utf-8")

    replace_with_copy(src, dst)

    assert dst.read_bytes() == src.read_bytes()
    st = dst.stat()
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o750, 1_700_000_000_987_654_321)
    assert not dst.samefile(src)
    assert leftovers(tmp_path) == []


def test_replace_with_link_links_a_new_name_and_replaces_an_old_one(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_text("logged", encoding="utf-8")
    replace_with_link(src, tmp_path / "new")
    assert (tmp_path / "new").samefile(src)

    (tmp_path / "old").write_text("before", encoding="utf-8")
    replace_with_link(src, tmp_path / "old")
    assert (tmp_path / "old").samefile(src)
    assert leftovers(tmp_path) == []


def test_replace_with_copy_refuses_a_file_other_than_the_version_expected(tmp_path: Path) -> None:
    """`expect` names the version a caller checked (size, mtime_ns, inode); a file since renamed over
    that name (a new inode) is refused and the destination left as it was."""
    src = tmp_path / "src.txt"
    src.write_bytes(b"checked")
    st = src.stat()
    (tmp_path / "new.txt").write_bytes(b"another")
    (tmp_path / "new.txt").replace(src)
    dst = tmp_path / "dst.txt"
    dst.write_bytes(b"before")
    with pytest.raises(SourceChanged, match="changed before it could be copied"):
        replace_with_copy(src, dst, expect=(st.st_size, st.st_mtime_ns, st.st_ino))
    assert dst.read_bytes() == b"before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.txt", "src.txt"]  # no temporary left
    now = src.stat()
    replace_with_copy(src, dst, expect=(now.st_size, now.st_mtime_ns, now.st_ino))
    assert dst.read_bytes() == b"another"


def test_replace_with_copy_refuses_a_file_written_while_it_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write into the source during the copy (made here from inside the copy, so that it always
    lands between the two looks at the file) is seen: SourceChanged, the destination as it was."""
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 100_000)
    dst = tmp_path / "dst.bin"
    dst.write_bytes(b"before")
    copy = files._copy_fd

    def copy_while_written(fd_in: int, fd_out: int, size: int) -> None:
        copy(fd_in, fd_out, size // 2)
        with src.open("ab") as f:  # another writer, mid-copy
            f.write(b"more")
        copy(fd_in, fd_out, size)

    monkeypatch.setattr(files, "_ficlone", lambda *_: False)  # a copy, even where reflinks exist
    monkeypatch.setattr(files, "_copy_fd", copy_while_written)
    with pytest.raises(SourceChanged, match="changed while it was copied"):
        replace_with_copy(src, dst)
    assert dst.read_bytes() == b"before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "src.bin"]
