"""The JSON the service returns for pools, nodes, jobs, tasks and counts (REST API 2025-06-01).

`*_FIELDS` are each resource's top-level property names, which $select and $filter accept.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Collection
from typing import Any

from .resources import Job, Node, Pool, Task
from .wire import fmt_duration, fmt_time


def _fields(text: str) -> frozenset[str]:
    return frozenset(text.split())


POOL_FIELDS = _fields(
    """
id displayName url eTag lastModified creationTime state stateTransitionTime allocationState
allocationStateTransitionTime vmSize virtualMachineConfiguration resizeTimeout resizeErrors
currentDedicatedNodes currentLowPriorityNodes targetDedicatedNodes targetLowPriorityNodes
enableAutoScale autoScaleFormula autoScaleEvaluationInterval autoScaleRun
enableInterNodeCommunication networkConfiguration startTask applicationPackageReferences
taskSlotsPerNode taskSchedulingPolicy userAccounts metadata stats mountConfiguration identity
upgradePolicy
"""
)
NODE_FIELDS = _fields(
    """
id url state schedulingState stateTransitionTime lastBootTime allocationTime ipAddress
affinityId vmSize totalTasksRun runningTasksCount runningTaskSlotsCount totalTasksSucceeded
recentTasks startTask startTaskInfo errors isDedicated endpointConfiguration nodeAgentInfo
virtualMachineInfo
"""
)
JOB_FIELDS = _fields(
    """
id displayName usesTaskDependencies url eTag lastModified creationTime state stateTransitionTime
previousState previousStateTransitionTime priority allowTaskPreemption maxParallelTasks
constraints jobManagerTask jobPreparationTask jobReleaseTask commonEnvironmentSettings poolInfo
onAllTasksComplete onTaskFailure networkConfiguration metadata executionInfo stats
"""
)
TASK_FIELDS = _fields(
    """
id displayName url eTag lastModified creationTime exitConditions state stateTransitionTime
previousState previousStateTransitionTime commandLine containerSettings resourceFiles
outputFiles environmentSettings affinityInfo constraints requiredSlots userIdentity
executionInfo nodeInfo multiInstanceSettings stats dependsOn applicationPackageReferences
"""
)
# Node state -> key in BatchNodeCounts.
# Node state -> key in BatchNodeCounts.
COUNT_KEYS = {
    "creating": "creating",
    "idle": "idle",
    "offline": "offline",
    "preempted": "preempted",
    "rebooting": "rebooting",
    "reimaging": "reimaging",
    "running": "running",
    "starting": "starting",
    "starttaskfailed": "startTaskFailed",
    "leavingpool": "leavingPool",
    "unknown": "unknown",
    "unusable": "unusable",
    "waitingforstarttask": "waitingForStartTask",
    "deallocated": "deallocated",
    "deallocating": "deallocating",
    "upgradingos": "upgradingOS",
}


def pool_json(pool: Pool, base: str) -> dict[str, Any]:
    body = pool.body
    dedicated = sum(1 for n in pool.nodes.values() if n.dedicated)
    out: dict[str, Any] = {
        "id": pool.id,
        "url": f"{base}/pools/{pool.id}",
        "eTag": pool.etag,
        "lastModified": fmt_time(pool.last_modified),
        "creationTime": fmt_time(pool.created),
        "state": pool.state,
        "stateTransitionTime": fmt_time(pool.state_time),
        "allocationState": pool.allocation_state,
        "allocationStateTransitionTime": fmt_time(pool.allocation_time),
        # As recorded: vmSize reads back lowercased, and an image without a version reads "latest".
        "vmSize": body["vmSize"].lower(),
        "virtualMachineConfiguration": _echo_vm_configuration(body["virtualMachineConfiguration"]),
        "currentDedicatedNodes": dedicated,
        "currentLowPriorityNodes": len(pool.nodes) - dedicated,
        "targetDedicatedNodes": pool.target_dedicated,
        "targetLowPriorityNodes": pool.target_low_priority,
        "enableAutoScale": bool(body.get("enableAutoScale")),
        "enableInterNodeCommunication": bool(body.get("enableInterNodeCommunication")),
        "taskSlotsPerNode": pool.slots_per_node,
        "taskSchedulingPolicy": {"nodeFillType": pool.fill_type.capitalize(), "jobDefaultOrder": "none"},
    }
    if pool.resize_errors and pool.allocation_state == "steady":
        out["resizeErrors"] = pool.resize_errors
    if body.get("enableAutoScale"):
        out["autoScaleFormula"] = body["autoScaleFormula"]
        out["autoScaleEvaluationInterval"] = body.get("autoScaleEvaluationInterval", "PT15M")
        if pool.auto_scale_run is not None:
            out["autoScaleRun"] = pool.auto_scale_run
    else:
        out["resizeTimeout"] = fmt_duration(pool.resize_timeout)
    for key in (
        "displayName",
        "startTask",
        "metadata",
        "networkConfiguration",
        "userAccounts",
        "upgradePolicy",
    ):
        if key in body:
            out[key] = body[key]
    return out


def _echo_vm_configuration(vm: dict[str, Any]) -> dict[str, Any]:
    image = vm.get("imageReference") or {}
    if "virtualMachineImageId" in image or "version" in image:
        return vm
    return {**vm, "imageReference": {**image, "version": "latest"}}


def node_json(
    node: Node, base: str, vm_config: dict[str, Any], start_task: dict[str, Any] | None
) -> dict[str, Any]:
    url = f"{base}/pools/{node.pool_id}/nodes/{node.id}"
    out: dict[str, Any] = {
        "id": node.id,
        "url": url,
        "state": node.state,
        "schedulingState": node.scheduling,
        "stateTransitionTime": fmt_time(node.state_time),
        "allocationTime": fmt_time(node.allocation_time),
        "ipAddress": node.ip,
        "affinityId": f"TVM:{node.id}",
        "vmSize": node.vm_size,
        "totalTasksRun": node.total_run,
        "runningTasksCount": len(node.running),
        "runningTaskSlotsCount": node.used_slots,
        "totalTasksSucceeded": node.total_succeeded,
        "isDedicated": node.dedicated,
        "nodeAgentInfo": {"version": "1.0.0-emulator", "lastUpdateTime": fmt_time(node.allocation_time)},
        "virtualMachineInfo": {"imageReference": vm_config.get("imageReference", {})},
    }
    if node.boot_time is not None:
        out["lastBootTime"] = fmt_time(node.boot_time)
    if node.running:
        out["recentTasks"] = [
            {
                "taskUrl": f"{base}/jobs/{t.job_id}/tasks/{t.id}",
                "jobId": t.job_id,
                "taskId": t.id,
                "taskState": t.state,
                "executionInfo": dict(t.execution),
            }
            for t in node.running
        ]
    if start_task is not None:
        out["startTask"] = start_task
    if node.start_task_info is not None:
        out["startTaskInfo"] = dict(node.start_task_info)
    if node.errors:
        out["errors"] = list(node.errors)
    return out


def job_json(job: Job, base: str) -> dict[str, Any]:
    body = job.body
    out: dict[str, Any] = {
        "id": job.id,
        "url": f"{base}/jobs/{job.id}",
        "eTag": job.etag,
        "lastModified": fmt_time(job.last_modified),
        "creationTime": fmt_time(job.created),
        "state": job.state,
        "stateTransitionTime": fmt_time(job.state_time),
        "priority": body.get("priority", 0),
        "allowTaskPreemption": body.get("allowTaskPreemption", False),
        "maxParallelTasks": body.get("maxParallelTasks", -1),
        "usesTaskDependencies": body.get("usesTaskDependencies", False),
        "constraints": {
            "maxWallClockTime": body.get("constraints", {}).get(
                "maxWallClockTime", fmt_duration(datetime.timedelta.max)
            ),
            "maxTaskRetryCount": body.get("constraints", {}).get("maxTaskRetryCount", 0),
        },
        "poolInfo": _echo_pool_info(body["poolInfo"]),
        "onAllTasksComplete": body.get("onAllTasksComplete", "noaction"),
        "onTaskFailure": body.get("onTaskFailure", "noaction"),
        "executionInfo": {"startTime": fmt_time(job.created)},
    }
    if job.pool_id:
        out["executionInfo"]["poolId"] = job.pool_id
    if job.previous is not None:
        out["previousState"] = job.previous[0]
        out["previousStateTransitionTime"] = fmt_time(job.previous[1])
    if job.end_time is not None:
        out["executionInfo"]["endTime"] = fmt_time(job.end_time)
    if job.terminate_reason is not None:
        out["executionInfo"]["terminateReason"] = job.terminate_reason
    if job.scheduling_error is not None:
        out["executionInfo"]["schedulingError"] = dict(job.scheduling_error)
    for key in ("displayName", "metadata", "commonEnvironmentSettings", "networkConfiguration"):
        if key in body:
            out[key] = body[key]
    return out


def _echo_pool_info(info: dict[str, Any]) -> dict[str, Any]:
    """A job's poolInfo as sent; an auto pool specification reads keepAlive false when it was not sent
    (recordings: tests/recordings/jobs.json, job_get_terminatejob_no_tasks_active)."""
    auto = info.get("autoPoolSpecification")
    if auto is None or "keepAlive" in auto:
        return info
    return {**info, "autoPoolSpecification": {**auto, "keepAlive": False}}


# The properties of a task's JSON a listing renders on their own when only they are needed (its
# $select and $filter name no other): the emulator's shortcut, the same values as task_json's.
_TASK_PARTS: dict[str, Callable[[Task, str], Any]] = {
    "id": lambda task, base: task.id,
    "url": lambda task, base: f"{base}/jobs/{task.job_id}/tasks/{task.id}",
    "eTag": lambda task, base: task.etag,
    "creationTime": lambda task, base: fmt_time(task.created),
    "lastModified": lambda task, base: fmt_time(task.last_modified),
    "state": lambda task, base: task.state,
    "stateTransitionTime": lambda task, base: fmt_time(task.state_time),
    "executionInfo": lambda task, base: dict(task.execution),
}


def task_json(task: Task, base: str, names: Collection[str] | None = None) -> dict[str, Any]:
    """The task's JSON; with `names`, at least those properties of it (all, unless each is one of
    _TASK_PARTS)."""
    if names is not None and all(n in _TASK_PARTS for n in names):
        return {n: _TASK_PARTS[n](task, base) for n in _TASK_PARTS if n in names}
    body = task.body
    out: dict[str, Any] = {
        **{n: part(task, base) for n, part in _TASK_PARTS.items() if n != "executionInfo"},
        "commandLine": body["commandLine"],
        "userIdentity": body.get(
            "userIdentity", {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}}
        ),
        "constraints": {
            "maxWallClockTime": fmt_duration(task.max_wall or datetime.timedelta.max),
            "retentionTime": body.get("constraints", {}).get("retentionTime", "P7D"),
            "maxTaskRetryCount": task.max_retries,
        },
        "requiredSlots": task.required_slots,
        "executionInfo": dict(task.execution),
    }
    if task.previous is not None:
        out["previousState"] = task.previous[0]
        out["previousStateTransitionTime"] = fmt_time(task.previous[1])
    if task.node_info is not None:
        out["nodeInfo"] = dict(task.node_info)
    for key in (
        "displayName",
        "resourceFiles",
        "environmentSettings",
        "exitConditions",
        "affinityInfo",
    ):
        if key in body:
            out[key] = body[key]
    if "outputFiles" in body:
        out["outputFiles"] = [_echo_output_file(f) for f in body["outputFiles"]]
    return out


# Enum values the service echoes in another casing than the one it takes (recordings:
# tests/recordings/README.md): uploadCondition sent "taskCompletion" reads "TaskCompletion";
# nodeFillType reads "Spread".
_UPLOAD_CONDITIONS = {
    "tasksuccess": "TaskSuccess",
    "taskfailure": "TaskFailure",
    "taskcompletion": "TaskCompletion",
}


def _echo_output_file(item: dict[str, Any]) -> dict[str, Any]:
    options = item.get("uploadOptions") or {}
    condition = options.get("uploadCondition")
    if not isinstance(condition, str):
        return item
    echoed = _UPLOAD_CONDITIONS.get(condition.casefold(), condition)
    return {**item, "uploadOptions": {**options, "uploadCondition": echoed}}


def counts_json(job: Job) -> dict[str, Any]:
    return {
        "taskCounts": {**job.counts, **job.results},
        "taskSlotCounts": {**job.slot_counts, **job.slot_results},
    }


def node_counts_json(pool: Pool) -> dict[str, Any]:
    out: dict[str, Any] = {"poolId": pool.id}
    for key, dedicated in (("dedicated", True), ("lowPriority", False)):
        counts = dict.fromkeys(COUNT_KEYS.values(), 0)
        for node in pool.nodes.values():
            if node.dedicated == dedicated:
                counts[COUNT_KEYS[node.state]] += 1
        counts["total"] = sum(counts.values())
        out[key] = counts
    return out
