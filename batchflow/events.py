"""What a run tells whoever watches it, as typed events.

The runner emits them (and the backends, through their `notify` callback, emit Info lines); a reporter
renders them: report.Reporter as text on stderr (a live bar on a terminal), report.JsonLinesReporter as
one JSON object per line on stdout (`batchflow run --output jsonl`):

    {"event": "run", "run_id": "20261201-...", "tasks": 5, "backend": "local", ...}
    {"event": "stage", "stage": "upload"}
    {"event": "info", "message": "Uploading 5 files to container [input]..."}
    {"event": "tasks", "total": 5, "active": 3, "running": 2, "succeeded": 0, "failed": 0, ...}
    {"event": "result", "run_id": "20261201-...", "status": "succeeded", ...}  (as --output json)
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from batchflow.model import TaskCounts
from batchflow.records import record
from batchflow.state import RunState, RunStatus, TaskRecord


class StageName(str, enum.Enum):
    """The stages of a run, in order (download may come again after cleanup, for a failed run)."""

    UPLOAD = "upload"
    REUSE = "reuse"  # what earlier runs already did (resume.py)
    POOL = "pool"
    JOB = "job"
    TASKS = "tasks"
    MONITOR = "monitor"
    DOWNLOAD = "download"
    CLEANUP = "cleanup"


class TransferKind(str, enum.Enum):
    UPLOAD = "upload"
    DOWNLOAD = "download"

    @property
    def verb(self) -> str:
        return "Uploading" if self is TransferKind.UPLOAD else "Downloading"


@record
class RunStarted:
    """The run folder exists: the run has an id."""

    event: ClassVar[str] = "run"
    run_id: str
    tasks: int
    backend: str
    storage: str
    run_folder: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "tasks": self.tasks,
            "backend": self.backend,
            "storage": self.storage,
            "run_folder": str(self.run_folder),
        }


@record
class Stage:
    """A stage begins."""

    event: ClassVar[str] = "stage"
    stage: StageName

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage.value}


@record
class Info:
    """A line saying what happens now ("Creating pool [p]...", a backend's "Waiting for ...")."""

    event: ClassVar[str] = "info"
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message}


@record
class Warn:
    """Something a person should see even with --quiet (an interrupt, a failed cleanup, a kept pool)."""

    event: ClassVar[str] = "warning"
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message}


@dataclass(frozen=True)
class TaskProgress:
    """The task counts of one monitor poll."""

    event: ClassVar[str] = "tasks"
    counts: TaskCounts
    total: int

    def to_json(self) -> dict[str, Any]:
        c = self.counts
        return {
            "total": self.total,
            "active": c.active,
            "running": c.running,
            "succeeded": c.succeeded,
            "failed": c.failed,
            "completed": c.completed,
        }


@dataclass(frozen=True)
class TransferProgress:
    """Files handled so far of a transfer, and bytes actually sent (unchanged files send none)."""

    event: ClassVar[str] = "transfer"
    direction: TransferKind
    files: int
    total_files: int
    bytes_sent: int
    total_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction.value,
            "files": self.files,
            "total_files": self.total_files,
            "bytes_sent": self.bytes_sent,
            "total_bytes": self.total_bytes,
        }


@record
class RunResult:
    """How the run ended: the summary a person reads, the object `--output json` prints."""

    event: ClassVar[str] = "result"
    run_id: str
    status: RunStatus
    workflow: str
    backend: str
    run_folder: Path
    task_count: int
    counts: Mapping[str, int]
    stage_seconds: Mapping[str, float]
    tasks: Mapping[str, TaskRecord]
    message: str | None = None
    outputs: tuple[str, ...] = field(default=())  # one line per download destination (text only)

    @classmethod
    def of(cls, state: RunState, outputs: Sequence[str] = ()) -> RunResult:
        """A snapshot of `state` (later changes to it do not show)."""
        return cls(
            run_id=state.run_id,
            status=state.status,
            workflow=state.workflow,
            backend=state.backend,
            run_folder=state.folder,
            task_count=state.task_count,
            counts=state.counts(),
            stage_seconds=dict(state.stage_seconds),
            tasks=dict(state.tasks),
            message=state.message,
            outputs=tuple(outputs),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status.value,
            "workflow": self.workflow,
            "backend": self.backend,
            "run_folder": str(self.run_folder),
            "counts": dict(self.counts),
            "stage_seconds": dict(self.stage_seconds),
            "tasks": {tid: t.to_json() for tid, t in self.tasks.items()},
            "message": self.message,
        }


Event = RunStarted | Stage | Info | Warn | TaskProgress | TransferProgress | RunResult


def event_json(event: Event) -> dict[str, Any]:
    """One event as a JSON object: {"event": <its name>, <its fields>...}."""
    return {"event": event.event, **event.to_json()}


class EventSink(Protocol):
    """Where a run's events go (a reporter)."""

    def emit(self, event: Event) -> None: ...

    def close_progress(self) -> None:
        """A live progress display, if any, ends here (before the lines that follow it)."""
        ...


def info_lines(sink: EventSink) -> Callable[[str], None]:
    """For a callback that takes text (a backend's `notify`, download_outputs' `say`): each line an
    Info event."""

    def say(message: str) -> None:
        sink.emit(Info(message))

    return say
