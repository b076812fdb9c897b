"""`batchflow cleanup [RUN]`: remove what a run left behind (its job, the pool it created, containers its
workflow's cleanup policy deletes), found through the run state and, on Azure, the run-id metadata.

A run that ends normally cleans up after itself; this is for the runs that did not (a killed process,
a dropped laptop, an interrupted cleanup). Nothing is deleted that the run did not create, unless the
workflow's cleanup policy says so: a pool batchflow did not create (or another run created) is kept.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from batchflow.backends.base import Storage
from batchflow.errors import BatchflowError
from batchflow.model import CleanupAction, Workflow
from batchflow.runner import doomed_containers
from batchflow.state import RunState, RunStatus

log = logging.getLogger("batchflow")


@dataclass
class CleanupReport:
    deleted: list[str] = field(default_factory=list)  # "pool LinuxFFmpegPool", "container input"
    kept: list[str] = field(default_factory=list)  # with the reason
    failed: list[str] = field(default_factory=list)


def cleanup_run(
    state: RunState,
    workflow: Workflow | None,
    workspace: Path,
    say: Callable[[str], None],
) -> CleanupReport:
    report = CleanupReport()
    if state.backend == "azure":
        _azure_batch(state, workflow, report, say)
    else:
        _local_compute(state, workspace, report, say)
    _containers(state, workflow, workspace, report, say)
    return report


def _local_compute(
    state: RunState, workspace: Path, report: CleanupReport, say: Callable[[str], None]
) -> None:
    from batchflow.backends.local import processes as local_processes

    # Tasks run in sessions of their own: a killed batchflow leaves them running. Stop them first.
    groups = local_processes.leftovers(state.folder)
    if groups:
        say(f"Stopping {len(groups)} task process group(s) the run left running...")
        for task in local_processes.stop(groups):
            report.deleted.append(f"process of task {task}")
    if state.pool_id is None:
        return
    folder = workspace / "pools" / state.pool_id
    if folder.is_dir():
        say(f"Deleting local pool [{state.pool_id}] ({folder})...")
        shutil.rmtree(folder)
        report.deleted.append(f"pool {state.pool_id}")


def _azure_batch(
    state: RunState, workflow: Workflow | None, report: CleanupReport, say: Callable[[str], None]
) -> None:
    from batchflow.backends.azure.batch import AzureBatchCompute, find_run_resources
    from batchflow.backends.azure.batch_client import batch_client

    client = batch_client()
    compute = AzureBatchCompute(client, None, state.folder, state.run_id, notify=say)
    try:
        pools, jobs = find_run_resources(client, state.run_id)
        if state.job_id is not None and state.job_id.casefold() not in {j.casefold() for j in jobs}:
            log.info("job %s of run %s is gone or belongs to another run", state.job_id, state.run_id)
        for job_id in jobs:
            _attempt(report, f"job {job_id}", say, functools.partial(compute.delete_job, job_id))
        policy = workflow.cleanup.pool if workflow is not None else CleanupAction.DELETE_IF_CREATED
        for pool_id in pools:
            if policy is CleanupAction.KEEP:
                report.kept.append(f"pool {pool_id} (cleanup.pool: keep)")
                continue
            _attempt(report, f"pool {pool_id}", say, functools.partial(compute.delete_pool, pool_id))
        if state.pool_id is not None and state.pool_id.casefold() not in {p.casefold() for p in pools}:
            if state.pool_created:
                log.info("pool %s of run %s is gone", state.pool_id, state.run_id)
            else:
                report.kept.append(f"pool {state.pool_id} (not created by this run)")
    finally:
        compute.close()


def _containers(
    state: RunState,
    workflow: Workflow | None,
    workspace: Path,
    report: CleanupReport,
    say: Callable[[str], None],
) -> None:
    if workflow is None:
        return
    # Only the containers the run created: another run may be using one it found.
    doomed = [c for c in doomed_containers(workflow) if c in state.containers_created]
    if not doomed:
        return
    if state.status is not RunStatus.SUCCEEDED:
        report.kept.extend(
            f"container {c} (the run did not succeed; data is deleted only after success)" for c in doomed
        )
        return
    storage = _storage(state, workspace)
    try:
        for name in doomed:
            _attempt(report, f"container {name}", say, functools.partial(storage.delete_container, name))
    finally:
        storage.close()


def _storage(state: RunState, workspace: Path) -> Storage:
    if state.storage == "azure":
        from batchflow.backends.azure.storage import AzureBlobStorage

        return AzureBlobStorage.from_environment(sas_ttl=3600)
    from batchflow.backends.local.storage import LocalStorage

    return LocalStorage(workspace / "storage")


def _attempt(
    report: CleanupReport, what: str, say: Callable[[str], None], action: Callable[[], object]
) -> None:
    say(f"Deleting {what}...")
    try:
        result = action()
    except BatchflowError as e:
        report.failed.append(f"{what}: {e}")
        return
    if result is False:
        report.kept.append(f"{what} (already gone)")
    else:
        report.deleted.append(what)
