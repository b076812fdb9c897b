"""A test-only backend, registered as "thread" the way the real ones are, built from
batchflow/backends/base.py alone (no code of batchflow.backends.local or .azure): files live in this
process's memory (storage.py, mem:// URLs), tasks run as processes from one worker thread per node of
a folder pool (compute.py).

It is README's worked example of "Adding a backend": this package, its settings.schema.json, and
`registry.register("thread", "thread_backend:BACKEND")` (a real backend: one line in
registry.BACKENDS instead).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchflow.backends.base import Cleanup, Compute, Context, Leftover, SettingsBlock, Storage
from batchflow.errors import ConfigurationError
from batchflow.model import CleanupAction, DocPath, StartTaskSpec, Workflow

if TYPE_CHECKING:
    from batchflow.state import RunState

MAX_WORKERS = 8  # each worker is a thread of the batchflow process, each node a folder


@dataclass(frozen=True)
class ThreadSettings:
    """The workflow's `thread:` block."""

    workers: int = 2
    start_task: StartTaskSpec | None = None  # replaces pool.start_task on this backend


def settings_of(workflow: Workflow) -> ThreadSettings:
    found = workflow.settings.get("thread")
    return found if isinstance(found, ThreadSettings) else ThreadSettings()


def store_name(workspace: Path) -> str:
    """The memory store of a workspace: a run, and a later `batchflow download` in the same process,
    share it."""
    return "ws-" + hashlib.sha256(str(workspace.absolute()).encode()).hexdigest()[:16]


class ThreadBackend:
    name = "thread"
    description = "test only: tasks run from worker threads on folder nodes; files live in memory"
    default_storage = "thread"
    settings_schema: Mapping[str, Any] = json.loads(
        Path(__file__).with_name("settings.schema.json").read_text(encoding="utf-8")
    )
    start_task_key = "start_task"
    attachable = False

    def read_settings(self, block: SettingsBlock) -> ThreadSettings:
        return ThreadSettings(
            workers=int(block.data.get("workers", 2)), start_task=block.start_task("start_task")
        )

    def problems(self, workflow: Workflow) -> list[tuple[DocPath, str]]:
        workers = settings_of(workflow).workers
        if workers > MAX_WORKERS:
            message = (
                f"at most {MAX_WORKERS} workers, not {workers}: each is a thread of the batchflow process"
            )
            return [(("thread", "workers"), message)]
        return []

    def storage(self, ctx: Context) -> Storage:
        from thread_backend.storage import MemoryStorage

        return MemoryStorage(store_name(ctx.workspace))

    def compute(self, ctx: Context, storage: Storage) -> Compute:
        from thread_backend.compute import ThreadCompute
        from thread_backend.storage import MemoryStorage

        if not isinstance(storage, MemoryStorage):
            raise ConfigurationError(
                "the thread backend's nodes reach only its memory storage (drop --storage; "
                "--storage thread is this backend's default)"
            )
        workers = ctx.concurrency or settings_of(ctx.workflow).workers
        return ThreadCompute(ctx.workspace, storage, ctx.run_dir, workers, observer=ctx.observer)

    def clean_up(self, run: RunState, workflow: Workflow | None, cleanup: Cleanup) -> None:
        """What a run left in <workspace>/thread/<run id>/: its commands (still running if batchflow
        was killed), its jobs, its pool (always created by the run: one folder per run)."""
        from thread_backend import folders

        root = cleanup.workspace / "thread" / run.run_id
        for pgid, what in folders.leftovers(root).items():
            cleanup.attempt(f"process of {what}", functools.partial(folders.stop_group, pgid))
        for job_id in folders.jobs_of(root):
            cleanup.attempt(f"job {job_id}", functools.partial(folders.remove_job, root, job_id))
        pool_id = folders.pool_of(root)
        if pool_id is None:
            return
        if workflow is not None and workflow.cleanup.pool is CleanupAction.KEEP:
            cleanup.kept.append(f"pool {pool_id} (cleanup.pool: keep)")
            return
        cleanup.attempt(f"pool {pool_id}", functools.partial(folders.remove_tree, root))

    def leftovers(self, workspace: Path) -> list[Leftover]:
        """Each run's pool under <workspace>/thread/<run id>/, with its commands still running."""
        from thread_backend import folders

        found = []
        base = workspace / "thread"
        for root in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
            groups = folders.leftovers(root)
            for pgid, what in groups.items():
                found.append(
                    Leftover(
                        "process", what, root.name, None, None, functools.partial(folders.stop_group, pgid)
                    )
                )
            pool_id = folders.pool_of(root)
            if pool_id is not None:
                remove = functools.partial(folders.remove_tree, root)
                found.append(Leftover("pool", pool_id, root.name, root.stat().st_mtime, None, remove))
        return found


BACKEND = ThreadBackend()
