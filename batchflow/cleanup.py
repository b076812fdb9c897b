"""`batchflow cleanup [RUN]`: remove what a run left behind (its job, the pool it created, containers its
workflow's cleanup policy deletes), found through the run state and, on Azure, the run-id metadata.

A run that ends normally cleans up after itself; this is for the runs that did not (a killed process,
a dropped laptop, an interrupted cleanup). Nothing is deleted that the run did not create, unless the
workflow's cleanup policy says so: a pool batchflow did not create (or another run created) is kept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from batchflow.backends import registry
from batchflow.backends.base import Cleanup, Context
from batchflow.model import Workflow
from batchflow.runplan import doomed_containers
from batchflow.state import RunState, RunStatus

CleanupReport = Cleanup  # what `batchflow cleanup` did: deleted, kept (and why), failed


def cleanup_run(
    state: RunState,
    workflow: Workflow | None,
    workspace: Path,
    say: Callable[[str], None],
) -> Cleanup:
    report = Cleanup(say, workspace)
    registry.get(state.backend).clean_up(state, workflow, report)
    _containers(state, workflow, workspace, report)
    return report


def _containers(state: RunState, workflow: Workflow | None, workspace: Path, report: Cleanup) -> None:
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
    ctx = Context(workflow=workflow, workspace=workspace, run_dir=state.folder)
    storage = registry.get(state.storage).storage(ctx)
    try:
        for name in doomed:
            report.attempt(f"container {name}", functools.partial(storage.delete_container, name))
    finally:
        storage.close()
