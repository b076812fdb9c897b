"""The operations of the Batch REST API, on the store: each validates, changes state, returns JSON.

Errors are raised as ServiceError with the service's status and code. Request bodies are validated
by `validate`; collections of tasks get one result per task.
"""

from __future__ import annotations

import bisect
import datetime
import functools
import random
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import validate
from .lifecycle import Lifecycle, job_wall_deadline
from .odata import Bound
from .render import counts_json, job_json, node_counts_json, node_json, pool_json, task_json
from .resources import Job, Pool, Task
from .state import Store
from .wire import ServiceError, error_json, fmt_time, invalid_property, now

MAX_TASKS_PER_COLLECTION = 100
DEFAULT_RESIZE_TIMEOUT = datetime.timedelta(minutes=15)


class Service:
    def __init__(self, store: Store, lifecycle: Lifecycle) -> None:
        self.store = store
        self.lifecycle = lifecycle

    # ---- pools ------------------------------------------------------------------------------

    def create_pool(self, raw: Any) -> Pool:
        body = validate.pool_body(raw)
        store = self.store
        with store.lock:
            existing = store.pools.get(body["id"].casefold())
            if existing is not None:
                raise ServiceError(409, "PoolBeingDeleted" if existing.state == "deleting" else "PoolExists")
            return self._add_pool(body["id"], body)

    def _add_pool(self, pool_id: str, body: dict[str, Any]) -> Pool:
        """A new pool of validated settings `body` (lock held): Create Pool's, or an auto pool's."""
        store = self.store
        if body.get("enableAutoScale"):
            dedicated, low = validate.autoscale_targets(body["autoScaleFormula"])
        else:
            dedicated, low = (
                body.get("targetDedicatedNodes") or 0,
                body.get("targetLowPriorityNodes") or 0,
            )
        pool = Pool(
            id=pool_id,
            body=body,
            target_dedicated=dedicated,
            target_low_priority=low,
            slots_per_node=body.get("taskSlotsPerNode", 1),
            fill_type=(body.get("taskSchedulingPolicy") or {}).get("nodeFillType", "spread"),
            resize_timeout=validate.duration(body, "resizeTimeout") or DEFAULT_RESIZE_TIMEOUT,
        )
        if body.get("enableAutoScale"):
            pool.auto_scale_run = {
                "timestamp": fmt_time(now()),
                "results": f"$TargetDedicatedNodes={dedicated};$TargetLowPriorityNodes={low};"
                "$NodeDeallocationOption=requeue",
            }
        # Even with no target nodes, a new pool reads allocationState "resizing" until the first
        # resize completes (recordings; tests/recordings/README.md).
        store.pools[pool.id.casefold()] = pool
        store.wake()
        return pool

    def pool_json(self, pool_id: str) -> dict[str, Any]:
        with self.store.lock:
            return pool_json(self.store.pool(pool_id), self.store.endpoint)

    def pools_json(self) -> list[dict[str, Any]]:
        with self.store.lock:
            return [pool_json(p, self.store.endpoint) for p in self.store.pools.values()]

    def delete_pool(self, pool_id: str) -> None:
        with self.store.lock:
            pool = self.store.pool(pool_id)
            if pool.state == "deleting":
                raise ServiceError(409, "PoolBeingDeleted")
            self.store.begin_pool_delete(pool)

    def resize_pool(self, pool_id: str, raw: Any) -> None:
        body = raw if isinstance(raw, dict) else {}
        with self.store.lock:
            pool = self._active_pool(pool_id)
            if pool.body.get("enableAutoScale"):
                raise ServiceError(
                    409, "AutoScalingEnabled", "The pool has autoscaling enabled: it cannot be resized."
                )
            for name in ("targetDedicatedNodes", "targetLowPriorityNodes"):
                value = body.get(name)
                if value is not None and (not isinstance(value, int) or value < 0):
                    raise invalid_property(name, value, "The value must be a non-negative integer.")
            pool.target_dedicated = body.get("targetDedicatedNodes", pool.target_dedicated)
            pool.target_low_priority = body.get("targetLowPriorityNodes", pool.target_low_priority)
            pool.set_allocation("resizing")
            pool.resize_errors = []
            pool.touch()
            self.store.wake()

    def _active_pool(self, pool_id: str) -> Pool:
        pool = self.store.pool(pool_id)
        if pool.state == "deleting":
            raise ServiceError(409, "PoolBeingDeleted")
        return pool

    def nodes_json(self, pool_id: str) -> list[dict[str, Any]]:
        with self.store.lock:
            pool = self.store.pool(pool_id)
            return [self._node_json(pool, n.id) for n in pool.nodes.values()]

    def node_json(self, pool_id: str, node_id: str) -> dict[str, Any]:
        with self.store.lock:
            self.store.node(pool_id, node_id)
            return self._node_json(self.store.pool(pool_id), node_id)

    def _node_json(self, pool: Pool, node_id: str) -> dict[str, Any]:
        body = pool.body
        return node_json(
            pool.nodes[node_id],
            self.store.endpoint,
            body["virtualMachineConfiguration"],
            body.get("startTask"),
        )

    def node_counts_json(self) -> list[dict[str, Any]]:
        with self.store.lock:
            return [node_counts_json(p) for p in self.store.pools.values()]

    # ---- jobs -------------------------------------------------------------------------------

    def create_job(self, raw: Any) -> Job:
        body = validate.job_body(raw)
        store = self.store
        with store.lock:
            existing = store.jobs.get(body["id"].casefold())
            if existing is not None:
                raise ServiceError(409, "JobBeingDeleted" if existing.state == "deleting" else "JobExists")
            auto = body["poolInfo"].get("autoPoolSpecification")
            pool_id = body["poolInfo"]["poolId"] if auto is None else _auto_pool_id(auto)
            job = Job(id=body["id"], body=body, pool_id=pool_id, started=store.clock())
            job.wall_deadline = job_wall_deadline(job)
            if auto is not None:
                self._create_auto_pool(job, auto)
            store.jobs[job.id.casefold()] = job
            store.wake()
            return job

    def _create_auto_pool(self, job: Job, auto: dict[str, Any]) -> None:
        """poolLifetimeOption "job": "The Batch service creates the Pool when it creates the Job"
        (BatchPoolLifetimeOption, REST spec 2025-06-01). Its id is the job's executionInfo.poolId."""
        job.auto_pool_keep_alive = bool(auto.get("keepAlive", False))
        fault, self.store.auto_pool_fault = self.store.auto_pool_fault, None
        if fault is not None:
            # "If auto Pool creation fails, the Batch service moves the Job to a completed state, and
            # the Pool creation error is set in the Job's scheduling error property" (BatchPoolInfo).
            job.scheduling_error = {"category": "usererror", "code": fault.code, "message": fault.message}
            job.pool_id = ""  # no pool was made
            job.set_state("completed")
            job.end_time = now()
            return
        pool = self._add_pool(job.pool_id, auto["pool"])
        pool.auto_job, pool.auto_prefix = job.id, auto.get("autoPoolIdPrefix")

    def job_json(self, job_id: str) -> dict[str, Any]:
        with self.store.lock:
            return job_json(self.store.job(job_id), self.store.endpoint)

    def jobs_json(self) -> list[dict[str, Any]]:
        with self.store.lock:
            return [job_json(j, self.store.endpoint) for j in self.store.jobs.values()]

    def update_job(self, job_id: str, raw: Any) -> Job:
        body = validate.job_update_body(raw)
        with self.store.lock:
            job = self._open_job(job_id, adding=False)
            for key, value in body.items():
                if key == "constraints":
                    job.body["constraints"] = {**job.body.get("constraints", {}), **value}
                    job.wall_deadline = job_wall_deadline(job)
                else:
                    job.body[key] = value
            if "poolInfo" in body:
                job.pool_id = body["poolInfo"]["poolId"]
            job.touch()
            self.store.wake()
            return job

    def terminate_job(self, job_id: str, reason: str | None) -> Job:
        with self.store.lock:
            job = self._open_job(job_id, adding=False)
            if job.state != "terminating":
                job.terminate_reason = reason or "UserTerminate"
                job.set_state("terminating")
            self.store.wake()
            return job

    def delete_job(self, job_id: str) -> None:
        with self.store.lock:
            job = self.store.job(job_id)
            if job.state == "deleting":
                raise ServiceError(409, "JobBeingDeleted")
            job.set_state("deleting")
            job.delete_due = self.store.after(self.store.timings.job_delete)
            self.store.wake()

    def _open_job(self, job_id: str, *, adding: bool) -> Job:
        job = self.store.job(job_id)
        if job.state == "deleting":
            raise ServiceError(409, "JobBeingDeleted")
        if job.state == "completed" or (adding and job.state == "terminating"):
            raise ServiceError(409, "JobCompleted")
        return job

    def task_counts_json(self, job_id: str) -> dict[str, Any]:
        """The job's task counts; with `counts_lag`, as they were that many seconds ago. Get Task
        Counts: "Note that the numbers returned may not always be up to date. If you need exact task
        counts, use a list query." (REST spec 2025-06-01, Job_GetTaskCounts.)"""
        with self.store.lock:
            job = self.store.job(job_id)
            current = counts_json(job)
            lag = self.store.counts_lag
            if not lag:
                return current
            t = self.store.clock()
            job.counts_seen.append((t, current))
            old = [i for i, (seen, _) in enumerate(job.counts_seen) if seen <= t - lag]
            if not old:
                return counts_json(Job(job.id, {}, job.pool_id))  # nothing that old: the counts of no task
            del job.counts_seen[: old[-1]]
            return job.counts_seen[0][1]

    # ---- tasks ------------------------------------------------------------------------------

    def add_task(self, job_id: str, raw: Any) -> Task:
        body = validate.task_body(raw)
        with self.store.lock:
            job = self._open_job(job_id, adding=True)
            if body["id"].casefold() in job.tasks:
                raise ServiceError(409, "TaskExists")
            task = self._new_task(job, body)
            self.store.wake()
            return task

    def add_tasks(self, job_id: str, raw: Any, request_id: str) -> list[dict[str, Any]]:
        """Add Task Collection: one result per task, in no particular order (recordings: sent
        Task1_0..Task1_9, answered 0,2,3,1,4,7,5,8,6,9), each added task's status "Success" with a
        capital S (recordings at 2025-06-01 and 2024-07-01.20.0; the REST spec's enum and example
        and the SDK say "success")."""
        if not isinstance(raw, dict) or not isinstance(raw.get("value"), list):
            raise ServiceError(400, "InvalidRequestBody", 'The body must be {"value": [task, ...]}.')
        items: Sequence[Any] = raw["value"]
        if len(items) > MAX_TASKS_PER_COLLECTION:
            raise ServiceError(413, "RequestBodyTooLarge")
        results = []
        with self.store.lock:
            job = self._open_job(job_id, adding=True)
            for item in items:
                task_id = item.get("id") if isinstance(item, dict) else None
                try:
                    body = validate.task_body(item)
                    if body["id"].casefold() in job.tasks:
                        raise ServiceError(409, "TaskExists")
                except ServiceError as e:
                    base = self.store.endpoint
                    error = error_json(e.code, e.message, e.values, base, request_id)
                    error.pop("odata.metadata")
                    status = "servererror" if e.status >= 500 else "clienterror"
                    results.append({"status": status, "taskId": task_id, "error": error})
                    continue
                task = self._new_task(job, body)
                results.append(
                    {
                        "status": "Success",
                        "taskId": task.id,
                        "eTag": task.etag,
                        "lastModified": fmt_time(task.last_modified),
                        "location": f"{self.store.endpoint}/jobs/{job.id}/tasks/{task.id}",
                    }
                )
            self.store.wake()
        random.Random(request_id).shuffle(results)  # noqa: S311 (an order, not a secret)
        return results

    def _new_task(self, job: Job, body: dict[str, Any]) -> Task:
        constraints = body.get("constraints") or {}
        job_constraints = job.body.get("constraints") or {}
        retries = constraints.get("maxTaskRetryCount", job_constraints.get("maxTaskRetryCount", 0))
        self.store.task_seq += 1
        task = Task(
            id=body["id"],
            job_id=job.id,
            body=body,
            seq=self.store.task_seq,
            max_retries=retries,
            max_wall=validate.duration(constraints, "maxWallClockTime"),
            required_slots=body.get("requiredSlots", 1),
        )
        job.tasks[task.id.casefold()] = task
        bisect.insort(job.order, task, key=_list_key)
        job.counts["active"] += 1
        job.slot_counts["active"] += task.required_slots
        job.queue.append(task)
        return task

    def task_json(self, job_id: str, task_id: str) -> dict[str, Any]:
        with self.store.lock:
            return task_json(self.store.task(job_id, task_id), self.store.endpoint)

    def tasks_after(
        self, job_id: str, after: str | None, low: Bound | None = None
    ) -> Iterator[tuple[str, Callable[[Collection[str] | None], dict[str, Any]]]]:
        """(list key, JSON renderer) of the job's tasks after key `after`, in the list's order: by
        task id, not by creation (recordings: a task added later, "mytask1sync", listed before
        "mytasksync"; that the order ignores case is an assumption). A page starts where the last
        one ended, or at the filter's lower bound on id `low` if that is further (a binary search,
        not a rescan of every task) and renders only the tasks it looks at, each under the lock."""
        with self.store.lock:
            order = self.store.job(job_id).order
            position = 0 if after is None else bisect.bisect_right(order, after, key=_list_key)
            if low is not None:
                seek = bisect.bisect_left if low.inclusive else bisect.bisect_right
                position = max(position, seek(order, low.value, key=_list_key))
        while True:
            with self.store.lock:
                if position >= len(order):
                    return
                task = order[position]
            position += 1
            if task.state != "deleted":
                yield _list_key(task), functools.partial(self._render_task, task)

    def _render_task(self, task: Task, names: Collection[str] | None = None) -> dict[str, Any]:
        with self.store.lock:
            return task_json(task, self.store.endpoint, names)

    def task_files(self, job_id: str, task_id: str) -> tuple[Path, str]:
        """The task's directory on the node where it last ran, and its files URL."""
        with self.store.lock:
            task = self.store.task(job_id, task_id)
            if task.node_ref is None:
                raise ServiceError(
                    404, "FileNotFound", "The task has not run on a node yet, so it has no files."
                )
            pool = self.store.pools.get(task.node_ref[0].casefold())
            node = pool.nodes.get(task.node_ref[1]) if pool is not None else None
            if node is None:
                raise ServiceError(
                    404, "NodeNotFound", f"The node {task.node_ref[1]} the task ran on no longer exists."
                )
            url = f"{self.store.endpoint}/jobs/{task.job_id}/tasks/{task.id}/files"
            return self.store.task_dir(node, task.job_id, task.id), url

    def node_files(self, pool_id: str, node_id: str) -> tuple[Path, str]:
        with self.store.lock:
            node = self.store.node(pool_id, node_id)
            return node.root, f"{self.store.endpoint}/pools/{node.pool_id}/nodes/{node.id}/files"

    def delete_task(self, job_id: str, task_id: str) -> None:
        with self.store.lock:
            job = self.store.job(job_id)
            self.store.forget(job, self.store.task(job_id, task_id))
            self.store.wake()

    def terminate_task(self, job_id: str, task_id: str) -> None:
        with self.store.lock:
            job = self.store.job(job_id)
            task = self.store.task(job_id, task_id)
            if task.state == "completed":
                raise ServiceError(
                    409, "TaskCompleted", "The specified task is already in a completed state."
                )
            self.lifecycle.end_task(job, task, "The task was terminated by a user request.")
            self.store.wake()


def _list_key(task: Task) -> str:
    return task.id.casefold()


def _auto_pool_id(auto: dict[str, Any]) -> str:
    """An auto pool's id. Without a prefix the service names it with an upper-case GUID (recordings:
    tests/recordings/jobs.json, job_get_terminatejob_no_tasks_active); that a prefix comes first,
    joined by "_", is the emulator's assumption."""
    guid = str(uuid.uuid4()).upper()
    prefix = auto.get("autoPoolIdPrefix")
    return f"{prefix}_{guid}" if prefix else guid
