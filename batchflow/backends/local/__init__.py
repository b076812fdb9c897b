"""The local backend: this machine's folders as storage, its processes as Batch nodes.

`BACKEND` is what the registry holds. Importing this package is cheap: the storage, the compute and
the process ledger are imported when a run builds them.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchflow.backends.base import Cleanup, Compute, Context, Leftover, SettingsBlock, Storage
from batchflow.errors import MissingRequirement
from batchflow.model import CleanupAction, CleanupSpec, DocPath, StartTaskSpec, Workflow
from batchflow.records import record

if TYPE_CHECKING:
    from batchflow.state import RunState


@record
class LocalSettings:
    """The workflow's `local:` block."""

    concurrency: int | None = None  # None -> min(nodes x slots, CPU count)
    workspace: Path | None = None  # also Workflow.workspace: run folders live there, whatever the backend
    start_task: StartTaskSpec | None = None  # replaces pool.start_task locally
    requires: tuple[str, ...] = ()  # executables that must be on PATH before anything runs
    pass_env: tuple[str, ...] = ()  # your environment variables local tasks also get, by name


def settings_of(workflow: Workflow) -> LocalSettings:
    found = workflow.settings.get("local")
    return found if isinstance(found, LocalSettings) else LocalSettings()


class LocalBackend:
    name = "local"
    description = "tasks run as processes on this machine, in folders laid out like Batch nodes"
    default_storage = "local"
    settings_schema: Mapping[str, Any] = json.loads(
        Path(__file__).with_name("settings.schema.json").read_text(encoding="utf-8")
    )
    start_task_key = "start_task"
    attachable = False

    def read_settings(self, block: SettingsBlock) -> LocalSettings:
        data = block.data
        return LocalSettings(
            concurrency=data.get("concurrency"),
            workspace=block.path("workspace"),
            start_task=block.start_task("start_task"),
            requires=tuple(data.get("requires", ())),
            pass_env=tuple(data.get("pass_env", ())),
        )

    def problems(self, workflow: Workflow) -> list[tuple[DocPath, str]]:
        return []  # node counts mean nothing here: concurrency does

    def storage(self, ctx: Context) -> Storage:
        from batchflow.backends.local.storage import LocalStorage

        return LocalStorage(ctx.workspace / "storage")

    def compute(self, ctx: Context, storage: Storage) -> Compute:
        from batchflow.backends.local.scheduler import LocalCompute

        settings = settings_of(ctx.workflow)
        check_requirements(settings.requires, local_task_path())
        return LocalCompute(
            ctx.workspace,
            storage,
            ctx.run_dir,
            ctx.concurrency or settings.concurrency,
            pass_env=settings.pass_env,
            observer=ctx.observer,
            keep_task_folders=ctx.workflow.cleanup.job is CleanupAction.KEEP,
            notify=ctx.notify,
        )

    def clean_up(self, run: RunState, workflow: Workflow | None, cleanup: Cleanup) -> None:
        from batchflow.backends.local import processes

        # Tasks run in sessions of their own: a killed batchflow leaves them running. Stop them first.
        groups = processes.leftovers(run.folder)
        if groups:
            cleanup.say(f"Stopping {len(groups)} task process group(s) the run left running...")
            for task in processes.stop(groups):
                cleanup.deleted.append(f"process of task {task}")
        if run.pool_id is None:
            return
        folder = cleanup.workspace / "pools" / run.pool_id
        if not folder.is_dir():
            return
        policy = workflow.cleanup if workflow is not None else CleanupSpec()
        if policy.pool is CleanupAction.KEEP:
            cleanup.kept.append(f"pool {run.pool_id} (cleanup.pool: keep)")
        elif policy.pool is CleanupAction.DELETE or run.pool_created:
            # The job's folders go with the pool's.
            cleanup.attempt(f"pool {run.pool_id}", functools.partial(_remove_tree, folder))
            return
        else:  # the run died before making it: the folder is another run's kept pool
            cleanup.kept.append(f"pool {run.pool_id} (not created by this run)")
        jobs = sorted(folder.glob(f"nodes/*/workitems/{run.job_id}")) if run.job_id else []
        if jobs and policy.job is CleanupAction.DELETE:
            cleanup.attempt(f"job {run.job_id}", functools.partial(_remove_all, jobs))

    def leftovers(self, workspace: Path) -> list[Leftover]:
        """Task processes still running for a run (its process ledger says so), and pool folders
        (<workspace>/pools/<pool id>, with the nodes' task folders), each with the latest run that
        used that pool."""
        import shutil  # (here: it loads bz2 and lzma, 2 ms of `validate`, which imports this package)

        from batchflow.backends.local import processes
        from batchflow.diskuse import folder_size

        found: list[Leftover] = []
        runs = workspace / "runs"
        folders = sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
        pool_run: dict[str, str] = {}
        for folder in folders:
            groups = processes.leftovers(folder)
            if groups:
                tasks = ", ".join(sorted(set(groups.values()))[:5])
                found.append(
                    Leftover(
                        "task processes",
                        f"{len(groups)} process group(s) of tasks {tasks}",
                        folder.name,
                        None,
                        None,
                        functools.partial(processes.stop, groups),
                    )
                )
            pool_id = _pool_of(folder)
            if pool_id is not None:
                pool_run[pool_id] = folder.name  # folders sort by run id, so the latest wins
        pools = workspace / "pools"
        for folder in sorted(p for p in pools.iterdir() if p.is_dir()) if pools.is_dir() else []:
            found.append(
                Leftover(
                    "pool folder",
                    str(folder),
                    pool_run.get(folder.name),
                    folder.stat().st_mtime,
                    folder_size(folder),
                    functools.partial(shutil.rmtree, folder),
                )
            )
        return found


def _pool_of(run_folder: Path) -> str | None:
    try:
        data = json.loads((run_folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pool = data.get("pool_id") if isinstance(data, dict) else None
    return pool if isinstance(pool, str) else None


BACKEND = LocalBackend()


def _remove_all(folders: list[Path]) -> None:
    for folder in folders:
        _remove_tree(folder)


def _remove_tree(folder: Path) -> None:
    """shutil.rmtree, its OSError naming the whole path of what could not be removed (rmtree's own
    may name it relative to its folder: "shared")."""

    def whole_path(function: object, path: str, error: BaseException) -> None:
        if isinstance(error, OSError):
            raise OSError(error.errno, error.strerror, path) from error
        raise error

    import shutil

    if sys.version_info >= (3, 12):
        shutil.rmtree(folder, onexc=whole_path)
    else:
        shutil.rmtree(folder, onerror=lambda function, path, info: whole_path(function, path, info[1]))


def local_task_path() -> str:
    """PATH for local tasks: batchflow's own environment first, then the inherited PATH."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])


def check_requirements(names: tuple[str, ...], path: str) -> None:
    import shutil

    missing = [n for n in names if shutil.which(n, path=path) is None]
    if missing:
        listed = ", ".join(repr(n) for n in missing)
        raise MissingRequirement(
            f"the workflow requires {listed} (local.requires), not found on PATH. "
            f"Install it first (e.g. `sudo apt-get install {missing[0]}` or `brew install {missing[0]}`), "
            "or pip-install it into batchflow's environment."
        )
