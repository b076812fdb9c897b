"""The service's checks on request bodies (pool, job with its auto pool, job update, task), as 400 errors.

Each returns the body it accepted (unchanged: the service stores and echoes what it was sent).
What the emulator cannot do (containers, multi-instance tasks, task dependencies, application
packages, job manager / preparation / release tasks, auto-storage resource files, job schedules'
auto pools) is refused loudly rather than silently ignored.
"""

from __future__ import annotations

import datetime
import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from .wire import ServiceError, check_id, invalid_property, missing_property, parse_duration

MIN_RESIZE_TIMEOUT = datetime.timedelta(minutes=5)
MIN_AUTOSCALE_INTERVAL = datetime.timedelta(minutes=5)
MAX_AUTOSCALE_INTERVAL = datetime.timedelta(hours=168)
MAX_SLOTS_PER_NODE = 256
MAX_AUTO_POOL_PREFIX = 20  # "The prefix can be up to 20 characters long" (BatchAutoPoolSpecification)
_ASSIGNMENT = re.compile(r"\s*\$(TargetDedicatedNodes|TargetLowPriorityNodes)\s*=\s*(\d+)\s*")


def unsupported(what: str) -> ServiceError:
    return ServiceError(501, "NotImplemented", f"The Batch emulator does not support {what}.")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError:
        raise ServiceError(400, "InvalidRequestBody") from None


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ServiceError(400, "InvalidRequestBody", f"{name} must be a JSON object.")
    return value


def _int(body: Mapping[str, Any], name: str, low: int, high: int, default: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise invalid_property(name, value, f"The value must be an integer from {low} to {high}.")
    return value


def _choice(body: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value = body.get(name, choices[0])
    if value not in choices:
        raise invalid_property(name, value, f"The value must be one of: {', '.join(choices)}.")
    return str(value)


def _name_values(body: Mapping[str, Any], name: str) -> None:
    items = body.get(name, [])
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("name"), str) for i in items
    ):
        raise invalid_property(name, json.dumps(items), "Each item needs a name and a value.")


def duration(body: Mapping[str, Any], name: str) -> datetime.timedelta | None:
    return None if body.get(name) is None else parse_duration(name, body[name])


# ---- pools ------------------------------------------------------------------------------------


def pool_body(raw: Any) -> dict[str, Any]:
    body = _object(raw, "The pool")
    check_id("pool", body.get("id"))
    return pool_settings(body)


def pool_settings(body: dict[str, Any]) -> dict[str, Any]:
    """A pool's settings, as Create Pool and an auto pool specification's `pool` share them."""
    if not isinstance(body.get("vmSize"), str) or not body["vmSize"]:
        raise missing_property("vmSize")
    vm = body.get("virtualMachineConfiguration")
    if vm is None:
        raise missing_property("virtualMachineConfiguration")
    _object(vm, "virtualMachineConfiguration")
    if "imageReference" not in vm:
        raise missing_property("virtualMachineConfiguration.imageReference")
    if "nodeAgentSKUId" not in vm:
        raise missing_property("virtualMachineConfiguration.nodeAgentSKUId")
    if "containerConfiguration" in vm:
        raise unsupported("container pools")
    for name in ("applicationPackageReferences", "mountConfiguration"):
        if body.get(name):
            raise unsupported(name)
    autoscale = body.get("enableAutoScale", False)
    if not isinstance(autoscale, bool):
        raise invalid_property("enableAutoScale", autoscale, "The value must be true or false.")
    if autoscale:
        for name in ("targetDedicatedNodes", "targetLowPriorityNodes"):
            if body.get(name) is not None:
                raise invalid_property(
                    name, body[name], f"{name} cannot be specified when enableAutoScale is true."
                )
        if not isinstance(body.get("autoScaleFormula"), str) or not body["autoScaleFormula"].strip():
            raise missing_property("autoScaleFormula")
        interval = duration(body, "autoScaleEvaluationInterval")
        if interval is not None and not MIN_AUTOSCALE_INTERVAL <= interval <= MAX_AUTOSCALE_INTERVAL:
            raise invalid_property(
                "autoScaleEvaluationInterval",
                body["autoScaleEvaluationInterval"],
                "The value must be from 5 minutes to 168 hours.",
            )
    else:
        if body.get("autoScaleFormula") is not None:
            raise invalid_property(
                "autoScaleFormula",
                body["autoScaleFormula"],
                "autoScaleFormula requires enableAutoScale true.",
            )
        # Neither target given is accepted (201) and reads back as 0 and 0 (recordings:
        # tests/recordings/pools.json, pool_create_defaults_omitted / pool_get_metadata_defaults).
        _int(body, "targetDedicatedNodes", 0, 10_000)
        _int(body, "targetLowPriorityNodes", 0, 10_000)
        timeout = duration(body, "resizeTimeout")
        if timeout is not None and timeout < MIN_RESIZE_TIMEOUT:
            raise invalid_property("resizeTimeout", body["resizeTimeout"], "The minimum value is 5 minutes.")
    _int(body, "taskSlotsPerNode", 1, MAX_SLOTS_PER_NODE)
    _choice(body.get("taskSchedulingPolicy") or {}, "nodeFillType", ("spread", "pack"))
    if body.get("startTask") is not None:
        start_task_body(body["startTask"])
    _name_values(body, "metadata")
    return body


def autoscale_targets(formula: str) -> tuple[int, int]:
    """The targets a formula of plain assignments sets; any other formula is beyond the emulator."""
    targets = {"TargetDedicatedNodes": 0, "TargetLowPriorityNodes": 0}
    for statement in formula.split(";"):
        if not statement.strip() or statement.strip().startswith("$NodeDeallocationOption"):
            continue
        m = _ASSIGNMENT.fullmatch(statement)
        if m is None:
            raise unsupported(
                f"the autoscale statement {statement.strip()!r} (only $TargetDedicatedNodes = N; "
                "and $TargetLowPriorityNodes = N; are evaluated)"
            )
        targets[m.group(1)] = int(m.group(2))
    return targets["TargetDedicatedNodes"], targets["TargetLowPriorityNodes"]


def start_task_body(raw: Any) -> dict[str, Any]:
    body = _object(raw, "startTask")
    if not isinstance(body.get("commandLine"), str) or not body["commandLine"].strip():
        raise missing_property("startTask.commandLine")
    if body.get("containerSettings") is not None:
        raise unsupported("start tasks in containers")
    _int(body, "maxTaskRetryCount", -1, 1_000_000)
    if not isinstance(body.get("waitForSuccess", True), bool):
        raise invalid_property("waitForSuccess", body["waitForSuccess"], "The value must be true or false.")
    resource_files(body.get("resourceFiles", []), "startTask.resourceFiles")
    _name_values(body, "environmentSettings")
    return body


# ---- jobs -------------------------------------------------------------------------------------


def job_body(raw: Any) -> dict[str, Any]:
    body = _object(raw, "The job")
    check_id("job", body.get("id"))
    info = body.get("poolInfo")
    if info is None:
        raise missing_property("poolInfo")
    _object(info, "poolInfo")
    # "You must specify either the Pool ID or the auto Pool specification, but not both" (BatchPoolInfo).
    auto = info.get("autoPoolSpecification")
    if auto is not None and info.get("poolId") is not None:
        raise invalid_property(
            "poolInfo", json.dumps(info), "Specify either poolId or autoPoolSpecification, not both."
        )
    if auto is not None:
        auto_pool_body(auto)
    else:
        check_id("pool", info.get("poolId"))
    for name in ("jobManagerTask", "jobPreparationTask", "jobReleaseTask"):
        if body.get(name) is not None:
            raise unsupported(name)
    _job_settings(body)
    return body


def auto_pool_body(raw: Any) -> dict[str, Any]:
    """poolInfo.autoPoolSpecification of a job (BatchAutoPoolSpecification)."""
    body = _object(raw, "autoPoolSpecification")
    if "poolLifetimeOption" not in body:
        raise missing_property("autoPoolSpecification.poolLifetimeOption")
    if body["poolLifetimeOption"] != "job":
        # "jobschedule": "You may apply this option only to Job Schedules, not to Jobs" (the spec).
        raise invalid_property(
            "poolLifetimeOption", body["poolLifetimeOption"], "A job's auto pool must have the lifetime job."
        )
    prefix = body.get("autoPoolIdPrefix")
    if prefix is not None and (
        not isinstance(prefix, str) or not prefix or len(prefix) > MAX_AUTO_POOL_PREFIX
    ):
        raise invalid_property(
            "autoPoolIdPrefix", prefix, f"The prefix can be up to {MAX_AUTO_POOL_PREFIX} characters long."
        )
    if prefix is not None:
        check_id("pool", prefix)
    if not isinstance(body.get("keepAlive", False), bool):
        raise invalid_property("keepAlive", body["keepAlive"], "The value must be true or false.")
    if body.get("pool") is None:
        raise missing_property("autoPoolSpecification.pool")
    pool_settings(_object(body["pool"], "autoPoolSpecification.pool"))
    return body


def job_update_body(raw: Any) -> dict[str, Any]:
    body = _object(raw, "The job update")
    if "poolInfo" in body:
        info = _object(body["poolInfo"], "poolInfo")
        if info.get("autoPoolSpecification") is not None:
            raise unsupported("changing a job's auto pool (PATCH poolInfo.autoPoolSpecification)")
        check_id("pool", info.get("poolId"))
    return _job_settings(body)


def _job_settings(body: dict[str, Any]) -> dict[str, Any]:
    """What Create Job and Update Job share."""
    _choice(body, "onAllTasksComplete", ("noaction", "terminatejob"))
    _choice(body, "onTaskFailure", ("noaction", "performexitoptionsjobaction"))
    _int(body, "priority", -1000, 1000)
    max_parallel = body.get("maxParallelTasks", -1)
    if not isinstance(max_parallel, int) or (max_parallel < 1 and max_parallel != -1):
        raise invalid_property("maxParallelTasks", max_parallel, "The value must be -1 or greater than 0.")
    constraints = _object(body.get("constraints") or {}, "constraints")
    duration(constraints, "maxWallClockTime")
    _int(constraints, "maxTaskRetryCount", -1, 1_000_000)
    _name_values(body, "metadata")
    _name_values(body, "commonEnvironmentSettings")
    return body


# ---- tasks ------------------------------------------------------------------------------------


def task_body(raw: Any) -> dict[str, Any]:
    body = _object(raw, "The task")
    check_id("task", body.get("id"))
    if not isinstance(body.get("commandLine"), str) or not body["commandLine"].strip():
        raise missing_property("commandLine")
    for name, what in (
        ("containerSettings", "tasks in containers (containerSettings)"),
        ("multiInstanceSettings", "multi-instance tasks"),
        ("dependsOn", "task dependencies (dependsOn)"),
        ("applicationPackageReferences", "application packages"),
    ):
        if body.get(name):
            raise unsupported(what)
    resource_files(body.get("resourceFiles", []), "resourceFiles")
    output_files(body.get("outputFiles", []))
    _name_values(body, "environmentSettings")
    constraints = _object(body.get("constraints") or {}, "constraints")
    duration(constraints, "maxWallClockTime")
    duration(constraints, "retentionTime")
    _int(constraints, "maxTaskRetryCount", -1, 1_000_000)
    _int(body, "requiredSlots", 1, MAX_SLOTS_PER_NODE)
    return body


def resource_files(files: Any, name: str) -> None:
    if not isinstance(files, list):
        raise invalid_property(name, files, "The value must be a list.")
    for f in files:
        sources = [k for k in ("httpUrl", "storageContainerUrl", "autoStorageContainerName") if f.get(k)]
        if len(sources) != 1:
            raise invalid_property(
                name,
                json.dumps(f),
                "Exactly one of httpUrl, storageContainerUrl and autoStorageContainerName must be specified.",
            )
        if sources == ["autoStorageContainerName"]:
            raise unsupported("resource files from the auto-storage account (autoStorageContainerName)")
        path = f.get("filePath")
        if sources == ["httpUrl"] and not path:
            raise missing_property(f"{name}.filePath")
        if path is not None:
            relative_path(f"{name}.filePath", path)


def output_files(files: Any) -> None:
    if not isinstance(files, list):
        raise invalid_property("outputFiles", files, "The value must be a list.")
    for f in files:
        if not f.get("filePattern"):
            raise missing_property("outputFiles.filePattern")
        container = ((f.get("destination") or {}).get("container")) or {}
        if not container.get("containerUrl"):
            raise missing_property("outputFiles.destination.container.containerUrl")
        condition = (f.get("uploadOptions") or {}).get("uploadCondition")
        # Sent "taskCompletion"/"taskFailure", the service accepted them (recordings:
        # task_create_output_files); that every casing is accepted is an assumption.
        if not isinstance(condition, str) or condition.casefold() not in (
            "tasksuccess",
            "taskfailure",
            "taskcompletion",
        ):
            raise invalid_property(
                "outputFiles.uploadOptions.uploadCondition",
                condition,
                "The value must be tasksuccess, taskfailure or taskcompletion.",
            )


def relative_path(name: str, path: str) -> str:
    normal = posixpath.normpath(path)
    if path.startswith("/") or normal == ".." or normal.startswith("../"):
        raise invalid_property(
            name,
            path,
            "The path cannot be absolute or break out of the Task's working directory (by using '..').",
        )
    return normal
