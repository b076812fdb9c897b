"""The folders of a thread pool, read and removed without the compute that made them (it may have
died with its batchflow process): what `clean_up` and `check_access` see.

    <workspace>/thread/<run id>/        the pool of run <run id>
        pool.json                        {"pool_id": ...}
        jobs/<job id>                    a marker per job
        procs/<pgid>.json                a marker per running command: {"task": ..., "start": ...}
        nodes/node-<i>/                  AZ_BATCH_NODE_ROOT_DIR (compute.py)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from batchflow.errors import BatchflowError
from batchflow.procinfo import process_start


def pool_of(root: Path) -> str | None:
    """The id of the pool in run folder `root`, or None."""
    try:
        pool_id = json.loads((root / "pool.json").read_text(encoding="utf-8"))["pool_id"]
    except (OSError, ValueError, KeyError):
        return None
    return pool_id if isinstance(pool_id, str) else None


def jobs_of(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "jobs").glob("*"))


def leftovers(root: Path) -> dict[int, str]:
    """The process groups the commands of `root` started that still run: {pgid: label}. A group is
    taken for ours only while its leader is the recorded process (or gone: the kernel reuses no pid
    while a group of that id lives)."""
    found: dict[int, str] = {}
    for marker in sorted((root / "procs").glob("*.json")):
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
            pgid = int(marker.stem)
        except (OSError, ValueError):
            continue
        start = record.get("start")
        if start is not None and _group_alive(pgid) and process_start(pgid) in (None, start):
            found[pgid] = str(record.get("task"))
    return found


def stop_group(pgid: int) -> None:
    """SIGKILL the group: it cannot be caught, so the group ends (its parent reaps the leader)."""
    killpg(pgid)


def remove_job(root: Path, job_id: str) -> bool:
    """Remove job `job_id`'s folders and marker from run folder `root`. False if there were none."""
    found = [*root.glob(f"nodes/*/workitems/{job_id}"), *root.glob(f"jobs/{job_id}")]
    for path in found:
        if path.is_dir():
            remove_tree(path)
        else:
            path.unlink(missing_ok=True)
    return bool(found)


def remove_tree(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        shutil.rmtree(path)
    except OSError as e:
        raise BatchflowError(f"cannot remove {path}: {e.strerror or e}") from None
    return True


def killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group has exited
        return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: alive, but never ours to stop
        return False
    return True
