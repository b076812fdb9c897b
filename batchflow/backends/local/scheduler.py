"""LocalCompute, the Compute protocol on this machine: it decides what runs when (local/node.py runs it).

It owns the pool (a fresh folder of as many nodes as the concurrency needs) and its start task on
every node; jobs; the task queue, taken in submission order by one worker thread per slot; retries;
deadlines (a task's and a job's max_wall_clock, kept by local/deadlines.py); task states, counts and
results; stop and delete; telling an optional TaskObserver of each attempt's start and each task's
end. Inputs' and containers' URLs are made when a task is added, as for a Batch task (a SAS lifetime
counts from there). Nothing polls: workers block in waitpid, callers in a Condition.
It does not own (local/node.py does) the node layout, a task's environment, fetching inputs, process
groups, stdout.txt/stderr.txt, uploading outputs and logs, or the process ledger.

Differences from Batch, by design: the start task always runs as you (`elevated` is never
honoured: no sudo), and `wait_for_pool` always waits for it (a failure only raises when
wait_for_success). Processes a task leaves behind in its process group are killed when it exits.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from batchflow.backends.base import Storage, TaskObserver
from batchflow.backends.local import processes
from batchflow.backends.local.deadlines import Deadlines
from batchflow.backends.local.node import (
    Node,
    NodeTask,
    ProcessHandle,
    SpareFolders,
    StartResult,
    node_environment,
)
from batchflow.backends.local.processes import ProcessLedger
from batchflow.errors import BatchflowError
from batchflow.model import (
    JobSpec,
    PoolSpec,
    RenderedTask,
    ResolvedFile,
    StartTaskSpec,
    TaskCounts,
    TaskInput,
    TaskResult,
    TaskState,
)
from batchflow.names import BATCH_ID
from batchflow.procinfo import boot_time, host_name

log = logging.getLogger("batchflow")

WALL_CLOCK = "max wall clock time exceeded"
JOB_WALL_CLOCK = "job max wall clock time exceeded"
CANCELLED = "cancelled"
JOB_DELETED = "job deleted"
GATHER = 0.05  # seconds of task state changes wait() gathers into one return


@dataclass(eq=False)
class _Job:
    """A job of the local compute: its tasks, their counts by state, and why it ended (if it did)."""

    spec: JobSpec
    pool_id: str
    run_id: str
    tasks: dict[str, _Task] = field(default_factory=dict)
    counts: dict[TaskState, int] = field(default_factory=lambda: dict.fromkeys(TaskState, 0))
    ended: str | None = None  # why the job stopped taking tasks


@dataclass(eq=False)
class _Task:
    """A task of a local job, as the scheduler tracks it from queued to completed."""

    spec: RenderedTask
    job: _Job
    inputs: tuple[ResolvedFile, ...] = ()
    container_urls: dict[str, str] = field(default_factory=dict)  # output and log containers
    state: TaskState = TaskState.ACTIVE
    handle: ProcessHandle = field(default_factory=ProcessHandle)
    attempts: int = 0
    exit_code: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    failure: str | None = None
    outputs: list[str] = field(default_factory=list)
    unmatched_outputs: list[str] = field(default_factory=list)  # glob patterns that matched nothing
    stdout_path: Path | None = None
    stderr_path: Path | None = None


@dataclass(eq=False)
class _Pool:
    """A pool of the local compute: its spec, its nodes, how many tasks run at once, and its start task."""

    spec: PoolSpec
    root: Path
    nodes: list[Node]
    concurrency: int
    start_task: StartTaskSpec | None = None
    start_runs: list[Future[StartResult]] = field(default_factory=list)


class LocalCompute:
    """`observer` is called from worker threads, never with this compute's lock held, and only of
    tasks a worker took from the queue: it must not call back into this compute."""

    def __init__(
        self,
        workspace: Path,
        storage: Storage,
        run_dir: Path,
        concurrency: int | None = None,
        *,
        account_name: str = "local",
        clock: Callable[[], float] = time.monotonic,
        pass_env: Iterable[str] = (),
        observer: TaskObserver | None = None,
        keep_task_folders: bool = False,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        if concurrency is not None and concurrency < 1:
            raise BatchflowError(f"local concurrency must be at least 1, not {concurrency}")
        self._workspace = workspace.absolute()
        self._storage = storage
        self._run_dir = run_dir.absolute()
        self._ledger = ProcessLedger(self._run_dir)
        self._concurrency = concurrency
        self._account = account_name
        self._env = node_environment(os.environ, pass_env)
        self._observer = _Guarded(observer)
        self._notify = notify or (lambda line: None)
        # A succeeded task's folder serves the next task (node.SpareFolders), unless the job is kept
        # (cleanup.job: keep), whose task folders stay to be looked at, as on Batch.
        self._recycle = not keep_task_folders

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # workers: a task was queued, or stop
        self._changed = threading.Condition(self._lock)  # callers: a task changed state
        self._settled = threading.Condition(self._lock)  # wait(): no task is queued or running, or stop
        self._pool: _Pool | None = None
        self._jobs: dict[str, _Job] = {}
        self._queue: deque[_Task] = deque()
        self._active: set[ProcessHandle] = set()
        self._workers: list[threading.Thread] = []
        self._deadlines = Deadlines(self._lock, clock)
        self._container_urls: dict[str, str] = {}
        self._version = 0  # bumped on every task state change
        self._seen = 0  # the version the caller last looked at
        self._stopped = False

    def check_access(self, job_id: str) -> None:
        """Nothing to reach: this machine runs the tasks (the workspace lock keeps runs apart)."""

    # ---- pool -----------------------------------------------------------------------------

    def create_pool(
        self, pool: PoolSpec, start_task: StartTaskSpec | None, start_task_inputs: Sequence[TaskInput] = ()
    ) -> bool:
        """Lay out the nodes (a fresh folder every run) and start the start task on each. Always True.

        Start tasks run as you: `elevated` is ignored, nothing is ever run with sudo.
        """
        _check_id("pool", pool.id)
        if self._pool is not None:
            raise BatchflowError(f"this local compute already has pool {self._pool.spec.id!r}")
        slots = max(1, pool.task_slots_per_node)
        concurrency = self._concurrency or min(
            max(1, pool.dedicated_nodes + pool.spot_nodes) * slots, os.cpu_count() or 1
        )
        root = self._workspace / "pools" / pool.id
        self._stop_leftovers(pool.id)
        if root.exists():
            shutil.rmtree(root)
        nodes = [
            Node(
                pool.id,
                f"node-{i}",
                root / "nodes" / f"node-{i}",
                self._account,
                self._env,
                self._ledger,
                SpareFolders() if self._recycle else None,
            )
            for i in range(math.ceil(concurrency / slots))
        ]
        for node in nodes:
            node.lay_out()
        self._pool = _Pool(pool, root, nodes, concurrency, start_task)
        if start_task is not None:
            inputs = self._resolve(start_task_inputs)
            runner = ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="batchflow-start")
            self._pool.start_runs = [
                runner.submit(self._start_task, node, start_task, inputs) for node in nodes
            ]
            runner.shutdown(wait=False)
        return True

    def _stop_leftovers(self, pool_id: str) -> None:
        """Stop the task processes that earlier runs of this pool left running when their batchflow
        process was killed (SIGKILL), as `batchflow cleanup` would: they would go on writing into the
        task folders laid out again for this run. The pool's run lock (batchflow.runlock) says that
        no live run uses the pool. A run folder costs a read of its small state.json; only a run
        that never ended, on this machine since it booted, with this pool, is looked at further.
        The groups stopped are recorded as ended in that run's processes.jsonl: no later run looks
        at them again (a pid the system reuses later is never taken for one of them)."""
        try:
            folders = sorted(p for p in (self._workspace / "runs").iterdir() if p != self._run_dir)
        except OSError:
            return
        booted = boot_time()
        for folder in folders:
            try:
                state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(state, dict) or state.get("ended_at") is not None:
                continue
            if state.get("pool_id") != pool_id or state.get("host") != host_name():
                continue
            started = state.get("started_at")
            if booted is not None and isinstance(started, (int, float)) and started < booted:
                continue  # its processes ended with the machine's last boot
            groups = processes.leftovers(folder)
            if groups:
                self._notify(
                    f"Stopping {len(groups)} task process(es) that run {folder.name} left running "
                    "(its batchflow process is gone)..."
                )
                processes.stop(groups)
                ended = ProcessLedger(folder)
                try:
                    for pgid in groups:
                        ended.ended(pgid)
                except OSError as e:  # (its folder full, or another user's): the next run checks again
                    log.warning("cannot record the stopped groups in %s: %s", folder, e)
                finally:
                    ended.close()

    def wait_for_pool(self, pool_id: str) -> None:
        pool = self._pool_named(pool_id)
        results = [run.result() for run in pool.start_runs]
        failed = next((r for r in results if not r.ok), None)
        if failed is None or pool.start_task is None:
            return
        message = failed.message()
        if pool.start_task.wait_for_success:
            raise BatchflowError(message)
        log.warning("%s", message)

    def delete_pool(self, pool_id: str) -> None:
        self.stop()
        _check_id("pool", pool_id)
        root = self._workspace / "pools" / pool_id
        if root.exists():
            shutil.rmtree(root)
        if self._pool is not None and self._pool.spec.id == pool_id:
            self._pool = None

    def close(self) -> None:
        """stop(), which the runner has called already unless the run ended before its pool: the
        worker threads are gone when close() returns (the CLI then closes the task journal)."""
        self.stop()

    def _pool_named(self, pool_id: str) -> _Pool:
        if self._pool is None or self._pool.spec.id != pool_id:
            raise BatchflowError(f"pool {pool_id!r} does not exist")
        return self._pool

    def _start_task(self, node: Node, spec: StartTaskSpec, inputs: tuple[ResolvedFile, ...]) -> StartResult:
        handle = ProcessHandle()
        logs = self._run_dir / "start-task" / node.name
        with self._lock:
            if self._stopped:
                return StartResult(node, None, CANCELLED, logs)
            self._active.add(handle)
        work = node.start_task(spec, inputs)
        exit_code, failure, _ = _attempts(work, handle, spec.max_retries)
        with self._lock:
            self._active.discard(handle)
        work.keep_logs(logs)
        return StartResult(node, exit_code, failure, logs)

    # ---- jobs and tasks -------------------------------------------------------------------

    def create_job(self, job: JobSpec, pool_id: str, run_id: str) -> None:
        _check_id("job", job.id)
        self._pool_named(pool_id)
        with self._lock:
            if job.id in self._jobs:
                raise BatchflowError(f"job {job.id!r} already exists")
            new = self._jobs[job.id] = _Job(job, pool_id, run_id)
            if job.max_wall_clock is not None:
                self._deadlines.after(job.max_wall_clock, lambda: self._end_job(new, JOB_WALL_CLOCK))

    def add_tasks(self, job_id: str, tasks: Sequence[RenderedTask]) -> None:
        for t in tasks:
            _check_id("task", t.id)
        # URLs are made when a task is added, as for a Batch task (its SAS lifetime counts from here).
        resolved = [(spec, self._resolve(spec.inputs), self._urls_for(spec)) for spec in tasks]
        with self._lock:
            if self._stopped:
                raise BatchflowError("local compute was stopped; no more tasks can be added")
            job = self._job(job_id)
            self._start_workers(job.pool_id)
            added = 0
            for spec, inputs, urls in resolved:
                if spec.id in job.tasks:
                    continue
                task = job.tasks[spec.id] = _Task(spec, job, inputs, urls)
                job.counts[TaskState.ACTIVE] += 1
                if job.ended is not None:
                    self._fail_unstarted(task, job.ended)
                else:
                    self._queue.append(task)
                    added += 1
            self._work.notify(added)
            self._bump()

    def seal_job(self, job_id: str) -> None:
        """Nothing to do locally: a job's workers simply go idle when its queue is empty."""
        with self._lock:
            self._job(job_id)

    def task_counts(self, job_id: str) -> TaskCounts:
        with self._lock:
            c = self._job(job_id).counts
            self._seen = self._version
            return TaskCounts(
                active=c[TaskState.ACTIVE],
                running=c[TaskState.RUNNING],
                succeeded=c[TaskState.SUCCEEDED],
                failed=c[TaskState.FAILED],
            )

    def wait(self, timeout: float) -> None:
        """Return soon after any task changed state since the last task_counts/wait, else after
        `timeout`. Changes come in bursts (two per task, hundreds a second when tasks are short):
        after the first, the changes of the next GATHER seconds come with it, unless every task is
        done, so the caller wakes a few times a second, not twice per task."""
        start = time.monotonic()
        with self._lock:
            if self._changed.wait_for(lambda: self._version != self._seen, timeout) and not self._idle():
                self._settled.wait(min(GATHER, timeout - (time.monotonic() - start)))
            self._seen = self._version

    def task_results(self, job_id: str, task_ids: Iterable[str] | None = None) -> list[TaskResult]:
        with self._lock:
            job = self._job(job_id)
            if task_ids is None:
                chosen = [t for t in job.tasks.values() if t.state in (TaskState.SUCCEEDED, TaskState.FAILED)]
            else:
                chosen = [job.tasks[i] for i in task_ids if i in job.tasks]
            return [_result(t) for t in chosen]

    def stop(self) -> None:
        """Drop queued tasks, kill running ones (and start tasks), wait for the threads. Idempotent."""
        with self._lock:
            self._stopped = True
            while self._queue:
                self._fail_unstarted(self._queue.popleft(), CANCELLED)
            for handle in self._active:
                handle.kill(CANCELLED)
            self._work.notify_all()
            self._settled.notify_all()
            timer = self._deadlines.stop()
            threads = [*self._workers, *([timer] if timer else [])]
            self._workers = []
        for thread in threads:
            thread.join()
        if self._pool is not None:
            futures.wait(self._pool.start_runs)  # their errors surface in wait_for_pool
        self._ledger.close()

    def delete_job(self, job_id: str) -> None:
        """Stop the job's tasks (queued ones fail with "job deleted") and remove its folders."""
        _check_id("job", job_id)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                self._end_job(job, JOB_DELETED)
                self._changed.wait_for(lambda: job.counts[TaskState.RUNNING] == 0)
                del self._jobs[job_id]
        if self._pool is not None:
            for node in self._pool.nodes:
                folder = node.job_folder(job_id)
                if folder.exists():
                    shutil.rmtree(folder)

    def _resolve(self, inputs: Sequence[TaskInput]) -> tuple[ResolvedFile, ...]:
        return tuple(
            ResolvedFile(self._storage.resource_url(i.container, i.blob_name), i.file_path) for i in inputs
        )

    def _urls_for(self, spec: RenderedTask) -> dict[str, str]:
        """The container URL of each output container and of the log container (one SAS each)."""
        names = {o.container for o in spec.outputs} | ({spec.logs.container} if spec.logs else set())
        for name in names - self._container_urls.keys():
            self._container_urls[name] = self._storage.container_url(name)
        return {name: self._container_urls[name] for name in names}

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise BatchflowError(f"job {job_id!r} does not exist")
        return job

    # ---- state changes (lock held) ----------------------------------------------------------

    def _bump(self) -> None:
        self._version += 1
        self._changed.notify_all()

    def _set_state(self, task: _Task, state: TaskState) -> None:
        task.job.counts[task.state] -= 1
        task.job.counts[state] += 1
        task.state = state
        self._bump()
        if state in (TaskState.SUCCEEDED, TaskState.FAILED) and self._idle():
            self._settled.notify_all()

    def _idle(self) -> bool:
        """No task is queued or running, in any job."""
        return not self._queue and not any(j.counts[TaskState.RUNNING] for j in self._jobs.values())

    def _fail_unstarted(self, task: _Task, reason: str) -> None:
        """A task dropped from the queue. The observer is not told: it never started, and the run
        records it from task_results (not started, after an interrupt). Telling it, one journal line
        each under the lock, held stop() for seconds with 100,000 tasks queued."""
        task.failure = reason
        task.ended_at = time.time()
        self._set_state(task, TaskState.FAILED)

    def _end_job(self, job: _Job, reason: str) -> None:
        if job.ended is not None:
            return
        job.ended = reason
        kept: deque[_Task] = deque()
        for task in self._queue:
            if task.job is job:
                self._fail_unstarted(task, reason)
            else:
                kept.append(task)
        self._queue = kept
        for task in job.tasks.values():
            if task.state is TaskState.RUNNING:
                task.handle.kill(reason)

    def _start_workers(self, pool_id: str) -> None:
        if self._workers:
            return
        pool = self._pool_named(pool_id)
        slots = max(1, pool.spec.task_slots_per_node)
        for i in range(pool.concurrency):
            node = pool.nodes[i // slots]
            worker = threading.Thread(
                target=self._work_loop, args=(node,), name=f"batchflow-{i}", daemon=True
            )
            self._workers.append(worker)
            worker.start()

    # ---- threads ------------------------------------------------------------------------------

    def _work_loop(self, node: Node) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    self._work.wait()
                if self._stopped:
                    return
                task = self._queue.popleft()
                started_at = task.started_at = time.time()
                self._active.add(task.handle)
                self._set_state(task, TaskState.RUNNING)
                if task.spec.max_wall_clock is not None:
                    self._deadlines.after(task.spec.max_wall_clock, functools.partial(_timeout, task))
            try:
                self._run_task(task, node, started_at)
            except Exception as e:  # a thread must not die silently: the task records why
                log.exception("local task %s failed inside batchflow", task.spec.id)
                task.failure = task.failure or f"internal error: {type(e).__name__}: {e}"
            ended_at = time.time()
            ok = task.failure is None and task.exit_code == 0
            state = TaskState.SUCCEEDED if ok else TaskState.FAILED
            # The observer hears first, so once task_counts counts the task completed, it has been told.
            self._observer.task_ended(dataclasses.replace(_result(task), state=state, ended_at=ended_at))
            with self._lock:
                self._active.discard(task.handle)
                task.ended_at = ended_at
                self._set_state(task, state)

    def _run_task(self, task: _Task, node: Node, started_at: float) -> None:
        spec = task.spec
        work = node.task(task.job.spec.id, spec, task.inputs, task.container_urls)
        # Every attempt reports when the task was taken from the queue: its TaskResult's started_at.
        started = functools.partial(self._observer.task_started, spec.id, at=started_at)
        task.exit_code, task.failure, task.attempts = _attempts(work, task.handle, spec.max_retries, started)
        stored = None
        if not self._stopped:
            got = work.collect(succeeded=task.failure is None and task.exit_code == 0)
            task.outputs, task.unmatched_outputs = list(got.outputs), list(got.unmatched)
            task.failure = task.failure or got.failure
            stored = got.stored_logs
        # One copy of each log: where storage keeps it, if that is on this machine. A failed task's
        # are also linked into the run folder, for the run summary (task contract, clause 4).
        succeeded = task.failure is None and task.exit_code == 0
        if stored is not None and succeeded:
            task.stdout_path, task.stderr_path = stored
        else:
            logs = self._run_dir / "tasks" / spec.id
            if work.keep_logs(logs):
                task.stdout_path, task.stderr_path = logs / "stdout.txt", logs / "stderr.txt"
        if succeeded and not self._stopped and node.spares is not None:
            node.spares.give(work.dir)  # outputs and logs are stored: the folder serves the next task


# ---- helpers ----------------------------------------------------------------------------------


class _Guarded:
    """The TaskObserver, if any, with what it raises logged instead of breaking a task."""

    def __init__(self, observer: TaskObserver | None) -> None:
        self._observer = observer

    def task_started(self, task_id: str, attempt: int, at: float) -> None:
        if self._observer is not None:
            try:
                self._observer.task_started(task_id, attempt, at)
            except Exception:
                log.warning("task %s: the task observer failed", task_id, exc_info=True)

    def task_ended(self, result: TaskResult) -> None:
        if self._observer is not None:
            try:
                self._observer.task_ended(result)
            except Exception:
                log.warning("task %s: the task observer failed", result.id, exc_info=True)


def _attempts(
    work: NodeTask, handle: ProcessHandle, max_retries: int, started: Callable[[int], None] | None = None
) -> tuple[int | None, str | None, int]:
    """Run until success, a kill, or retries are used up. Returns (exit code, failure, attempts).

    `started(attempt)` is called once the attempt's inputs are in place, as its command starts.
    """
    exit_code: int | None = None
    attempt = 0
    while True:
        attempt += 1
        failure = work.prepare() or handle.killed
        if failure is not None:
            return exit_code, failure, attempt
        if started is not None:
            started(attempt)
        exit_code = work.run(handle)
        if handle.killed is not None:
            return exit_code, handle.killed, attempt
        if exit_code == 0 or 0 <= max_retries < attempt:
            return exit_code, None, attempt


def _check_id(kind: str, value: str) -> None:
    if not BATCH_ID.fullmatch(value):
        raise BatchflowError(
            f"invalid {kind} id {value!r}: use 1 to 64 letters, digits, hyphens or underscores"
        )


def _timeout(task: _Task) -> None:
    if task.state is TaskState.RUNNING:
        task.handle.kill(WALL_CLOCK)


def _result(t: _Task) -> TaskResult:
    return TaskResult(
        id=t.spec.id,
        state=t.state,
        exit_code=t.exit_code,
        attempts=t.attempts,
        started_at=t.started_at,
        ended_at=t.ended_at,
        failure=t.failure,
        stdout_path=t.stdout_path,
        stderr_path=t.stderr_path,
        outputs=tuple(t.outputs),
        unmatched_outputs=tuple(t.unmatched_outputs),
    )
