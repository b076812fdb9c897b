"""Glob patterns for '/'-separated names (blob names, paths relative to a folder).

A pattern is matched against the WHOLE relative path, never just the base name:
`*.mp4` matches `a.mp4` but not `x/a.mp4`; `**/*.mp4` matches both.

- `*` matches any run of characters except '/'; `?` matches one character except '/'.
- `**` as a whole segment matches zero or more segments: `**/a` matches `a` and `x/y/a`,
  `x/**/a` matches `x/a` and `x/y/a`; a trailing `**` (`x/**`) matches everything under `x/`.
  `**` inside a segment (`a**b`) is just two `*`.
- `[abc]`, `[a-z]`, `[!a-z]` (or `[^a-z]`) match one character of (not of) a class; never '/'.
  A `]` first in a class is literal (`[]]`). A `[` without a closing `]` is a literal `[`.
- Backslash has no special meaning. To match a metacharacter literally, bracket it:
  `[*]`, `[?]`, `[[]` (what `glob_escape` does).
- A name segment starting with '.' is matched only by a pattern segment starting with a
  literal '.', as in the shell: `*` and `**` never match `.env` or enter `.git/`; `.*` and
  `.env` do.
These are the rules of Azure Batch output file patterns too, so a pattern means the same
thing on every backend.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable
from pathlib import Path

_MAGIC = "*?["
_ESCAPES = str.maketrans({c: f"[{c}]" for c in _MAGIC})


def glob_escape(s: str) -> str:
    """`s` as a pattern that matches exactly `s`: `a[1]*.mp4` -> `a[[]1][*].mp4`."""
    return s.translate(_ESCAPES)


def has_magic(pattern: str) -> bool:
    """True if `pattern` contains a glob metacharacter (even an escaped one)."""
    return any(c in pattern for c in _MAGIC)


def glob_match(pattern: str, name: str) -> bool:
    """True if the whole '/'-separated `name` matches `pattern`."""
    return compile_glob(pattern).fullmatch(name) is not None


@functools.lru_cache(maxsize=512)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """A regular expression that matches (with `fullmatch`) what `pattern` matches."""
    segments = pattern.split("/")
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "**":
            out.append(r"(?:(?!\.)[^/]+/)*(?!\.)[^/]+" if last else r"(?:(?!\.)[^/]+/)*")
        else:
            hidden = next(iter(_tokens(segment)), None) in (("char", "."), ("class", "."))
            out.append(("" if hidden else r"(?!\.)") + "".join(_translate_segment(segment)))
            out.append("" if last else "/")
    return re.compile("".join(out), re.DOTALL)


def glob_literal(pattern: str) -> str | None:
    """The one name `pattern` matches if it is a literal (possibly escaped), else None.

    `a[[]1].mp3` -> `a[1].mp3`; `*.mp3` -> None.
    """
    if "[" not in pattern and "*" not in pattern and "?" not in pattern:
        return pattern  # (each character is a "char" token)
    chars: list[str] = []
    for kind, value in _tokens(pattern):
        if kind == "char" or (kind == "class" and len(value) == 1):
            chars.append(value)
        else:
            return None
    return "".join(chars)


def iter_files(root: Path, include: Iterable[str], exclude: Iterable[str] = ()) -> list[tuple[str, Path]]:
    """Files under `root` whose relative path matches an `include` and no `exclude` pattern.

    Returns (relative posix path, absolute path) pairs sorted by relative path. Only
    regular files (a symlink to a regular file counts); symlinked folders are not entered,
    so the walk never leaves `root` or loops. Raises NotADirectoryError if `root` is not
    a folder. Used for a task's output files; upload folders go through batchflow.inputs,
    which is stricter about links.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    includes = [compile_glob(p) for p in include]
    excludes = [compile_glob(p) for p in exclude]
    base = root.absolute()
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        folder = Path(dirpath)
        rel_folder = folder.relative_to(base).as_posix()
        prefix = "" if rel_folder == "." else rel_folder + "/"
        for filename in filenames:
            path = folder / filename
            rel = prefix + filename
            if not path.is_file():  # fifo, socket, broken symlink
                continue
            if any(r.fullmatch(rel) for r in includes) and not any(r.fullmatch(rel) for r in excludes):
                found.append((rel, path))
    found.sort(key=lambda item: item[0])
    return found


# ---- translation -------------------------------------------------------------------------


def _tokens(segment: str) -> Iterable[tuple[str, str]]:
    """("char", c) | ("star", "") | ("any", "") | ("class", body-without-brackets)."""
    i, n = 0, len(segment)
    while i < n:
        c = segment[i]
        i += 1
        if c == "*":
            yield "star", ""
        elif c == "?":
            yield "any", ""
        elif c == "[":
            j = i
            if j < n and segment[j] in "!^":
                j += 1
            if j < n and segment[j] == "]":
                j += 1
            j = segment.find("]", j)
            if j == -1:
                yield "char", "["
            else:
                yield "class", segment[i:j]
                i = j + 1
        else:
            yield "char", c


def _translate_segment(segment: str) -> Iterable[str]:
    for kind, value in _tokens(segment):
        if kind == "char":
            yield re.escape(value)
        elif kind == "star":
            yield "[^/]*"
        elif kind == "any":
            yield "[^/]"
        else:
            yield _translate_class(value)


def _translate_class(body: str) -> str:
    negate = body[:1] in ("!", "^") and len(body) > 1
    if negate:
        body = body[1:]
    items: list[str] = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            lo, hi = body[i], body[i + 2]
            if lo <= hi:  # an empty range (z-a) matches nothing, as in fnmatch
                items.append(f"{re.escape(lo)}-{re.escape(hi)}")
            i += 3
        else:
            items.append(re.escape(body[i]))
            i += 1
    content = "".join(items)
    if negate:
        return f"[^/{content}]"
    if not content:
        return "(?!)"
    return f"(?!/)[{content}]"
