"""The two things a backend provides: Storage and Compute, and the task contract every Compute keeps.

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

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from batchflow.model import (
    JobSpec,
    PoolSpec,
    RenderedTask,
    StartTaskSpec,
    TaskCounts,
    TaskInput,
    TaskResult,
    TransferResult,
    UploadItem,
)

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
    compute's worker threads: an observer is thread-safe, and never raises for a full disk."""

    def task_started(self, task_id: str, attempt: int, at: float) -> None: ...

    def task_ended(self, result: TaskResult) -> None: ...


class Storage(Protocol):
    def ensure_container(self, name: str) -> bool:
        """Create the container if missing. True if this call created it."""
        ...

    def upload(self, items: Sequence[UploadItem]) -> TransferResult:
        """Copy files into containers, skipping those whose content is already there."""
        ...

    def download(
        self, container: str, prefix: str, destination: Path, *, skip: Sequence[str] = ()
    ) -> TransferResult:
        """Copy blobs under `prefix` (but none under a `skip` prefix) into `destination`, which no blob
        name may escape."""
        ...

    def list_blobs(self, container: str, prefix: str = "") -> list[str]: ...

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
