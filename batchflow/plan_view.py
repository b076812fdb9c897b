"""`batchflow plan`: what a run would do (runplan.RunPlan), shown as a table or as JSON. Creates nothing.

A run's own files are shown under `<run id>` (runplan.RUN_ID_PLACEHOLDER): the id is made when it starts."""

from __future__ import annotations

import functools
import json
import json.encoder
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO, TypeVar

from rich.console import Console
from rich.table import Table

from batchflow.model import RenderedTask, UploadItem
from batchflow.redact import JsonRedactor, redact
from batchflow.resume import Decision, summary
from batchflow.runplan import RunPlan

T = TypeVar("T")


def write_plan_json(
    out: TextIO, run: RunPlan, decisions: Sequence[Decision] | None = None, warnings: Sequence[str] = ()
) -> None:
    """The plan as JSON, redacted, as `batchflow plan --output json` prints it; `decisions`
    (resume.decide): whether each task would run, and why.

    Indented, but each upload and each task on one line, written as it is made: the indented JSON of
    100,000 tasks is 80 MB, which json.dumps makes with its pure-Python encoder (indent), millions of
    pieces held at once (2 s and 440 MB more than this). Those lines are made by _upload_line and
    _task_line, which say what _upload_json and _task_json say, in a third of the time."""
    plan = run.plan
    why = {d.task: d for d in decisions or ()}
    head, tail = _plan_parts(run, decisions)
    pretty = JsonRedactor(indent=2)
    lines = JsonRedactor()
    listed = {
        "uploads": _redacted_lines(lines, plan.uploads, _upload_line, _upload_json),
        "tasks": _redacted_lines(
            lines, run.tasks, lambda t: _task_line(t, why.get(t.id)), lambda t: _task_json(t, why.get(t.id))
        ),
    }
    parts = {**head, "task_count": len(run.tasks), **tail, "warnings": list(warnings)}
    out.write("{")
    for n, key in enumerate([*head, "uploads", "task_count", "tasks", *tail, "warnings"]):
        out.write(("," if n else "") + "\n  " + json.dumps(key) + ": ")
        if key in listed:
            empty = True
            for line in listed[key]:
                out.write(("[\n    " if empty else ",\n    ") + line)
                empty = False
            out.write("[]" if empty else "\n  ]")
        else:
            out.write(pretty.dumps(parts[key]).replace("\n", "\n  "))
    out.write("\n}\n")


def _redacted_lines(
    redactor: JsonRedactor, items: Iterable[T], line: Callable[[T], str], data: Callable[[T], object]
) -> Iterator[str]:
    """`line(item)` for each item, but `redactor.dumps(data(item))` for one whose line may hold a
    secret: a line holds each string of its item JSON-escaped (what redactor.suspect looks for),
    and a thousand lines are looked at at once."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == 1000:
            yield from _checked(redactor, chunk, line, data)
            chunk = []
    yield from _checked(redactor, chunk, line, data)


def _checked(
    redactor: JsonRedactor, chunk: list[T], line: Callable[[T], str], data: Callable[[T], object]
) -> list[str]:
    texts = [line(item) for item in chunk]
    if not redactor.suspect("\n".join(texts)):
        return texts
    return [
        redactor.dumps(data(item)) if redactor.suspect(t) else t for item, t in zip(chunk, texts, strict=True)
    ]


def _upload_json(u: UploadItem) -> dict[str, Any]:
    return {"path": str(u.local_path), "container": u.container, "blob": u.blob_name, "size": u.size}


def _upload_line(u: UploadItem) -> str:
    """json.dumps(_upload_json(u)), four times as fast."""
    return (
        f'{{"path": {_q(str(u.local_path))}, "container": {_q(u.container)}, "blob": {_q(u.blob_name)},'
        f' "size": {int(u.size)}}}'
    )


def _task_json(t: RenderedTask, d: Decision | None) -> dict[str, Any]:
    data = {
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
    if d is not None:
        data.update(run=d.run, reason=d.reason, reuse_from=d.reuse.run if d.reuse else None)
    return data


def _task_line(t: RenderedTask, d: Decision | None) -> str:
    """json.dumps(_task_json(t, d)), three times as fast (tests/test_plan_json.py compares them)."""
    inputs = ", ".join(
        f'{{"container": {_q(i.container)}, "blob": {_q(i.blob_name)}, "file_path": {_q(i.file_path)}}}'
        for i in t.inputs
    )
    outputs = ", ".join(
        f'{{"pattern": {_q(o.pattern)}, "container": {_q(o.container)}, "destination": {_q(o.destination)},'
        f' "condition": {_q(o.condition.value)}}}'
        for o in t.outputs
    )
    environment = ", ".join(f"{_q(k)}: {_q(v)}" for k, v in t.environment.items())
    text = (
        f'{{"id": {_q(t.id)}, "command": {_q(t.command)}, "inputs": [{inputs}], "outputs": [{outputs}],'
        f' "environment": {{{environment}}}, "max_retries": {int(t.max_retries)},'
        f' "max_wall_clock": {_number(t.max_wall_clock)}'
    )
    if d is None:
        return text + "}"
    reuse = "null" if d.reuse is None else _q(d.reuse.run)
    return f'{text}, "run": {"true" if d.run else "false"}, "reason": {_q(d.reason)}, "reuse_from": {reuse}}}'


_q: Callable[[str], str] = json.encoder.encode_basestring_ascii  # a string as json.dumps writes it


@functools.lru_cache(maxsize=64)
def _number(value: float | None) -> str:
    return json.dumps(value)


def _plan_parts(run: RunPlan, decisions: Sequence[Decision] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What comes before the uploads, and what after the tasks."""
    plan = run.plan
    wf = plan.workflow
    pool = wf.pool
    head = {
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
    }
    tail = {
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
    return head, tail


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
