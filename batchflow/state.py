"""Run folders: one per run, holding its state (state.json), its log and each task's logs.

Layout: <workspace>/runs/<run id>/
    state.json          written atomically at every stage change
    batchflow.log       the run's log (redacted)
    tasks/<task id>/    stdout.txt, stderr.txt of the task's last attempt
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchflow.errors import BatchflowError
from batchflow.model import TaskResult, TaskState
from batchflow.procinfo import is_running, process_start
from batchflow.redact import redact

log = logging.getLogger("batchflow")

STATE_FILE = "state.json"
NOT_STARTED = "not_started"  # a task's state in state.json after an interrupt stopped it from starting


def new_run_id(now: float | None = None) -> str:
    """Sortable to the millisecond (UTC), then unique: 20261122-081501-042-3fa9c2."""
    when = now if now is not None else time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(when))
    return f"{stamp}-{int(when * 1000) % 1000:03d}-{secrets.token_hex(3)}"


@dataclass
class RunState:
    """What a run did so far. Serialised to state.json after every change of stage."""

    run_id: str
    workflow: str
    backend: str
    folder: Path
    storage: str = "local"
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    status: str = "running"  # running | succeeded | failed | interrupted | error
    stage: str = "plan"
    stage_seconds: dict[str, float] = field(default_factory=dict)
    pool_id: str | None = None
    pool_created: bool = False
    job_id: str | None = None
    job_created: bool = False  # this run's create_job succeeded: the job is this run's to delete
    containers_created: list[str] = field(default_factory=list)
    task_count: int = 0
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    message: str | None = None
    pid: int | None = None  # the batchflow process that ran it, on `host`
    pid_start: int | None = None  # that process's start time (Linux /proc): a reused pid is not it
    overrides: dict[str, str] = field(default_factory=dict)  # the run's --set values
    host: str | None = None
    cleanup_failures: list[str] = field(default_factory=list)  # what the run's own cleanup could not do
    cleaned_up: list[str] = field(default_factory=list)  # what `batchflow cleanup` removed later

    def still_running(self) -> bool:
        """The run's process is alive on this machine (it has not ended and its pid still exists)."""
        if self.ended_at is not None or self.pid is None or self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return is_running(self.pid, self.pid_start)

    @property
    def effective_status(self) -> str:
        """`status`, except that a run whose batchflow process is gone (SIGKILL, a crash, a lost
        machine) without ending is "dead", not "running" forever. On another host: as recorded."""
        if self.status == "running" and self.host == socket.gethostname() and not self.still_running():
            return "dead"
        return self.status

    @property
    def tasks_dir(self) -> Path:
        return self.folder / "tasks"

    @property
    def log_file(self) -> Path:
        return self.folder / "batchflow.log"

    def record_tasks(self, results: list[TaskResult]) -> None:
        for r in results:
            self.tasks[r.id] = {
                "state": r.state.value,
                "exit_code": r.exit_code,
                "attempts": r.attempts,
                "started_at": r.started_at,
                "ended_at": r.ended_at,
                "failure": r.failure,
                "stdout": _rel(r.stdout_path, self.folder),
                "stderr": _rel(r.stderr_path, self.folder),
                "outputs": list(r.outputs),
                "unmatched_outputs": list(r.unmatched_outputs),
            }

    def mark_not_started(self, task_ids: Iterable[str]) -> None:
        """After an interrupt: each task with no result, or stopped before its command ever ran (no
        start time), is "not started", whichever backend ran it. They run on a re-run."""
        for task_id in task_ids:
            record = self.tasks.get(task_id)
            if record is None or (record["state"] == TaskState.FAILED.value and record["started_at"] is None):
                self.tasks[task_id] = {**(record or {}), "state": NOT_STARTED, "failure": None, "attempts": 0}

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in TaskState} | {NOT_STARTED: 0}
        for t in self.tasks.values():
            out[t["state"]] = out.get(t["state"], 0) + 1
        return out

    def save(self) -> None:
        """Write state.json atomically. On a full disk the last good copy stays and the run goes on
        (it still cleans up); the failure is logged, and the next save tries again."""
        data = asdict(self)
        data["folder"] = str(self.folder)
        tmp = self.folder / (STATE_FILE + ".tmp")
        try:  # redacted: messages and failures may quote a service's answer or a task's words
            tmp.write_text(redact(json.dumps(data, indent=1, sort_keys=True)), encoding="utf-8")
            tmp.replace(self.folder / STATE_FILE)
        except OSError as e:
            log.warning("cannot save the run state in %s: %s", self.folder, e)
            tmp.unlink(missing_ok=True)

    @classmethod
    def create(
        cls,
        workspace: Path,
        workflow: Path,
        backend: str,
        run_id: str | None = None,
        *,
        storage: str = "local",
    ) -> RunState:
        rid = run_id or new_run_id()
        folder = workspace / "runs" / rid
        (folder / "tasks").mkdir(parents=True, exist_ok=False)
        state = cls(
            run_id=rid,
            workflow=str(workflow),
            backend=backend,
            folder=folder,
            storage=storage,
            pid=os.getpid(),
            pid_start=process_start(os.getpid()),
            host=socket.gethostname(),
        )
        state.save()
        return state

    @classmethod
    def load(cls, folder: Path) -> RunState:
        try:
            data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BatchflowError(f"no run state in {folder}") from None
        except json.JSONDecodeError as e:
            raise BatchflowError(f"run state {folder / STATE_FILE} is damaged: {e}") from None
        data["folder"] = folder
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def find_run(workspace: Path, run_id: str | None, workflow: Path | None = None) -> Path:
    """The folder of run `run_id` (a unique prefix is enough), or of the latest run; with `workflow`,
    only runs of that workflow file count (workflows may share a workspace)."""
    runs = workspace / "runs"
    names = sorted(p.name for p in runs.iterdir() if (p / STATE_FILE).is_file()) if runs.is_dir() else []
    if workflow is not None:
        names = [n for n in names if _workflow_of(runs / n) == workflow.resolve()]
    if not names:
        raise BatchflowError(f"no runs in {runs}" + (f" of {workflow}" if workflow is not None else ""))
    if run_id is None:
        return runs / names[-1]
    matches = [n for n in names if n.startswith(run_id)]
    if len(matches) == 1:
        return runs / matches[0]
    if not matches:
        raise BatchflowError(f"no run {run_id!r} in {runs} (latest: {names[-1]})")
    raise BatchflowError(f"run id {run_id!r} is ambiguous: {', '.join(matches[:5])}")


def _workflow_of(folder: Path) -> Path | None:
    try:
        data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        return Path(data["workflow"]).resolve()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _rel(path: Path | None, base: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)
