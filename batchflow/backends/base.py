"""The backend contract: Storage, Compute and Backend (one object per backend, in the registry),
and the task contract every Compute keeps.

They take and return batchflow's own types (batchflow.model); no SDK type crosses this
boundary. The runner drives them through the stages
upload -> pool -> job -> tasks -> monitor -> download -> cleanup.

TASK_CONTRACT, below, is what every Compute backend guarantees to a task's command: the one Azure
Batch gives it on a Linux node. It is written only here. Clause N is proven, against every backend,
by tests/test_compute_contract.py::test_N_* (one test per clause, one clause per test:
tests/test_docs.py checks the numbering), and README.md's "The task contract" is generated from it
(`python -m batchflow.contract_doc README.md`; tests/test_docs.py checks it is in step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from batchflow.errors import BatchflowError
from batchflow.model import (
    BlobStat,
    DocPath,
    JobSpec,
    PoolSpec,
    RenderedTask,
    StartTaskSpec,
    TaskCounts,
    TaskInput,
    TaskResult,
    TransferResult,
    UploadItem,
    Workflow,
)
from batchflow.records import record

if TYPE_CHECKING:
    from batchflow.state import RunState

# (number, clause): each clause Markdown, in the words of the workflow file; numbered 1, 2, 3, ...
TASK_CONTRACT: tuple[tuple[int, str], ...] = (
    (
        1,
        "The command runs with `/bin/sh -c` in the task working directory, `$AZ_BATCH_TASK_WORKING_DIR`"
        " (`wd/`).",
    ),
    (
        2,
        "The input file and every resource file are in `wd/` (at `input.path` / their `file_path`) before"
        " the command starts, each a file of the task's own, as a node downloads it: a task may append to,"
        " rewrite or `gzip -k` its input without changing the stored blob the next run reads.",
    ),
    (
        3,
        "Environment: the task's `environment` plus `AZ_BATCH_NODE_ROOT_DIR`, `AZ_BATCH_NODE_SHARED_DIR`,"
        " `AZ_BATCH_NODE_STARTUP_DIR` (folders of the node, there for the task to use),"
        " `AZ_BATCH_TASK_WORKING_DIR`, `AZ_BATCH_TASK_DIR`, `AZ_BATCH_JOB_ID`, `AZ_BATCH_TASK_ID`,"
        " `AZ_BATCH_POOL_ID`, `AZ_BATCH_NODE_ID`, `AZ_BATCH_ACCOUNT_NAME` and `AZ_BATCH_TASK_USER_IDENTITY`"
        " (`PoolNonAdmin`: the pool's non-admin user), on top of the small base a node's task has (`PATH`,"
        " `HOME`, `USER`, `LOGNAME`, the locale, `TZ`, `TMPDIR`), and nothing else of the environment"
        " batchflow runs in: a key or token exported in your shell reaches no task.",
    ),
    (
        4,
        "`stdout.txt` and `stderr.txt` are written in `$AZ_BATCH_TASK_DIR`, the parent of `wd/`; batchflow"
        " keeps local copies of a failed task's, for the run summary.",
    ),
    (
        5,
        "Exit code 0 is success; anything else is a failure, retried up to `max_retries` times (`-1`: no"
        " limit); the task's exit code and logs are its last attempt's.",
    ),
    (
        6,
        "A task still running `max_wall_clock` after it started is killed, its whole process group, and"
        " fails without further retries; the job's `max_wall_clock` (counted from the job's creation) ends"
        " every task still running, as failed.",
    ),
    (
        7,
        "Afterwards, files matching each output `pattern` (relative to `wd/`) are uploaded to their"
        " container, on `success`, `failure` or `completion`. A single-file output that is missing fails a"
        " task that exited 0; a glob that matched nothing is not a failure (Batch uploads nothing for it"
        " either).",
    ),
    (
        8,
        "`stdout.txt` and `stderr.txt` are uploaded too, on completion (success or failure), to"
        " `storage.logs` (`<prefix><run id>/<task id>/`), so a task's logs outlive its node.",
    ),
    (
        9,
        "Inputs are fetched, and outputs and logs stored, only through the URLs the storage hands out"
        " (read-only blob SAS URLs and write-only container SAS URLs on Azure, `file://` URLs for folder"
        " storage), on both backends, as a Batch node reaches Blob Storage.",
    ),
    (
        10,
        "The start task runs once on each node before any task, in `$AZ_BATCH_NODE_STARTUP_DIR/wd`, with its"
        " own `environment` on the same base as a task (nothing else of yours); with `wait_for_success` (the"
        " default) a failure stops the run before any task starts, showing the start task's stderr.",
    ),
    (
        11,
        "Stopping a run (Ctrl-C) kills every running task at once, its whole process group, and records it"
        " as failed.",
    ),
    (
        12,
        "A task id runs once in a job: adding a task the job already has (a submission resent after a lost"
        " answer, a second `add`) adds nothing and runs nothing again.",
    ),
)


class TaskObserver(Protocol):
    """Told of each task attempt as it starts and ends, by a compute that knows at once (the local
    backend runs the tasks itself), so a run's record of its tasks is live on disk. Called from the
    compute's worker threads: an observer is thread-safe, and never raises for a full disk. A task
    that ends without ever leaving the queue (dropped by stop() or by its job's end) is not told of:
    it never started, and the run records it from the compute's task results."""

    def task_started(self, task_id: str, attempt: int, at: float) -> None: ...

    def task_ended(self, result: TaskResult) -> None: ...


class Storage(Protocol):
    def ensure_container(self, name: str) -> bool:
        """Create the container if missing. True if this call created it."""
        ...

    def upload(self, items: Sequence[UploadItem]) -> TransferResult:
        """Copy files into containers, skipping those whose content is already there. A file whose
        stat shows another version than input discovery saw (UploadItem.changed_since_seen: the
        task keys describe that version) is not sent: the upload raises BatchflowError naming it
        (at once, or after the other files: either is fine)."""
        ...

    def download(
        self, container: str, prefix: str, destination: Path, *, skip: Sequence[str] = ()
    ) -> TransferResult:
        """Copy blobs under `prefix` (but none under a `skip` prefix) into `destination`, which no blob
        name may escape."""
        ...

    def list_blobs(self, container: str, prefix: str = "") -> list[str]: ...

    def stat_blobs(self, container: str, prefix: str = "", *, md5: bool = True) -> dict[str, BlobStat]:
        """Every blob under `prefix` (the names list_blobs gives, in its order) with its size and
        MD5: from the listing on Azure (one request per 5,000 blobs; None for a blob stored without
        a Content-MD5), computed from the file in folder storage, once per version of the file.
        `md5=False`: the caller can do with a version (BlobStat.version) instead; a storage that
        would read the files for an MD5 gives only those it knows, and the versions."""
        ...

    def copy_blobs(self, container: str, pairs: Sequence[tuple[str, str]]) -> TransferResult:
        """Copy each blob `src` to `dst` (replaced if there) within `container`, in the storage itself:
        nothing passes through this machine (bytes is 0), and the copy keeps the source's content
        settings and Content-MD5. Every copy reads its source as it was before the call, so no
        destination may be named twice, be another pair's source, or be its own source. A name that
        is unsafe (check_blob_name) fails the call before anything is copied; a missing source
        fails with its name (the other copies are made). `files`: the destinations copied."""
        ...

    def resource_url(self, container: str, blob: str) -> str:
        """Where a node GETs a task input from, as a Batch ResourceFile's http_url: an https URL with a
        read-only, short-lived SAS (Azure), or a file:// URL (local storage)."""
        ...

    def container_url(self, container: str) -> str:
        """Where a node uploads output files under, as a Batch OutputFile's container_url: an https URL
        with a create/write-only, short-lived SAS (Azure), or a file:// URL (local storage)."""
        ...

    def delete_container(self, name: str) -> bool:
        """Delete the container and everything in it. False if it did not exist."""
        ...

    def delete_blobs(self, container: str, names: Sequence[str]) -> TransferResult:
        """Delete these blobs (`batchflow gc` pruning an old run's outputs). One already gone is
        skipped, not a failure; `transferred` counts those deleted."""
        ...

    def close(self) -> None:
        """Release connections and credentials. The storage is not used afterwards."""
        ...


class Compute(Protocol):
    def check_access(self, job_id: str) -> None:
        """Cheap requests, made before anything is uploaded or created, that prove the service is
        reachable, takes the credentials, and has no job `job_id` already (another run's, live or
        dead: a run deletes only what it created). Raise ConfigurationError (exit 2) if not."""
        ...

    def create_pool(
        self, pool: PoolSpec, start_task: StartTaskSpec | None, start_task_inputs: Sequence[TaskInput] = ()
    ) -> bool:
        """Create the pool, or check that an existing one is compatible. True if this call created it.

        Returns as soon as the pool exists, so the caller knows what to clean up even if the
        pool never becomes usable.
        """
        ...

    def wait_for_pool(self, pool_id: str) -> None:
        """Return when the pool can run tasks; raise BatchflowError if it never will
        (start task failed on every node, nodes unusable, timeout)."""
        ...

    def create_job(self, job: JobSpec, pool_id: str, run_id: str) -> None: ...

    def add_tasks(self, job_id: str, tasks: Sequence[RenderedTask]) -> None:
        """Submit tasks. Idempotent: a task id the job already has counts as added."""
        ...

    def seal_job(self, job_id: str) -> None:
        """Every task is added: the job may complete (terminate) once they all finish."""
        ...

    def task_counts(self, job_id: str) -> TaskCounts:
        """One cheap call, whatever the number of tasks."""
        ...

    def wait(self, timeout: float) -> None:
        """Block until something may have changed, or `timeout` seconds. Backends without
        push notification just sleep."""
        ...

    def task_results(self, job_id: str, task_ids: Iterable[str] | None = None) -> list[TaskResult]:
        """Final results, with local copies of stdout/stderr. None -> every completed task."""
        ...

    def stop(self) -> None:
        """Stop running tasks now (Ctrl-C): kill them and record them as failed."""
        ...

    def delete_job(self, job_id: str) -> None: ...

    def delete_pool(self, pool_id: str) -> None: ...

    def close(self) -> None:
        """Release connections and credentials. The compute is not used afterwards."""
        ...


# ---- a backend: one object in the registry ------------------------------------------------------


@record
class Context:
    """What a backend may use to build its storage and compute for one run (or one command)."""

    workflow: Workflow
    workspace: Path  # <workflow folder>/.batchflow unless overridden; run folders live in it
    run_dir: Path  # the run's folder (its name is the run id); made after the backend is built
    concurrency: int | None = None  # --concurrency (a backend that runs tasks here may read it)
    notify: Callable[[str], None] | None = None  # stage lines: what the backend is waiting for
    observer: TaskObserver | None = None  # told of task attempts, if the compute knows at once


class SettingsBlock(Protocol):
    """A backend's block of the workflow file (`local:`, `azure:`), already checked against the
    backend's `settings_schema`. Values come back as the schema shapes them; these turn them into
    batchflow's own types, with positions for error messages."""

    @property
    def data(self) -> Mapping[str, Any]:
        """The block, {} when the workflow has none."""
        ...

    def path(self, key: str) -> Path | None:
        """A path relative to the workflow file's folder, absolute; None when not given."""
        ...

    def seconds(self, key: str, default: float) -> float:
        """A duration (`90s`, `30m`, a number of seconds), in seconds."""
        ...

    def start_task(self, key: str) -> StartTaskSpec | None: ...


@dataclass
class Cleanup:
    """What `batchflow cleanup` removes for a run that did not clean up after itself. Backends add
    what they found (`attempt`) and what they kept, and why; a failure never stops the next step."""

    say: Callable[[str], None]
    workspace: Path  # the run's workspace (its folder is <workspace>/runs/<run id>)
    deleted: list[str] = field(default_factory=list)  # "pool LinuxFFmpegPool", "container input"
    kept: list[str] = field(default_factory=list)  # with the reason
    failed: list[str] = field(default_factory=list)

    def attempt(self, what: str, action: Callable[[], object]) -> None:
        """Delete `what` by calling `action` (False back: it was already gone). A BatchflowError or
        an OSError (permission denied, a busy file) is reported in `failed`, never raised."""
        self.say(f"Deleting {what}...")
        try:
            result = action()
        except BatchflowError as e:
            self.failed.append(f"{what}: {e}")
            return
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            self.failed.append(f"{what}: {e.strerror}{where}" if e.strerror else f"{what}: {e}")
            return
        if result is False:
            self.kept.append(f"{what} (already gone)")
        else:
            self.deleted.append(what)


@record
class Leftover:
    """Something a backend's compute holds that batchflow made for a run (`batchflow gc`)."""

    kind: str  # "pool", "job", "task processes", "pool folder"
    name: str
    run_id: str | None  # the run that made it, as its metadata or ledger says (None: unknown)
    created: float | None  # epoch seconds, where known
    size: int | None  # bytes, where it has a size
    remove: Callable[[], object]  # False back: it was already gone


class Backend(Protocol):
    """A backend: where tasks run and where files live. One object, one entry in the registry
    (backends/registry.py); the core reaches a backend only through this. Importing the module that
    holds it must be cheap (no SDK): `batchflow validate` reads every backend's settings schema."""

    name: str  # the registry key: --backend/--storage value, and its block's key in the workflow
    description: str  # one line, for --help
    default_storage: str  # the storage its compute uses unless --storage says otherwise
    # JSON Schema (2020-12) of the workflow's `<name>:` block, or None for no block. It may $ref the
    # workflow schema's $defs (#/$defs/duration, #/$defs/startTask, #/$defs/envName, ...).
    settings_schema: Mapping[str, Any] | None
    # The key, in its block, of a start task that replaces pool.start_task on this backend (None).
    start_task_key: str | None
    # Its tasks go on without batchflow (a service runs them): a run whose batchflow process died can
    # be attached to (`batchflow attach`), its job monitored to the end. False: they die or are stopped.
    attachable: bool

    def read_settings(self, block: SettingsBlock) -> object:
        """The block as this backend's own typed settings (Workflow.settings[name])."""
        ...

    def problems(self, workflow: Workflow) -> list[tuple[DocPath, str]]:
        """What would make a valid workflow fail on this backend once money is spent (Azure: a pool
        that never gets a node): each as (where in the file, message). Checked by validate and plan
        with --backend, and before a run creates anything."""
        ...

    def storage(self, ctx: Context) -> Storage:
        """Its storage (credentials from the environment; no I/O yet). ConfigurationError or
        MissingRequirement (exit 2) if it cannot be built."""
        ...

    def compute(self, ctx: Context, storage: Storage) -> Compute:
        """Its compute on `storage` (no I/O yet: `check_access` is the first request)."""
        ...

    def clean_up(self, run: RunState, workflow: Workflow | None, cleanup: Cleanup) -> None:
        """Find what run `run` left behind on this backend's compute (its job, the pool it created,
        task processes) and remove it through `cleanup.attempt`, also when the run's process died
        without a word. A pool the run did not create is kept (and the workflow's cleanup.pool
        policy, when the workflow can be read, is honoured). Containers are not its business."""
        ...

    def leftovers(self, workspace: Path) -> list[Leftover]:
        """Everything batchflow made on this backend's compute that is still there, for any run
        (account-wide on a service: found by the run id in its metadata), with the run that made it.
        `batchflow gc` decides which runs are dead. ConfigurationError or MissingRequirement when it
        cannot look (no credentials here): gc then says so and goes on."""
        ...


def start_task_of(backend: Backend, workflow: Workflow) -> tuple[StartTaskSpec | None, DocPath]:
    """The start task `backend` runs, and where its resource files are in the workflow file: the
    backend's own (e.g. local.start_task) when the workflow gives one, else pool.start_task."""
    key = backend.start_task_key
    if key is not None:
        own = getattr(workflow.settings.get(backend.name), key, None)
        if isinstance(own, StartTaskSpec):
            return own, (backend.name, key, "resource_files")
    return workflow.pool.start_task, ("pool", "start_task", "resource_files")
