"""The Compute protocol on this machine, laid out and behaving like Azure Batch nodes.

A pool is a folder of nodes, each with Batch's layout, so a task sees the same world as on Batch:

    <workspace>/pools/<pool>/nodes/node-<i>/            AZ_BATCH_NODE_ROOT_DIR
        shared/                                          AZ_BATCH_NODE_SHARED_DIR
        startup/{wd/,stdout.txt,stderr.txt}              AZ_BATCH_NODE_STARTUP_DIR (start task)
        workitems/<job>/job-1/<task>/{wd/,stdout.txt,stderr.txt}

One worker thread per slot of concurrency takes tasks in submission order. Storage is reached only
the way a Batch node reaches it, through the URLs the Storage gives (`resource_url` for each input,
`container_url` for outputs and logs), resolved when the task is added: file:// URLs for folder
storage (each input the task's own file: a reflink where possible, else a copy), SAS URLs for
Azure Blob Storage. Each
attempt gets a fresh wd/ with its inputs, then runs `/bin/sh -c <command>` in its own process group;
a deadline thread kills whole groups at max_wall_clock. After the task, outputs go to their
containers per condition, and stdout.txt / stderr.txt to the task's log location. Nothing polls:
workers block in waitpid, callers in a Condition.

Differences from Batch, by design: the start task always runs as you (`elevated` is never
honoured: no sudo), and `wait_for_pool` always waits for it (a failure only raises when
wait_for_success). Processes a task leaves behind in its process group are killed when it exits.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from batchflow.backends.base import Storage
from batchflow.backends.blob_urls import fetch_url, put_to_container_url
from batchflow.backends.local.processes import ProcessLedger
from batchflow.backends.local.storage import replace_with_link
from batchflow.errors import BatchflowError
from batchflow.globs import glob_literal, has_magic, iter_files
from batchflow.model import (
    JobSpec,
    OutputCondition,
    PoolSpec,
    RenderedTask,
    ResolvedFile,
    StartTaskSpec,
    TaskCounts,
    TaskInput,
    TaskOutput,
    TaskResult,
    TaskState,
)
from batchflow.names import BATCH_ID, blob_name_problem

log = logging.getLogger("batchflow")

USER_IDENTITY = "PoolNonAdminUser"  # locally every command runs as you, never as an admin
STDERR_TAIL_LINES = 20
WALL_CLOCK = "max wall clock time exceeded"
JOB_WALL_CLOCK = "job max wall clock time exceeded"
CANCELLED = "cancelled"
JOB_DELETED = "job deleted"


@dataclass(frozen=True)
class _Node:
    pool_id: str
    name: str
    root: Path


@dataclass(eq=False)
class _Slot:
    """One running command that can be killed: by a deadline, a job end, or stop()."""

    proc: subprocess.Popen[bytes] | None = None
    kill_reason: str | None = None


@dataclass(eq=False)
class _Job:
    spec: JobSpec
    pool_id: str
    run_id: str
    tasks: dict[str, _Task] = field(default_factory=dict)
    counts: dict[TaskState, int] = field(default_factory=lambda: dict.fromkeys(TaskState, 0))
    ended: str | None = None  # why the job stopped taking tasks


@dataclass(eq=False)
class _Task:
    spec: RenderedTask
    job: _Job
    inputs: tuple[ResolvedFile, ...] = ()
    container_urls: dict[str, str] = field(default_factory=dict)  # output and log containers
    state: TaskState = TaskState.ACTIVE
    slot: _Slot = field(default_factory=_Slot)
    attempts: int = 0
    exit_code: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    failure: str | None = None
    outputs: list[str] = field(default_factory=list)
    unmatched_outputs: list[str] = field(default_factory=list)  # glob patterns that matched nothing
    stdout_path: Path | None = None
    stderr_path: Path | None = None


@dataclass(frozen=True)
class _StartResult:
    node: _Node
    exit_code: int | None
    failure: str | None
    logs: Path  # folder holding stdout.txt and stderr.txt

    @property
    def ok(self) -> bool:
        return self.failure is None and self.exit_code == 0


@dataclass(eq=False)
class _Pool:
    spec: PoolSpec
    root: Path
    nodes: list[_Node]
    concurrency: int
    start_task: StartTaskSpec | None = None
    start_runs: list[Future[_StartResult]] = field(default_factory=list)


class LocalCompute:
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
    ) -> None:
        if concurrency is not None and concurrency < 1:
            raise BatchflowError(f"local concurrency must be at least 1, not {concurrency}")
        self._workspace = workspace.absolute()
        self._storage = storage
        self._run_dir = run_dir.absolute()
        self._ledger = ProcessLedger(self._run_dir)
        self._concurrency = concurrency
        self._account = account_name
        self._clock = clock
        self._env = node_environment(os.environ, pass_env)

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # workers: a task was queued, or stop
        self._changed = threading.Condition(self._lock)  # callers: a task changed state
        self._timer = threading.Condition(self._lock)  # deadline thread: a new deadline, or stop
        self._pool: _Pool | None = None
        self._jobs: dict[str, _Job] = {}
        self._queue: deque[_Task] = deque()
        self._active: set[_Slot] = set()
        self._workers: list[threading.Thread] = []
        self._deadlines: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._deadline_thread: threading.Thread | None = None
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
        if root.exists():
            shutil.rmtree(root)
        count = math.ceil(concurrency / slots)
        nodes = [_Node(pool.id, f"node-{i}", root / "nodes" / f"node-{i}") for i in range(count)]
        for node in nodes:
            for sub in ("shared", "startup/wd", "workitems"):
                (node.root / sub).mkdir(parents=True)
        self._pool = _Pool(pool, root, nodes, concurrency, start_task)
        if start_task is not None:
            inputs = self._resolve(start_task_inputs)
            runner = ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="batchflow-start")
            self._pool.start_runs = [
                runner.submit(self._start_task, node, start_task, inputs) for node in nodes
            ]
            runner.shutdown(wait=False)
        return True

    def wait_for_pool(self, pool_id: str) -> None:
        pool = self._pool_named(pool_id)
        results = [run.result() for run in pool.start_runs]
        failed = next((r for r in results if not r.ok), None)
        if failed is None or pool.start_task is None:
            return
        message = _start_failure(failed)
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

    def _pool_named(self, pool_id: str) -> _Pool:
        if self._pool is None or self._pool.spec.id != pool_id:
            raise BatchflowError(f"pool {pool_id!r} does not exist")
        return self._pool

    def _start_task(self, node: _Node, spec: StartTaskSpec, inputs: tuple[ResolvedFile, ...]) -> _StartResult:
        slot = _Slot()
        logs = self._run_dir / "start-task" / node.name
        with self._lock:
            if self._stopped:
                return _StartResult(node, None, CANCELLED, logs)
            self._active.add(slot)
        task_dir = node.root / "startup"
        env = {**self._env, **spec.environment, **self._batch_env(node, task_dir)}
        exit_code, failure, _ = self._attempts(
            slot, spec.command, inputs, task_dir, env, spec.max_retries, False
        )
        with self._lock:
            self._active.discard(slot)
        _keep_logs(task_dir, logs)
        return _StartResult(node, exit_code, failure, logs)

    # ---- jobs and tasks -------------------------------------------------------------------

    def create_job(self, job: JobSpec, pool_id: str, run_id: str) -> None:
        _check_id("job", job.id)
        self._pool_named(pool_id)
        with self._lock:
            if job.id in self._jobs:
                raise BatchflowError(f"job {job.id!r} already exists")
            new = self._jobs[job.id] = _Job(job, pool_id, run_id)
            if job.max_wall_clock is not None:
                self._at(self._clock() + job.max_wall_clock, lambda: self._end_job(new, JOB_WALL_CLOCK))

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
        """Return as soon as any task changed state since the last task_counts/wait, else after `timeout`."""
        with self._lock:
            self._changed.wait_for(lambda: self._version != self._seen, timeout)
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
            for slot in self._active:
                _kill(slot, CANCELLED)
            self._work.notify_all()
            self._timer.notify_all()
            threads = [*self._workers, *([self._deadline_thread] if self._deadline_thread else [])]
            self._workers = []
            self._deadline_thread = None
        for thread in threads:
            thread.join()
        if self._pool is not None:
            futures.wait(self._pool.start_runs)  # their errors surface in wait_for_pool

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
                folder = node.root / "workitems" / job_id
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

    def _fail_unstarted(self, task: _Task, reason: str) -> None:
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
                _kill(task.slot, reason)

    def _at(self, deadline: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._deadlines, (deadline, next(self._seq), action))
        if self._deadline_thread is None and not self._stopped:
            self._deadline_thread = threading.Thread(
                target=self._watch, name="batchflow-deadlines", daemon=True
            )
            self._deadline_thread.start()
        self._timer.notify()

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

    def _watch(self) -> None:
        with self._lock:
            while not self._stopped:
                if not self._deadlines:
                    self._timer.wait()
                    continue
                remaining = self._deadlines[0][0] - self._clock()
                if remaining > 0:
                    self._timer.wait(remaining)
                    continue
                _, _, action = heapq.heappop(self._deadlines)
                action()

    def _work_loop(self, node: _Node) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    self._work.wait()
                if self._stopped:
                    return
                task = self._queue.popleft()
                task.started_at = time.time()
                self._active.add(task.slot)
                self._set_state(task, TaskState.RUNNING)
                if task.spec.max_wall_clock is not None:
                    self._at(self._clock() + task.spec.max_wall_clock, functools.partial(_timeout, task))
            try:
                self._run_task(task, node)
            except Exception as e:  # a thread must not die silently: the task records why
                log.exception("local task %s failed inside batchflow", task.spec.id)
                task.failure = task.failure or f"internal error: {type(e).__name__}: {e}"
            with self._lock:
                self._active.discard(task.slot)
                task.ended_at = time.time()
                ok = task.failure is None and task.exit_code == 0
                self._set_state(task, TaskState.SUCCEEDED if ok else TaskState.FAILED)

    def _run_task(self, task: _Task, node: _Node) -> None:
        spec, job = task.spec, task.job
        task_dir = node.root / "workitems" / job.spec.id / "job-1" / spec.id
        env = {
            **self._env,
            **spec.environment,
            **self._batch_env(node, task_dir),
            "AZ_BATCH_JOB_ID": job.spec.id,
            "AZ_BATCH_TASK_ID": spec.id,
        }
        task.exit_code, task.failure, task.attempts = self._attempts(
            task.slot, spec.command, task.inputs, task_dir, env, spec.max_retries, True
        )
        if not self._stopped:
            self._upload_outputs(task, task_dir / "wd")
            self._upload_logs(task, task_dir)
        logs = self._run_dir / "tasks" / spec.id
        if _keep_logs(task_dir, logs):
            task.stdout_path, task.stderr_path = logs / "stdout.txt", logs / "stderr.txt"

    # ---- one command, with retries -------------------------------------------------------------

    def _attempts(
        self,
        slot: _Slot,
        command: str,
        inputs: Sequence[ResolvedFile],
        task_dir: Path,
        env: dict[str, str],
        max_retries: int,
        kill_leftovers: bool,
    ) -> tuple[int | None, str | None, int]:
        """Run until success, a kill, or retries are used up. Returns (exit code, failure, attempts)."""
        wd = task_dir / "wd"
        exit_code: int | None = None
        attempt = 0
        while True:
            attempt += 1
            failure = self._prepare(wd, inputs)
            killed = _killed(slot)
            if failure is not None or killed is not None:
                return exit_code, failure or killed, attempt
            exit_code = self._run(slot, command, task_dir, env, kill_leftovers)
            killed = _killed(slot)
            if killed is not None:
                return exit_code, killed, attempt
            if exit_code == 0 or 0 <= max_retries < attempt:
                return exit_code, None, attempt

    def _prepare(self, wd: Path, inputs: Sequence[ResolvedFile]) -> str | None:
        """A fresh wd/ holding every input. Returns why the task cannot start, or None."""
        try:
            wd.mkdir(parents=True)
        except FileExistsError:
            shutil.rmtree(wd)
            wd.mkdir()
        placed: set[str] = set()
        for item in inputs:
            problem = blob_name_problem(item.file_path, drive=False)  # wd/ is on Linux: a:b.mp4 is a name
            if problem is not None:
                return f"unsafe input file path {item.file_path!r}: {problem}"
            if item.file_path in placed:
                return f"two inputs have the same file path {item.file_path!r}"
            placed.add(item.file_path)
            try:
                fetch_url(item.http_url, wd.joinpath(*item.file_path.split("/")))
            except BatchflowError as e:
                return f"input {item.file_path!r}: {e}"
        return None

    def _run(
        self, slot: _Slot, command: str, task_dir: Path, env: dict[str, str], kill_leftovers: bool
    ) -> int:
        with open(task_dir / "stdout.txt", "wb") as out, open(task_dir / "stderr.txt", "wb") as err:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", command],
                cwd=task_dir / "wd",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        with self._lock:
            slot.proc = proc  # first: whatever happens next, stop() can kill it
            if slot.kill_reason is not None:  # killed between the check and Popen
                _killpg(proc.pid)
        label = task_dir.name if kill_leftovers else f"start task on {task_dir.parent.name}"
        self._record(self._ledger.started, proc.pid, label)  # `batchflow cleanup` stops it if we die
        code = proc.wait()
        with self._lock:
            if kill_leftovers:
                _killpg(proc.pid)
            slot.proc = None
        self._record(self._ledger.ended, proc.pid)
        return 128 - code if code < 0 else code  # killed by signal N -> 128 + N, as sh reports it

    def _record(self, write: Callable[..., None], *args: object) -> None:
        """A ledger line; a full disk costs only `batchflow cleanup`'s knowledge of this process."""
        try:
            write(*args)
        except OSError as e:
            log.warning("cannot record process %s in %s: %s", args[0], self._ledger.path, e)

    def _upload_outputs(self, task: _Task, wd: Path) -> None:
        ok = task.failure is None and task.exit_code == 0
        for out in task.spec.outputs:
            if not _applies(out.condition, ok):
                continue
            try:
                files = _output_files(wd, out)
                if files is None:
                    if ok:
                        task.failure = f"output file {out.pattern!r} not found"
                    continue
                if not files:
                    task.unmatched_outputs.append(out.pattern)
                url = task.container_urls[out.container]
                for src, blob in files:
                    task.outputs.append(put_to_container_url(url, blob, src))
            except (BatchflowError, OSError) as e:
                log.warning("task %s: could not upload output %r: %s", task.spec.id, out.pattern, e)
                task.failure = task.failure or f"could not upload output {out.pattern!r}: {e}"

    def _upload_logs(self, task: _Task, task_dir: Path) -> None:
        """stdout.txt and stderr.txt to the task's log location, on completion (as on Batch)."""
        logs = task.spec.logs
        if logs is None or not (task_dir / "stdout.txt").exists():
            return
        url = task.container_urls[logs.container]
        for name in ("stdout.txt", "stderr.txt"):
            try:
                put_to_container_url(url, logs.blob(task.spec.id, name), task_dir / name)
            except BatchflowError as e:
                log.warning("task %s: could not upload %s: %s", task.spec.id, name, e)
                task.failure = task.failure or f"could not upload {name}: {e}"

    def _batch_env(self, node: _Node, task_dir: Path) -> dict[str, str]:
        return {
            "AZ_BATCH_NODE_ROOT_DIR": str(node.root),
            "AZ_BATCH_NODE_SHARED_DIR": str(node.root / "shared"),
            "AZ_BATCH_NODE_STARTUP_DIR": str(node.root / "startup"),
            "AZ_BATCH_TASK_DIR": str(task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
            "AZ_BATCH_POOL_ID": node.pool_id,
            "AZ_BATCH_NODE_ID": node.name,
            "AZ_BATCH_ACCOUNT_NAME": self._account,
            "AZ_BATCH_TASK_USER_IDENTITY": USER_IDENTITY,
        }


# ---- helpers ----------------------------------------------------------------------------------

# What a task on a Batch node has besides AZ_BATCH_* and its own environment: who and where it runs
# (a user with a home), the machine's locale and time zone, and a PATH. Nothing else of yours, so no
# credential exported in your shell reaches a task unless local.pass_env names it (README "The task
# contract").
BASE_ENV = ("HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR")


def node_environment(environ: Mapping[str, str], pass_env: Iterable[str] = ()) -> dict[str, str]:
    """The base every local task and start task starts from: BASE_ENV and LC_* as set in `environ`,
    the variables `pass_env` names (those that are set), and PATH with batchflow's own tools first."""
    wanted = set(BASE_ENV) | set(pass_env)
    env = {k: v for k, v in environ.items() if k in wanted or k.startswith("LC_")}
    # Tools installed beside batchflow (python3, pip-installed executables) come first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", os.defpath)])
    return env


def _check_id(kind: str, value: str) -> None:
    if not BATCH_ID.fullmatch(value):
        raise BatchflowError(
            f"invalid {kind} id {value!r}: use 1 to 64 letters, digits, hyphens or underscores"
        )


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group has exited already
        return


def _kill(slot: _Slot, reason: str) -> None:
    """Kill a slot's process group (lock held). The first reason wins."""
    if slot.kill_reason is None:
        slot.kill_reason = reason
    if slot.proc is not None:
        _killpg(slot.proc.pid)


def _killed(slot: _Slot) -> str | None:
    """Why the slot was killed, if it was (set by other threads at any time)."""
    return slot.kill_reason


def _timeout(task: _Task) -> None:
    if task.state is TaskState.RUNNING:
        _kill(task.slot, WALL_CLOCK)


def _applies(condition: OutputCondition, ok: bool) -> bool:
    return condition is OutputCondition.COMPLETION or (condition is OutputCondition.SUCCESS) == ok


def _output_files(wd: Path, out: TaskOutput) -> list[tuple[Path, str]] | None:
    """(file, blob name) pairs for an output; None if a single-file pattern names a missing file.

    A single file lands at `destination` (or destination + its name when destination ends in
    '/'); a glob's files land at destination + their path below the pattern's literal folders,
    as Batch does (`out/**/*.mp3` puts wd/out/a/b.mp3 at <destination>a/b.mp3).
    """
    literal = glob_literal(out.pattern)
    if literal is not None:
        src = wd / literal
        if not src.is_file():
            return None
        dest = out.destination
        return [(src, dest + src.name if not dest or dest.endswith("/") else dest)]
    segments = out.pattern.split("/")
    split = next(i for i, s in enumerate(segments) if has_magic(s))
    base = wd.joinpath(*segments[:split])
    if not base.is_dir():
        return []
    prefix = (
        out.destination if not out.destination or out.destination.endswith("/") else out.destination + "/"
    )
    return [(path, prefix + rel) for rel, path in iter_files(base, ["/".join(segments[split:])])]


def _keep_logs(task_dir: Path, logs: Path) -> bool:
    """Hard-link the last attempt's stdout.txt/stderr.txt into `logs`. False if the command never ran."""
    if not (task_dir / "stdout.txt").exists():
        return False
    logs.mkdir(parents=True, exist_ok=True)
    for name in ("stdout.txt", "stderr.txt"):
        replace_with_link(task_dir / name, logs / name)
    return True


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            data = f.read()
    except FileNotFoundError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


def _start_failure(r: _StartResult) -> str:
    if r.failure is not None:
        return f"start task failed on {r.node.name}: {r.failure}"
    tail = _tail(r.logs / "stderr.txt", STDERR_TAIL_LINES)
    if not tail:
        head = f"start task failed on {r.node.name} (exit {r.exit_code}); stderr is empty"
        return f"{head}\nfull log: {r.logs / 'stdout.txt'}"
    body = "\n".join(tail)
    return (
        f"start task failed on {r.node.name} (exit {r.exit_code}); last lines of stderr:\n"
        f"{body}\nfull log: {r.logs / 'stderr.txt'}"
    )


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
