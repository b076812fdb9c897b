"""Naming rules, in one place: Batch ids (pools, jobs, tasks) and blob names. Validation, rendering
and every backend use these, so a name refused by one is refused by all.

- Ids: 1 to 64 letters, digits, hyphens and underscores (Batch's rule for pool, job and task ids;
  task ids are unique without regard to case within a job).
- Blob names: relative '/'-separated paths that stay inside their folder wherever they are
  downloaded: no '..', '.', or empty segment, no backslash, NUL, leading '/' or drive letter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from batchflow.errors import BatchflowError

BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DRIVE = re.compile(r"^[A-Za-z]:")


def id_problem(task_id: str) -> str:
    """Why `task_id` is not a Batch id (1 to 64 letters, digits, - and _), for messages."""
    reasons = []
    if not task_id:
        reasons.append("it is empty")
    if len(task_id) > 64:
        reasons.append(f"it is {len(task_id)} characters long")
    bad = sorted({c for c in task_id if not (c.isascii() and (c.isalnum() or c in "-_"))})
    if bad:
        reasons.append("it contains " + ", ".join(repr(c) for c in bad))
    return " and ".join(reasons)


def check_blob_name(name: str) -> None:
    """Raise BatchflowError unless `name` is a relative '/'-separated path that stays inside its folder."""
    reason = blob_name_problem(name)
    if reason is not None:
        raise BatchflowError(f"unsafe blob name {name!r}: {reason}")


def check_copies(pairs: Sequence[tuple[str, str]]) -> None:
    """Raise BatchflowError unless every name in `pairs` (source, destination) is safe, and the
    copies are independent of their order (they run concurrently): no destination named twice, none
    that is also a source (its own or another pair's)."""
    sources: set[str] = set()
    destinations: set[str] = set()
    for src, dst in pairs:
        check_blob_name(src)
        check_blob_name(dst)
        if src == dst:
            raise BatchflowError(f"cannot copy blob {src!r} onto itself")
        if dst in destinations:
            raise BatchflowError(f"blob {dst!r} is the destination of more than one copy")
        sources.add(src)
        destinations.add(dst)
    both = sorted(sources & destinations)
    if both:
        raise BatchflowError(f"blob {both[0]!r} is both the source and the destination of copies")


def blob_name_problem(name: str, *, drive: bool = True) -> str | None:
    """Why `name` is not a safe relative '/'-separated path, or None if it is.

    `drive=False` accepts a name starting like a drive letter (`a:b.mp4`), for paths that only
    ever live on a POSIX machine (a file in a local task's wd/), never in a download folder."""
    if not name:
        return "empty name"
    if "\0" in name:
        return "contains a NUL character"
    if "\\" in name:
        return "contains a backslash"
    if name.startswith("/"):
        return "absolute path"
    if drive and _DRIVE.match(name):
        return "starts with a drive letter"
    segments = name.split("/")
    if ".." in segments:
        return "contains a '..' segment"
    if "." in segments:
        return "contains a '.' segment"
    if "" in segments:
        return "contains an empty segment"
    return None


def download_name(blob: str, prefix: str) -> str:
    """Where blob `blob`, downloaded for `prefix`, lands relative to the destination folder.

    The folder part of the prefix (up to its last '/') is dropped, as `aws s3 cp --recursive`
    does: prefix "mp3/" puts "mp3/a.mp3" at "a.mp3"; prefix "run1-" keeps "run1-a.mp3".
    """
    folder = prefix[: prefix.rfind("/") + 1]
    return blob[len(folder) :] if folder and blob.startswith(folder) else blob
