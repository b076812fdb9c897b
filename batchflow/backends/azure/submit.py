"""Add tasks to a Batch job: bounded, parallel, idempotent, over Add Task Collection.

Why not the SDK's `create_tasks`: it retries 5xx answers and per-task server errors with no limit
(notes/azure.md). Here every retry is bounded by one deadline, and a resend is safe: the same task
ids are sent again, and `TaskExists` counts as done (the earlier request was processed but its
answer was lost).

- Tasks are Add Task bodies: batch_build.task_body's dicts (or SDK models, sent as their `wire`).
  Each is serialized once; that JSON measures it and goes into the request body as is (batch_rest).
- Chunks hold at most 100 tasks and a JSON body under `max_body_bytes` (the service's limit is
  1 MB), measured on the exact body sent. A chunk the service still finds too large
  (413 RequestBodyTooLarge) is halved and both halves are sent.
- Per task (statuses compared without case: the live service answers "Success", the spec
  "success"): success -> submitted; TaskExists -> already existed; another client error ->
  reported at the end (BatchflowError naming each task, code and message); server error -> sent
  again later, with back-off; any other status -> reported, never counted as added.
- Whole request: 408, 429, 500, 502, 503, 504 and connection errors (the request may or may not
  have been processed) -> the same chunk again after exponential back-off with jitter, or after
  the Retry-After the service asked for. Any other error (404 job not found, 401, 400) is raised
  as is: retrying cannot fix it.
- `concurrency` worker threads send chunks in parallel. Keep it at or below the HTTP connection
  pool of the client's transport (azure-core's requests transport keeps 10 per host).

The caller's BatchClient should not retry on its own, so this module owns retries and their
bound: construct it with `retry_total=0` (azure-core's RetryPolicy keyword, which BatchClient
passes through). Each request here also passes `retry_total=0`, which overrides the client's
policy for that call, so a client built with the default policy (10 retries) is still bounded.
The answers are read as JSON (batch_rest), and only a task's error, rare, becomes an SDK model.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from batchflow.backends.azure import batch_rest
from batchflow.backends.azure.batch_build import wire
from batchflow.backends.azure.enums import is_
from batchflow.backends.azure.errors import batch_message, describe, retry_after
from batchflow.errors import BatchflowError, first_line

MAX_TASKS_PER_REQUEST = 100
MAX_BODY_BYTES = 1_000_000
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TOO_LARGE = "RequestBodyTooLarge"
TASK_EXISTS = "TaskExists"
BACKOFF_BASE = 0.5  # seconds before the first retry (before jitter)
BACKOFF_MAX = 30.0
LISTED_FAILURES = 20  # client errors listed by name in the final error; the rest are counted

# The body is {"value": [task, task, ...]}, dumped with json's default separators, as the SDK does.
_BODY_OVERHEAD = len(batch_rest.task_group_body([]))
_SEPARATOR = len(", ")

TaskBody = dict[str, Any] | bm.BatchTaskCreateOptions  # batch_build.task_body's dict, or the SDK model


class _Task(NamedTuple):
    id: str
    json: str  # its JSON in the request body; ASCII (json.dumps escapes the rest): one byte a character


@dataclass(frozen=True)
class SubmitReport:
    """What submitting a job's tasks took: tasks added, requests sent, chunks split and resends."""

    submitted: int  # added by this call
    already_existed: int  # TaskExists: added earlier (a resend after a lost answer, or a rerun)
    requests: int  # Add Task Collection requests sent, including failed ones
    split_413: int  # chunks halved after RequestBodyTooLarge
    retries: int  # requests that resent tasks after a transient failure or a server error


@dataclass(frozen=True)
class _Chunk:
    """Tasks sent in one Add Task Collection request."""

    tasks: tuple[_Task, ...]
    attempt: int = 0  # > 0: a resend, sent after a back-off
    reason: str | None = None  # why it is resent


@dataclass
class _Outcome:
    """What one Add Task Collection request came to, for the submitter to act on."""

    submitted: int = 0
    existed: int = 0
    requests: int = 0
    retries: int = 0
    split: tuple[_Chunk, ...] = ()
    resend: _Chunk | None = None
    unsent: int = 0
    last_error: str | None = None
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (task id, code, message)


def submit_tasks(
    client: BatchClient,
    job_id: str,
    tasks: Sequence[TaskBody],
    *,
    concurrency: int = 8,
    deadline: float = 600.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    max_body_bytes: int = MAX_BODY_BYTES,
    jitter: Callable[[], float] = random.random,
) -> SubmitReport:
    """Add every task in `tasks` to job `job_id` exactly once (or find it already there).

    Gives up `deadline` seconds after the start (on `clock`), raising BatchflowError with the number
    of tasks not submitted; raises BatchflowError too if the service refused some tasks. `jitter`
    returns a number in [0, 1) that spreads the back-offs of parallel workers.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    encoded = [_encode(task) for task in tasks]
    _check_unique_ids(encoded)
    sender = _Sender(client, job_id, clock() + deadline, clock, sleep, jitter)
    chunks, too_large = _chunks(encoded, max_body_bytes)
    total = _Outcome(failures=too_large)
    pending: deque[_Chunk] = deque(chunks)
    split_413 = 0
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="batchflow-submit") as pool:
        running: set[Future[_Outcome]] = set()
        try:
            while pending or running:
                while pending and len(running) < concurrency:
                    running.add(pool.submit(sender.send, pending.popleft()))
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    outcome = future.result()
                    _add(total, outcome)
                    if outcome.split:
                        split_413 += 1
                        pending.extendleft(reversed(outcome.split))
                    if outcome.resend is not None:
                        pending.append(outcome.resend)
        finally:
            sender.stop.set()  # on an unexpected error, running workers send nothing more
    if total.unsent or total.failures:
        raise BatchflowError(_failure_message(job_id, len(tasks), deadline, total))
    return SubmitReport(total.submitted, total.existed, total.requests, split_413, total.retries)


class _Sender:
    """Sends one chunk (run in a worker thread), retrying whole-request failures until the deadline."""

    def __init__(
        self,
        client: BatchClient,
        job_id: str,
        deadline_at: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        jitter: Callable[[], float],
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.deadline_at = deadline_at
        self.clock = clock
        self.sleep = sleep
        self.jitter = jitter
        self.stop = threading.Event()

    def backoff(self, attempt: int) -> float:
        """Exponential, capped, with equal jitter: between half and all of BACKOFF_BASE * 2**(attempt-1)."""
        ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2.0 ** max(0, attempt - 1))
        return ceiling / 2 + ceiling / 2 * self.jitter()

    def wait(self, delay: float) -> bool:
        """Sleep `delay` seconds unless that passes the deadline. False: give up."""
        if self.stop.is_set() or self.clock() + delay > self.deadline_at:
            return False
        self.sleep(delay)
        return True

    def send(self, chunk: _Chunk) -> _Outcome:
        out = _Outcome()
        attempt = chunk.attempt
        if attempt > 0 and not self.wait(self.backoff(attempt)):
            out.unsent = len(chunk.tasks)
            out.last_error = chunk.reason
            return out
        while True:
            if self.stop.is_set() or self.clock() >= self.deadline_at:
                out.unsent = len(chunk.tasks)
                return out
            out.requests += 1
            if attempt > 0:
                out.retries += 1
            body = batch_rest.task_group_body([task.json for task in chunk.tasks])
            try:
                result = batch_rest.send(
                    self.client, batch_rest.add_task_collection_request(self.job_id, body), retry_total=0
                )
            except HttpResponseError as e:
                if _is_too_large(e):
                    return _split(chunk, e, out)
                if e.status_code not in TRANSIENT_STATUS:
                    raise
                out.last_error = describe(e)
                delay = retry_after(e)
            except (ServiceRequestError, ServiceResponseError) as e:
                out.last_error = f"{type(e).__name__}: {e}"
                delay = None
            else:
                return _classify(chunk, result, out)
            attempt += 1
            if not self.wait(self.backoff(attempt) if delay is None else delay):
                out.unsent = len(chunk.tasks)
                return out


def _classify(chunk: _Chunk, result: Any, out: _Outcome) -> _Outcome:
    """Reads the answer's JSON (a BatchCreateTaskCollectionResult); a task's error becomes the model."""
    values = result.get("value") if isinstance(result, dict) else None
    by_id = {str(r.get("taskId")).casefold(): r for r in values or [] if isinstance(r, dict)}
    resend: list[_Task] = []
    reason = None
    for task in chunk.tasks:
        task_id = task.id
        r = by_id.get(task_id.casefold())
        status = r.get("status") if r is not None else None
        if is_(status, bm.BatchTaskAddStatus.SUCCESS):
            out.submitted += 1
            continue
        error = bm.BatchError(r["error"]) if r is not None and r.get("error") else None
        if r is None:  # no answer for it: as a server error, resend (bounded by the deadline)
            resend.append(task)
            reason = f"no result for task {task_id!r} in the service's answer"
        elif is_(status, bm.BatchTaskAddStatus.SERVER_ERROR):
            resend.append(task)
            code, message = _task_error(error)
            reason = f"servererror for task {task_id!r}: {code}: {message}"
        elif error is not None and is_(error.code, TASK_EXISTS):
            out.existed += 1
        elif not is_(status, bm.BatchTaskAddStatus.CLIENT_ERROR):
            # Neither added nor refused: never counted as added (a resend could not tell either).
            out.failures.append((task_id, "UnknownStatus", f"the service answered status {status!r}"))
        else:
            out.failures.append((task_id, *_task_error(error)))
    if resend:
        out.resend = _Chunk(tuple(resend), chunk.attempt + 1, reason)
    return out


def _split(chunk: _Chunk, e: HttpResponseError, out: _Outcome) -> _Outcome:
    if len(chunk.tasks) == 1:
        out.failures.append((chunk.tasks[0].id, TOO_LARGE, batch_message(e)))
        return out
    half = len(chunk.tasks) // 2
    out.split = (_Chunk(chunk.tasks[:half], chunk.attempt), _Chunk(chunk.tasks[half:], chunk.attempt))
    return out


def _encode(task: TaskBody) -> _Task:
    """The task's id and JSON: json.dumps of the body the SDK would send for it (its `wire`)."""
    body = task if isinstance(task, dict) else wire(task)
    return _Task(str(body["id"]), json.dumps(body))


def _chunks(tasks: Sequence[_Task], max_body_bytes: int) -> tuple[list[_Chunk], list[tuple[str, str, str]]]:
    """Consecutive chunks of <= 100 tasks whose body is under `max_body_bytes`; tasks too large alone."""
    chunks: list[_Chunk] = []
    too_large: list[tuple[str, str, str]] = []
    current: list[_Task] = []
    size = _BODY_OVERHEAD
    for task in tasks:
        task_size = len(task.json)
        if _BODY_OVERHEAD + task_size >= max_body_bytes:
            message = (
                f"its request body would be {_BODY_OVERHEAD + task_size:,} bytes, over {max_body_bytes:,}"
            )
            too_large.append((task.id, TOO_LARGE, message))
            continue
        added = task_size + (_SEPARATOR if current else 0)
        if current and (len(current) == MAX_TASKS_PER_REQUEST or size + added >= max_body_bytes):
            chunks.append(_Chunk(tuple(current)))
            current, size, added = [], _BODY_OVERHEAD, task_size
        current.append(task)
        size += added
    if current:
        chunks.append(_Chunk(tuple(current)))
    return chunks, too_large


def _check_unique_ids(tasks: Sequence[_Task]) -> None:
    seen: dict[str, str] = {}
    for task in tasks:
        task_id = task.id
        key = task_id.casefold()
        if key in seen:
            raise ValueError(
                f"task ids {seen[key]!r} and {task_id!r} are the same to Batch (ids ignore case)"
            )
        seen[key] = task_id


def _is_too_large(e: HttpResponseError) -> bool:
    return e.status_code == 413 or (e.error is not None and is_(e.error.code, TOO_LARGE))


def _task_error(error: bm.BatchError | None) -> tuple[str, str]:
    if error is None:
        return "(no code)", "(no message)"
    value = error.message.value if error.message is not None else None
    message = first_line(value) if value else "(no message)"
    details = "; ".join(f"{d.key}={d.value}" for d in error.error_values or [])
    return error.code or "(no code)", f"{message} ({details})" if details else message


def _add(total: _Outcome, part: _Outcome) -> None:
    total.submitted += part.submitted
    total.existed += part.existed
    total.requests += part.requests
    total.retries += part.retries
    total.unsent += part.unsent
    total.failures.extend(part.failures)
    if part.last_error is not None and part.unsent:
        total.last_error = part.last_error


def _failure_message(job_id: str, count: int, deadline: float, total: _Outcome) -> str:
    lines: list[str] = []
    if total.unsent:
        line = f"{total.unsent} of {count} tasks were not added to job {job_id!r} within {deadline:g} s"
        lines.append(line + (f"; last error: {total.last_error}" if total.last_error else ""))
    if total.failures:
        lines.append(f"Azure Batch refused {len(total.failures)} of {count} tasks of job {job_id!r}:")
        failures = sorted(total.failures)
        lines.extend(
            f"  {task_id}: {code}: {message}" for task_id, code, message in failures[:LISTED_FAILURES]
        )
        if len(failures) > LISTED_FAILURES:
            lines.append(f"  ... and {len(failures) - LISTED_FAILURES} more")
    return "\n".join(lines)
