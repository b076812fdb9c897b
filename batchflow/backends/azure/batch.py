"""Azure Batch as batchflow's Compute (azure-batch 15.x): this module decides what to send when, and
what the answers mean for the run. Its parts: the request bodies come from batch_build, the first
request of a run from access, whose an existing pool or job is (and whether a pool fits) from
existing, task submission from submit, what a pool's nodes say from pool_health, and the task
results with their logs from results.

- Pool: an existing pool of that id is reused if its VM size and image match, else the run stops
  before anything else. A pool still being deleted by an earlier run is waited for. A missing pool
  is made by Batch as the job's auto pool (`auto_pool`, azure.pool_lifetime: job, the default):
  `create_pool` only records it, `create_job` sends it with the job and waits for it (autopool
  reads its id), and Batch deletes it once the job ends, whether batchflow is still there or not.
  Without `auto_pool` the pool is created as a named pool (its metadata names the run), which
  bills until batchflow (or `batchflow cleanup`) deletes it. Waiting for a pool returns as soon as
  one node can run tasks and stops early, with the start task's stderr (pool_health), when every
  node failed its start task or is unusable.
- Job: created with "no action" when all tasks complete, switched to "terminate job" once every task
  is added (`seal_job`), so a client that dies leaves no active job holding the account's quota; and
  with a max wall clock (the workflow's, else `job_wall_clock`), so Batch ends it, and with it its
  auto pool, even if the client died before sealing it.
- Monitor: `task_counts` is ONE Get Task Counts request, whatever the number of tasks. A 429 or 503
  answer (or a lost connection) keeps the last counts and stretches the next wait to the Retry-After
  the service asked for. Only when nothing has moved for `health_interval` while tasks wait does one
  more request look at the pool's node counts (all nodes unusable or start-task-failed -> stop).
- Results: read by `results.TaskResults` for the jobs this compute created, while the job still
  exists (the failed tasks' logs come from the nodes), listed in ranges of the task ids added, in
  parallel, so that the end of a run waits for one round of pages, not one page after the other.
- Deletes: the SDK's delete pollers swallow errors during polling, so their final status is checked.
  A delete already under way (PoolBeingDeleted / JobBeingDeleted, e.g. the SDK resent a DELETE whose
  answer was lost) is waited for like one this call started.
- No answer: azure-core resends a request that got no answer only for idempotent methods, so the POSTs
  and PATCH batchflow must see through (create pool, create job, seal job) are sent once more here; a
  409 then tells whether the first one was done, and for whom.

Every `except` names the errors it handles; Azure's messages reach the user redacted, first line only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.batch import BatchClient
from azure.batch import models as bm
from azure.batch.models._models import BatchJobTerminateOptions  # not exported by azure-batch 15.1.0
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.polling import LROPoller

from batchflow.backends.azure import batch_build as build
from batchflow.backends.azure.access import check_reachable
from batchflow.backends.azure.autopool import auto_pool_of, scheduling_failure
from batchflow.backends.azure.enums import among, is_
from batchflow.backends.azure.errors import NO_ANSWER, batch_error, describe, error_code, retry_after
from batchflow.backends.azure.existing import check_pool_fits, run_of
from batchflow.backends.azure.pool_health import PoolHealth, describe_nodes, resize_failure
from batchflow.backends.azure.results import TaskResults
from batchflow.backends.azure.submit import TRANSIENT_STATUS, submit_tasks
from batchflow.backends.base import Storage
from batchflow.errors import BatchflowError, JobExists, first_line
from batchflow.model import (
    JobSpec,
    PoolSpec,
    RenderedTask,
    ResolvedFile,
    StartTaskSpec,
    TaskCounts,
    TaskInput,
    TaskResult,
)

log = logging.getLogger("batchflow")

_POOL_SELECT = [
    "id",
    "state",
    "allocationState",
    "vmSize",
    "virtualMachineConfiguration",
    "resizeErrors",
    "enableAutoScale",
    "currentDedicatedNodes",
    "currentLowPriorityNodes",
    "targetDedicatedNodes",
    "targetLowPriorityNodes",
    "metadata",
]


@dataclass(frozen=True)
class Timeouts:
    """How long batchflow waits for the service, in seconds, and how often it asks."""

    pool_ready: float = 30 * 60.0  # allocation (Batch's own resize timeout is 15 min) + start tasks
    pool_poll: float = 5.0  # the first interval while waiting for the pool; it grows to 6x
    delete: float = 15 * 60.0  # a pool or job delete to finish (pools take minutes)
    delete_poll: float = 5.0
    health_interval: float = 60.0  # no progress this long, tasks waiting: look at the nodes
    submit: float = 600.0  # all tasks added, retries included
    transient_limit: int = 20  # consecutive failed Get Task Counts before the run stops


# A job's default max wall clock is the longest a live run waits for it (the pool, the submission,
# the monitor) plus this margin, so it never cuts a live run short.
JOB_WALL_CLOCK_MARGIN = 600.0


def default_job_wall_clock(timeouts: Timeouts, monitor_timeout: float) -> float:
    """The max wall clock of a job whose workflow gives none, in seconds: the first usable node
    (pool_ready), every task added (submit), the monitor's timeout, and a margin. A live run stops at
    its monitor timeout before that; Batch ends a job whose run died at that bound."""
    return timeouts.pool_ready + timeouts.submit + monitor_timeout + JOB_WALL_CLOCK_MARGIN


class AzureBatchCompute:
    """The Compute protocol on an Azure Batch account. The constructor does no I/O."""

    def __init__(
        self,
        client: BatchClient,
        storage: Storage | None,
        run_dir: Path,
        run_id: str,
        *,
        submit_concurrency: int = 8,
        endpoint: str = "the Batch account",
        timeouts: Timeouts | None = None,
        notify: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        auto_pool: bool = False,
        job_wall_clock: float | None = None,
    ) -> None:
        """`auto_pool`: a pool this compute would create is the job's auto pool (module docstring).
        `job_wall_clock`: the max wall clock, in seconds, of a job whose JobSpec gives none."""
        if submit_concurrency < 1:
            raise BatchflowError(f"submit concurrency must be at least 1, not {submit_concurrency}")
        self._client = client
        self._storage = storage
        self._run_id = run_id
        self._concurrency = submit_concurrency
        self._endpoint = endpoint  # for messages only
        self.timeouts = timeouts or Timeouts()
        self._notify = notify or (lambda message: None)
        self._clock = clock
        self._sleep = sleep
        self._pool: PoolSpec | None = None
        self._pool_id: str | None = None  # the pool the job runs on: pool.id, or its auto pool's id
        self._auto_pool = auto_pool
        self._auto_spec: bm.BatchAutoPoolSpecification | None = None  # to send with the job
        self._job_wall_clock = job_wall_clock
        self._jobs: set[str] = set()  # jobs this compute created (or found created by this run)
        self._sealed: set[str] = set()  # jobs of this run found sealed already (`batchflow attach`)
        self._container_urls: dict[str, str] = {}
        self._last_counts: dict[str, TaskCounts] = {}
        self._progress_at: dict[str, float] = {}
        self._retry_at = 0.0  # the service asked for no request before this (clock time)
        self._transient = 0
        self._health_checked = 0.0
        self._warned_preempted = False
        self.requests: dict[str, int] = {}  # per operation, for the benchmark and the logs
        self._lock = threading.Lock()
        self._pool_health = PoolHealth(client, run_dir, self._count)
        self._results = TaskResults(client, storage, run_dir, self._count, submit_concurrency)

    def close(self) -> None:
        self._client.close()

    @property
    def _poll_interval(self) -> int:
        # The SDK's pollers sleep this long between GETs; typed int there, but time.sleep takes floats.
        return self.timeouts.delete_poll  # type: ignore[return-value]

    def _count(self, op: str, n: int = 1) -> None:
        with self._lock:
            self.requests[op] = self.requests.get(op, 0) + n

    def check_access(self, job_id: str) -> None:
        """List at most one pool: one request that any role able to run batchflow may make. A wrong
        key (403 AuthenticationFailed), a refused token (401), or an endpoint that is not a Batch
        account (404, no answer) stops the run here, before the inputs are uploaded. Then one GET of
        the job: a job of that id already in the account (another run's, from this machine or
        another, live or left behind) stops the run too, before anything is created."""
        check_reachable(self._client, self._endpoint, self._count)
        found = self._get_job(job_id)
        if found is None or is_(found.state, bm.BatchJobState.DELETING):
            return  # a job being deleted is waited for by create_job
        owner = run_of(found)
        if owner == self._run_id:
            return  # this run's own job: `batchflow attach` takes it over
        raise JobExists(
            f"job {job_id!r} already exists in the Batch account"
            + (
                f" (batchflow run {owner}: if that run is over, `batchflow cleanup {owner}` removes it)"
                if owner
                else " (not made by batchflow)"
            )
            + "; Batch job ids are unique in an account: wait for it, delete it, or change job.id",
            owner,
        )

    # ---- pool -----------------------------------------------------------------------------

    def create_pool(
        self, pool: PoolSpec, start_task: StartTaskSpec | None, start_task_inputs: Sequence[TaskInput] = ()
    ) -> bool:
        self._pool = pool
        existing = self._get_pool(pool.id)
        if existing is not None and is_(existing.state, bm.BatchPoolState.DELETING):
            self._notify(
                f"  pool [{pool.id}] is still being deleted (an earlier run); waiting for it to go..."
            )
            self._wait_gone(lambda: self._get_pool(pool.id), f"pool {pool.id!r}")
            existing = None
        if existing is not None:
            self._pool_id = pool.id
            if run_of(existing) == self._run_id:
                return True  # this run's own pool (`batchflow attach`, or a resent create)
            return self._reuse(pool, existing)
        inputs = [self._resolve(i) for i in start_task_inputs]
        if self._auto_pool:
            self._auto_spec = build.auto_pool_specification(pool, start_task, inputs, self._run_id)
            self._notify(
                f"  pool [{pool.id}] is made with the job, as its auto pool: Batch deletes it when the"
                " job ends (azure.pool_lifetime: job)"
            )
            return True
        self._pool_id = pool.id
        request = build.pool_request(pool, start_task, inputs, self._run_id)
        try:
            self._send_again_if_unanswered("create_pool", lambda: self._client.create_pool(request))
        except ResourceExistsError as e:
            # Created meanwhile: by another client, or by this one when a lost answer was resent.
            if not among(error_code(e), ("PoolExists", "PoolBeingDeleted")):
                raise batch_error(f"cannot create pool {pool.id!r}", e) from None
            found = self._get_pool(pool.id)
            if found is None or is_(found.state, bm.BatchPoolState.DELETING):
                raise batch_error(f"cannot create pool {pool.id!r}", e) from None
            if run_of(found) == self._run_id:
                return True
            return self._reuse(pool, found)
        except (HttpResponseError, *NO_ANSWER) as e:
            raise batch_error(f"cannot create pool {pool.id!r}", e) from None
        log.info("created pool %s (run %s)", pool.id, self._run_id)
        return True

    def _reuse(self, pool: PoolSpec, found: bm.BatchPool) -> bool:
        """An existing pool runs the tasks if its VM size and image are the workflow's."""
        check_pool_fits(pool, found)
        owner = run_of(found)
        self._notify(
            f"  reusing existing pool [{pool.id}]"
            + (f" (created by batchflow run {owner})" if owner else " (not created by batchflow)")
        )
        return False

    def wait_for_pool(self, pool_id: str) -> None:
        """Until a node can run tasks (any node idle or running), or a clear reason why none will.
        A pool still to be made as the job's auto pool cannot be waited for yet: `create_job` does."""
        if self._auto_spec is not None and self._pool is not None and is_(pool_id, self._pool.id):
            return
        self._wait_usable(pool_id)

    def _wait_usable(self, pool_id: str, auto_job: str | None = None) -> None:
        """`wait_for_pool`'s loop; `auto_job`: the pool is that job's auto pool, which may not be
        there yet (and whose creation may fail, completing the job)."""
        deadline = self._clock() + self.timeouts.pool_ready
        interval = self.timeouts.pool_poll
        self._notify(f"Waiting for pool [{pool_id}] to have a node ready...")
        last_text = ""
        while True:
            pool = self._get_pool(pool_id)
            if pool is None and auto_job is None:
                raise BatchflowError(f"pool {pool_id!r} disappeared while waiting for its nodes")
            if pool is None:
                found = self._get_job(auto_job or "", select=["id", "state", "executionInfo"])
                failure = scheduling_failure(found, auto_job or "")
                if failure is not None:
                    raise BatchflowError(failure)
                if self._clock() >= deadline:
                    raise BatchflowError(
                        f"pool {pool_id!r} of job {auto_job!r} did not appear within "
                        f"{self.timeouts.pool_ready:.0f} s"
                    )
                self._sleep(min(interval, max(0.0, deadline - self._clock())))
                continue
            if is_(pool.state, bm.BatchPoolState.DELETING):
                raise BatchflowError(f"pool {pool_id!r} is being deleted")
            health = self._pool_health.read(pool_id)
            steady = is_(pool.allocation_state, bm.AllocationState.STEADY)
            if health.usable:
                return
            if steady and health.total and health.broken == health.total:
                raise BatchflowError(self._pool_health.broken_message(pool_id, health))
            failure = resize_failure(pool, health)
            if failure is not None:  # fixed-size and autoscale pools alike
                raise BatchflowError(failure)
            if pool.enable_auto_scale and steady and health.total == 0:
                return  # an autoscale formula may wait for tasks before it adds nodes
            text = describe_nodes(health)
            if text != last_text:
                self._notify(f"  nodes: {text}")
                last_text = text
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise BatchflowError(
                    f"pool {pool_id!r} had no usable node within {self.timeouts.pool_ready:.0f} s ({text})"
                )
            self._sleep(min(interval, remaining))
            interval = min(interval * 1.5, self.timeouts.pool_poll * 6)

    def _get_pool(self, pool_id: str) -> bm.BatchPool | None:
        self._count("get_pool")
        try:
            return self._client.get_pool(pool_id, select=_POOL_SELECT)
        except ResourceNotFoundError:
            return None
        except (HttpResponseError, *NO_ANSWER) as e:
            raise batch_error(f"cannot read pool {pool_id!r}", e) from None

    # ---- job and tasks ----------------------------------------------------------------------

    def create_job(self, job: JobSpec, pool_id: str, run_id: str) -> None:
        """Create the job on `pool_id`, or, when `create_pool` recorded an auto pool for it, with its
        auto pool; then wait for that pool as `wait_for_pool` waits for a named one. The job is this
        run's (and deleted at cleanup) as soon as Batch has it, even if its pool never gets a node."""
        auto = self._auto_spec if self._pool is not None and is_(pool_id, self._pool.id) else None
        target: str | bm.BatchAutoPoolSpecification = auto if auto is not None else pool_id
        request = build.job_request(job, target, run_id, default_wall_clock=self._job_wall_clock)
        for _ in range(2):
            try:
                self._send_again_if_unanswered("create_job", lambda: self._client.create_job(request))
            except ResourceExistsError as e:
                found = self._get_job(job.id)
                if found is not None and run_of(found) == run_id:
                    # Ours: an earlier answer was lost and the request resent, or `batchflow attach`.
                    # Sealed already (set to terminate once its tasks complete, or completed):
                    # the run that sealed it had added every task.
                    if is_(
                        found.all_tasks_complete_mode, bm.BatchAllTasksCompleteMode.TERMINATE_JOB
                    ) or among(found.state, (bm.BatchJobState.TERMINATING, bm.BatchJobState.COMPLETED)):
                        self._sealed.add(job.id)
                    break
                if found is not None and is_(found.state, bm.BatchJobState.DELETING):
                    self._notify(f"  job [{job.id}] is still being deleted (an earlier run); waiting...")
                    self._wait_gone(lambda: self._get_job(job.id), f"job {job.id!r}")
                    continue
                owner = run_of(found) if found is not None else None
                raise BatchflowError(
                    f"job {job.id!r} already exists"
                    + (
                        f" (left by batchflow run {owner}: `batchflow cleanup {owner}` removes it)"
                        if owner
                        else ""
                    )
                    + "; Batch job ids are unique in an account: delete it or change job.id"
                    + f" ({error_code(e)})"
                ) from None
            except (HttpResponseError, *NO_ANSWER) as e:
                raise batch_error(f"cannot create job {job.id!r}", e) from None
            else:
                break
        else:
            raise BatchflowError(
                f"cannot create job {job.id!r}: a job of that id keeps reappearing while deleted"
            )
        self._jobs.add(job.id)
        self._progress_at[job.id] = self._clock()
        if auto is None:
            self._pool_id = self._pool_id or pool_id
            return
        if job.id in self._sealed:  # `batchflow attach` of a job with every task: no pool to wait for
            found = self._get_job(job.id, select=["id", "state", "executionInfo"])
            info = found.execution_info if found is not None else None
            self._pool_id = info.pool_id if info is not None and info.pool_id else None
            return
        self._pool_id = auto_pool_of(
            lambda: self._get_job(job.id, select=["id", "state", "executionInfo"]),
            job.id,
            deadline=self._clock() + self.timeouts.pool_ready,
            clock=self._clock,
            sleep=lambda: self._sleep(self.timeouts.pool_poll),
        )
        self._notify(
            f"  auto pool [{self._pool_id}] made with job [{job.id}]; Batch deletes it when the job ends"
        )
        self._wait_usable(self._pool_id, auto_job=job.id)

    def add_tasks(self, job_id: str, tasks: Sequence[RenderedTask]) -> None:
        self._results.expect_tasks(job_id, (task.id for task in tasks))  # to split the listing by id
        if job_id in self._sealed:
            for task in tasks:
                if task.logs is not None:
                    self._results.expect_logs(task.id, task.logs)
            self._notify(f"  job [{job_id}] already has every task (the run added them all before it died)")
            return
        bodies: list[dict[str, Any]] = []
        for task in tasks:
            if task.logs is not None:
                self._results.expect_logs(task.id, task.logs)
            names = {o.container for o in task.outputs} | ({task.logs.container} if task.logs else set())
            urls = {name: self._container_url(name) for name in names}
            bodies.append(
                build.task_body(
                    task,
                    [self._resolve(i) for i in task.inputs],
                    urls,
                    urls[task.logs.container] if task.logs else None,
                    task.logs.prefix if task.logs else "",
                )
            )
        try:
            report = submit_tasks(
                self._client,
                job_id,
                bodies,
                concurrency=self._concurrency,
                deadline=self.timeouts.submit,
                clock=self._clock,
                sleep=self._sleep,
            )
        except HttpResponseError as e:  # refused as a whole (JobCompleted: ended meanwhile, ...)
            raise batch_error(f"cannot add tasks to job {job_id!r}", e) from None
        self._count("create_task_collection", report.requests)
        log.info(
            "added %d tasks to job %s (%d already there) in %d requests (%d retried, %d split)",
            report.submitted,
            job_id,
            report.already_existed,
            report.requests,
            report.retries,
            report.split_413,
        )

    def seal_job(self, job_id: str) -> None:
        try:
            self._send_again_if_unanswered(
                "update_job", lambda: self._client.update_job(job_id, build.seal_job_request())
            )
        except ResourceExistsError as e:
            # Completed already: sealed by a request whose answer was lost (a job whose tasks are all
            # done completes at once), or terminated. Either way nothing is left to seal.
            if not is_(error_code(e), "JobCompleted"):
                raise batch_error(
                    f"cannot set job {job_id!r} to terminate when its tasks complete", e
                ) from None
        except (HttpResponseError, *NO_ANSWER) as e:
            raise batch_error(f"cannot set job {job_id!r} to terminate when its tasks complete", e) from None

    def task_counts(self, job_id: str) -> TaskCounts:
        """One Get Task Counts request. Throttled or failed: the last counts, and a longer next wait."""
        last = self._last_counts.get(job_id, TaskCounts())
        try:
            self._count("get_job_task_counts")
            result = self._client.get_job_task_counts(job_id, retry_total=0)
        except HttpResponseError as e:
            if e.status_code not in TRANSIENT_STATUS:
                raise batch_error(f"cannot read the task counts of job {job_id!r}", e) from None
            return self._transient_failure(job_id, describe(e), retry_after(e), last)
        except NO_ANSWER as e:
            return self._transient_failure(job_id, f"{type(e).__name__}: {first_line(str(e))}", None, last)
        self._transient = 0
        c = result.task_counts
        counts = TaskCounts(active=c.active, running=c.running, succeeded=c.succeeded, failed=c.failed)
        now = self._clock()
        if counts != last:
            self._last_counts[job_id] = counts
            self._progress_at[job_id] = now
        elif (
            counts.active > 0
            and counts.running == 0
            and now - self._progress_at.get(job_id, now) >= self.timeouts.health_interval
            and now - self._health_checked >= self.timeouts.health_interval
        ):
            self._health_checked = now
            self._check_nodes()
        return counts

    def _transient_failure(self, job_id: str, why: str, delay: float | None, last: TaskCounts) -> TaskCounts:
        self._transient += 1
        if self._transient >= self.timeouts.transient_limit:
            raise BatchflowError(
                f"cannot read the task counts of job {job_id!r}: "
                f"{self._transient} failures in a row; last: {why}"
            )
        log.info("task counts of %s: %s (retry after %s s)", job_id, why, delay)
        if delay is not None:
            self._retry_at = max(self._retry_at, self._clock() + delay)
        return last

    def _check_nodes(self) -> None:
        pool_id = self._pool_id
        if pool_id is None:
            return
        health = self._pool_health.read(pool_id)
        if health.usable:
            return
        if health.total and health.broken == health.total:
            raise BatchflowError(self._pool_health.broken_message(pool_id, health))
        if health.total == 0:  # e.g. an autoscale formula that asked for nodes the quota refused
            found = self._get_pool(pool_id)
            failure = resize_failure(found, health) if found is not None else None
            if failure is not None:
                raise BatchflowError(failure)
        if health.preempted and not self._warned_preempted:
            self._warned_preempted = True
            self._notify(
                f"  all Spot nodes of pool [{pool_id}] are preempted ({describe_nodes(health)}); "
                "waiting for Batch to bring nodes back"
            )

    def wait(self, timeout: float) -> None:
        """Sleep `timeout` seconds, or until the Retry-After the service asked for, if later."""
        self._sleep(max(timeout, self._retry_at - self._clock()))

    def task_results(self, job_id: str, task_ids: Iterable[str] | None = None) -> list[TaskResult]:
        """Completed tasks, listed ($filter, $select) in ranges of the ids added, in parallel; failed
        ones with their logs."""
        if job_id not in self._jobs:
            return []
        return self._results.completed(job_id, task_ids)

    def stop(self) -> None:
        """Ctrl-C or an error: terminate the jobs this run created, which ends their running tasks."""
        for job_id in sorted(self._jobs):
            try:
                self._count("terminate_job")
                # Without options the SDK cannot build the request (no content type): pass a reason.
                poller = self._client.begin_terminate_job(
                    job_id,
                    BatchJobTerminateOptions(termination_reason="batchflow stopped the run"),
                    polling_interval=self._poll_interval,
                )
                self._finish(poller, f"terminating job {job_id!r}", wait=60.0)
            except BatchflowError as e:
                log.warning("%s", e)
            except ResourceNotFoundError:
                continue
            except HttpResponseError as e:
                if among(error_code(e), ("JobCompleted", "JobBeingTerminated", "JobBeingDeleted")):
                    continue
                log.warning("cannot terminate job %s: %s", job_id, describe(e))
            except NO_ANSWER as e:
                log.warning("cannot terminate job %s: %s", job_id, describe(e))

    # ---- deletes --------------------------------------------------------------------------------

    def delete_job(self, job_id: str) -> None:
        """Delete a job this run created: one this compute created, or one whose metadata names this
        run (an interrupt during create_job; `batchflow cleanup`). Any other job is left alone: a
        second run must never delete the first run's live job."""
        if job_id not in self._jobs:
            found = self._get_job(job_id)
            if found is None:
                return
            if run_of(found) != self._run_id:
                log.info("job %s is not run %s's (run %s): kept", job_id, self._run_id, run_of(found))
                return
        self._delete("job", job_id, self._client.begin_delete_job, self._get_job)
        self._jobs.discard(job_id)

    def delete_pool(self, pool_id: str) -> None:
        """Delete the pool. The workflow's pool id, when this compute made it as an auto pool, means
        that auto pool (none made yet: nothing to delete); Batch deletes it with its job anyway, and
        one already being deleted is waited for."""
        if self._auto_spec is not None and self._pool is not None and is_(pool_id, self._pool.id):
            if self._pool_id is None:
                return
            pool_id = self._pool_id
        self._delete("pool", pool_id, self._client.begin_delete_pool, self._get_pool)

    def _delete(
        self,
        kind: str,
        name: str,
        begin: Callable[..., LROPoller[None]],
        get: Callable[[str], object | None],
    ) -> None:
        """Send the DELETE and wait until Batch confirms it. Gone already: nothing to do. Being deleted
        already (the SDK resent a DELETE whose answer was lost): waited for the same way."""
        being_deleted = "JobBeingDeleted" if kind == "job" else "PoolBeingDeleted"
        try:
            self._count(f"delete_{kind}")
            poller = begin(name, polling_interval=self._poll_interval)
        except ResourceNotFoundError:
            return
        except ResourceExistsError as e:
            if not is_(error_code(e), being_deleted):
                raise batch_error(f"cannot delete {kind} {name!r}", e) from None
            poller = None
        except (HttpResponseError, *NO_ANSWER) as e:
            raise batch_error(f"cannot delete {kind} {name!r}", e) from None
        if kind == "pool":
            self._notify(f"  pool [{name}] is being deleted; waiting for Batch to confirm...")
        if poller is None:
            self._wait_gone(lambda: get(name), f"{kind} {name!r}")
        else:
            self._finish(poller, f"deleting {kind} {name!r}", wait=self.timeouts.delete)

    def _send_again_if_unanswered(self, op: str, send: Callable[[], object]) -> None:
        """Send a POST/PATCH, and once more if the connection failed or its answer was lost: azure-core
        resends those only for idempotent methods. A resent create may then get 409: the caller checks
        whose the resource is."""
        self._count(op)
        try:
            send()
        except NO_ANSWER as e:
            log.info("%s: no answer (%s); sending it again", op, first_line(str(e)))
            self._count(op)
            send()

    def _finish(self, poller: LROPoller[None], what: str, *, wait: float) -> None:
        """Wait for a delete/terminate poller and check how it ended: pollers swallow errors."""
        poller.wait(timeout=wait)
        if not poller.done():
            raise BatchflowError(f"{what}: still in progress after {wait:g} s; Batch goes on with it")
        status = poller.status()
        if not is_(status, "Succeeded"):
            raise BatchflowError(f"{what} failed (the service's poller ended {status!r})")

    def _wait_gone(self, get: Callable[[], object | None], what: str) -> None:
        deadline = self._clock() + self.timeouts.delete
        while get() is not None:
            if self._clock() >= deadline:
                raise BatchflowError(f"{what} is still being deleted after {self.timeouts.delete:.0f} s")
            self._sleep(self.timeouts.delete_poll)

    def _get_job(
        self, job_id: str, select: Sequence[str] = ("id", "state", "metadata", "onAllTasksComplete")
    ) -> bm.BatchJob | None:
        self._count("get_job")
        try:
            return self._client.get_job(job_id, select=list(select))
        except ResourceNotFoundError:
            return None
        except (HttpResponseError, *NO_ANSWER) as e:
            raise batch_error(f"cannot read job {job_id!r}", e) from None

    # ---- storage URLs ----------------------------------------------------------------------------

    def _resolve(self, item: TaskInput) -> ResolvedFile:
        return ResolvedFile(self._need_storage().resource_url(item.container, item.blob_name), item.file_path)

    def _container_url(self, name: str) -> str:
        url = self._container_urls.get(name)
        if url is None:
            url = self._container_urls[name] = self._need_storage().container_url(name)
        return url

    def _need_storage(self) -> Storage:
        if self._storage is None:
            raise BatchflowError("this Azure Batch compute was made without storage: it cannot make SAS URLs")
        return self._storage
