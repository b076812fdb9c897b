"""Which local files an upload sends: a `storage.uploads[]` folder + include/exclude -> files.

Input discovery is where a workflow's files become blobs, so it is careful about what it
takes, and says what it leaves out:

- Folders that are never inputs (the workspace, every download destination) are not entered:
  `source: .` would otherwise upload the previous run's state and outputs back as inputs.
- A symlink is taken only when its target is inside the source folder (and not inside a folder
  that is never an input); a link pointing elsewhere is skipped with a warning, so content from
  outside the folder never reaches storage unnoticed. Links to folders are never followed.
- Broken links, and folders an include pattern names (patterns select files), are reported.

Patterns follow batchflow.globs, including the shell's rule for names starting with '.'.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from batchflow.globs import compile_glob


@dataclass(frozen=True)
class NeverInput:
    """A folder whose files are never inputs, and what it is ("the workspace", ...), for messages."""

    path: Path
    what: str


@dataclass(frozen=True)
class Discovered:
    files: list[tuple[str, Path]]  # (relative '/'-separated path, path under the source folder), sorted
    warnings: list[str]  # one line per matching entry that was skipped, naming it


def inside_never_input(source: Path, never: Sequence[NeverInput]) -> NeverInput | None:
    """The never-input folder that holds (or is) `source`, if any."""
    real = source.resolve()
    return next((n for n in never if real.is_relative_to(n.path.resolve())), None)


def discover(
    root: Path, include: Iterable[str], exclude: Iterable[str] = (), never: Sequence[NeverInput] = ()
) -> Discovered:
    """The files under `root` whose relative path matches an `include` and no `exclude` pattern.

    `root` must be a folder. Returned paths are under `root` as given (absolute), not resolved.
    """
    includes = [(compile_glob(p), p.rsplit("/", 1)[-1] == "**") for p in include]
    excludes = [compile_glob(p) for p in exclude]
    base = root.absolute()
    real_base = base.resolve()
    pruned = {n.path.resolve(): n for n in never}

    def selected(rel: str) -> bool:
        return any(r.fullmatch(rel) for r, _ in includes) and not any(r.fullmatch(rel) for r in excludes)

    def never_input(real: Path) -> NeverInput | None:
        return next((n for p, n in pruned.items() if real.is_relative_to(p)), None)

    files: list[tuple[str, Path]] = []
    warnings: list[str] = []

    def unreadable(error: OSError) -> None:  # os.walk would skip such a folder in silence
        failed = Path(error.filename or base)
        where = failed.relative_to(base).as_posix() if failed.is_relative_to(base) else str(failed)
        warnings.append(f"skipped {where!r}: cannot be read ({error.strerror})")

    for dirpath, dirnames, filenames in os.walk(base, onerror=unreadable):
        folder = Path(dirpath)
        rel_folder = folder.relative_to(base).as_posix()
        prefix = "" if rel_folder == "." else rel_folder + "/"
        # os.walk does not follow links, so below `base` a folder's real path is real_base / its path.
        real_folder = real_base / rel_folder if prefix else real_base
        kept = []
        for name in sorted(dirnames):
            rel, path = prefix + name, folder / name
            if real_folder / name in pruned:
                continue
            if path.is_symlink():  # a workspace that is a link is skipped like any other, unreported
                if selected(rel) and never_input(path.resolve()) is None:
                    warnings.append(
                        f"skipped {rel!r}: a link to a folder (links to folders are not followed)"
                    )
                continue
            kept.append(name)
            if any(r.fullmatch(rel) and not deep for r, deep in includes) and selected(rel):
                warnings.append(
                    f"skipped {rel!r}: a folder (include patterns select files; {rel + '/**'!r} selects"
                    " the files in it)"
                )
        dirnames[:] = kept
        for name in sorted(filenames):
            rel, path = prefix + name, folder / name
            if not selected(rel):
                continue
            problem = _link_problem(path, real_base, never_input, selected) if path.is_symlink() else None
            if problem is not None:
                warnings.append(f"skipped {rel!r}: {problem}")
            elif path.is_file():  # not a fifo or a socket
                files.append((rel, path))
    files.sort(key=lambda item: item[0])
    return Discovered(files, warnings)


def _link_problem(
    path: Path,
    real_base: Path,
    never_input: Callable[[Path], NeverInput | None],
    selected: Callable[[str], bool],
) -> str | None:
    """Why the symlink at `path` must not be uploaded, or None if its target is a file inside the
    folder that the patterns select too (a link must not smuggle in what exclude, or the dotfile
    rule, keeps out: `public/key -> secrets/key` with `exclude: [secrets/**]`)."""
    target = path.readlink()
    try:
        real = path.resolve()
    except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13)
        return f"a broken link (to {target}: a loop of links)"
    if not real.exists():
        return f"a broken link (to {target})"
    if not real.is_relative_to(real_base):
        return f"a link to {real}, outside the source folder"
    holder = never_input(real)
    if holder is not None:
        return f"a link into {holder.what} ({holder.path}), whose files are never inputs"
    target_rel = real.relative_to(real_base).as_posix()
    if not selected(target_rel):
        return f"a link to {target_rel!r}, which the include/exclude patterns leave out"
    return None
