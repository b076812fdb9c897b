"""batchflow's own types: the validated workflow, rendered tasks and task states.

Everything here is a frozen dataclass or an enum. No module in the core imports an
SDK type; backends translate these into whatever their service speaks.

Durations are stored as seconds (float). Paths in the workflow are resolved against
the workflow file's folder by `spec.load_workflow`, so a `Workflow` holds absolute paths.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from batchflow.records import record

# A location in a YAML document: 1-based line and column.
Position = tuple[int, int]
# A path into the YAML document, e.g. ("pool", "vm_size") or ("storage", "uploads", 0, "source").
DocPath = tuple[str | int, ...]


@record
class SourceMap:
    """Where each value of the workflow came from, for error messages.

    `positions` maps a document path to the (line, column) of its value node
    (1-based). `key_positions` maps it to the position of the mapping key.
    """

    file: Path
    positions: Mapping[DocPath, Position] = field(default_factory=dict)
    key_positions: Mapping[DocPath, Position] = field(default_factory=dict)

    def where(self, path: DocPath) -> Position:
        """The closest known position for `path`: its own, else its nearest parent's."""
        p = tuple(path)
        while p:
            if p in self.positions:
                return self.positions[p]
            p = p[:-1]
        return self.positions.get((), (1, 1))


class OutputCondition(str, enum.Enum):
    """When a task's output files are uploaded (Batch's OutputFileUploadCondition)."""

    SUCCESS = "success"
    FAILURE = "failure"
    COMPLETION = "completion"


class TaskState(str, enum.Enum):
    ACTIVE = "active"  # queued
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class CleanupAction(str, enum.Enum):
    DELETE = "delete"
    KEEP = "keep"
    # Pool only: delete the pool if this run created it, keep a pool that already existed.
    DELETE_IF_CREATED = "delete-if-created"


@record
class ImageReference:
    """A Marketplace image (Batch's ImageReference)."""

    publisher: str
    offer: str
    sku: str
    version: str = "latest"


@record
class ResourceFileSpec:
    """A blob placed on the node before a task (or start task) runs, as Batch's ResourceFile.

    `blob` names a blob in `container` (for tasks, a template); the file appears at
    `file_path` relative to the task working directory (None -> the blob's base name).
    Blobs come from storage, so the files a workflow needs are listed in storage.uploads.
    """

    container: str
    blob: str
    file_path: str | None = None


@record
class StartTaskSpec:
    """What a pool runs on each node as it joins, before any task (Batch's StartTask)."""

    command: str
    elevated: bool = False
    wait_for_success: bool = True
    max_retries: int = 0
    resource_files: tuple[ResourceFileSpec, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)


@record
class AutoScaleSpec:
    """A pool's autoscale formula and how often Batch evaluates it (seconds)."""

    formula: str
    evaluation_interval: float = 300.0


@record
class PoolSpec:
    """The pool the job runs on: node size, image, node counts, slots and start task."""

    id: str
    vm_size: str
    image: ImageReference
    node_agent_sku_id: str
    dedicated_nodes: int = 0
    spot_nodes: int = 0
    task_slots_per_node: int = 1
    autoscale: AutoScaleSpec | None = None
    start_task: StartTaskSpec | None = None


@record
class JobSpec:
    """The job that holds a run's tasks: its id, wall-clock limit (seconds) and default retries."""

    id: str
    max_wall_clock: float | None = None  # seconds
    max_task_retries: int = 0


@record
class UploadSpec:
    """Local folder -> container. `include`/`exclude` are globs on the path relative to `source`."""

    source: Path
    container: str
    include: tuple[str, ...] = ("**",)
    exclude: tuple[str, ...] = ()
    prefix: str = ""


@record
class DownloadSpec:
    """Container (optionally only blobs under `prefix`) -> local folder."""

    container: str
    destination: Path
    prefix: str = ""


@record
class LogSpec:
    """Where task logs go: `<prefix><run id>/<task id>/stdout.txt` (and stderr.txt) in `container`."""

    container: str
    prefix: str = "batchflow-logs/"


@record
class ForeachSpec:
    """One task per uploaded file whose blob name in `container` matches `pattern`."""

    container: str
    pattern: str


@record
class OutputSpec:
    """Files to collect after a task.

    `pattern` (a template, then a glob relative to the task working dir) selects files;
    `destination` (a template) is the blob name when `pattern` names one file, or a blob
    prefix ("folder/") when it is a glob. Default destination: the file's name.
    """

    pattern: str
    container: str
    destination: str | None = None
    condition: OutputCondition = OutputCondition.SUCCESS


@record
class TaskTemplate:
    """The `tasks:` block: one task per input `foreach` matches, each rendered from these templates."""

    foreach: ForeachSpec
    command: str
    id: str | None = None  # template; None -> derived from the input blob name
    environment: Mapping[str, str] = field(default_factory=dict)  # values are templates
    resource_files: tuple[ResourceFileSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    max_retries: int | None = None  # None -> job.max_task_retries
    max_wall_clock: float | None = None  # seconds


@record
class MonitorSpec:
    """How long a run waits for its tasks, and how often it polls the service (seconds)."""

    timeout: float = 1800.0
    poll_interval: float = 5.0


@record
class CleanupSpec:
    """What a run deletes or keeps when it ends: its job, its pool, its input and output containers."""

    job: CleanupAction = CleanupAction.DELETE
    pool: CleanupAction = CleanupAction.DELETE_IF_CREATED
    input_containers: CleanupAction = CleanupAction.KEEP
    output_containers: CleanupAction = CleanupAction.KEEP


@record
class Workflow:
    """A validated workflow file: every block typed, defaults applied, paths absolute."""

    version: int
    name: str
    path: Path  # the workflow file, absolute
    base_dir: Path  # its folder; every relative path was resolved against it
    pool: PoolSpec
    job: JobSpec
    tasks: TaskTemplate
    containers: tuple[str, ...] = ()
    uploads: tuple[UploadSpec, ...] = ()
    downloads: tuple[DownloadSpec, ...] = ()
    outputs_per_run: bool = True  # task outputs go under runs/<run id>/ in their container
    logs: LogSpec | None = None  # None only for workflows without any container
    description: str = ""
    vars: Mapping[str, str] = field(default_factory=dict)
    monitor: MonitorSpec = field(default_factory=MonitorSpec)
    cleanup: CleanupSpec = field(default_factory=CleanupSpec)
    # Where run folders live (`local.workspace`, read by batchflow for every backend); None ->
    # <workflow folder>/.batchflow.
    workspace: Path | None = None
    # Each registered backend's block (`local:`, `azure:`), as that backend's own typed settings.
    settings: Mapping[str, object] = field(default_factory=dict)
    source: SourceMap | None = None


# ---- Rendering results ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskInput:
    """A file to place in the task working dir before it runs.

    `container` + `blob_name` for a file in storage; the backend turns it into whatever
    its nodes download (a folder path locally, an http URL + SAS on Azure).
    """

    container: str
    blob_name: str
    file_path: str  # relative to the task working dir


@dataclass(frozen=True)
class ResolvedFile:
    """A TaskInput resolved through Storage.resource_url: what a node fetches (`http_url`, or a
    file:// URL for local storage) and where it lands (`file_path`, relative to the task's wd/)."""

    http_url: str
    file_path: str


@dataclass(frozen=True, slots=True)
class TaskOutput:
    """A rendered output of one task: the files `pattern` names, stored under `destination` in `container`."""

    pattern: str  # rendered, relative to the task working dir; may be a glob
    container: str
    destination: str  # rendered blob name (single file) or prefix ending in '/' (glob)
    condition: OutputCondition


@record
class TaskLogs:
    """Where a task's stdout.txt and stderr.txt are uploaded on completion: `<prefix><task id>/`."""

    container: str
    prefix: str  # e.g. "batchflow-logs/<run id>/"

    def blob(self, task_id: str, name: str) -> str:
        return f"{self.prefix}{task_id}/{name}"


@dataclass(frozen=True, slots=True)
class RenderedTask:
    """One task as submitted: its command, inputs, outputs and environment, rendered for one input."""

    id: str
    index: int
    command: str  # run with /bin/sh -c in the task working dir, as Batch does on Linux
    inputs: tuple[TaskInput, ...]
    outputs: tuple[TaskOutput, ...]
    environment: Mapping[str, str]
    max_retries: int
    max_wall_clock: float | None
    source_blob: str | None = None  # the foreach input's blob name
    logs: TaskLogs | None = None  # set by the runner, which knows the run id


# Why task keys and uploads refuse a file (UploadItem.changed_since_seen).
CHANGED_SINCE_PLAN = "it changed after this run listed it: run again"


@dataclass(frozen=True, slots=True)
class UploadItem:
    """One local file to upload, and the version of it that input discovery saw."""

    local_path: Path
    container: str
    blob_name: str
    size: int
    # The version of the file that input discovery saw (st_mtime_ns, st_ino; -1: not known): task keys
    # hash that version without a stat of their own, and they and the upload refuse any other.
    mtime_ns: int = -1
    inode: int = -1

    def changed_since_seen(self, size: int, mtime_ns: int, inode: int) -> bool:
        """Whether a stat of the file now (its st_size, st_mtime_ns, st_ino) shows another version
        than discovery saw: the task keys describe that version, so an upload must not send another."""
        return self.inode >= 0 and (size, mtime_ns, inode) != (self.size, self.mtime_ns, self.inode)


@record
class Plan:
    """Everything a run will do, computed before any side effect."""

    workflow: Workflow
    uploads: tuple[UploadItem, ...]
    tasks: tuple[RenderedTask, ...]
    start_task: StartTaskSpec | None  # the start task the chosen backend will run
    start_task_inputs: tuple[TaskInput, ...] = ()  # its resource files, resolved
    # What input discovery skipped and says so (links leaving the source folder, broken links,
    # folders an include pattern names), each as `file:line:col: field: message`.
    warnings: tuple[str, ...] = ()


# ---- Results reported by backends --------------------------------------------------------


@dataclass(frozen=True)
class TaskCounts:
    """How many of a job's tasks are in each state."""

    active: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def completed(self) -> int:
        return self.succeeded + self.failed

    @property
    def total(self) -> int:
        return self.active + self.running + self.completed


@dataclass(frozen=True)
class TaskResult:
    """What a backend reports of one completed (or still running) task."""

    id: str
    state: TaskState
    exit_code: int | None
    attempts: int
    started_at: float | None = None  # epoch seconds
    ended_at: float | None = None
    failure: str | None = None  # why it failed beyond the exit code (timeout, killed, missing input)
    stdout_path: Path | None = None  # local copy of the last attempt's logs
    stderr_path: Path | None = None
    outputs: tuple[str, ...] = ()  # "container/blob" of each uploaded output file
    # Output glob patterns (rendered) that matched no file, when their condition applied: not a
    # failure (Batch uploads nothing for them either), but a summary should say so.
    unmatched_outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class TransferResult:
    """What an upload or a download did: files transferred and skipped, bytes sent."""

    transferred: int = 0
    skipped: int = 0  # unchanged, not copied again
    bytes: int = 0
    files: tuple[str, ...] = ()  # what was transferred (blob names or local paths)


@dataclass(frozen=True, slots=True)
class BlobStat:
    """What a storage tells of one blob's content: its size, and its MD5 (32 lowercase hex digits),
    or None where the storage holds none (a blob someone else stored in Azure without a
    Content-MD5, or a file folder storage was asked not to read: Storage.stat_blobs). `version`:
    folder storage's name for this very file as it is now (its mtime_ns and inode, "<ns>:<ino>"),
    which any write or replacement changes; None on Azure. Equal stats tell of the same content:
    the version is not compared."""

    size: int
    md5: str | None
    version: str | None = field(default=None, compare=False)
