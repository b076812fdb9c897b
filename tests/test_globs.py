from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchflow.globs import glob_escape, glob_literal, glob_match, has_magic, iter_files


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*.mp4", "a.mp4", True),
        ("*.mp4", "x/a.mp4", False),  # whole-path match: * never crosses '/'
        ("**/*.mp4", "a.mp4", True),
        ("**/*.mp4", "x/y/a.mp4", True),
        ("**/*.mp4", "x/y/a.mp3", False),
        ("x/**/a", "x/a", True),
        ("x/**/a", "x/y/z/a", True),
        ("x/**/a", "y/a", False),
        ("x/**", "x/a/b", True),
        ("x/**", "x", False),
        ("**", "a/b/c", True),
        ("a**b", "a/b", False),  # ** inside a segment is two *
        ("a**b", "axxb", True),
        ("?.txt", "a.txt", True),
        ("?.txt", "ab.txt", False),
        ("a?b", "a/b", False),
        ("[abc].txt", "b.txt", True),
        ("[abc].txt", "d.txt", False),
        ("[a-c]1", "b1", True),
        ("[!a-c]1", "d1", True),
        ("[!a-c]1", "a1", False),
        ("x[!a]y", "x/y", False),  # a class never matches '/'
        ("[]]", "]", True),
        ("[z-a]", "z", False),  # empty range matches nothing
        ("a[", "a[", True),  # unclosed bracket is literal
        ("[&&]", "&", True),
        ("a\\b", "a\\b", True),  # backslash is an ordinary character
        ("日本/*.mp4", "日本/é.mp4", True),
        ("*", "line\nbreak", True),
    ],
)
def test_glob_match(pattern: str, name: str, expected: bool) -> None:
    assert glob_match(pattern, name) is expected


@pytest.mark.parametrize("name", ["a[1].mp4", "*?[]", "plain.txt", "[!x]", "a]b"])
def test_escaped_name_matches_only_itself(name: str) -> None:
    pattern = glob_escape(name)
    assert glob_match(pattern, name)
    assert glob_literal(pattern) == name
    assert not glob_match(pattern, name + "x")


def test_escape_text() -> None:
    assert glob_escape("a[1]*?.mp4") == "a[[]1][*][?].mp4"
    assert not glob_match(glob_escape("a*.mp4"), "ab.mp4")


def test_literal_and_magic() -> None:
    assert glob_literal("out/a.mp3") == "out/a.mp3"
    assert glob_literal("*.mp3") is None
    assert glob_literal("a[bc]") is None
    assert glob_literal("a[!b]") is None
    assert has_magic("a[[]1]") and not has_magic("a.mp3")


def test_iter_files(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for rel in ["b.mp4", "a.mp4", "notes.txt", "sub/c.mp4", "sub/deep/d.mp4", ".hidden.mp4"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.mp4").write_text("x")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "filelink.mp4").symlink_to(outside / "x.mp4")
    (root / "broken.mp4").symlink_to(tmp_path / "missing")
    os.mkfifo(root / "fifo.mp4")

    assert [rel for rel, _ in iter_files(root, ["*.mp4"])] == ["a.mp4", "b.mp4", "filelink.mp4"]
    assert [rel for rel, _ in iter_files(root, [".*"])] == [".hidden.mp4"]  # a leading dot is explicit
    found = iter_files(root, ["**/*.mp4"], ["sub/deep/**", ".*"])
    assert found == [
        ("a.mp4", root / "a.mp4"),
        ("b.mp4", root / "b.mp4"),
        ("filelink.mp4", root / "filelink.mp4"),
        ("sub/c.mp4", root / "sub/c.mp4"),
    ]
    assert all(path.is_absolute() for _, path in found)


def test_iter_files_requires_a_folder(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        iter_files(tmp_path / "missing", ["**"])
