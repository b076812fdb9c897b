"""The stages of a run: upload -> pool -> job -> tasks -> monitor -> download -> cleanup.

The runner owns ordering, the monitor loop, cleanup and the run state. Backends only do
what they are asked. Time is a parameter (`clock`), so tests drive the loop without waiting.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from batchflow.backends.base import Compute, Storage
from batchflow.errors import BatchflowError, ConfigurationError, Terminated
from batchflow.events import (
    EventSink,
    Info,
    Stage,
    StageName,
    TaskProgress,
    TransferKind,
    TransferProgress,
    Warn,
    info_lines,
)
from batchflow.ledger import (
    Entry,
    StoredListing,
    StoredOutput,
    TaskKey,
    ledger_blob,
    write_keys,
    write_ledger,
)
from batchflow.model import BlobStat, CleanupAction, TaskCounts, TaskResult, UploadItem, Workflow
from batchflow.resume import Decision, copies, decide, load_ledger, reused_outputs, summary
from batchflow.runplan import Download, RunPlan
from batchflow.state import RecordState, RunState, RunStatus, TaskRecord

log = logging.getLogger("batchflow")

# While nothing changes, the poll interval grows by this factor up to MAX_POLL_GROWTH x the configured one.
POLL_BACKOFF = 1.5
MAX_POLL_GROWTH = 6.0


# Uploads go to storage in batches of at most this many files, so progress can be shown between
# them (a batch keeps the storage's own thread pool busy: 8 workers x 16 files each).
UPLOAD_BATCH = 128
UPLOAD_BATCH_BYTES = 256 * 1024 * 1024


class MonitorTimeout(BatchflowError):
    pass


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: its state, the outputs it stored, and the exit code that follows."""

    state: RunState
    outputs: list[str]

    @property
    def exit_code(self) -> int:
        return {RunStatus.SUCCEEDED: 0, RunStatus.INTERRUPTED: 130}.get(self.state.status, 1)


class Runner:
    def __init__(
        self,
        run_plan: RunPlan,
        storage: Storage,
        compute: Compute,
        state: RunState,
        reporter: EventSink,
        *,
        clock: Callable[[], float] = time.monotonic,
        workspace: Path | None = None,
        force: bool = False,
        only: Collection[str] | None = None,
        attach: bool = False,
    ) -> None:
        """`workspace` (where earlier runs' folders are): resume from them (and from the ledger in
        storage) when the run plan has task keys; `force` runs every task; `only` (`batchflow
        retry`): run these, take the others from earlier runs or leave them out."""
        self.run_plan = run_plan
        self.workspace = workspace
        self.force = force
        self.only = only
        self.attach = attach  # the run's job is there already (`batchflow attach`): no resume
        self.plan = run_plan.plan
        self.storage = storage
        self.compute = compute
        self.state = state
        self.reporter = reporter
        self.clock = clock
        self._outputs: list[str] = []
        self._pool_touched = False  # create_pool was called: there may be a pool to clean up
        self._job_attempted = False  # create_job was called (it may have been interrupted)
        self._fetch_after_failure = False  # the run failed after tasks finished: fetch their outputs
        self._results: list[TaskResult] | None = None  # the monitor's last list of completed tasks
        self.decisions: list[Decision] = []  # what resume decided for each task (none: no resume)

    # ---- the whole run ------------------------------------------------------------------

    def run(self) -> RunOutcome:
        wf = self.plan.workflow
        if not self.attach:  # (attached: the dead run's count, those it reused included)
            self.state.task_count = len(self.plan.tasks)
        self.state.pool_id = wf.pool.id
        self.state.job_id = wf.job.id
        # `batchflow attach`: the run's inputs are in storage, as its queued tasks read them. Sending
        # them again would put an input changed since under the blob those tasks read.
        uploaded = self.attach and self.state.inputs_uploaded
        try:
            if not uploaded:
                self._upload()
            self._reuse()
            if not uploaded:  # (else batchflow.cli took the dead run's keys.json: it stays whole)
                self._write_keys()
            # Nothing to run: no pool, no job, nothing billed. Attached to a dead run whose job is
            # there: it may hold tasks this plan has not (their input deleted since), waited for.
            if self.run_plan.tasks or (self.attach and self.state.job_created):
                self._pool()
                self._job_and_tasks()
                self._monitor()
                self._collect()
            self._download()
            self.state.status = (
                RunStatus.SUCCEEDED if self.state.counts()["failed"] == 0 else RunStatus.FAILED
            )
        except KeyboardInterrupt as e:
            self.state.status = RunStatus.INTERRUPTED
            how = e.signal_name if isinstance(e, Terminated) else "Ctrl-C"
            self.state.message = f"interrupted ({how})"
            self._despite_interrupts("stopping the tasks", self._stop_after_interrupt)
        except BatchflowError as e:
            self._despite_interrupts("stopping the tasks", functools.partial(self._fail, str(e)))
            raise
        except OSError as e:  # the world said no (disk full, permission denied): not a bug
            message = describe_os_error(e)
            if self.state.stage == "download":
                message += (
                    f"; the outputs are safe in storage: `batchflow download {self.state.run_id}` "
                    "fetches them once the destination can take them"
                )
            self._despite_interrupts("stopping the tasks", functools.partial(self._fail, message))
            raise BatchflowError(message) from None
        except BaseException as e:
            self.state.status = RunStatus.ERROR
            self.state.message = f"{type(e).__name__}: {e}"
            self._despite_interrupts("stopping the tasks", self._stop_and_collect)  # (the bug's report stays)
            raise
        finally:
            try:
                # Each step even after a Ctrl-C (or SIGTERM) in the one before: a second Ctrl-C
                # while the ledger was written skipped the cleanup, and left the pool.
                self._despite_interrupts("recording the ledger", self._record_ledger)
                self._despite_interrupts("cleaning up", self._cleanup)
                # After the cleanup: no pool bills while it downloads.
                self._despite_interrupts("downloading", self._download_after_failure)
            finally:
                self.state.ended_at = time.time()
                self._despite_interrupts("saving the run state", self._save_at_end)
        return RunOutcome(self.state, self._outputs)

    @property
    def outputs(self) -> list[str]:
        """What the download stage fetched, one line per destination (also after a failure)."""
        return self._outputs

    # ---- stages ---------------------------------------------------------------------------

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        self.state.stage = name
        self.state.save()
        start = self.clock()
        log.info("stage %s", name)
        self.reporter.emit(Stage(StageName(name)))
        try:
            yield
        finally:
            self.state.stage_seconds[name] = round(
                self.state.stage_seconds.get(name, 0.0) + self.clock() - start, 3
            )

    def _upload(self) -> None:
        with self._stage("upload"):
            for name in self.plan.workflow.containers:
                if self.storage.ensure_container(name):
                    self.state.containers_created.append(name)
            by_container: dict[str, list[int]] = defaultdict(list)
            for i, item in enumerate(self.plan.uploads):
                by_container[item.container].append(i)
            for container, idx in by_container.items():
                items = [self.plan.uploads[i] for i in idx]
                noun = "file" if len(items) == 1 else "files"
                total_bytes = sum(i.size for i in items)
                self.reporter.emit(Info(f"Uploading {len(items)} {noun} to container [{container}]..."))
                done = skipped = sent = 0
                for batch in _batches(items):
                    result = self.storage.upload(batch)
                    done += len(batch)
                    skipped += result.skipped
                    sent += result.bytes
                    self.reporter.emit(
                        TransferProgress(TransferKind.UPLOAD, done, len(items), sent, total_bytes)
                    )
                self.reporter.close_progress()
                self.reporter.emit(
                    Info(f"  {done - skipped} uploaded ({human_bytes(sent)}), {skipped} unchanged")
                )

    def _write_keys(self) -> None:
        """keys.json, before any task starts: the keys of the tasks this run executes and of those it
        took from earlier runs, what a resume of it or `batchflow attach` reads (not those a retry
        left out: they are in no job)."""
        keys = self.run_plan.keys
        if not keys:
            return
        ids = {t.id for t in self.run_plan.tasks}
        ids.update(tid for tid, r in self.state.tasks.items() if r.reused_from is not None)
        write_keys(self.state.folder, {tid: k for tid, k in keys.items() if tid in ids})

    def _reuse(self) -> None:
        """Tasks whose key matches a succeeded task whose outputs are still stored are not run: their
        outputs are copied under this run's prefix and they count as succeeded."""
        if not self.run_plan.keys or self.workspace is None or self.attach:
            return
        with self._stage("reuse"):
            wf = self.plan.workflow
            ledger = load_ledger(self.workspace, wf, self.storage, skip_run=self.state.run_id)
            decisions = decide(self.run_plan.keys, ledger, self.storage, force=self.force, only=self.only)
            by_container: dict[str, list[tuple[str, str]]] = defaultdict(list)
            for c in copies(decisions, wf, self.state.run_id):
                by_container[c.container].append((c.source, c.destination))
            for container, pairs in by_container.items():
                self.storage.copy_blobs(container, pairs)
            self.state.record(
                {
                    d.task: TaskRecord(
                        RecordState.SUCCEEDED,
                        exit_code=0,
                        outputs=reused_outputs(d.reuse, wf, self.state.run_id),
                        reused_from=d.reuse.run,
                    )
                    for d in decisions
                    if d.reuse is not None
                }
            )
            self.decisions = decisions
            self.reporter.emit(Info(summary(decisions)))
            self.run_plan = self.run_plan.narrowed({d.task for d in decisions if d.run})
            self.state.save()

    def _record_ledger(self) -> None:
        """This run's entries (each finished task, its key and its outputs' sizes and MD5s), in the run
        folder and beside the outputs in storage, for the runs that come after (on any machine)."""
        keys = self.run_plan.keys
        if not keys:
            return
        wf = self.plan.workflow
        try:
            entries = self._entries(keys)
            path = write_ledger(self.state.folder, entries)
            if wf.logs is not None:
                blob = ledger_blob(wf.name, self.state.run_id)
                self.storage.upload([UploadItem(path, wf.logs.container, blob, path.stat().st_size)])
        except (BatchflowError, OSError) as e:
            log.warning("could not record the run's ledger: %s", e)
            self.reporter.emit(Warn(f"  could not record which tasks finished ({e}): a re-run may redo them"))

    def _entries(self, keys: Mapping[str, TaskKey]) -> list[Entry]:
        wf = self.plan.workflow
        prefix = self.run_plan.output_prefix
        stats: dict[str, dict[str, BlobStat]] = {}
        for container in sorted({o.container for o in wf.tasks.outputs}):
            try:
                # Each output's version, not its MD5: reading every output again at the end of the
                # run (seconds for gigabytes) is left to a later run that finds a file changed.
                stats[container] = self.storage.stat_blobs(container, prefix, md5=False)
            except BatchflowError as e:
                log.warning("cannot list the outputs in %s: %s", container, e)
                stats[container] = {}
        # What the compute named no blob for (Azure Batch: the node uploads the outputs), the listing tells.
        unnamed = [
            t
            for t in self.run_plan.tasks  # those this run executed
            if (r := self.state.tasks.get(t.id)) is not None
            and r.state is RecordState.SUCCEEDED
            and not r.outputs
            and t.outputs
        ]
        named = [
            (c, b) for r in self.state.tasks.values() for c, _, b in (o.partition("/") for o in r.outputs)
        ]
        listed = StoredListing(stats).outputs_of(unnamed, named)
        entries = []
        for tid, record in self.state.tasks.items():
            key = keys.get(tid)
            if key is None or record.state not in (RecordState.SUCCEEDED, RecordState.FAILED):
                continue
            outputs = []
            for o in record.outputs:
                container, _, blob = o.partition("/")
                outputs.append(StoredOutput.of(container, blob, stats.get(container, {}).get(blob)))
            succeeded = record.state is RecordState.SUCCEEDED
            if tid in listed:
                told = listed[tid]
                outputs = list(told or ())
                succeeded = told is not None  # None: a blob that another task's outputs match too
            if succeeded and any(o.size is None for o in outputs):
                succeeded = False  # an output is not where it should be: never reuse this one
            entries.append(
                Entry(
                    key.key,
                    tid,
                    self.state.run_id,
                    succeeded,
                    key.parts,
                    tuple(outputs),
                    record.ended_at or time.time(),
                    record.reused_from,
                )
            )
        return entries

    def _pool(self) -> None:
        pool = self.plan.workflow.pool
        with self._stage("pool"):
            self.reporter.emit(Info(f"Creating pool [{pool.id}]..."))
            self._pool_touched = True
            created = self.compute.create_pool(pool, self.plan.start_task, self.plan.start_task_inputs)
            self.state.pool_created = created or (self.attach and self.state.pool_created)
            self.state.save()
            self.compute.wait_for_pool(pool.id)  # (a reused pool: the compute says so, once)

    def _job_and_tasks(self) -> None:
        job = self.plan.workflow.job
        with self._stage("job"):
            self.reporter.emit(Info(f"Creating job [{job.id}]..."))
            self._job_attempted = True
            self.compute.create_job(job, self.plan.workflow.pool.id, self.state.run_id)
            self.state.job_created = True  # recorded when created: only then is it this run's to delete
            self.state.save()
        with self._stage("tasks"):
            self.reporter.emit(Info(f"Adding {len(self.run_plan.tasks)} tasks to job [{job.id}]..."))
            self.compute.add_tasks(job.id, self.run_plan.tasks)
            self.compute.seal_job(job.id)

    def _monitor(self) -> None:
        wf = self.plan.workflow
        total = len(self.run_plan.tasks)
        with self._stage("monitor"):
            self.reporter.emit(
                Info(f"Monitoring all tasks for 'Completed' state, timeout in {_fmt(wf.monitor.timeout)}...")
            )
            deadline = self.clock() + wf.monitor.timeout
            base = wf.monitor.poll_interval
            interval = base
            last: TaskCounts | None = None
            while True:
                counts = self.compute.task_counts(wf.job.id)
                if self.attach:
                    # The dead run's job may hold tasks this plan has not (their input deleted
                    # since): they read the blobs the dead run uploaded, and the job is deleted
                    # only once they are done, their outputs downloaded with the others.
                    total = max(total, counts.total)
                self.reporter.emit(TaskProgress(counts, total))
                if counts.completed >= total and self._all_listed_complete(total):
                    break
                interval = base if counts != last else min(interval * POLL_BACKOFF, base * MAX_POLL_GROWTH)
                last = counts
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise MonitorTimeout(
                        f"tasks did not finish within the monitor timeout ({_fmt(wf.monitor.timeout)}): "
                        f"{counts.completed}/{total} completed, {counts.running} running, "
                        f"{counts.active} queued"
                    )
                self.compute.wait(min(interval, remaining))
            self.reporter.close_progress()

    def _all_listed_complete(self, total: int) -> bool:
        """Task counts "may not always be up to date. If you need exact task counts, use a list
        query" (Microsoft: Get Task Counts, REST spec 2025-06-01). Counts that say every task is done
        are confirmed by the list of completed tasks before the run moves on; short of that, the
        monitor polls on. The list is kept for `_collect`."""
        results = self.compute.task_results(self.plan.workflow.job.id)
        if len({r.id.casefold() for r in results}) < total:
            log.info(
                "task counts say all %d tasks completed; the list has %d: polling on", total, len(results)
            )
            return False
        self._results = results
        return True

    def _collect(self) -> None:
        results = self._results
        if results is None:
            results = self.compute.task_results(self.plan.workflow.job.id)
        self._results = None
        self.state.record_tasks(results)
        self.state.save()

    def _fail(self, message: str) -> None:
        """After an error: stop what runs, record what finished, and fetch the outputs of the tasks
        that finished (best effort: the error may be the storage's own)."""
        self.state.status = RunStatus.FAILED
        self.state.message = message
        self.reporter.close_progress()
        try:
            self._stop_and_collect()
        finally:  # (a stop cut short by Ctrl-C collected nothing: what finished, from the journal)
            with _interrupts_held():
                self.state.record_tasks([])
            # Tasks finished, the run failed after (a monitor timeout, a node lost): their outputs
            # are fetched once the cleanup is done. A failed download stage is not tried again.
            self._fetch_after_failure = self.state.counts()["succeeded"] > 0 and self.state.stage == "monitor"

    def _download_after_failure(self) -> None:
        if not self._fetch_after_failure:
            return
        try:
            self._download()
        except (BatchflowError, OSError) as e:
            log.warning("could not download the finished tasks' outputs: %s", e)
            self.reporter.emit(
                Warn(
                    f"  could not download the finished tasks' outputs ({e}): "
                    f"`batchflow download {self.state.run_id}` fetches them"
                )
            )

    def _despite_interrupts(self, what: str, step: Callable[[], object]) -> None:
        """`step`, on the way out of a run. Ctrl-C (or SIGTERM, SIGHUP) while it runs gives it up,
        not the steps after it (SIGKILL is the way to skip them): a second Ctrl-C while the tasks
        stopped skipped the cleanup and left the pool. The run's outcome, decided already, stays."""
        try:
            step()
        except KeyboardInterrupt:
            self.state.cleanup_failures.append(f"{what}: interrupted")
            log.warning("interrupted while %s", what)
            with contextlib.suppress(KeyboardInterrupt):
                self.reporter.emit(
                    Warn(
                        f"  interrupted while {what}; the steps after it still run. "
                        f"Check with: batchflow cleanup {self.state.run_id}"
                    )
                )

    def _save_at_end(self) -> None:
        """The run's last save, tried again once if Ctrl-C cuts it short: else state.json would go on
        saying the run runs (and `status` call it dead)."""
        try:
            self.state.save()
        except KeyboardInterrupt:
            self.state.save()

    def _stop_after_interrupt(self) -> None:
        try:  # (Ctrl-C again as this is said, which an impatient user does: the stop still comes)
            self.reporter.close_progress()
            self.reporter.emit(Warn("Interrupted: stopping running tasks..."))
        except KeyboardInterrupt:
            self.state.cleanup_failures.append("saying the run stops: interrupted")
        try:
            self._stop_and_collect()
        finally:
            with _interrupts_held():
                # What finished, from the journal, even if the stop was cut short (its collect was):
                # else those tasks would be marked not started below, and never reused. Those it still
                # says run were killed by the stop.
                self.state.record_tasks([])
                self.state.mark_stopped("stopped: the run was interrupted")
                self.state.mark_not_started(t.id for t in self.plan.tasks)
        done = self.state.counts()["succeeded"]
        if done and self.plan.workflow.downloads:
            self.reporter.emit(
                Warn(
                    f"  the outputs of the {done} task(s) that finished stay in storage: "
                    f"`batchflow download {self.state.run_id}` fetches them"
                )
            )

    def _stop_and_collect(self) -> None:
        """After an error or Ctrl-C: stop what runs, record what finished."""
        try:
            self.compute.stop()
            self._collect()
        except (BatchflowError, OSError) as e:
            log.warning("could not record task results: %s", e)

    def _download(self) -> None:
        with self._stage("download"):
            self._outputs = download_outputs(self.run_plan.downloads, self.storage, info_lines(self.reporter))

    def _cleanup(self) -> None:
        wf = self.plan.workflow
        policy = self.run_plan.cleanup
        succeeded = self.state.status is RunStatus.SUCCEEDED
        with self._stage("cleanup"):
            # An interrupt during create_job may leave a job made for this run: the compute deletes
            # a job only if it is this run's (on Batch: its metadata names the run).
            if (self.state.job_created or self._job_attempted) and policy.job:
                self._try(f"Deleting job [{wf.job.id}]...", lambda: self.compute.delete_job(wf.job.id))
            delete_pool = policy.pool is CleanupAction.DELETE or (
                policy.pool is CleanupAction.DELETE_IF_CREATED and self.state.pool_created
            )
            if delete_pool and self._pool_touched:
                self._try(f"Deleting pool [{wf.pool.id}]...", lambda: self.compute.delete_pool(wf.pool.id))
            elif self.state.pool_created:
                self.reporter.emit(Warn(f"Pool [{wf.pool.id}] kept (cleanup.pool: {policy.pool.value})."))
            # Data is deleted only when asked, only after a run in which everything succeeded, and
            # only the containers this run created (another run may be using one it found).
            if succeeded:
                doomed = [c for c in policy.containers if c in self.state.containers_created]
                for c in doomed:
                    delete = functools.partial(self.storage.delete_container, c)
                    self._try(f"Deleting container [{c}]...", delete)

    def _try(self, message: str, action: Callable[[], object]) -> None:
        """One cleanup action. A failure, or Ctrl-C while it waits, never skips the actions after it."""
        try:
            self.reporter.emit(Info(message))
            action()
        except BatchflowError as e:
            self.state.cleanup_failures.append(f"{message.rstrip('.')}: {e}")
            self.reporter.emit(Warn(f"  cleanup failed: {e}"))
            log.warning("cleanup failed: %s", e)
        except OSError as e:
            self.state.cleanup_failures.append(f"{message.rstrip('.')}: {describe_os_error(e)}")
            self.reporter.emit(Warn(f"  cleanup failed: {describe_os_error(e)}"))
        except KeyboardInterrupt:
            self.state.cleanup_failures.append(f"{message.rstrip('.')}: interrupted")
            self.reporter.emit(
                Warn(
                    "  interrupted; what was already asked goes on. "
                    f"Check with: batchflow cleanup {self.state.run_id}"
                )
            )
            log.warning("cleanup interrupted: %s", message)


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP held back while the block records what the tasks did (a few ms),
    then delivered: a second Ctrl-C in the middle of it lost the record of the tasks that had
    finished. (In the main thread only, where Python runs signal handlers.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(held):
            if previous[signal.Signals(signum)] is not signal.SIG_IGN:
                signal.raise_signal(signum)  # to its own handler now: KeyboardInterrupt, Terminated


def download_outputs(
    downloads: tuple[Download, ...], storage: Storage, say: Callable[[str], None]
) -> list[str]:
    """Fetch a run's downloads (runplan.downloads). Returns one line per destination for the summary."""
    lines = []
    for d in downloads:
        say(f"Downloading container [{d.container}] to {d.destination}...")
        result = storage.download(d.container, d.prefix, d.destination, skip=d.skip)
        lines.append(f"{d.destination} ({result.transferred} downloaded, {result.skipped} unchanged)")
    return lines


def describe_os_error(e: OSError) -> str:
    """One line for an error from the file system: what happened, and where."""
    where = f": {e.filename}" if e.filename else ""
    if e.filename2:
        where += f" -> {e.filename2}"
    return f"{e.strerror}{where}" if e.strerror else str(e)


def check_destinations(wf: Workflow) -> None:
    """Every download destination can be written (it, or the folder it would be made in): found
    before anything is created or any task runs, not after the compute. ConfigurationError (exit 2)."""
    problems = [p for d in wf.downloads if (p := writable_problem(d.destination)) is not None]
    if problems:
        raise ConfigurationError("; ".join(problems) + "; nothing was created")


def writable_problem(folder: Path) -> str | None:
    """Why files cannot be written into `folder` (made if missing), or None. Probes with a file
    that is removed at once: permission bits do not stop root, a read-only file system does."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"download destination {folder} cannot be made: {existing} is not a folder"
    import tempfile  # (here: with random, 2 ms of every run's imports)

    try:
        fd, probe = tempfile.mkstemp(prefix=".batchflow-probe-", dir=existing)
    except OSError as e:
        return f"download destination {folder} cannot be written ({e.strerror}: {existing})"
    os.close(fd)
    Path(probe).unlink()
    return None


def _batches(items: list[UploadItem]) -> Iterator[list[UploadItem]]:
    batch: list[UploadItem] = []
    size = 0
    for item in items:
        if batch and (len(batch) >= UPLOAD_BATCH or size + item.size > UPLOAD_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item.size
    if batch:
        yield batch


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _fmt(seconds: float) -> str:
    seconds = round(seconds)
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds:
        return f"{seconds // 60}m"
    return f"{seconds}s"
