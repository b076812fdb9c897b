"""The runner's stage logic with scripted backends and a fake clock: monitor loop, cleanup, Ctrl-C.

The backends here are scripted stand-ins of batchflow's own Protocols (not of any SDK), so the
loop's decisions can be driven through thousands of polls in milliseconds.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from batchflow.errors import BatchflowError
from batchflow.model import (
    BlobStat,
    CleanupAction,
    CleanupSpec,
    DownloadSpec,
    ForeachSpec,
    ImageReference,
    JobSpec,
    MonitorSpec,
    OutputCondition,
    OutputSpec,
    Plan,
    PoolSpec,
    RenderedTask,
    StartTaskSpec,
    TaskCounts,
    TaskInput,
    TaskOutput,
    TaskResult,
    TaskState,
    TaskTemplate,
    TransferResult,
    UploadItem,
    UploadSpec,
    Workflow,
)
from batchflow.report import Reporter
from batchflow.runner import MonitorTimeout, Runner, RunOutcome
from batchflow.runplan import RUN_ID_PLACEHOLDER, plan_run
from batchflow.state import RunState


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedStorage:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def ensure_container(self, name: str) -> bool:
        self.calls.append(f"ensure {name}")
        return True

    def upload(self, items: Sequence[UploadItem]) -> TransferResult:
        self.calls.append(f"upload {len(items)}")
        return TransferResult(transferred=len(items))

    def download(
        self, container: str, prefix: str, destination: Path, *, skip: Sequence[str] = ()
    ) -> TransferResult:
        self.calls.append(f"download {container} {prefix!r}" + (f" skip {list(skip)}" if skip else ""))
        return TransferResult()

    def list_blobs(self, container: str, prefix: str = "") -> list[str]:
        return []

    def stat_blobs(self, container: str, prefix: str = "", *, md5: bool = True) -> dict[str, BlobStat]:
        return {}

    def copy_blobs(self, container: str, pairs: Sequence[tuple[str, str]]) -> TransferResult:
        self.calls.append(f"copy {len(pairs)}")
        return TransferResult(transferred=len(pairs), files=tuple(dst for _, dst in pairs))

    def resource_url(self, container: str, blob: str) -> str:
        return f"file:///{container}/{blob}"

    def container_url(self, container: str) -> str:
        return f"file:///{container}"

    def delete_container(self, name: str) -> bool:
        self.calls.append(f"delete {name}")
        return True

    def delete_blobs(self, container: str, names: Sequence[str]) -> TransferResult:
        self.calls.append(f"delete blobs {container} {len(names)}")
        return TransferResult(transferred=len(names))

    def close(self) -> None:
        self.calls.append("close")


class ScriptedCompute:
    """Reports `counts` in order, one per poll (the last one repeats); `wait` advances the clock."""

    def __init__(self, clock: Clock, counts: list[TaskCounts], *, pool_exists: bool = False) -> None:
        self.clock = clock
        self.counts = counts
        self.pool_exists = pool_exists
        self.polls = 0
        self.waits: list[float] = []
        self.calls: list[str] = []
        self.interrupt_on_wait: int | None = None
        self.fail_pool: BatchflowError | None = None

    def check_access(self, job_id: str) -> None:
        self.calls.append("check_access")

    def create_pool(
        self, pool: PoolSpec, start_task: StartTaskSpec | None, start_task_inputs: Sequence[TaskInput] = ()
    ) -> bool:
        self.calls.append("create_pool")
        return not self.pool_exists

    def wait_for_pool(self, pool_id: str) -> None:
        self.calls.append("wait_for_pool")
        if self.fail_pool is not None:
            raise self.fail_pool

    def create_job(self, job: JobSpec, pool_id: str, run_id: str) -> None:
        self.calls.append("create_job")

    def add_tasks(self, job_id: str, tasks: Sequence[RenderedTask]) -> None:
        self.calls.append(f"add_tasks {len(tasks)}")
        self.added = list(tasks)

    def seal_job(self, job_id: str) -> None:
        self.calls.append("seal_job")

    def task_counts(self, job_id: str) -> TaskCounts:
        c = self.counts[min(self.polls, len(self.counts) - 1)]
        self.polls += 1
        return c

    def wait(self, timeout: float) -> None:
        self.waits.append(timeout)
        if self.interrupt_on_wait is not None and len(self.waits) >= self.interrupt_on_wait:
            raise KeyboardInterrupt
        self.clock.now += timeout

    def task_results(self, job_id: str, task_ids: Iterable[str] | None = None) -> list[TaskResult]:
        last = self.counts[min(self.polls, len(self.counts)) - 1] if self.polls else TaskCounts()
        out = [TaskResult(f"t{i}", TaskState.SUCCEEDED, 0, 1) for i in range(last.succeeded)]
        out += [TaskResult(f"f{i}", TaskState.FAILED, 1, 1) for i in range(last.failed)]
        return out

    def stop(self) -> None:
        self.calls.append("stop")

    def delete_job(self, job_id: str) -> None:
        self.calls.append("delete_job")

    def delete_pool(self, pool_id: str) -> None:
        self.calls.append("delete_pool")

    def close(self) -> None:
        self.calls.append("close")


def make_plan(tmp_path: Path, n: int, **wf_changes: object) -> Plan:
    pool = PoolSpec(
        "pool1", "Standard_A1_v2", ImageReference("canonical", "ubuntu-24_04-lts", "server"), "agent"
    )
    wf = Workflow(
        version=1,
        name="t",
        path=tmp_path / "wf.yaml",
        base_dir=tmp_path,
        pool=pool,
        job=JobSpec("job1"),
        tasks=TaskTemplate(
            foreach=ForeachSpec("input", "*"),
            command="true",
            outputs=(OutputSpec("x", "output", None, OutputCondition.SUCCESS),),
        ),
        containers=("input", "output"),
        uploads=(UploadSpec(tmp_path, "input"),),
        downloads=(DownloadSpec("output", tmp_path / "out", "x/"), DownloadSpec("input", tmp_path / "in")),
        monitor=MonitorSpec(timeout=60.0, poll_interval=1.0),
    )
    wf = replace(wf, **wf_changes)  # type: ignore[arg-type]
    out = (TaskOutput("{i}.out", "output", "x/{i}.out", OutputCondition.SUCCESS),)
    tasks = tuple(
        RenderedTask(
            f"t{i}",
            i,
            "true",
            (),
            tuple(replace(o, destination=o.destination.format(i=i)) for o in out),
            {},
            0,
            None,
        )
        for i in range(n)
    )
    return Plan(wf, (UploadItem(tmp_path / "a", "input", "a", 1),), tasks, None)


def run(tmp_path: Path, plan: Plan, compute: ScriptedCompute, clock: Clock) -> tuple[Runner, ScriptedStorage]:
    state = RunState.create(tmp_path / "ws", plan.workflow.path, "local", "run1")
    storage = ScriptedStorage()
    runner = Runner(
        plan_run(plan, state.run_id),
        storage,
        compute,
        state,
        Reporter(io.StringIO(), live=False),
        clock=clock,
    )
    return runner, storage


def test_stages_in_order_and_cleanup_of_what_the_run_created(tmp_path: Path) -> None:
    clock = Clock()
    compute = ScriptedCompute(clock, [TaskCounts(active=2), TaskCounts(running=2), TaskCounts(succeeded=2)])
    runner, storage = run(tmp_path, make_plan(tmp_path, 2), compute, clock)
    outcome = runner.run()
    assert outcome.exit_code == 0
    assert outcome.state.status == "succeeded"
    assert compute.calls == [
        "create_pool",
        "wait_for_pool",
        "create_job",
        "add_tasks 2",
        "seal_job",
        "delete_job",
        "delete_pool",
    ]
    # Data is kept by default.
    assert storage.calls == [
        "ensure input",
        "ensure output",
        "upload 1",
        "download output 'runs/run1/x/'",
        "download input ''",
    ]
    saved = RunState.load(outcome.state.folder)
    assert saved.status == "succeeded" and saved.counts()["succeeded"] == 2
    assert set(saved.stage_seconds) >= {"upload", "pool", "job", "tasks", "monitor", "cleanup"}


def test_existing_pool_is_kept_by_default(tmp_path: Path) -> None:
    clock = Clock()
    compute = ScriptedCompute(clock, [TaskCounts(succeeded=1)], pool_exists=True)
    runner, _ = run(tmp_path, make_plan(tmp_path, 1), compute, clock)
    runner.run()
    assert "delete_pool" not in compute.calls
    assert "delete_job" in compute.calls


def test_poll_interval_grows_while_nothing_changes_and_resets_on_change(tmp_path: Path) -> None:
    clock = Clock()
    script = [TaskCounts(active=1)] * 8 + [TaskCounts(running=1)] + [TaskCounts(succeeded=1)]
    compute = ScriptedCompute(clock, script)
    runner, _ = run(tmp_path, make_plan(tmp_path, 1), compute, clock)
    runner.run()
    assert compute.waits == [1.0, 1.5, 2.25, 3.375, 5.0625, 6.0, 6.0, 6.0, 1.0]
    assert compute.polls == 10  # one task_counts request per poll


def test_monitor_timeout_stops_tasks_and_still_cleans_up(tmp_path: Path) -> None:
    clock = Clock()
    compute = ScriptedCompute(clock, [TaskCounts(running=3)])
    plan = make_plan(tmp_path, 3, monitor=MonitorSpec(timeout=10.0, poll_interval=1.0))
    runner, _ = run(tmp_path, plan, compute, clock)
    with pytest.raises(MonitorTimeout, match=r"within the monitor timeout \(10s\): 0/3 completed, 3 running"):
        runner.run()
    assert clock.now == 10.0
    assert compute.calls[-3:] == ["stop", "delete_job", "delete_pool"]
    assert RunState.load(runner.state.folder).status == "failed"


def test_ctrl_c_stops_records_and_cleans_up(tmp_path: Path) -> None:
    clock = Clock()
    compute = ScriptedCompute(clock, [TaskCounts(running=2)])
    compute.interrupt_on_wait = 3
    runner, _ = run(tmp_path, make_plan(tmp_path, 2), compute, clock)
    outcome = runner.run()
    assert outcome.exit_code == 130
    assert outcome.state.status == "interrupted"
    assert compute.calls[-3:] == ["stop", "delete_job", "delete_pool"]


def test_pool_that_never_becomes_usable_is_deleted_when_this_run_created_it(tmp_path: Path) -> None:
    clock = Clock()
    compute = ScriptedCompute(clock, [TaskCounts()])
    compute.fail_pool = BatchflowError("start task failed on node-0 (exit 1)")
    runner, _ = run(tmp_path, make_plan(tmp_path, 1), compute, clock)
    with pytest.raises(BatchflowError, match="start task failed"):
        runner.run()
    assert "create_job" not in compute.calls
    assert compute.calls[-1] == "delete_pool"


def test_failed_tasks_keep_input_data_even_when_policy_says_delete(tmp_path: Path) -> None:
    clock = Clock()
    compute = ScriptedCompute(clock, [TaskCounts(succeeded=1, failed=1)])
    cleanup = CleanupSpec(input_containers=CleanupAction.DELETE, output_containers=CleanupAction.DELETE)
    runner, storage = run(tmp_path, make_plan(tmp_path, 2, cleanup=cleanup), compute, clock)
    outcome = runner.run()
    assert outcome.exit_code == 1
    assert not [c for c in storage.calls if c.startswith("delete")]


def test_data_deleted_when_asked_after_success(tmp_path: Path) -> None:
    clock = Clock()
    compute = ScriptedCompute(clock, [TaskCounts(succeeded=1)])
    cleanup = CleanupSpec(input_containers=CleanupAction.DELETE, output_containers=CleanupAction.KEEP)
    runner, storage = run(tmp_path, make_plan(tmp_path, 1, cleanup=cleanup), compute, clock)
    runner.run()
    assert [c for c in storage.calls if c.startswith("delete")] == ["delete input"]


def test_outputs_go_under_the_run_prefix_unless_disabled(tmp_path: Path) -> None:
    clock = Clock()
    compute = ScriptedCompute(clock, [TaskCounts(succeeded=2)])
    runner, _ = run(tmp_path, make_plan(tmp_path, 2), compute, clock)
    runner.run()
    assert [o.destination for t in compute.added for o in t.outputs] == [
        "runs/run1/x/0.out",
        "runs/run1/x/1.out",
    ]

    compute = ScriptedCompute(clock, [TaskCounts(succeeded=2)])
    runner, storage = run(tmp_path / "b", make_plan(tmp_path, 2, outputs_per_run=False), compute, clock)
    runner.run()
    assert [o.destination for t in compute.added for o in t.outputs] == ["x/0.out", "x/1.out"]
    assert "download output 'x/'" in storage.calls


def test_uploads_go_in_batches_with_files_and_bytes_reported(tmp_path: Path) -> None:
    clock = Clock()
    compute = ScriptedCompute(clock, [TaskCounts(succeeded=1)])
    items = tuple(UploadItem(tmp_path / f"f{i}", "input", f"f{i}", 1000) for i in range(300))
    plan = replace(make_plan(tmp_path, 1), uploads=items)
    state = RunState.create(tmp_path / "ws", plan.workflow.path, "local", "run1")
    storage = ScriptedStorage()
    err = io.StringIO()
    Runner(
        plan_run(plan, state.run_id), storage, compute, state, Reporter(err, live=False), clock=clock
    ).run()
    assert [c for c in storage.calls if c.startswith("upload")] == ["upload 128", "upload 128", "upload 44"]
    lines = err.getvalue().splitlines()
    assert lines[:2] == ["Uploading 300 files to container [input]...", "  300 uploaded (0 B), 0 unchanged"]


def test_a_batch_never_holds_more_than_256_mb(tmp_path: Path) -> None:
    from batchflow.runner import _batches

    big = [UploadItem(tmp_path / f"f{i}", "c", f"f{i}", 100_000_000) for i in range(5)]
    assert [len(b) for b in _batches(big)] == [2, 2, 1]
    assert [len(b) for b in _batches([])] == []


class CountsAhead(ScriptedCompute):
    """Task counts that run ahead of the tasks: the first `stale` lists lack the last task."""

    def __init__(self, clock: Clock, counts: list[TaskCounts], stale: int) -> None:
        super().__init__(clock, counts)
        self.stale = stale
        self.listings = 0

    def task_results(self, job_id: str, task_ids: Iterable[str] | None = None) -> list[TaskResult]:
        self.listings += 1
        results = super().task_results(job_id, task_ids)
        return results[:-1] if self.listings <= self.stale else results


def test_counts_that_say_done_are_confirmed_by_the_list_of_completed_tasks(tmp_path: Path) -> None:
    """Get Task Counts "may not always be up to date. If you need exact task counts, use a list query"
    (Microsoft, REST spec 2025-06-01): the monitor ends only once the list has every task."""
    clock = Clock()
    compute = CountsAhead(clock, [TaskCounts(succeeded=3)], stale=2)
    runner, _ = run(tmp_path, make_plan(tmp_path, 3), compute, clock)

    outcome = runner.run()

    assert outcome.state.status == "succeeded"
    assert sorted(outcome.state.tasks) == ["t0", "t1", "t2"]  # none missing
    assert compute.polls == 3 and compute.listings == 3  # two more polls, then the list is whole
    assert len(compute.waits) == 2


def test_the_run_does_exactly_what_its_plan_says(tmp_path: Path) -> None:
    """The runner only sequences stages over the run plan: what it submits, downloads and deletes is
    what `plan_run` (and so `batchflow plan`) computed, and nothing else."""
    clock = Clock()
    compute = ScriptedCompute(clock, [TaskCounts(succeeded=2)])
    cleanup = CleanupSpec(input_containers=CleanupAction.DELETE, output_containers=CleanupAction.DELETE)
    plan = make_plan(tmp_path, 2, cleanup=cleanup)
    runner, storage = run(tmp_path, plan, compute, clock)
    expected = plan_run(plan, "run1")
    assert runner.run().exit_code == 0

    assert tuple(compute.added) == expected.tasks
    assert all(t.logs == expected.logs for t in compute.added)
    downloads = [c for c in storage.calls if c.startswith("download")]
    assert downloads == [f"download {d.container} {d.prefix!r}" for d in expected.downloads]
    deleted = [c.removeprefix("delete ") for c in storage.calls if c.startswith("delete")]
    assert tuple(deleted) == expected.cleanup.containers
    # `batchflow plan` shows the same, with the run id still to be made.
    shown = plan_run(plan, RUN_ID_PLACEHOLDER)
    assert [o.destination for t in shown.tasks for o in t.outputs] == [
        o.destination.replace("run1", RUN_ID_PLACEHOLDER) for t in expected.tasks for o in t.outputs
    ]


def test_a_second_ctrl_c_while_the_tasks_stop_does_not_skip_the_cleanup(tmp_path: Path) -> None:
    """Before: the second KeyboardInterrupt left the runner from its except clause, the state said
    nothing of it, and `batchflow` printed only "Interrupted." with no result."""

    class Impatient(ScriptedCompute):
        def stop(self) -> None:
            super().stop()
            raise KeyboardInterrupt  # Ctrl-C again while the tasks stop

    clock = Clock()
    compute = Impatient(clock, [TaskCounts(running=2)])
    compute.interrupt_on_wait = 3
    runner, _ = run(tmp_path, make_plan(tmp_path, 2), compute, clock)
    outcome = _run_through(runner)
    assert outcome.exit_code == 130
    assert compute.calls[-3:] == ["stop", "delete_job", "delete_pool"]
    assert outcome.state.cleanup_failures == ["stopping the tasks: interrupted"]
    assert outcome.state.counts()["not_started"] == 2


def _run_through(runner: Runner) -> RunOutcome:
    try:
        return runner.run()
    except KeyboardInterrupt:
        pytest.fail("a second KeyboardInterrupt left Runner.run")


def test_ctrl_c_while_a_succeeded_run_records_its_ledger_keeps_its_outcome_and_cleans_up(
    tmp_path: Path,
) -> None:
    clock = Clock()
    compute = ScriptedCompute(clock, [TaskCounts(running=2), TaskCounts(succeeded=2)])
    runner, _ = run(tmp_path, make_plan(tmp_path, 2), compute, clock)

    def interrupted() -> None:
        raise KeyboardInterrupt

    runner._record_ledger = interrupted  # type: ignore[method-assign]
    outcome = _run_through(runner)
    assert (outcome.exit_code, outcome.state.status) == (0, "succeeded")  # the tasks did succeed
    assert compute.calls[-2:] == ["delete_job", "delete_pool"]
    assert outcome.state.cleanup_failures == ["recording the ledger: interrupted"]


def test_ctrl_c_as_a_cleanup_step_is_announced_does_not_skip_the_next(tmp_path: Path) -> None:
    class Reporting(Reporter):
        def emit(self, event: object) -> None:
            if "Deleting job" in str(getattr(event, "message", "")):
                raise KeyboardInterrupt
            super().emit(event)  # type: ignore[arg-type]

    clock = Clock()
    compute = ScriptedCompute(clock, [TaskCounts(running=2), TaskCounts(succeeded=2)])
    runner, _ = run(tmp_path, make_plan(tmp_path, 2), compute, clock)
    runner.reporter = Reporting(io.StringIO(), live=False)
    outcome = _run_through(runner)
    assert compute.calls[-1] == "delete_pool"
    assert outcome.state.cleanup_failures == ["Deleting job [job1]: interrupted"]


def test_ctrl_c_while_the_job_is_deleted_still_deletes_the_pool(tmp_path: Path) -> None:
    class Impatient(ScriptedCompute):
        def delete_job(self, job_id: str) -> None:
            super().delete_job(job_id)
            raise KeyboardInterrupt

    clock = Clock()
    compute = Impatient(clock, [TaskCounts(running=2), TaskCounts(succeeded=2)])
    runner, _ = run(tmp_path, make_plan(tmp_path, 2), compute, clock)
    outcome = _run_through(runner)
    assert compute.calls[-2:] == ["delete_job", "delete_pool"]
    assert outcome.state.cleanup_failures == ["Deleting job [job1]: interrupted"]


def test_ctrl_c_while_a_failed_run_stops_its_tasks_still_reports_the_failure_and_cleans_up(
    tmp_path: Path,
) -> None:
    class Impatient(ScriptedCompute):
        def stop(self) -> None:
            super().stop()
            raise KeyboardInterrupt

    clock = Clock()
    compute = Impatient(clock, [TaskCounts(running=2)])  # never done: the monitor times out
    runner, _ = run(tmp_path, make_plan(tmp_path, 2), compute, clock)
    with pytest.raises(MonitorTimeout):
        runner.run()
    assert compute.calls[-3:] == ["stop", "delete_job", "delete_pool"]
    assert runner.state.status == "failed"
    assert runner.state.cleanup_failures == ["stopping the tasks: interrupted"]


def test_ctrl_c_during_the_last_save_saves_again(tmp_path: Path) -> None:
    clock = Clock()
    compute = ScriptedCompute(clock, [TaskCounts(running=2), TaskCounts(succeeded=2)])
    runner, _ = run(tmp_path, make_plan(tmp_path, 2), compute, clock)
    save = runner.state.save
    calls: list[float | None] = []

    def impatient() -> None:
        calls.append(runner.state.ended_at)
        if runner.state.ended_at is not None and len([c for c in calls if c is not None]) == 1:
            raise KeyboardInterrupt  # the first save after the end
        save()

    runner.state.save = impatient  # type: ignore[method-assign]
    outcome = _run_through(runner)
    assert outcome.exit_code == 0
    saved = RunState.load(runner.state.folder)
    assert saved.ended_at is not None and saved.status == "succeeded"
