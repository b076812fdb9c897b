"""`batchflow plan`: what a run would do (runplan.RunPlan), shown as a table or as JSON. Creates nothing.

A run's own files are shown under `<run id>` (runplan.RUN_ID_PLACEHOLDER): the id is made when it starts."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from batchflow.model import RenderedTask
from batchflow.redact import redact
from batchflow.resume import Decision, summary
from batchflow.runplan import RunPlan


def _task_json(t: RenderedTask) -> dict[str, Any]:
    return {
        "id": t.id,
        "command": t.command,
        "inputs": [
            {"container": i.container, "blob": i.blob_name, "file_path": i.file_path} for i in t.inputs
        ],
        "outputs": [
            {
                "pattern": o.pattern,
                "container": o.container,
                "destination": o.destination,
                "condition": o.condition.value,
            }
            for o in t.outputs
        ],
        "environment": dict(t.environment),
        "max_retries": t.max_retries,
        "max_wall_clock": t.max_wall_clock,
    }


def _decision_json(d: Decision | None) -> dict[str, Any]:
    if d is None:
        return {}
    return {"run": d.run, "reason": d.reason, "reuse_from": d.reuse.run if d.reuse else None}


def plan_as_json(run: RunPlan, decisions: Sequence[Decision] | None = None) -> dict[str, Any]:
    """`decisions` (resume.decide): whether each task would run, and why."""
    plan = run.plan
    why = {d.task: d for d in decisions or ()}
    wf = plan.workflow
    pool = wf.pool
    return {
        "workflow": str(wf.path),
        "name": wf.name,
        "pool": {
            "id": pool.id,
            "vm_size": pool.vm_size,
            "dedicated_nodes": pool.dedicated_nodes,
            "spot_nodes": pool.spot_nodes,
            "task_slots_per_node": pool.task_slots_per_node,
            "start_task": plan.start_task.command if plan.start_task else None,
        },
        "job": {"id": wf.job.id},
        "uploads": [
            {"path": str(u.local_path), "container": u.container, "blob": u.blob_name, "size": u.size}
            for u in plan.uploads
        ],
        "task_count": len(run.tasks),
        "tasks": [{**_task_json(t), **_decision_json(why.get(t.id))} for t in run.tasks],
        "resume": None if decisions is None else summary(decisions),
        "logs": None if run.logs is None else {"container": run.logs.container, "prefix": run.logs.prefix},
        "downloads": [
            {
                "container": d.container,
                "prefix": d.prefix,
                "destination": str(d.destination),
                "skip": list(d.skip),
            }
            for d in run.downloads
        ],
        "cleanup": {
            "job": "delete" if run.cleanup.job else "keep",
            "pool": run.cleanup.pool.value,
            "containers_after_success": list(run.cleanup.containers),
        },
    }


def _decision_text(d: Decision | None) -> str:
    if d is None:
        return ""
    if d.reuse is not None:
        return f"no: unchanged since run {d.reuse.run}"
    return f"yes: {d.reason}" if d.run else f"no: {d.reason}"


def print_plan(run: RunPlan, limit: int | None = 20, decisions: Sequence[Decision] | None = None) -> None:
    plan = run.plan
    why = {d.task: d for d in decisions or ()}
    wf = plan.workflow
    pool = wf.pool
    # soft_wrap: the lines above the table are never broken, whatever the width (a pipe gets 80).
    console = Console(file=sys.stdout, highlight=False, soft_wrap=True)
    nbytes = sum(u.size for u in plan.uploads)
    console.print(f"Workflow {wf.name} ({wf.path})", markup=False)
    console.print(f"Uploads: {len(plan.uploads)} files, {nbytes:,} bytes", markup=False)
    console.print(
        f"Pool [{pool.id}]: {pool.vm_size}, {pool.dedicated_nodes} dedicated + {pool.spot_nodes} Spot nodes, "
        f"{pool.task_slots_per_node} task slot(s) per node",
        markup=False,
    )
    if plan.start_task is not None:
        console.print(f"Start task: {redact(plan.start_task.command)}", markup=False)
    console.print(f"Job [{wf.job.id}]: {len(plan.tasks)} tasks", markup=False)
    if decisions is not None:
        console.print(f"Resume: {summary(decisions)}", markup=False)
    table = Table(show_lines=False)
    columns = ("task id", "command", "inputs", "outputs") + (("runs?",) if decisions is not None else ())
    for col in columns:
        table.add_column(col, overflow="fold")
    shown = run.tasks if limit is None else run.tasks[:limit]
    for t in shown:
        table.add_row(
            t.id,
            redact(t.command),
            "\n".join(i.file_path for i in t.inputs),
            "\n".join(f"{o.pattern} -> {o.container}/{o.destination}" for o in t.outputs),
            *((_decision_text(why.get(t.id)),) if decisions is not None else ()),
            end_section=False,
        )
    console.print(table)
    if limit is not None and len(plan.tasks) > limit:
        console.print(f"... {len(plan.tasks) - limit} more tasks (--all to list them)", markup=False)
    if run.logs is not None:
        console.print(f"Task logs: {run.logs.container}/{run.logs.prefix}<task id>/", markup=False)
    for d in run.downloads:
        skip = f" (not {', '.join(d.skip)})" if d.skip else ""
        console.print(f"Download: {d.container}/{d.prefix}{skip} -> {d.destination}", markup=False)
    c = run.cleanup
    after = (
        f"; containers {', '.join(c.containers)} after a run in which every task succeeded"
        if c.containers
        else ""
    )
    console.print(f"Cleanup: job {'deleted' if c.job else 'kept'}; pool {c.pool.value}{after}", markup=False)
