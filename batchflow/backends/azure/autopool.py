"""A job's auto pool, as the job tells of it: which pool Batch made for it, or why it made none.

Batch creates a job's auto pool itself (poolLifetimeOption "job": "The Batch service creates the
Pool when it creates the Job") and names it: the job's executionInfo.poolId "contains the ID of that
auto Pool" (BatchPoolLifetimeOption, BatchJobExecutionInfo, REST spec 2025-06-01; a recorded job
read it right after its creation, an upper-case GUID when no prefix was given). "If auto Pool
creation fails, the Batch service moves the Job to a completed state, and the Pool creation error is
set in the Job's scheduling error property" (BatchPoolInfo).
"""

from __future__ import annotations

from collections.abc import Callable

from azure.batch import models as bm

from batchflow.backends.azure.enums import is_
from batchflow.errors import BatchflowError, first_line
from batchflow.redact import redact


def scheduling_failure(job: bm.BatchJob | None, job_id: str) -> str | None:
    """Why Batch made no pool for the job (it completed with a scheduling error, or is gone), or None."""
    if job is None:
        return f"job {job_id!r} disappeared before its auto pool was made"
    info = job.execution_info
    error = info.scheduling_error if info is not None else None
    if error is None and not is_(job.state, bm.BatchJobState.COMPLETED):
        return None
    if error is None:
        reason = (info.termination_reason if info is not None else None) or "no reason given"
        return f"job {job_id!r} ended ({reason}) before its auto pool was made"
    why = f"{error.code}: {first_line(error.message or '')}"
    return redact(f"Batch could not create the auto pool of job {job_id!r}: {why}")


def auto_pool_of(
    get_job: Callable[[], bm.BatchJob | None],
    job_id: str,
    *,
    deadline: float,
    clock: Callable[[], float],
    sleep: Callable[[], None],
) -> str:
    """The id of the auto pool Batch made for job `job_id`: read from the job (`get_job`) until it is
    there, the job says why there is none, or `deadline` (on `clock`) passes."""
    while True:
        job = get_job()
        info = job.execution_info if job is not None else None
        if info is not None and info.pool_id:
            return info.pool_id
        failure = scheduling_failure(job, job_id)
        if failure is not None:
            raise BatchflowError(failure)
        if clock() >= deadline:
            raise BatchflowError(f"job {job_id!r} named no auto pool before the pool timeout")
        sleep()
