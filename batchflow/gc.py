"""`batchflow gc`: find what batchflow made for runs that are over, and remove it.

Each backend lists what its compute still holds (Backend.leftovers: account-wide on Azure, found by
the run id in each pool's and job's metadata, so it works when run folders are gone); the workspace
holds the run folders. Whether a thing goes depends on its run:
- a live run: never touched;
- a dead run (its batchflow process died without ending it): its pool, job and task processes go;
  its run folder stays (a re-run resumes from it) until it is older than --older-than;
- an ended run: a job or task processes it left (its cleanup did not finish) go; a pool it kept
  (cleanup.pool: keep, or not its own) stays; its run folder goes once older than --older-than;
- a run unknown here (another machine's, or its folder deleted): only once older than --older-than.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from batchflow.backends import registry
from batchflow.backends.base import Cleanup, Context, Leftover, Storage
from batchflow.diskuse import folder_size
from batchflow.errors import BatchflowError, first_line
from batchflow.ledger import ledger_blob
from batchflow.runplan import output_prefix, task_logs
from batchflow.state import STATE_FILE, RunState, RunStatus

log = logging.getLogger("batchflow")


@dataclass(frozen=True)
class Item:
    """One thing `batchflow gc` found (a run folder, stored files, a leftover job or pool), with why it
    is removed or kept."""

    kind: str
    name: str
    run_id: str | None
    age: float | None  # seconds
    size: int | None  # bytes
    why: str
    remove: Callable[[], object]

    def line(self) -> str:
        facts = [f"run {self.run_id}" if self.run_id else "run unknown"]
        if self.age is not None:
            facts.append(f"{human_age(self.age)} old")
        if self.size is not None:
            facts.append(human_size(self.size))
        return f"{self.kind} {self.name} ({', '.join(facts)}): {self.why}"


@dataclass
class Survey:
    """What `batchflow gc` found: the items to remove, those it keeps, and notes for the user."""

    remove: list[Item] = field(default_factory=list)
    keep: list[Item] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    storages: list[Storage] = field(default_factory=list)  # open until close()

    def close(self) -> None:
        for storage in self.storages:
            storage.close()
        self.storages.clear()


def survey(workspace: Path, older_than: float | None, now: float | None = None) -> Survey:
    now = time.time() if now is None else now
    out = Survey()
    runs = _runs(workspace, out)
    live = {rid for rid, s in runs.items() if s.still_running()}
    for backend in registry.all_backends():
        try:
            found = backend.leftovers(workspace)
        except BatchflowError as e:
            out.notes.append(f"{backend.name}: not checked ({first_line(str(e))})")
            continue
        for leftover in found:
            _sort(leftover, runs, live, older_than, now, out)
    for rid, state in sorted(runs.items()):
        if rid in live:
            continue
        when = state.ended_at or state.started_at
        age = max(0.0, now - when)
        status = state.effective_status
        remove = older_than is not None and age >= older_than
        item = Item(
            "run folder",
            str(state.folder),
            rid,
            age,
            folder_size(state.folder),
            f"{status.value}; older than {human_age(older_than)}"
            if remove and older_than is not None
            else f"{status.value}; a re-run resumes from it (--older-than prunes old runs)",
            functools.partial(shutil.rmtree, state.folder),
        )
        (out.remove if remove else out.keep).append(item)
        if remove:
            out.remove.extend(_stored(state, workspace, out))
    return out


def _stored(state: RunState, workspace: Path, out: Survey) -> list[Item]:
    """What an old run keeps in storage: its own outputs (under runs/<run id>/), its task logs and its
    ledger. Read through its workflow file (which names the containers); unreadable: left alone."""
    from batchflow.spec import load_workflow

    try:
        wf = load_workflow(Path(state.workflow), state.overrides)
        storage = registry.get(state.storage).storage(Context(wf, workspace, state.folder))
    except BatchflowError as e:
        out.notes.append(f"run {state.run_id}: its files in storage were not checked ({first_line(str(e))})")
        return []
    out.storages.append(storage)
    where: list[tuple[str, str]] = []
    if wf.outputs_per_run:
        where += [
            (c, output_prefix(wf, state.run_id)) for c in sorted({o.container for o in wf.tasks.outputs})
        ]
    if wf.logs is not None:
        logs = task_logs(wf, state.run_id)
        if logs is not None:
            where.append((logs.container, logs.prefix))
        where.append((wf.logs.container, ledger_blob(wf.name, state.run_id)))
    items = []
    for container, prefix in where:
        try:
            found = storage.stat_blobs(container, prefix, md5=False)  # sizes: nothing to read
        except BatchflowError:
            continue  # no such container (any more)
        if not found:
            continue
        names = sorted(found)
        items.append(
            Item(
                "stored files",
                f"{container}/{prefix} ({len(names)} blob(s))",
                state.run_id,
                None,
                sum(s.size for s in found.values()),
                "of a run older than the bound",
                functools.partial(storage.delete_blobs, container, names),
            )
        )
    return items


def _runs(workspace: Path, out: Survey) -> dict[str, RunState]:
    runs: dict[str, RunState] = {}
    folder = workspace / "runs"
    for run in sorted(p for p in folder.iterdir() if (p / STATE_FILE).is_file()) if folder.is_dir() else []:
        try:
            runs[run.name] = RunState.load(run, journal=False)
        except BatchflowError as e:
            out.notes.append(f"run folder {run} not read ({first_line(str(e))}): left alone")
    return runs


def _sort(
    leftover: Leftover,
    runs: dict[str, RunState],
    live: set[str],
    older_than: float | None,
    now: float,
    out: Survey,
) -> None:
    run = leftover.run_id
    age = None if leftover.created is None else max(0.0, now - leftover.created)

    def item(why: str) -> Item:
        return Item(leftover.kind, leftover.name, run, age, leftover.size, why, leftover.remove)

    if run is not None and run in live:
        return  # a live run's: not garbage, not listed
    state = runs.get(run) if run is not None else None
    if state is not None:
        status = state.effective_status
        if status is RunStatus.DEAD:
            out.remove.append(item("its run died without cleaning up"))
        elif leftover.kind in ("job", "task processes", "process"):
            out.remove.append(item(f"its run ended ({status.value}) without removing it"))
        else:
            out.keep.append(
                item(f"its run ended ({status.value}) and kept it (cleanup.pool, or not its own)")
            )
        return
    if older_than is not None and age is not None and age >= older_than:
        out.remove.append(item(f"its run is unknown here and it is older than {human_age(older_than)}"))
    else:
        out.keep.append(
            item(
                "its run is unknown here (another machine's, or its folder is gone): --older-than removes it"
            )
        )


def remove(items: list[Item], say: Callable[[str], None], workspace: Path) -> Cleanup:
    """Remove each item (one failure never stops the next); live things were never listed."""
    report = Cleanup(say, workspace)
    for it in items:
        report.attempt(f"{it.kind} {it.name}", it.remove)
    return report


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
