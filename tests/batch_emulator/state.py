"""The service's state (pools, jobs, their tasks) and the state changes every part shares.

One re-entrant lock guards everything; `wakeup` (a condition on it) wakes the control loop when
something changed. Ids are case-insensitive and case-preserving, as in Batch: the dicts are keyed
by the casefolded id.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from . import execution
from .resources import Job, Node, Pool, Task
from .wire import ServiceError, fmt_time, now

T = TypeVar("T")


@dataclass
class Timings:
    """How long the service takes to do things, in seconds (0: on the next control-loop pass)."""

    boot: float = 0.0  # a new node: creating/starting before its start task (or idle)
    pool_delete: float = 0.0  # a deleted pool stays in state "deleting"
    job_delete: float = 0.0  # a deleted job stays in state "deleting"
    idle_wait: float = 0.05  # the control loop's longest sleep when nothing is due (it is also woken)
    # A job whose tasks are all complete, with onAllTasksComplete terminatejob, completes this long
    # after (recordings: a terminatejob job with no tasks still read "active" 21 s after creation).
    job_complete: float = 0.0


@dataclass(frozen=True)
class AutoPoolFault:
    """An injected auto pool creation failure: the job completes at once with this scheduling error
    ("If auto Pool creation fails, the Batch service moves the Job to a completed state, and the Pool
    creation error is set in the Job's scheduling error property": BatchPoolInfo, REST spec 2025-06-01)."""

    code: str
    message: str


@dataclass(frozen=True)
class StartTaskFault:
    """An injected start task failure: the command does not run; this is what it 'printed' and returned."""

    exit_code: int
    stderr: str
    stdout: str = ""


@dataclass(frozen=True)
class AllocationFault:
    """An injected allocation failure: nodes of the kinds named are not allocated, and the pool
    reports a resize error (BatchPool.resizeErrors: code, message, values)."""

    code: str
    message: str
    dedicated: bool = True
    spot: bool = True

    def fails(self, dedicated: bool) -> bool:
        return self.dedicated if dedicated else self.spot


@dataclass
class Store:
    account: str
    endpoint: str  # https://account.region.batch.azure.com: resource urls, AZ_BATCH_ACCOUNT_URL
    workdir: Path
    instant: bool
    timings: Timings
    lock: threading.RLock = field(default_factory=threading.RLock)
    pools: dict[str, Pool] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    start_task_faults: dict[str, StartTaskFault] = field(default_factory=dict)  # by casefolded pool id
    start_task_commands: dict[str, str] = field(default_factory=dict)  # overrides, by casefolded pool id
    allocation_faults: dict[str, AllocationFault] = field(default_factory=dict)  # by casefolded pool id
    auto_pool_fault: AutoPoolFault | None = None  # the next auto pool's creation fails
    task_seq: int = 0
    counts_lag: float = 0.0  # Get Task Counts answers what the counts were this many seconds ago
    paused: bool = False
    closed: bool = False
    skew: float = 0.0  # seconds the service's clock is ahead of this machine's (BatchEmulator.advance)
    wakeup: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.wakeup = threading.Condition(self.lock)

    # ---- the service's clock ----------------------------------------------------------------

    def clock(self) -> float:
        """The service's monotonic clock: this machine's, plus what `BatchEmulator.advance` added. Every
        deadline of the service (node boot, deletions, job wall clocks, preemption restores) is on it."""
        return time.monotonic() + self.skew

    def after(self, seconds: float) -> float:
        return self.clock() + seconds

    def wake(self) -> None:
        with self.lock:
            self.wakeup.notify_all()

    # ---- lookups (404s) ---------------------------------------------------------------------

    def pool(self, pool_id: str) -> Pool:
        pool = self.pools.get(pool_id.casefold())
        if pool is None:
            raise ServiceError(404, "PoolNotFound")
        return pool

    def node(self, pool_id: str, node_id: str) -> Node:
        node = self.pool(pool_id).nodes.get(node_id)
        if node is None:
            raise ServiceError(404, "NodeNotFound")
        return node

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id.casefold())
        if job is None:
            raise ServiceError(404, "JobNotFound")
        return job

    def task(self, job_id: str, task_id: str) -> Task:
        task = self.job(job_id).tasks.get(task_id.casefold())
        if task is None:
            raise ServiceError(404, "TaskNotFound")
        return task

    # ---- pool state changes (lock held) -----------------------------------------------------

    def begin_pool_delete(self, pool: Pool) -> None:
        """The pool turns "deleting" (targets 0, allocation "resizing"); the control loop removes it
        and its nodes Timings.pool_delete later."""
        pool.state, pool.state_time = "deleting", now()
        pool.target_dedicated = pool.target_low_priority = 0
        pool.set_allocation("resizing")
        pool.touch()
        pool.delete_due = self.after(self.timings.pool_delete)
        self.wake()

    def for_pool(self, table: Mapping[str, T], pool: Pool) -> T | None:
        """A test's setting for `pool` (fault, start task override): keyed by its id, or, for an auto
        pool, by the autoPoolIdPrefix it was made with (a test cannot know the generated id ahead)."""
        found = table.get(pool.id.casefold())
        if found is None and pool.auto_prefix:
            found = table.get(pool.auto_prefix.casefold())
        return found

    def jobs_on(self, pool_id: str) -> Iterator[Job]:
        key = pool_id.casefold()
        return (j for j in self.jobs.values() if j.pool_id.casefold() == key)

    def task_dir(self, node: Node, job_id: str, task_id: str) -> Path:
        return node.root / "workitems" / job_id / "job-1" / task_id

    # ---- task state changes (lock held) -----------------------------------------------------

    def set_task_state(self, job: Job, task: Task, state: str, result: str | None = None) -> None:
        old = task.state
        if old == "completed":
            key = "succeeded" if task.execution.get("result") == "success" else "failed"
            job.results[key] -= 1
            job.slot_results[key] -= task.required_slots
        job.counts[_bucket(old)] -= 1
        job.slot_counts[_bucket(old)] -= task.required_slots
        job.counts[_bucket(state)] += 1
        job.slot_counts[_bucket(state)] += task.required_slots
        if state == "completed":
            assert result is not None
            task.execution["result"] = result
            key = "succeeded" if result == "success" else "failed"
            job.results[key] += 1
            job.slot_results[key] += task.required_slots
        if state != old:
            task.previous = (old, task.state_time)
            task.state, task.state_time = state, now()
        task.last_modified = now()

    def release(self, task: Task) -> Node | None:
        """Take a running task off its node (its slots free again)."""
        node, task.node = task.node, None
        if node is not None and task in node.running:
            node.running.remove(task)
            node.used_slots -= task.required_slots
            if not node.running and node.state == "running":
                node.set_state("idle")
        return node

    def abandon(self, task: Task, reason: str) -> None:
        """Stop a running attempt: its result, when it comes, is ignored."""
        task.attempt += 1
        task.instant_due = None
        if task.handle is not None:
            execution.kill(task.handle, reason)
            task.handle = None
        self.release(task)

    def requeue(self, job: Job, task: Task, reason: str) -> None:
        """A running task goes back to active (node preempted, unusable or removed), to run again."""
        self.abandon(task, reason)
        task.execution["requeueCount"] = task.execution.get("requeueCount", 0) + 1
        task.execution["lastRequeueTime"] = fmt_time(now())
        self.set_task_state(job, task, "active")
        job.queue.appendleft(task)

    def forget(self, job: Job, task: Task) -> None:
        """Delete a task: stop it, drop it from the job and its counts."""
        if task.state == "running":
            self.abandon(task, "task deleted")
        if task.state == "completed":
            key = "succeeded" if task.execution.get("result") == "success" else "failed"
            job.results[key] -= 1
            job.slot_results[key] -= task.required_slots
        job.counts[_bucket(task.state)] -= 1
        job.slot_counts[_bucket(task.state)] -= task.required_slots
        del job.tasks[task.id.casefold()]
        task.state = "deleted"  # a stale entry left in job.queue is skipped

    def evict(self, node: Node, reason: str) -> None:
        """Every task running on `node` is requeued; its start task is killed."""
        for task in list(node.running):
            job = self.jobs.get(task.job_id.casefold())
            if job is None:
                self.abandon(task, reason)
            else:
                self.requeue(job, task, reason)
        if node.start_handle is not None:
            execution.kill(node.start_handle, reason)
            node.start_handle = None
        node.generation += 1


def _bucket(state: str) -> str:
    return "running" if state in ("running", "preparing") else state
