"""batchflow's model -> azure-batch 15.x request objects. Pure functions: no I/O, no client.

What goes on the wire is `wire(model)` (the SDK sends exactly `as_dict(exclude_readonly=True)`).
Add Task bodies, one per task and thousands per run, are built as that JSON directly (`task_body`);
`task_request` is the same body as a model.

Choices made here, so the Azure backend honours the task contract (backends/base.py) as the local one does:
- Command lines. Batch does not run a command line under a shell; it splits it into words and
  executes them. batchflow runs task commands AND start task commands under `/bin/sh -c`, exactly as
  the local backend does (its start task also runs with /bin/sh), so a command that works locally
  works on a node: the command line is `/bin/sh -c '<command>'`, the command single-quoted as one
  word (a `'` inside becomes `'\\''`). The rendered command already quotes its values, so a hostile
  file name survives both levels.
- Tasks run as the pool-wide non-admin auto user (AZ_BATCH_TASK_USER_IDENTITY=PoolNonAdmin, as
  locally); the start task runs as the pool-wide auto user, admin only when `elevated`.
- Outputs: a pattern without wildcards uploads to `path` = its destination blob name. For a
  pattern with wildcards (`*`, `?`, `[`), Batch treats `path` as a virtual directory it prepends to
  each matched file's name (adding the `/` itself), so the destination prefix is sent without its
  trailing `/`, and omitted when empty. An escaped file name (`a[[]1].mp3`) has brackets, so it
  is sent the same way: `path` is the folder of its destination blob name.
- Task logs: with a log container, `../stdout.txt` and `../stderr.txt` (the task dir is the parent
  of wd/) are uploaded on completion to `<log_prefix><task id>/stdout.txt` and `.../stderr.txt`.
- Task retention on the node: 1 day by default (Batch's default is 7 days). Outputs and logs are
  uploaded to storage when the task completes, so the node copy is only a fallback; a short
  retention frees node disk during long runs.
- Sizing: with autoscale the pool has no fixed targets and no resize timeout (Batch ignores it
  for autoscale pools); otherwise dedicated and Spot targets (Spot is `targetLowPriorityNodes` on
  the wire) and a 15-minute resize timeout.
- Auto pools (azure.pool_lifetime: job): the job carries the pool, as
  poolInfo.autoPoolSpecification with poolLifetimeOption "job" and keepAlive false, so Batch creates
  the pool with the job and deletes it once the job completes (BatchAutoPoolSpecification.keepAlive,
  REST spec 2025-06-01). The pool is the one `pool_request` describes, less its id: Batch names it
  `autoPoolIdPrefix` (pool.id, cut to the 20 characters the spec allows) and a unique part. Its
  metadata names the run, as a named pool's does, so `batchflow cleanup` finds it.
- Job wall clock: the workflow's job.max_wall_clock, else the `default_wall_clock` the compute
  derives from the run's own timeouts: the job always has one, so Batch ends it (and deletes its
  auto pool) even when nobody is left to do so.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from azure.batch import models as bm

from batchflow.errors import BatchflowError
from batchflow.globs import glob_literal, has_magic
from batchflow.model import (
    JobSpec,
    OutputCondition,
    PoolSpec,
    RenderedTask,
    ResolvedFile,
    StartTaskSpec,
    TaskOutput,
)

RESIZE_TIMEOUT = datetime.timedelta(minutes=15)
AUTO_POOL_PREFIX_MAX = 20  # BatchAutoPoolSpecification.autoPoolIdPrefix: "can be up to 20 characters long"
TASK_RETENTION = datetime.timedelta(days=1)
RUN_ID_KEY = "batchflow-run-id"
CREATED_BY_KEY = "batchflow-created-by"
CREATED_BY = "batchflow"
SHELL = "/bin/sh"
TASK_STDOUT = "../stdout.txt"  # relative to wd/: Batch writes the logs in the task dir, wd/'s parent
TASK_STDERR = "../stderr.txt"

_CONDITIONS = {  # the SDK enum's wire values
    OutputCondition.SUCCESS: bm.OutputFileUploadCondition.TASK_SUCCESS.value,
    OutputCondition.FAILURE: bm.OutputFileUploadCondition.TASK_FAILURE.value,
    OutputCondition.COMPLETION: bm.OutputFileUploadCondition.TASK_COMPLETION.value,
}


class WireModel(Protocol):
    """Any azure-batch model: dict-backed, serialized by as_dict."""

    def as_dict(self, *, exclude_readonly: bool = False) -> dict[str, Any]: ...


def wire(model: WireModel) -> dict[str, Any]:
    """The JSON body the SDK sends for `model`."""
    return model.as_dict(exclude_readonly=True)


def shell_command_line(command: str) -> str:
    """`command` as a Batch command line that runs it with `/bin/sh -c`, the command as one word."""
    return f"{SHELL} -c '" + command.replace("'", "'\\''") + "'"


def metadata(run_id: str) -> list[bm.BatchMetadataItem]:
    """What marks a pool or job as batchflow's, and which run made it (`batchflow cleanup` looks for it)."""
    return [
        bm.BatchMetadataItem(name=RUN_ID_KEY, value=run_id),
        bm.BatchMetadataItem(name=CREATED_BY_KEY, value=CREATED_BY),
    ]


def pool_request(
    pool: PoolSpec, start_task: StartTaskSpec | None, start_inputs: Sequence[ResolvedFile], run_id: str
) -> bm.BatchPoolCreateOptions:
    """The Create Pool request: `pool`, the start task chosen for Azure and its resolved files."""
    return bm.BatchPoolCreateOptions(id=pool.id, **_pool_fields(pool, start_task, start_inputs, run_id))


def auto_pool_specification(
    pool: PoolSpec, start_task: StartTaskSpec | None, start_inputs: Sequence[ResolvedFile], run_id: str
) -> bm.BatchAutoPoolSpecification:
    """The pool of `pool_request` as a job's auto pool: created with the job, deleted by Batch once
    the job completes (poolLifetimeOption "job", keepAlive false)."""
    return bm.BatchAutoPoolSpecification(
        auto_pool_id_prefix=auto_pool_prefix(pool.id),
        pool_lifetime_option=bm.BatchPoolLifetimeOption.JOB,
        keep_alive=False,
        pool=bm.BatchPoolSpecification(**_pool_fields(pool, start_task, start_inputs, run_id)),
    )


def auto_pool_prefix(pool_id: str) -> str:
    """What an auto pool's id starts with: the workflow's pool.id, cut to what Batch allows."""
    return pool_id[:AUTO_POOL_PREFIX_MAX]


def _pool_fields(
    pool: PoolSpec, start_task: StartTaskSpec | None, start_inputs: Sequence[ResolvedFile], run_id: str
) -> dict[str, Any]:
    """What a named pool (BatchPoolCreateOptions) and an auto pool (BatchPoolSpecification) share."""
    image = pool.image
    fields: dict[str, Any] = {
        "vm_size": pool.vm_size,
        "virtual_machine_configuration": bm.VirtualMachineConfiguration(
            image_reference=bm.BatchVmImageReference(
                publisher=image.publisher, offer=image.offer, sku=image.sku, version=image.version
            ),
            node_agent_sku_id=pool.node_agent_sku_id,
        ),
        "task_slots_per_node": pool.task_slots_per_node,
        "start_task": _start_task(start_task, start_inputs) if start_task is not None else None,
        "metadata": metadata(run_id),
    }
    if pool.autoscale is not None:
        fields["enable_auto_scale"] = True
        fields["auto_scale_formula"] = pool.autoscale.formula
        fields["auto_scale_evaluation_interval"] = _duration(pool.autoscale.evaluation_interval)
    else:
        fields["enable_auto_scale"] = False
        fields["target_dedicated_nodes"] = pool.dedicated_nodes
        fields["target_low_priority_nodes"] = pool.spot_nodes
        fields["resize_timeout"] = RESIZE_TIMEOUT
    return fields


def _start_task(spec: StartTaskSpec, inputs: Sequence[ResolvedFile]) -> bm.BatchStartTask:
    elevation = bm.ElevationLevel.ADMIN if spec.elevated else bm.ElevationLevel.NON_ADMIN
    return bm.BatchStartTask(
        command_line=shell_command_line(spec.command),
        resource_files=_resource_files(inputs),
        environment_settings=_environment(spec.environment),
        user_identity=_auto_user(elevation),
        max_task_retry_count=spec.max_retries,
        wait_for_success=spec.wait_for_success,
    )


def job_request(
    job: JobSpec,
    pool: str | bm.BatchAutoPoolSpecification,
    run_id: str,
    *,
    default_wall_clock: float | None = None,
) -> bm.BatchJobCreateOptions:
    """The Create Job request, on the pool of that id or on an auto pool (`auto_pool_specification`).
    It does nothing when all tasks complete: a job with no tasks yet counts as complete, so
    `seal_job_request` switches it to terminate-job once every task is added. Its max wall clock is
    job.max_wall_clock, else `default_wall_clock`."""
    pool_info = (
        bm.BatchPoolInfo(pool_id=pool)
        if isinstance(pool, str)
        else bm.BatchPoolInfo(auto_pool_specification=pool)
    )
    wall_clock = job.max_wall_clock if job.max_wall_clock is not None else default_wall_clock
    return bm.BatchJobCreateOptions(
        id=job.id,
        pool_info=pool_info,
        all_tasks_complete_mode=bm.BatchAllTasksCompleteMode.NO_ACTION,
        constraints=bm.BatchJobConstraints(
            max_wall_clock_time=_optional_duration(wall_clock),
            max_task_retry_count=job.max_task_retries,
        ),
        metadata=metadata(run_id),
    )


def seal_job_request() -> bm.BatchJobUpdateOptions:
    """Every task is added: terminate the job when they have all completed, freeing the account's job quota
    even if batchflow is no longer there to delete it."""
    return bm.BatchJobUpdateOptions(all_tasks_complete_mode=bm.BatchAllTasksCompleteMode.TERMINATE_JOB)


def task_request(
    task: RenderedTask,
    inputs: Sequence[ResolvedFile],
    output_container_urls: Mapping[str, str],
    log_container_url: str | None,
    log_prefix: str,
    *,
    retention: datetime.timedelta = TASK_RETENTION,
) -> bm.BatchTaskCreateOptions:
    """The Add Task request for `task`, as the SDK's model: `task_body` (the same arguments) made
    into a BatchTaskCreateOptions, whose `wire` is that body."""
    return bm.BatchTaskCreateOptions(
        task_body(task, inputs, output_container_urls, log_container_url, log_prefix, retention=retention)
    )


def task_body(
    task: RenderedTask,
    inputs: Sequence[ResolvedFile],
    output_container_urls: Mapping[str, str],
    log_container_url: str | None,
    log_prefix: str,
    *,
    retention: datetime.timedelta = TASK_RETENTION,
) -> dict[str, Any]:
    """The Add Task body for `task`: the JSON the SDK sends for a BatchTaskCreateOptions, built as
    a plain dict (what submit.submit_tasks sends). Building a model costs about 40 us per task,
    most of it on parts every task shares; here the parts that repeat (constraints, identity,
    upload conditions) are the SDK's own wire values, made once.

    `inputs` are its TaskInputs resolved to URLs; `output_container_urls` maps each output container
    name to a container URL with a write SAS. With `log_container_url`, stdout.txt and stderr.txt are
    uploaded there on completion under `<log_prefix><task id>/`.
    """
    body: dict[str, Any] = {"id": task.id, "commandLine": shell_command_line(task.command)}
    if inputs:
        body["resourceFiles"] = [{"httpUrl": f.http_url, "filePath": f.file_path} for f in inputs]
    outputs = [_output_file(out, output_container_urls) for out in task.outputs]
    if log_container_url is not None:
        for pattern in (TASK_STDOUT, TASK_STDERR):
            blob = f"{log_prefix}{task.id}/{pattern.rsplit('/', 1)[-1]}"
            outputs.append(_upload(pattern, log_container_url, blob, OutputCondition.COMPLETION))
    if outputs:
        body["outputFiles"] = outputs
    if task.environment:
        body["environmentSettings"] = [{"name": k, "value": v} for k, v in task.environment.items()]
    body["constraints"] = dict(_task_constraints(task.max_wall_clock, retention, task.max_retries))
    body["userIdentity"] = {"autoUser": dict(_TASK_AUTO_USER)}
    return body


@functools.lru_cache(maxsize=64)
def _task_constraints(
    max_wall_clock: float | None, retention: datetime.timedelta, max_retries: int
) -> Mapping[str, Any]:
    """BatchTaskConstraints' wire form (the SDK writes the durations), made once per distinct value."""
    return wire(
        bm.BatchTaskConstraints(
            max_wall_clock_time=_optional_duration(max_wall_clock),
            retention_time=retention,
            max_task_retry_count=max_retries,
        )
    )


def _output_file(out: TaskOutput, container_urls: Mapping[str, str]) -> dict[str, Any]:
    url = container_urls.get(out.container)
    if url is None:
        raise KeyError(f"no container URL for output container {out.container!r}")
    return _upload(out.pattern, url, out.destination, out.condition)


def _upload(pattern: str, container_url: str, destination: str, condition: OutputCondition) -> dict[str, Any]:
    """An OutputFile's wire form."""
    path = _blob_path(pattern, destination)
    container = {"containerUrl": container_url, "path": path} if path else {"containerUrl": container_url}
    return {
        "filePattern": pattern,
        "destination": {"container": container},
        "uploadOptions": {"uploadCondition": _CONDITIONS[condition]},
    }


def _blob_path(pattern: str, destination: str) -> str:
    """OutputFileBlobContainerDestination.path for a rendered output (empty: the container's root)."""
    if not has_magic(pattern):
        return destination  # one file: its blob name
    literal = glob_literal(pattern)
    if literal is None:
        return destination.rstrip("/")  # a glob: the virtual folder Batch puts the matched files in
    # An escaped name (`a[[]1].mp3` matches only `a[1].mp3`): Batch sees the brackets as wildcards
    # and puts the file, under its own name, in the folder `path`.
    folder, _, name = destination.rpartition("/")
    file_name = literal.rsplit("/", 1)[-1]
    if name != file_name:
        raise BatchflowError(
            f"output {pattern!r} cannot be uploaded as {destination!r} on Azure Batch: a pattern with"
            f" [ ] keeps its file name ({file_name!r}); give the output a destination folder ending in '/'"
        )
    return folder


def _resource_files(inputs: Sequence[ResolvedFile]) -> list[bm.ResourceFile] | None:
    return [bm.ResourceFile(http_url=f.http_url, file_path=f.file_path) for f in inputs] or None


def _environment(env: Mapping[str, str]) -> list[bm.EnvironmentSetting] | None:
    return [bm.EnvironmentSetting(name=k, value=v) for k, v in env.items()] or None


def _auto_user(elevation: bm.ElevationLevel) -> bm.UserIdentity:
    return bm.UserIdentity(
        auto_user=bm.AutoUserSpecification(scope=bm.AutoUserScope.POOL, elevation_level=elevation)
    )


def _duration(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


def _optional_duration(seconds: float | None) -> datetime.timedelta | None:
    return None if seconds is None else datetime.timedelta(seconds=seconds)


# Every task runs as the pool-wide non-admin auto user: its wire form, as the SDK writes it.
_TASK_AUTO_USER: Mapping[str, str] = wire(_auto_user(bm.ElevationLevel.NON_ADMIN))["autoUser"]
