"""ThreadCompute: the Compute protocol written from batchflow/backends/base.py alone.

A pool is a folder of nodes, one worker thread each, in <workspace>/thread/<run id>/ (folders.py), so
a run's leftovers are found from its id. A node has Batch's layout:

    nodes/node-<i>/                      AZ_BATCH_NODE_ROOT_DIR
        shared/                          AZ_BATCH_NODE_SHARED_DIR
        startup/{wd/,stdout.txt,stderr.txt}             AZ_BATCH_NODE_STARTUP_DIR (the start task)
        workitems/<job>/job-1/<task>/{wd/,stdout.txt,stderr.txt}

Each node's thread runs the start task, then takes tasks from one queue in submission order. Every
attempt runs `/bin/sh -c` in a session of its own; the thread waits for it with the task's remaining
wall clock as timeout, then kills its whole process group. Inputs and outputs move only through the
storage's URLs (mem:// for MemoryStorage).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from batchflow.backends.base import Storage, TaskObserver
from batchflow.errors import BatchflowError, ConfigurationError
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
from batchflow.procinfo import process_start
from thread_backend.folders import killpg, pool_of, remove_job, remove_tree
from thread_backend.storage import fetch, put

log = logging.getLogger("batchflow")

# What a Batch node's task has besides AZ_BATCH_* and its own variables (README "The task contract").
BASE_ENV = ("HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR")
WALL_CLOCK = "max wall clock time exceeded"
JOB_WALL_CLOCK = "job max wall clock time exceeded"
CANCELLED = "cancelled"
JOB_DELETED = "job deleted"
DONE = (TaskState.SUCCEEDED, TaskState.FAILED)


@dataclass(eq=False)
class _Slot:
    """A command that can be killed: by its wall clock, its job's end, or stop()."""

    proc: subprocess.Popen[bytes] | None = None
    killed: str | None = None  # the first reason wins

    def why(self) -> str | None:
        """Why it was killed, if it was (set by other threads at any time)."""
        return self.killed

    def kill(self, reason: str) -> None:  # lock held
        self.killed = self.killed or reason
        if self.proc is not None:
            killpg(self.proc.pid)


@dataclass(eq=False)
class _Node:
    name: str
    root: Path
    ready: threading.Event = field(default_factory=threading.Event)
    start_failure: str | None = None


@dataclass(eq=False)
class _Job:
    spec: JobSpec
    tasks: dict[str, _Task] = field(default_factory=dict)  # by casefolded id, as Batch compares them
    counts: dict[TaskState, int] = field(default_factory=lambda: dict.fromkeys(TaskState, 0))
    ended: str | None = None
    timer: threading.Timer | None = None


@dataclass(eq=False)
class _Task:
    spec: RenderedTask
    job: _Job
    inputs: tuple[ResolvedFile, ...]
    urls: dict[str, str]  # container -> container URL, for outputs and logs
    state: TaskState = TaskState.ACTIVE
    slot: _Slot = field(default_factory=_Slot)
    attempts: int = 0
    exit_code: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    failure: str | None = None
    outputs: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    stdout_path: Path | None = None
    stderr_path: Path | None = None


class ThreadCompute:
    """A pool of `workers` nodes in <workspace>/thread/<run_dir.name>/, on a MemoryStorage (any Storage
    whose URLs thread_backend.storage can fetch). An observer hears of each attempt as it starts and of
    each task as it ends; task logs are copied to <run_dir>/tasks/<task id>/."""

    def __init__(
        self,
        workspace: Path,
        storage: Storage,
        run_dir: Path,
        workers: int = 2,
        *,
        account_name: str = "thread",
        observer: TaskObserver | None = None,
    ) -> None:
        if workers < 1:
            raise BatchflowError(f"the thread backend needs at least 1 worker, not {workers}")
        self._workspace = workspace.absolute()
        self._root = self._workspace / "thread" / run_dir.name
        self._storage = storage
        self._run_dir = run_dir.absolute()
        self._workers = workers
        self._account = account_name
        self._observer = observer
        self._env = node_environment(os.environ)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # workers: a task was queued, or stop
        self._changed = threading.Condition(self._lock)  # callers: a task changed state
        self._pool_id: str | None = None
        self._start_task: StartTaskSpec | None = None
        self._nodes: list[_Node] = []
        self._threads: list[threading.Thread] = []
        self._jobs: dict[str, _Job] = {}
        self._queue: deque[_Task] = deque()
        self._slots: set[_Slot] = set()  # commands that run now (tasks and start tasks)
        self._urls: dict[str, str] = {}
        self._version = self._seen = 0
        self._stopped = False

    def check_access(self, job_id: str) -> None:
        """No service to reach; a job `job_id` that another run left in the workspace is refused."""
        _check_id("job", job_id)
        for marker in sorted(self._workspace.glob(f"thread/*/jobs/{job_id}")):
            run = marker.parent.parent.name
            if run != self._root.name:
                raise ConfigurationError(
                    f"job {job_id!r} of run {run} is still in {self._workspace}: "
                    f"`batchflow cleanup {run}` removes it"
                )

    # ---- pool ---------------------------------------------------------------------------------

    def create_pool(
        self, pool: PoolSpec, start_task: StartTaskSpec | None, start_task_inputs: Sequence[TaskInput] = ()
    ) -> bool:
        """A fresh folder of nodes for this run, each node's thread running the start task. Always True."""
        _check_id("pool", pool.id)
        if self._pool_id is not None:
            raise BatchflowError(f"this thread compute already has pool {self._pool_id!r}")
        remove_tree(self._root)
        for sub in ("jobs", "procs"):
            (self._root / sub).mkdir(parents=True)
        (self._root / "pool.json").write_text(json.dumps({"pool_id": pool.id}), encoding="utf-8")
        self._pool_id, self._start_task = pool.id, start_task
        inputs = self._resolve(start_task_inputs)
        for i in range(self._workers):
            node = _Node(f"node-{i}", self._root / "nodes" / f"node-{i}")
            for sub in ("shared", "startup/wd", "workitems"):
                (node.root / sub).mkdir(parents=True)
            self._nodes.append(node)
            thread = threading.Thread(
                target=self._node_loop,
                args=(node, start_task, inputs),
                name=f"thread-{node.name}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()
        return True

    def wait_for_pool(self, pool_id: str) -> None:
        """Return once every node ran its start task; raise if none is usable."""
        self._check_pool(pool_id)
        for node in self._nodes:
            node.ready.wait()
        failed = [n.start_failure for n in self._nodes if n.start_failure is not None]
        if not failed:
            return
        wait = self._start_task is not None and self._start_task.wait_for_success
        if wait and len(failed) == len(self._nodes):
            raise BatchflowError(failed[0])
        log.warning("%s", failed[0])

    def delete_pool(self, pool_id: str) -> None:
        _check_id("pool", pool_id)
        self.stop()
        if pool_of(self._root) == pool_id:
            remove_tree(self._root)
        if self._pool_id == pool_id:
            self._pool_id, self._nodes = None, []

    def close(self) -> None:
        """Nothing to release: stop() ends the workers."""

    def _check_pool(self, pool_id: str) -> None:
        if self._pool_id != pool_id:
            raise BatchflowError(f"pool {pool_id!r} does not exist")

    # ---- jobs and tasks -----------------------------------------------------------------------

    def create_job(self, job: JobSpec, pool_id: str, run_id: str) -> None:
        _check_id("job", job.id)
        self._check_pool(pool_id)
        with self._lock:
            if job.id in self._jobs:
                raise BatchflowError(f"job {job.id!r} already exists")
            new = self._jobs[job.id] = _Job(job)
            (self._root / "jobs" / job.id).write_text(run_id, encoding="utf-8")
            if job.max_wall_clock is not None:
                new.timer = threading.Timer(job.max_wall_clock, self._job_timeout, (new,))
                new.timer.daemon = True
                new.timer.start()

    def add_tasks(self, job_id: str, tasks: Sequence[RenderedTask]) -> None:
        for t in tasks:
            _check_id("task", t.id)
        resolved = [(t, self._resolve(t.inputs), self._urls_for(t)) for t in tasks]
        with self._lock:
            if self._stopped:
                raise BatchflowError("the thread compute was stopped; no more tasks can be added")
            job = self._job(job_id)
            for spec, inputs, urls in resolved:
                if spec.id.casefold() in job.tasks:
                    continue  # added before: idempotent
                task = job.tasks[spec.id.casefold()] = _Task(spec, job, inputs, urls)
                job.counts[TaskState.ACTIVE] += 1
                if job.ended is not None:
                    self._fail_unstarted(task, job.ended)
                else:
                    self._queue.append(task)
            self._work.notify_all()
            self._bump()

    def seal_job(self, job_id: str) -> None:
        """Nothing to do: idle nodes simply wait for tasks."""
        with self._lock:
            self._job(job_id)

    def task_counts(self, job_id: str) -> TaskCounts:
        with self._lock:
            c = self._job(job_id).counts
            self._seen = self._version
            return TaskCounts(
                c[TaskState.ACTIVE], c[TaskState.RUNNING], c[TaskState.SUCCEEDED], c[TaskState.FAILED]
            )

    def wait(self, timeout: float) -> None:
        with self._lock:
            self._changed.wait_for(lambda: self._version != self._seen, timeout)
            self._seen = self._version

    def task_results(self, job_id: str, task_ids: Iterable[str] | None = None) -> list[TaskResult]:
        with self._lock:
            job = self._job(job_id)
            if task_ids is None:
                chosen = [t for t in job.tasks.values() if t.state in DONE]
            else:
                chosen = [job.tasks[i.casefold()] for i in task_ids if i.casefold() in job.tasks]
            return [_result(t) for t in chosen]

    def stop(self) -> None:
        """Fail queued tasks, kill running commands, wait for the node threads. Idempotent."""
        with self._lock:
            self._stopped = True
            while self._queue:
                self._fail_unstarted(self._queue.popleft(), CANCELLED)
            for slot in self._slots:
                slot.kill(CANCELLED)
            for job in self._jobs.values():
                if job.timer is not None:
                    job.timer.cancel()
            self._work.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join()

    def delete_job(self, job_id: str) -> None:
        _check_id("job", job_id)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                self._end_job(job, JOB_DELETED)
                self._changed.wait_for(lambda: job.counts[TaskState.RUNNING] == 0)
                del self._jobs[job_id]
        remove_job(self._root, job_id)

    def _job(self, job_id: str) -> _Job:  # lock held
        try:
            return self._jobs[job_id]
        except KeyError:
            raise BatchflowError(f"job {job_id!r} does not exist") from None

    def _job_timeout(self, job: _Job) -> None:
        with self._lock:
            self._end_job(job, JOB_WALL_CLOCK)

    def _end_job(self, job: _Job, reason: str) -> None:  # lock held
        if job.ended is not None:
            return
        job.ended = reason
        if job.timer is not None:
            job.timer.cancel()
        for task in [t for t in self._queue if t.job is job]:
            self._queue.remove(task)
            self._fail_unstarted(task, reason)
        for task in job.tasks.values():
            if task.state is TaskState.RUNNING:
                task.slot.kill(reason)

    def _fail_unstarted(self, task: _Task, reason: str) -> None:  # lock held
        task.failure, task.ended_at = reason, time.time()
        self._set_state(task, TaskState.FAILED)

    def _set_state(self, task: _Task, state: TaskState) -> None:  # lock held
        task.job.counts[task.state] -= 1
        task.job.counts[state] += 1
        task.state = state
        self._bump()

    def _bump(self) -> None:  # lock held
        self._version += 1
        self._changed.notify_all()

    def _resolve(self, inputs: Sequence[TaskInput]) -> tuple[ResolvedFile, ...]:
        return tuple(
            ResolvedFile(self._storage.resource_url(i.container, i.blob_name), i.file_path) for i in inputs
        )

    def _urls_for(self, spec: RenderedTask) -> dict[str, str]:
        names = {o.container for o in spec.outputs} | ({spec.logs.container} if spec.logs else set())
        for name in names - self._urls.keys():
            self._urls[name] = self._storage.container_url(name)
        return {name: self._urls[name] for name in names}

    # ---- the node threads ---------------------------------------------------------------------

    def _node_loop(
        self, node: _Node, start_task: StartTaskSpec | None, inputs: tuple[ResolvedFile, ...]
    ) -> None:
        try:
            if start_task is not None:
                self._run_start_task(node, start_task, inputs)
        finally:
            node.ready.set()
        if node.start_failure is not None and start_task is not None and start_task.wait_for_success:
            return  # an unusable node takes no task, as on Batch
        while True:
            with self._lock:
                while not self._queue and not self._stopped:
                    self._work.wait()
                if self._stopped:
                    return
                task = self._queue.popleft()
                task.started_at = time.time()
                self._slots.add(task.slot)
                self._set_state(task, TaskState.RUNNING)
            try:
                self._run_task(task, node)
            except Exception as e:  # a thread must not die silently: the task records why
                log.exception("thread task %s failed inside batchflow", task.spec.id)
                task.failure = task.failure or f"internal error: {type(e).__name__}: {e}"
            with self._lock:
                self._slots.discard(task.slot)
                task.ended_at = time.time()
                ok = task.failure is None and task.exit_code == 0
                self._set_state(task, TaskState.SUCCEEDED if ok else TaskState.FAILED)
            if self._observer is not None:
                self._observer.task_ended(_result(task))

    def _run_start_task(self, node: _Node, spec: StartTaskSpec, inputs: tuple[ResolvedFile, ...]) -> None:
        slot = _Slot()
        with self._lock:
            if self._stopped:
                node.start_failure = f"start task on {node.name}: {CANCELLED}"
                return
            self._slots.add(slot)
        task_dir = node.root / "startup"
        env = {**self._env, **spec.environment, **self._batch_env(node, task_dir)}
        label = f"start task on {node.name}"
        code, failure, _ = self._attempts(
            slot, spec.command, inputs, task_dir, env, spec.max_retries, None, label
        )
        with self._lock:
            self._slots.discard(slot)
        logs = _keep_logs(task_dir, self._run_dir / "start-task" / node.name)
        if failure is not None:
            node.start_failure = f"start task failed on {node.name}: {failure}"
        elif code != 0:
            tail = "\n".join(_tail(logs / "stderr.txt")) if logs else ""
            node.start_failure = f"start task failed on {node.name} (exit {code}); stderr:\n{tail}"

    def _run_task(self, task: _Task, node: _Node) -> None:
        spec = task.spec
        task_dir = node.root / "workitems" / task.job.spec.id / "job-1" / spec.id
        env = {
            **self._env,
            **spec.environment,
            **self._batch_env(node, task_dir),
            "AZ_BATCH_JOB_ID": task.job.spec.id,
            "AZ_BATCH_TASK_ID": spec.id,
        }
        deadline = None if spec.max_wall_clock is None else time.monotonic() + spec.max_wall_clock
        observer = self._observer
        announce = None if observer is None else lambda n: observer.task_started(spec.id, n, time.time())
        task.exit_code, task.failure, task.attempts = self._attempts(
            task.slot,
            spec.command,
            task.inputs,
            task_dir,
            env,
            spec.max_retries,
            deadline,
            f"task {spec.id}",
            announce,
        )
        if task.slot.killed not in (CANCELLED, JOB_DELETED):
            self._upload_outputs(task, task_dir / "wd")
            self._upload_logs(task, task_dir)
        logs = _keep_logs(task_dir, self._run_dir / "tasks" / spec.id)
        if logs is not None:
            task.stdout_path, task.stderr_path = logs / "stdout.txt", logs / "stderr.txt"

    def _attempts(
        self,
        slot: _Slot,
        command: str,
        inputs: Sequence[ResolvedFile],
        task_dir: Path,
        env: Mapping[str, str],
        max_retries: int,
        deadline: float | None,
        label: str,
        announce: Callable[[int], None] | None = None,
    ) -> tuple[int | None, str | None, int]:
        """Until success, a kill, or no retry is left: (exit code, failure, attempts)."""
        exit_code: int | None = None
        attempt = 0
        while True:
            attempt += 1
            if announce is not None:
                announce(attempt)
            failure = _prepare(task_dir / "wd", inputs)
            if failure is not None or slot.why() is not None:
                return exit_code, failure or slot.why(), attempt
            exit_code = self._run(slot, command, task_dir, env, deadline, label)
            if slot.why() is not None:
                return exit_code, slot.why(), attempt
            if exit_code == 0 or 0 <= max_retries < attempt:
                return exit_code, None, attempt

    def _run(
        self,
        slot: _Slot,
        command: str,
        task_dir: Path,
        env: Mapping[str, str],
        deadline: float | None,
        label: str,
    ) -> int:
        with open(task_dir / "stdout.txt", "wb") as out, open(task_dir / "stderr.txt", "wb") as err:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", command],
                cwd=task_dir / "wd",
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        with self._lock:
            slot.proc = proc  # from now on, stop() and deadlines kill it
            if slot.killed is not None:
                killpg(proc.pid)
        marker = self._root / "procs" / f"{proc.pid}.json"
        try:
            marker.write_text(json.dumps({"task": label, "start": process_start(proc.pid)}), encoding="utf-8")
        except OSError as e:  # costs only clean_up's knowledge of this process
            log.warning("cannot record process %d: %s", proc.pid, e)
        try:
            code = proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with self._lock:
                slot.kill(WALL_CLOCK)
            code = proc.wait()
        with self._lock:
            killpg(proc.pid)  # what the command left running in its group ends with it
            slot.proc = None
        marker.unlink(missing_ok=True)
        return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as sh reports it

    def _upload_outputs(self, task: _Task, wd: Path) -> None:
        ok = task.failure is None and task.exit_code == 0
        for out in task.spec.outputs:
            if (
                out.condition is not OutputCondition.COMPLETION
                and (out.condition is OutputCondition.SUCCESS) != ok
            ):
                continue
            try:
                files = _output_files(wd, out)
                if files is None:
                    if ok:
                        task.failure = f"output file {out.pattern!r} not found"
                    continue
                if not files:
                    task.unmatched.append(out.pattern)
                for src, blob in files:
                    task.outputs.append(put(task.urls[out.container], blob, src.read_bytes()))
            except (BatchflowError, OSError) as e:
                task.failure = task.failure or f"could not upload output {out.pattern!r}: {e}"

    def _upload_logs(self, task: _Task, task_dir: Path) -> None:
        logs = task.spec.logs
        if logs is None or not (task_dir / "stdout.txt").exists():
            return
        for name in ("stdout.txt", "stderr.txt"):
            try:
                put(task.urls[logs.container], logs.blob(task.spec.id, name), (task_dir / name).read_bytes())
            except (BatchflowError, OSError) as e:
                task.failure = task.failure or f"could not upload {name}: {e}"

    def _batch_env(self, node: _Node, task_dir: Path) -> dict[str, str]:
        return {
            "AZ_BATCH_NODE_ROOT_DIR": str(node.root),
            "AZ_BATCH_NODE_SHARED_DIR": str(node.root / "shared"),
            "AZ_BATCH_NODE_STARTUP_DIR": str(node.root / "startup"),
            "AZ_BATCH_TASK_DIR": str(task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
            "AZ_BATCH_POOL_ID": self._pool_id or "",
            "AZ_BATCH_NODE_ID": node.name,
            "AZ_BATCH_ACCOUNT_NAME": self._account,
            "AZ_BATCH_TASK_USER_IDENTITY": "PoolNonAdmin",
        }


# ---- helpers ----------------------------------------------------------------------------------


def node_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """BASE_ENV and LC_* as set in `environ`, and PATH with batchflow's own tools first."""
    env = {k: v for k, v in environ.items() if k in BASE_ENV or k.startswith("LC_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", os.defpath)])
    return env


def _check_id(kind: str, value: str) -> None:
    if not BATCH_ID.fullmatch(value):
        raise BatchflowError(
            f"invalid {kind} id {value!r}: use 1 to 64 letters, digits, hyphens or underscores"
        )


def _prepare(wd: Path, inputs: Sequence[ResolvedFile]) -> str | None:
    """A fresh wd/ holding every input, each a file of the task's own. Why not, or None."""
    remove_tree(wd)
    wd.mkdir(parents=True)
    placed: set[str] = set()
    for item in inputs:
        problem = blob_name_problem(item.file_path, drive=False)
        if problem is not None:
            return f"unsafe input file path {item.file_path!r}: {problem}"
        if item.file_path in placed:
            return f"two inputs have the same file path {item.file_path!r}"
        placed.add(item.file_path)
        try:
            data = fetch(item.http_url)
        except BatchflowError as e:
            return f"input {item.file_path!r}: {e}"
        target = wd.joinpath(*item.file_path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return None


def _output_files(wd: Path, out: TaskOutput) -> list[tuple[Path, str]] | None:
    """(file, blob name) pairs of an output; None if a single-file pattern names no file. A glob's
    files keep their path below the pattern's literal folders, as on Batch."""
    literal = glob_literal(out.pattern)
    dest = out.destination
    if literal is not None:
        src = wd.joinpath(*literal.split("/"))
        if not src.is_file():
            return None
        return [(src, dest + src.name if not dest or dest.endswith("/") else dest)]
    segments = out.pattern.split("/")
    split = next(i for i, s in enumerate(segments) if has_magic(s))
    base = wd.joinpath(*segments[:split])
    if not base.is_dir():
        return []
    prefix = dest if not dest or dest.endswith("/") else dest + "/"
    return [(path, prefix + rel) for rel, path in iter_files(base, ["/".join(segments[split:])])]


def _keep_logs(task_dir: Path, logs: Path) -> Path | None:
    """Copies of the last attempt's stdout.txt and stderr.txt in `logs`; None if nothing ran."""
    if not (task_dir / "stdout.txt").exists():
        return None
    logs.mkdir(parents=True, exist_ok=True)
    for name in ("stdout.txt", "stderr.txt"):
        shutil.copyfile(task_dir / name, logs / name)
    return logs


def _tail(path: Path, lines: int = 20) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return []


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
        unmatched_outputs=tuple(t.unmatched),
    )
