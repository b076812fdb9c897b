"""Which tasks a run executes and which it takes from earlier runs (content-keyed resume).

A task is skipped when a succeeded task with the same key (ledger.py) left outputs that are still in
storage as recorded (the same file in folder storage, else the size and MD5); its outputs are then
copied under the new run's prefix, so every run's `runs/<run id>/` holds all its outputs and its
downloads include them. Everything else runs, with the reason `batchflow plan` shows: new, input
changed, command changed, outputs changed, pool or image changed, failed before, outputs missing
(or forced with --force, or left out by `batchflow retry`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from batchflow.backends.base import Storage
from batchflow.errors import BatchflowError
from batchflow.ledger import (
    LEDGER_FILE,
    LEDGER_PREFIX,
    NO_OUTPUTS,
    PART_REASON,
    PARTS,
    Entry,
    Ledger,
    StoredOutput,
    TaskKey,
    read_entries,
    read_keys,
)
from batchflow.model import BlobStat, Workflow
from batchflow.runplan import output_prefix
from batchflow.state import STATE_FILE, RecordState, RunState, workflow_of

log = logging.getLogger("batchflow")

UNCHANGED = "unchanged"
LEFT_OUT = "left out"  # `batchflow retry`: not a failed task of the run retried


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a task runs, and why: a task that does not run takes the outputs of `reuse`."""

    task: str
    run: bool
    reason: str
    reuse: Entry | None = None  # set when the task is skipped: whose outputs it takes


@dataclass(frozen=True)
class Copy:
    """An output of an earlier run, to copy (in the same container) to where this run's own output goes."""

    container: str
    source: str
    destination: str


# ---- reading the ledger -----------------------------------------------------------------------------


def load_ledger(
    workspace: Path, workflow: Workflow, storage: Storage | None, *, skip_run: str | None = None
) -> Ledger:
    """Every entry of this workflow's earlier runs: from the workspace's run folders, and from the
    storage's ledger blobs (runs made on other machines sharing the storage account)."""
    ledger = Ledger()
    seen: set[str] = set()
    runs = workspace / "runs"
    folders = sorted(p for p in runs.iterdir() if (p / STATE_FILE).is_file()) if runs.is_dir() else []
    wanted = workflow.path.resolve()
    for folder in folders:
        if folder.name == skip_run or workflow_of(folder) != wanted:
            continue
        for e in _run_entries(folder):
            ledger.add(e)
        seen.add(folder.name)
    if storage is not None and workflow.logs is not None:
        known = seen | ({skip_run} if skip_run else set())
        for e in _remote_entries(storage, workflow.logs.container, workflow.name, known):
            ledger.add(e)
    return ledger


def _run_entries(folder: Path) -> list[Entry]:
    """A run's ledger, or, for a run that died before writing it, its keys and task records."""
    path = folder / LEDGER_FILE
    if path.is_file():
        try:
            return list(read_entries(path, str(path)))
        except OSError as e:
            log.warning("cannot read %s: %s", path, e)
            return []
    keys = read_keys(folder)
    if not keys:
        return []
    try:
        state = RunState.load(folder)
    except BatchflowError as e:
        log.warning("run %s: %s", folder.name, e)
        return []
    out = []
    for tid, record in state.tasks.items():
        key = keys.get(tid)
        if key is None or record.state not in (RecordState.SUCCEEDED, RecordState.FAILED):
            continue
        outputs = tuple(StoredOutput(c, b) for c, _, b in (o.partition("/") for o in record.outputs) if b)
        succeeded = record.state is RecordState.SUCCEEDED
        if succeeded and not outputs and key.parts.get("outputs") != NO_OUTPUTS:
            succeeded = False  # outputs a compute did not name (Batch): unknown, so never reused
        out.append(
            Entry(
                key.key,
                tid,
                state.run_id,
                succeeded,
                key.parts,
                outputs,
                record.ended_at or state.started_at,
                record.reused_from,
            )
        )
    return out


def _remote_entries(storage: Storage, container: str, workflow_name: str, known: set[str]) -> list[Entry]:
    prefix = f"{LEDGER_PREFIX}{workflow_name}/"
    try:
        names = [n for n in storage.list_blobs(container, prefix) if n.endswith(".jsonl")]
    except BatchflowError:  # no container yet: a first run
        return []
    fresh = [n for n in names if n[len(prefix) : -len(".jsonl")] not in known]
    if not fresh:
        return []
    import tempfile  # (here: with random, 2 ms of every run's imports; only a ledger from elsewhere needs it)

    out: list[Entry] = []
    with tempfile.TemporaryDirectory(prefix="batchflow-ledger-") as tmp:
        try:
            storage.download(container, prefix, Path(tmp))
        except BatchflowError as e:
            log.warning("cannot read the ledger in storage (%s): runs of other machines are not reused", e)
            return []
        for name in fresh:
            path = Path(tmp) / name[len(prefix) :]
            if path.is_file():
                out.extend(read_entries(path, f"{container}/{name}"))
    return out


# ---- deciding -------------------------------------------------------------------------------------


class _Stored:
    """What storage holds now, listed once per (container, prefix), MD5s read only where needed."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._listed: dict[tuple[str, str, bool], dict[str, BlobStat]] = {}

    def _listing(self, container: str, prefix: str, md5: bool) -> dict[str, BlobStat]:
        where = (container, prefix, md5)
        if where not in self._listed:
            try:
                self._listed[where] = self.storage.stat_blobs(container, prefix, md5=md5)
            except BatchflowError:
                self._listed[where] = {}
        return self._listed[where]

    def holds(self, entry: Entry) -> bool:
        """Every output of `entry` is stored as it was recorded: the same file (its version, in
        folder storage), else the same size and MD5."""
        prefix = f"runs/{entry.run}/"
        for o in entry.outputs:
            where = (o.container, prefix if o.blob.startswith(prefix) else "")
            found = self._listing(*where, md5=False).get(o.blob)
            if found is None:
                return False
            if o.size is not None and found.size != o.size:
                return False
            if o.version is not None and found.version == o.version:
                continue  # the very file the run recorded: nothing to read
            if o.md5 is None:
                if o.version is not None:
                    return False  # another file now (written, replaced), and no MD5 to compare
                continue  # (a blob stored without a Content-MD5: its size, as recorded)
            if found.md5 is None and found.version is not None:  # folder storage: read this one now
                found = self._listing(o.container, o.blob, md5=True).get(o.blob)
                if found is None:
                    return False
            if found.md5 is not None and found.md5 != o.md5:
                return False
        return True


def decide(
    keys: Mapping[str, TaskKey],
    ledger: Ledger,
    storage: Storage,
    *,
    force: bool = False,
    only: Iterable[str] | None = None,
) -> list[Decision]:
    """One decision per task id of `keys` (in its order). `only`: `batchflow retry` runs these, and of
    the others takes what the ledger has and leaves the rest out."""
    stored = _Stored(storage)
    chosen = None if only is None else set(only)
    out = []
    for tid, key in keys.items():
        if force:
            out.append(Decision(tid, True, "forced (--force)"))
            continue
        if chosen is not None and tid in chosen:
            out.append(Decision(tid, True, "failed before"))
            continue
        reusable = None
        for e in ledger.succeeded(key.key):
            if stored.holds(e):
                reusable = e
                break
        if reusable is not None:
            out.append(Decision(tid, False, UNCHANGED, reusable))
        elif chosen is not None:
            out.append(Decision(tid, False, LEFT_OUT))
        else:
            out.append(Decision(tid, True, _why(tid, key, ledger)))
    return out


def _why(task_id: str, key: TaskKey, ledger: Ledger) -> str:
    last = ledger.latest(task_id)
    if last is None:
        return "new"
    if last.key == key.key:
        return "outputs missing" if last.succeeded else "failed before"
    changed = [PART_REASON[p] for p in PARTS if last.parts.get(p) != key.parts.get(p)]
    return ", ".join(changed) if changed else "new"


def _moved(entry: Entry, workflow: Workflow, run_id: str) -> list[Copy]:
    """Where each output of `entry` goes in run `run_id` (its own prefix, when outputs_per_run)."""
    new_prefix = output_prefix(workflow, run_id)
    old_prefix = f"runs/{entry.run}/"
    return [
        Copy(
            o.container,
            o.blob,
            new_prefix + (o.blob[len(old_prefix) :] if o.blob.startswith(old_prefix) else o.blob),
        )
        for o in entry.outputs
    ]


def copies(decisions: Sequence[Decision], workflow: Workflow, run_id: str) -> list[Copy]:
    """The blobs to copy so that the run's own prefix holds the outputs it takes from earlier runs."""
    return [
        c
        for d in decisions
        if d.reuse is not None
        for c in _moved(d.reuse, workflow, run_id)
        if c.source != c.destination
    ]


def reused_outputs(entry: Entry, workflow: Workflow, run_id: str) -> tuple[str, ...]:
    """The "container/blob" outputs a reused task has in run `run_id`."""
    return tuple(f"{c.container}/{c.destination}" for c in _moved(entry, workflow, run_id))


def summary(decisions: Sequence[Decision]) -> str:
    """`12 unchanged since run X, 8 to run` (and how many were left out by retry)."""
    reused = [d for d in decisions if d.reuse is not None]
    runs = sorted({d.reuse.run for d in reused if d.reuse is not None})
    to_run = sum(d.run for d in decisions)
    left = sum(1 for d in decisions if d.reason == LEFT_OUT)
    since = f"run {runs[0]}" if len(runs) == 1 else f"{len(runs)} earlier runs"
    parts = []
    if reused:
        parts.append(f"{len(reused)} unchanged since {since}")
    parts.append(f"{to_run} to run")
    if left:
        parts.append(f"{left} left out")
    return ", ".join(parts)
