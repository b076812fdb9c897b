"""The service's background work: one control loop thread plus a thread per running (start) task.

Each pass of the loop (a "tick"), under the store's lock:
- instant mode: tasks started on the previous tick complete (exit 0, no process);
- pools: deletions finish; allocation adds or removes nodes to reach the targets; nodes move
  creating -> starting -> (start task: waitingforstarttask, or idle) and preempted nodes come back;
- jobs: deletions and terminations finish, job wall clocks expire, and a job with
  onAllTasksComplete=terminatejob, tasks, and no active or running task completes; a job that
  completes or is deleted takes its auto pool with it (keepAlive false);
- scheduling: active tasks go to nodes with free slots (taskSlotsPerNode, requiredSlots,
  nodeFillType spread or pack, the job's maxParallelTasks), highest job priority first.
The loop runs again at once while a pass changed something, else sleeps until woken (every request
that changes state wakes it) or Timings.idle_wait passes. Time is the store's clock (Store.clock), which
BatchEmulator.advance moves ahead.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from typing import Any

from . import execution, start_task
from .environment import node_env
from .resources import SCHEDULABLE, Job, Node, Pool, RunHandle, Task
from .state import Store
from .wire import fmt_time, now, parse_duration

JOIN_TIMEOUT = 10.0


class Lifecycle:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.tick = 0
        self.instant_running: list[tuple[Task, int]] = []
        self.runners: set[threading.Thread] = set()
        self._thread = threading.Thread(target=self._loop, name="batch-emulator-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop, kill every process the emulator started, wait for the runner threads."""
        store = self.store
        with store.lock:
            store.closed = True
            store.wakeup.notify_all()
            for pool in store.pools.values():
                for node in pool.nodes.values():
                    store.evict(node, "emulator closed")
        self._thread.join(JOIN_TIMEOUT)
        for runner in list(self.runners):
            runner.join(JOIN_TIMEOUT)

    def _loop(self) -> None:
        store = self.store
        while True:
            with store.lock:
                if store.closed:
                    return
                busy = not store.paused and self.step(store.clock())
                if not busy:
                    store.wakeup.wait(store.timings.idle_wait)
            if busy:
                time.sleep(0)  # let request threads take the lock between passes

    def step(self, t: float) -> bool:
        self.tick += 1
        changed = self._complete_instant()
        for key, pool in list(self.store.pools.items()):
            changed = self._pool_step(key, pool, t) or changed
        for key, job in list(self.store.jobs.items()):
            changed = self._job_step(key, job, t) or changed
        return self._schedule() or changed

    # ---- pools and nodes --------------------------------------------------------------------

    def _pool_step(self, key: str, pool: Pool, t: float) -> bool:
        store = self.store
        if pool.state == "deleting":
            if pool.delete_due is None or t < pool.delete_due:
                return False
            for node in pool.nodes.values():
                store.evict(node, "pool deleted")
            del store.pools[key]
            return True
        changed = self._allocate(pool)
        for node in list(pool.nodes.values()):
            changed = self._node_step(pool, node, t) or changed
        return changed

    def _allocate(self, pool: Pool) -> bool:
        if pool.allocation_state != "resizing":
            return False
        fault = self.store.for_pool(self.store.allocation_faults, pool)
        pool.resize_errors = []
        for dedicated, target in ((True, pool.target_dedicated), (False, pool.target_low_priority)):
            nodes = [n for n in pool.nodes.values() if n.dedicated == dedicated]
            if fault is not None and fault.fails(dedicated) and target > len(nodes):
                # The resize ends steady with what it had, and says why (resizeErrors is "set only if
                # one or more errors occurred during the last Pool resize, and only when the Pool
                # allocationState is Steady": BatchPool.resizeErrors, REST spec 2025-06-01).
                error = {"code": fault.code, "message": fault.message, "values": []}
                if error not in pool.resize_errors:
                    pool.resize_errors.append(error)
                continue
            for _ in range(target - len(nodes)):
                self._add_node(pool, dedicated)
            surplus = sorted(
                nodes, key=lambda n: (n.state not in ("idle", "preempted", "unusable"), n.used_slots)
            )
            for node in surplus[: max(0, len(nodes) - target)]:
                self.store.evict(node, "node removed from the pool")
                del pool.nodes[node.id]
        pool.set_allocation("steady")
        pool.touch()
        return True

    def _add_node(self, pool: Pool, dedicated: bool) -> None:
        pool.node_seq += 1
        node_id = f"tvmps_{uuid.uuid4().hex}_{'d' if dedicated else 'p'}"
        root = self.store.workdir / pool.id / node_id
        for sub in ("shared", "startup", "workitems"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        seq = pool.node_seq
        node = Node(
            node_id,
            pool.id,
            dedicated,
            root,
            pool.body["vmSize"].lower(),
            ip=f"10.0.{seq // 250}.{seq % 250 + 4}",
        )
        node.due = self.store.after(self.store.timings.boot)
        pool.nodes[node_id] = node

    def _node_step(self, pool: Pool, node: Node, t: float) -> bool:
        if node.state == "creating" and t >= node.due:
            node.set_state("starting")
            return True
        if node.state == "starting":
            node.boot_time = now()
            spec = pool.body.get("startTask")
            if spec is None:
                node.set_state("idle")
            else:
                start_task.begin(self.store, pool, node, spec, self._spawn)
            return True
        if node.state == "preempted" and node.restore_at is not None and t >= node.restore_at:
            node.restore_at = None
            node.set_state("starting")
            return True
        return False

    # ---- jobs ---------------------------------------------------------------------------------

    def _job_step(self, key: str, job: Job, t: float) -> bool:
        store = self.store
        if job.state == "deleting":
            if job.delete_due is None or t < job.delete_due:
                return False
            for task in job.tasks.values():
                if task.state == "running":
                    store.abandon(task, "job deleted")
            del store.jobs[key]
            pool = store.pools.get(job.pool_id.casefold())
            for node in pool.nodes.values() if pool else ():
                shutil.rmtree(node.root / "workitems" / job.id, ignore_errors=True)
            self._release_auto_pool(job)  # a job deleted while active: its auto pool goes too
            return True
        if job.state == "terminating":
            for task in job.tasks.values():
                if task.state == "running":
                    self.end_task(job, task, "The task was terminated because its job was terminated.")
            self._complete(job)
            return True
        if job.state != "active":
            return False
        if job.wall_deadline is not None and t >= job.wall_deadline:
            job.terminate_reason = "MaxWallClockTimeExpiry"
            job.set_state("terminating")
            return True
        # A terminatejob job completes once its tasks are all complete ("The action the Batch service
        # should take when all Tasks in the Job are in the completed state": REST spec). With no task
        # at all it stays active: a recorded zero-task terminatejob job still read "active" 21 s after
        # creation, until deleted (tests/recordings/jobs.json, job_get_terminatejob_no_tasks_active),
        # although the spec says a job with no tasks counts as complete.
        if (
            job.body.get("onAllTasksComplete") == "terminatejob"
            and job.tasks
            and not job.counts["active"]
            and not job.counts["running"]
        ):
            if job.complete_due is None:
                job.complete_due = store.after(store.timings.job_complete)
            if t < job.complete_due:
                return False
            job.terminate_reason = "AllTasksComplete"
            self._complete(job)
            return True
        job.complete_due = None
        return False

    def _complete(self, job: Job) -> None:
        job.set_state("completed")
        job.end_time = now()
        self._release_auto_pool(job)

    def _release_auto_pool(self, job: Job) -> None:
        """An auto pool with keepAlive false is deleted "once its lifetime (as determined by the
        poolLifetimeOption setting) expires; that is, when the Job or Job Schedule completes"
        (BatchAutoPoolSpecification.keepAlive, REST spec 2025-06-01). That a job deleted while still
        active takes its auto pool too is the emulator's assumption."""
        if job.auto_pool_keep_alive is not False:
            return
        pool = self.store.pools.get(job.pool_id.casefold())
        if pool is not None and pool.auto_job == job.id and pool.state != "deleting":
            self.store.begin_pool_delete(pool)

    def end_task(self, job: Job, task: Task, message: str) -> None:
        """Terminate a task: it completes as failed (TaskEnded), killed if it was running."""
        self.store.abandon(task, "task terminated")
        task.execution["endTime"] = fmt_time(now())
        task.execution["failureInfo"] = execution.failure_info("TaskEnded", message)
        self.store.set_task_state(job, task, "completed", "failure")

    # ---- scheduling -------------------------------------------------------------------------

    def _schedule(self) -> bool:
        store = self.store
        changed = False
        jobs = sorted(
            (j for j in store.jobs.values() if j.state == "active" and j.queue),
            key=lambda j: (-j.body.get("priority", 0), j.created),
        )
        for job in jobs:
            pool = store.pools.get(job.pool_id.casefold())
            if pool is None or pool.state != "active":
                continue
            nodes = [n for n in pool.nodes.values() if n.state in SCHEDULABLE and n.scheduling == "enabled"]
            limit = job.body.get("maxParallelTasks", -1)
            while job.queue and (limit == -1 or job.counts["running"] < limit):
                task = job.queue[0]
                if task.state != "active":
                    job.queue.popleft()
                    continue
                node = _pick(nodes, pool, task.required_slots)
                if node is None:
                    break
                job.queue.popleft()
                self._launch(pool, job, task, node)
                changed = True
        return changed

    def _launch(self, pool: Pool, job: Job, task: Task, node: Node) -> None:
        store = self.store
        task.attempt += 1
        store.set_task_state(job, task, "running")
        node.running.append(task)
        node.used_slots += task.required_slots
        node.set_state("running")
        task.node = node
        execution_info = task.execution
        for stale in ("endTime", "exitCode", "failureInfo", "result"):
            execution_info.pop(stale, None)
        execution_info["startTime"] = fmt_time(now())
        if execution_info.get("retryCount"):
            execution_info["lastRetryTime"] = execution_info["startTime"]
        root = f"workitems/{job.id}/job-1/{task.id}"
        node_url = f"{store.endpoint}/pools/{pool.id}/nodes/{node.id}"
        task.node_info = {
            "affinityId": f"TVM:{node.id}",
            "nodeUrl": node_url,
            "poolId": pool.id,
            "nodeId": node.id,
            "taskRootDirectory": root,
            "taskRootDirectoryUrl": f"{node_url}/files/{root}",
        }
        task.node_ref = (pool.id, node.id)
        if store.instant:
            task.instant_due = self.tick + 1
            self.instant_running.append((task, task.attempt))
            return
        task_dir = store.task_dir(node, job.id, task.id)
        body = task.body
        env = node_env(
            account=store.account,
            endpoint=store.endpoint,
            node=node,
            task_dir=task_dir,
            identity=body.get("userIdentity"),
            settings=[job.body.get("commonEnvironmentSettings", []), body.get("environmentSettings", [])],
            ids={"AZ_BATCH_JOB_ID": job.id, "AZ_BATCH_TASK_ID": task.id},
        )
        launch = execution.Launch(
            body["commandLine"],
            task_dir,
            env,
            body.get("resourceFiles", []),
            body.get("outputFiles", []),
            task.max_wall,
        )
        handle = task.handle = RunHandle()
        self._spawn(self._run_task, (task, task.attempt, launch, handle), f"task-{job.id}-{task.id}")

    def _run_task(self, task: Task, attempt: int, launch: execution.Launch, handle: RunHandle) -> None:
        outcome = execution.run(launch, handle)
        with self.store.lock:
            self.finish_attempt(task, attempt, outcome)
            self.store.wakeup.notify_all()

    def _complete_instant(self) -> bool:
        if not self.instant_running:
            return False
        due, self.instant_running = self.instant_running, []
        for task, attempt in due:
            t = now()
            self.finish_attempt(task, attempt, execution.Outcome(t, t, 0, None, retryable=False))
        return True

    def finish_attempt(self, task: Task, attempt: int, outcome: execution.Outcome) -> None:
        store = self.store
        if task.attempt != attempt or task.state != "running" or outcome.killed is not None:
            return  # abandoned (preempted, terminated, deleted): nothing to record
        job = store.jobs.get(task.job_id.casefold())
        if job is None:
            return
        task.attempt += 1
        task.handle = None
        task.instant_due = None
        node = store.release(task)
        succeeded = outcome.failure is None
        if node is not None:
            node.total_run += 1
            node.total_succeeded += succeeded
        info = task.execution
        info["startTime"], info["endTime"] = fmt_time(outcome.start), fmt_time(outcome.end)
        if outcome.exit_code is not None:
            info["exitCode"] = outcome.exit_code
        if outcome.failure is not None:
            info["failureInfo"] = outcome.failure
        if outcome.retryable and (task.max_retries == -1 or info["retryCount"] < task.max_retries):
            info["retryCount"] += 1
            store.set_task_state(job, task, "active")
            job.queue.appendleft(task)
            return
        store.set_task_state(job, task, "completed", "success" if succeeded else "failure")

    # ---- threads ----------------------------------------------------------------------------

    def _spawn(self, target: Any, args: tuple[Any, ...], name: str) -> None:
        def run() -> None:
            try:
                target(*args)
            finally:
                with self.store.lock:
                    self.runners.discard(thread)

        thread = threading.Thread(target=run, name=name, daemon=True)
        self.runners.add(thread)
        thread.start()


def _pick(nodes: list[Node], pool: Pool, slots: int) -> Node | None:
    free = [n for n in nodes if n.state in SCHEDULABLE and pool.slots_per_node - n.used_slots >= slots]
    if not free:
        return None
    if pool.fill_type == "pack":
        return max(free, key=lambda n: n.used_slots)
    return min(free, key=lambda n: n.used_slots)


def job_wall_deadline(job: Job) -> float | None:
    """When the job's maxWallClockTime runs out, on the store's clock: it is "measured from the time the
    Job is created" (BatchJobConstraints, REST spec 2025-06-01), also when a PATCH sets it later."""
    value = (job.body.get("constraints") or {}).get("maxWallClockTime")
    if value is None:
        return None
    return job.started + parse_duration("maxWallClockTime", value).total_seconds()
