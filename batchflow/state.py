"""Run folders: one per run, holding its state (state.json and tasks.jsonl), its log and task logs.

Layout: <workspace>/runs/<run id>/
    state.json          the run itself (stage, status, pool, job, ...), small, written atomically
                        at every change of stage; its size does not grow with the number of tasks
    tasks.jsonl         the tasks' records, appended, never rewritten (TaskJournal): one line per
                        task attempt started or ended as it happens (local backend), and one per
                        record the run makes (results it collects, tasks reused or not started)
    batchflow.log       the run's log (redacted)
    tasks/<task id>/    stdout.txt, stderr.txt of a task's last attempt, where no other copy is on
                        this machine: a failed task's, or any task's when the logs are stored remotely

A task's record is the last line of the journal that names it. state.json files of earlier versions
held every task's record at the end of the run (and win over the journal); they still load, and
the first change such a run gets appends them to its journal (a cleanup, an attach).

state.json holds plain JSON (strings, numbers, lists); RunState and TaskRecord hold the typed
values (RunStatus, RecordState). Loading checks every type and tolerates a missing optional key.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from batchflow import strict_json as sj
from batchflow.errors import BatchflowError
from batchflow.linelog import LineLog
from batchflow.model import TaskResult, TaskState
from batchflow.procinfo import host_name, is_running, process_start
from batchflow.redact import redact_json

log = logging.getLogger("batchflow")

STATE_FILE = "state.json"
JOURNAL_FILE = "tasks.jsonl"


class RunStatus(str, enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    ERROR = "error"  # an unexpected error (a bug) ended it
    DEAD = "dead"  # its batchflow process is gone without ending the run


class RecordState(str, enum.Enum):
    """A task's state in the run's record: model.TaskState's values, and "not started"."""

    ACTIVE = "active"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOT_STARTED = "not_started"  # an interrupt stopped it from starting: it runs on a re-run

    @classmethod
    def of(cls, state: TaskState) -> RecordState:
        return cls(state.value)


NOT_STARTED = RecordState.NOT_STARTED.value


@dataclass(frozen=True)
class TaskRecord:
    """What the run knows of one task. stdout and stderr: paths of its logs on this machine, relative
    to the run folder if they are in it (a failed task's), else whole (a log in folder storage)."""

    state: RecordState
    exit_code: int | None = None
    attempts: int = 0
    started_at: float | None = None  # epoch seconds
    ended_at: float | None = None
    failure: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    outputs: tuple[str, ...] = ()
    unmatched_outputs: tuple[str, ...] = ()
    reused_from: str | None = None  # not run: its outputs are copies of this earlier run's (resume.py)

    @classmethod
    def of(cls, result: TaskResult, folder: Path) -> TaskRecord:
        return cls(
            state=RecordState.of(result.state),
            exit_code=result.exit_code,
            attempts=result.attempts,
            started_at=result.started_at,
            ended_at=result.ended_at,
            failure=result.failure,
            stdout=_rel(result.stdout_path, folder),
            stderr=_rel(result.stderr_path, folder),
            outputs=tuple(result.outputs),
            unmatched_outputs=tuple(result.unmatched_outputs),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "exit_code": self.exit_code,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "failure": self.failure,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "outputs": list(self.outputs),
            "unmatched_outputs": list(self.unmatched_outputs),
            "reused_from": self.reused_from,
        }

    @classmethod
    def from_json(cls, data: object, where: str) -> TaskRecord:
        """Strict about types; a missing key other than "state" takes its default."""
        d = sj.mapping(data, where)
        return cls(
            state=sj.member(RecordState, sj.required(d, "state", where), f"{where}.state"),
            exit_code=sj.opt_whole(d.get("exit_code"), f"{where}.exit_code"),
            attempts=sj.whole(d.get("attempts", 0), f"{where}.attempts"),
            started_at=sj.opt_number(d.get("started_at"), f"{where}.started_at"),
            ended_at=sj.opt_number(d.get("ended_at"), f"{where}.ended_at"),
            failure=sj.opt_text(d.get("failure"), f"{where}.failure"),
            stdout=sj.opt_text(d.get("stdout"), f"{where}.stdout"),
            stderr=sj.opt_text(d.get("stderr"), f"{where}.stderr"),
            outputs=tuple(sj.texts(d.get("outputs", []), f"{where}.outputs")),
            unmatched_outputs=tuple(sj.texts(d.get("unmatched_outputs", []), f"{where}.unmatched_outputs")),
            reused_from=sj.opt_text(d.get("reused_from"), f"{where}.reused_from"),
        )


def new_run_id(now: float | None = None) -> str:
    """Sortable to the millisecond (UTC), then unique: 20261122-081501-042-3fa9c2."""
    when = now if now is not None else time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(when))
    return f"{stamp}-{int(when * 1000) % 1000:03d}-{os.urandom(3).hex()}"  # (secrets.token_hex(3))


_AFTER_UPLOAD = frozenset({"reuse", "pool", "job", "tasks", "monitor"})  # RunState.stage values


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
    status: RunStatus = RunStatus.RUNNING
    stage: str = "plan"
    stage_seconds: dict[str, float] = field(default_factory=dict)
    pool_id: str | None = None
    pool_created: bool = False
    job_id: str | None = None
    job_created: bool = False  # this run's create_job succeeded: the job is this run's to delete
    containers_created: list[str] = field(default_factory=list)
    task_count: int = 0
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    message: str | None = None
    pid: int | None = None  # the batchflow process that ran it, on `host`
    pid_start: int | None = None  # that process's start time (Linux /proc): a reused pid is not it
    overrides: dict[str, str] = field(default_factory=dict)  # the run's --set values
    host: str | None = None
    cleanup_failures: list[str] = field(default_factory=list)  # what the run's own cleanup could not do
    cleaned_up: list[str] = field(default_factory=list)  # what `batchflow cleanup` removed later
    # The records the journal holds, as far as this state knows (None: not read): what a save
    # appends is what differs from them.
    _journaled: dict[str, TaskRecord] | None = field(default=None, repr=False, compare=False)

    @property
    def inputs_uploaded(self) -> bool:
        """The run got past its upload stage and not yet to its download or cleanup (which may
        delete the containers): its inputs are in storage, as its tasks read them."""
        return self.stage in _AFTER_UPLOAD

    def still_running(self) -> bool:
        """The run's process is alive on this machine (it has not ended and its pid still exists)."""
        if self.ended_at is not None or self.pid is None or self.host != host_name():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return is_running(self.pid, self.pid_start)

    def reopen(self) -> None:
        """`batchflow attach`: this process goes on with the run its dead process left."""
        self.status = RunStatus.RUNNING
        self.ended_at = None
        self.message = None
        self.pid = os.getpid()
        self.pid_start = process_start(self.pid)
        self.host = host_name()
        self.save()

    @property
    def effective_status(self) -> RunStatus:
        """`status`, except that a run whose batchflow process is gone (SIGKILL, a crash, a lost
        machine) without ending is "dead", not "running" forever. On another host: as recorded."""
        if self.status is RunStatus.RUNNING and self.host == host_name() and not self.still_running():
            return RunStatus.DEAD
        return self.status

    @property
    def tasks_dir(self) -> Path:
        return self.folder / "tasks"

    @property
    def log_file(self) -> Path:
        return self.folder / "batchflow.log"

    def record(self, records: Mapping[str, TaskRecord]) -> None:
        """Set these tasks' records and append them to the journal (as save() does)."""
        self.tasks.update(records)
        self._append_records()

    def record_tasks(self, results: list[TaskResult]) -> None:
        """The compute's results. What the journal has already (the local compute appends each
        task's end as it happens) is not appended again."""
        self._merge_journal()
        self.record({r.id: TaskRecord.of(r, self.folder) for r in results})

    def mark_not_started(self, task_ids: Iterable[str]) -> None:
        """After an interrupt: each task with no result, or stopped before its command ever ran (no
        start time), is "not started", whichever backend ran it. They run on a re-run."""
        changed: dict[str, TaskRecord] = {}
        for task_id in task_ids:
            record = self.tasks.get(task_id)
            if record is None:
                changed[task_id] = TaskRecord(RecordState.NOT_STARTED)
            elif record.state is RecordState.FAILED and record.started_at is None:
                changed[task_id] = replace(record, state=RecordState.NOT_STARTED, failure=None, attempts=0)
        self.record(changed)

    def mark_stopped(self, reason: str) -> None:
        """After a stop that was cut short (a second Ctrl-C): each task still recorded running or
        queued was stopped with the run (the compute killed it first), so it failed, for `reason`."""
        self.record(
            {
                task_id: replace(record, state=RecordState.FAILED, failure=record.failure or reason)
                for task_id, record in self.tasks.items()
                if record.state in (RecordState.RUNNING, RecordState.ACTIVE)
            }
        )

    def counts(self) -> dict[str, int]:
        """Tasks per state, every state named (keys: RecordState values). While the run goes on,
        the tasks it has no record of yet (the journal names a task once it starts) are queued,
        "active": the counts add up to task_count."""
        out = {s.value: 0 for s in RecordState}
        for t in self.tasks.values():
            out[t.state.value] += 1
        if self.status is RunStatus.RUNNING:
            out[RecordState.ACTIVE.value] += max(0, self.task_count - len(self.tasks))
        return out

    def running_tasks(self) -> list[tuple[str, TaskRecord]]:
        """The tasks running now, the longest running first (those with no start time last)."""
        running = [(tid, t) for tid, t in self.tasks.items() if t.state is RecordState.RUNNING]
        return sorted(
            running, key=lambda item: (item[1].started_at is None, item[1].started_at or 0, item[0])
        )

    def to_json(self) -> dict[str, Any]:
        """The whole state as plain JSON types, the same keys as the fields: state.json's content
        (header_json) and, under "tasks", every task's record."""
        data = self.header_json()
        data["tasks"] = {tid: t.to_json() for tid, t in self.tasks.items()}
        return data

    def header_json(self) -> dict[str, Any]:
        """state.json's content: every field but the tasks' records (which are in the journal)."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name in _HEADER}
        data["folder"] = str(self.folder)
        data["status"] = self.status.value
        for name in ("stage_seconds", "overrides"):
            data[name] = dict(data[name])
        for name in ("containers_created", "cleanup_failures", "cleaned_up"):
            data[name] = list(data[name])
        return data

    def save(self) -> None:
        """Append to the journal each task record that differs from what the journal holds (none,
        mostly: record() appends as records change), then write state.json atomically. On a full
        disk the last good copy stays and the run goes on (it still cleans up); the failure is
        logged, and the next save tries again."""
        self._append_records()
        tmp = self.folder / (STATE_FILE + ".tmp")
        try:  # redacted: messages and failures may quote a service's answer or a task's words
            tmp.write_text(redact_json(self.header_json(), indent=1, sort_keys=True), encoding="utf-8")
            tmp.replace(self.folder / STATE_FILE)
        except OSError as e:
            log.warning("cannot save the run state in %s: %s", self.folder, e)
            tmp.unlink(missing_ok=True)

    def _append_records(self) -> None:
        """Append the records the journal does not hold (as far as this state knows), in one write.
        A state.json of an earlier version held the records, winning over the journal: appended,
        they win there."""
        known = self._journaled if self._journaled is not None else {}
        changed = {tid: r for tid, r in self.tasks.items() if (k := known.get(tid)) is not r and k != r}
        if not changed:
            return
        journal = TaskJournal(self.folder)
        try:
            if journal.record(changed):
                self._journaled = {**known, **changed}
        finally:
            journal.close()

    def _merge_journal(self) -> None:
        """Take in the records the journal has that this state has not seen (the compute's own
        lines, as its tasks end); a record this state set and has not appended yet stays."""
        try:
            journal = read_journal(self.folder)
        except BatchflowError as e:
            log.warning("%s", e)
            return
        self._take(journal)

    def _take(self, journal: dict[str, TaskRecord]) -> None:
        known = self._journaled
        for task_id, record in journal.items():
            if known is None:  # not read before: a record in memory (state.json's) wins
                self.tasks.setdefault(task_id, record)
            elif known.get(task_id) != record:  # the journal changed since
                self.tasks[task_id] = record
        self._journaled = journal

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
            host=host_name(),
            _journaled={},  # a new folder: no journal yet
        )
        state.save()
        return state

    @classmethod
    def load(cls, folder: Path, *, journal: bool = True) -> RunState:
        """state.json, with the tasks' records from the journal (each task as its last line says;
        a state.json of an earlier version holds records that win over the journal's). Without
        `journal`, state.json alone, without the journal's records: what `cleanup`, `download` and
        `gc` need (a journal they cannot read never stops them)."""
        path = folder / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BatchflowError(f"no run state in {folder}") from None
        except json.JSONDecodeError as e:
            raise BatchflowError(f"run state {path} is damaged: {e}") from None
        try:
            state = cls.from_json(data, folder)
        except sj.BadType as e:
            raise BatchflowError(f"run state {path} is damaged: {e}") from None
        if journal:
            state._take(read_journal(folder))
        return state

    def end_dead_tasks(self, why: str, at: float) -> None:
        """A dead run, its task processes stopped (`batchflow cleanup`): its record takes what the
        journal knows, and every task still recorded running or queued fails with `why`, appended
        to the journal, so no task stays "running" there, or in `status`, forever."""
        self._merge_journal()
        self.record(
            {
                task_id: replace(record, state=RecordState.FAILED, failure=why, ended_at=at)
                for task_id, record in self.tasks.items()
                if record.state in (RecordState.RUNNING, RecordState.ACTIVE)
            }
        )

    @classmethod
    def from_json(cls, data: object, folder: Path) -> RunState:
        """The state state.json holds (raises sj.BadType naming the first wrong value). Keys it does
        not know are ignored; a missing key other than the run's id, workflow, backend, start time
        and status takes its default (older runs lack the later fields)."""
        d = sj.mapping(data, "state")
        g = d.get
        tasks = sj.mapping(g("tasks", {}), "tasks")
        return cls(
            run_id=sj.text(sj.required(d, "run_id", "state"), "run_id"),
            workflow=sj.text(sj.required(d, "workflow", "state"), "workflow"),
            backend=sj.text(sj.required(d, "backend", "state"), "backend"),
            folder=folder,
            storage=sj.text(g("storage", "local"), "storage"),
            started_at=sj.number(sj.required(d, "started_at", "state"), "started_at"),
            ended_at=sj.opt_number(g("ended_at"), "ended_at"),
            status=sj.member(RunStatus, sj.required(d, "status", "state"), "status"),
            stage=sj.text(g("stage", "plan"), "stage"),
            stage_seconds={
                k: sj.number(v, f"stage_seconds.{k}")
                for k, v in sj.mapping(g("stage_seconds", {}), "stage_seconds").items()
            },
            pool_id=sj.opt_text(g("pool_id"), "pool_id"),
            pool_created=sj.flag(g("pool_created", False), "pool_created"),
            job_id=sj.opt_text(g("job_id"), "job_id"),
            job_created=sj.flag(g("job_created", False), "job_created"),
            containers_created=sj.texts(g("containers_created", []), "containers_created"),
            task_count=sj.whole(g("task_count", 0), "task_count"),
            tasks={tid: TaskRecord.from_json(t, f"tasks.{tid}") for tid, t in tasks.items()},
            message=sj.opt_text(g("message"), "message"),
            pid=sj.opt_whole(g("pid"), "pid"),
            pid_start=sj.opt_whole(g("pid_start"), "pid_start"),
            overrides={
                k: sj.text(v, f"overrides.{k}")
                for k, v in sj.mapping(g("overrides", {}), "overrides").items()
            },
            host=sj.opt_text(g("host"), "host"),
            cleanup_failures=sj.texts(g("cleanup_failures", []), "cleanup_failures"),
            cleaned_up=sj.texts(g("cleaned_up", []), "cleaned_up"),
        )


# The fields state.json holds: all but the tasks' records and what is only kept in memory.
_HEADER = frozenset(f.name for f in fields(RunState) if f.name != "tasks" and not f.name.startswith("_"))


class TaskJournal:
    """base.TaskObserver: one JSON line per task attempt started or ended, appended to the run
    folder's tasks.jsonl as it happens, so `batchflow status` is live while the run goes on; and
    the run's own records of its tasks (RunState.record). The file stays open until close().

    Thread-safe (the compute's workers call it). Redacted as state.json is. A write that fails (a
    full disk) is logged once and the run goes on; a line a failed write cut short is ended before
    the next, so only that line is lost.

        {"event": "started", "task": "t1", "attempt": 1, "at": 1764760000.1}
        {"event": "ended", "task": "t1", "state": "succeeded", "exit_code": 0, ...}  (a TaskRecord)
    """

    def __init__(self, run_folder: Path) -> None:
        self.folder = run_folder
        self.path = run_folder / JOURNAL_FILE
        self._log = LineLog(self.path)
        self._failed = False  # a write failed (warned once until one succeeds)

    def task_started(self, task_id: str, attempt: int, at: float) -> None:
        self._append({"event": "started", "task": task_id, "attempt": attempt, "at": at})

    def task_ended(self, result: TaskResult) -> None:
        self._append({"event": "ended", "task": result.id, **TaskRecord.of(result, self.folder).to_json()})

    def record(self, records: Mapping[str, TaskRecord]) -> bool:
        """The run's own records of these tasks (results collected, reused, not started...), in
        one write: each an "ended" line, as a task's end is. False if the write failed."""
        return not records or self._write(
            "".join(
                redact_json({"event": "ended", "task": tid, **r.to_json()}, sort_keys=True) + "\n"
                for tid, r in records.items()
            )
        )

    def close(self) -> None:
        self._log.close()

    def _append(self, entry: Mapping[str, Any]) -> None:
        self._write(redact_json(entry, sort_keys=True) + "\n")

    def _write(self, lines: str) -> bool:
        try:
            self._log.append(lines)
        except OSError as e:
            if not self._failed:
                log.warning(
                    "cannot write the task journal %s (status shows less until the end): %s", self.path, e
                )
            self._failed = True
            return False
        self._failed = False
        return True


def read_journal(folder: Path) -> dict[str, TaskRecord]:
    """Each task the run folder's journal names, as its last line left it: running (since its
    first start), or as it ended. A line cut short (a full disk, a crash) is skipped; so is a whole
    line of the wrong shape or of an event this version does not know (another version's), with one
    warning for the file: the journal only makes `status` live, one odd line must not hide the run."""
    path = folder / JOURNAL_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise BatchflowError(f"cannot read the task journal {path}: {e}") from None
    records: dict[str, TaskRecord] = {}
    skipped: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            log.debug("%s:%d: a line cut short, skipped", path, number)
            continue
        try:
            _replay(records, entry, f"line {number}")
        except sj.BadType as e:
            skipped.append(str(e))
    if skipped:
        log.warning(
            "task journal %s: %d line(s) skipped, not understood (the first: %s)",
            path,
            len(skipped),
            skipped[0],
        )
    return records


def _replay(records: dict[str, TaskRecord], entry: object, where: str) -> None:
    d = sj.mapping(entry, where)
    task_id = sj.text(sj.required(d, "task", where), f"{where}.task")
    event = sj.text(sj.required(d, "event", where), f"{where}.event")
    if event == "started":
        attempt = sj.whole(sj.required(d, "attempt", where), f"{where}.attempt")
        at = sj.number(sj.required(d, "at", where), f"{where}.at")
        before = records.get(task_id)
        first = before.started_at if before is not None and before.started_at is not None else at
        records[task_id] = TaskRecord(RecordState.RUNNING, attempts=attempt, started_at=first)
    elif event == "ended":
        records[task_id] = TaskRecord.from_json(
            {k: v for k, v in d.items() if k not in ("event", "task")}, where
        )
    else:
        raise sj.BadType(f"{where}.event: expected 'started' or 'ended', got {event!r}")


def find_run(workspace: Path, run_id: str | None, workflow: Path | None = None) -> Path:
    """The folder of run `run_id` (a unique prefix is enough), or of the latest run; with `workflow`,
    only runs of that workflow file count (workflows may share a workspace)."""
    runs = workspace / "runs"
    names = sorted(p.name for p in runs.iterdir() if (p / STATE_FILE).is_file()) if runs.is_dir() else []
    if workflow is not None:
        names = [n for n in names if workflow_of(runs / n) == workflow.resolve()]
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


def workflow_of(folder: Path) -> Path | None:
    try:
        data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        return Path(data["workflow"]).resolve()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _rel(path: Path | None, base: Path) -> str | None:
    """`path` relative to `base` if it lies under it (Path.relative_to, without its cost: two per
    task end), else whole."""
    if path is None:
        return None
    text, under = str(path), str(base).rstrip("/") + "/"
    return text[len(under) :] if text.startswith(under) and len(text) > len(under) else text
