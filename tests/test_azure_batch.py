"""AzureBatchCompute (the Azure Batch Compute backend) through the real azure-batch SDK, against the Batch
service emulator; SAS URLs from AzureBlobStorage on Azurite, or file:// URLs from the folder storage where
tasks never fetch them.

batchflow's own waits go through a fake clock: `FakeClock.sleep` advances it and lets the emulator's
control loop make a couple of passes, so a poll loop sees the service move without any real waiting.
The SDK's delete/terminate pollers sleep for real (`Timeouts.delete_poll`, 0.05 s here).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.batch.models._models import BatchJobTerminateOptions  # not exported by azure-batch 15.1.0
from azure.core.exceptions import ResourceNotFoundError
from azurite import AzuriteInfo
from batch_emulator import MESSAGES, BatchEmulator, Timings
from fakes import FakeClock

from batchflow.backends.azure.auth import batch_auth, blob_auth
from batchflow.backends.azure.batch import AzureBatchCompute, Timeouts
from batchflow.backends.azure.batch_client import batch_client
from batchflow.backends.azure.results import TaskResults, id_ranges
from batchflow.backends.azure.storage import AzureBlobStorage
from batchflow.backends.base import Storage
from batchflow.backends.local.storage import LocalStorage
from batchflow.errors import BatchflowError
from batchflow.model import (
    AutoScaleSpec,
    ImageReference,
    JobSpec,
    OutputCondition,
    PoolSpec,
    RenderedTask,
    StartTaskSpec,
    TaskCounts,
    TaskInput,
    TaskLogs,
    TaskOutput,
    TaskState,
    UploadItem,
)

pytest_plugins = ["azurite"]

RUN = "20250101-120000-000"
OTHER_RUN = "20241231-080000-000"
POOL = "TestPool"
JOB = "TestJob"
VM_SIZE = "Standard_D2s_v3"
UBUNTU = ImageReference("canonical", "ubuntu-24_04-lts", "server")
NODE_AGENT = "batch.node.ubuntu 24.04"
COLLECTION = "/jobs/{job}/addtaskcollection"
TASK_COUNTS = "/jobs/{job}/taskcounts"
UNUSABLE = "NodeUnusable: The node is unusable (injected by the Batch emulator)."
APT_ERROR = "E: Unable to locate package ffmpeg\n"
# Real time only where the SDK's pollers wait (0.05 s between GETs); batchflow's own waits use the fake clock.
FAST = Timeouts(
    pool_ready=600.0, pool_poll=1.0, delete=30.0, delete_poll=0.05, health_interval=30.0, submit=600.0
)


class RealSleep:
    """time.sleep, recorded: for waits on the service's own timings (a pool or job being deleted)."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        time.sleep(seconds)


class Bench:
    """One emulator, a fake clock on it, and the computes a test makes (closed at the end)."""

    def __init__(self, emu: BatchEmulator, run_dir: Path, storage_root: Path) -> None:
        self.emu = emu
        self.run_dir = run_dir
        self.clock = FakeClock(1000.0, emu.settle)
        self.notes: list[str] = []
        self.storage: Storage = LocalStorage(storage_root)
        self.client = emu.client(retry_total=0)  # the test's own view of the account
        self._computes: list[AzureBatchCompute] = []

    def compute(
        self,
        run_id: str = RUN,
        *,
        timeouts: Timeouts = FAST,
        storage: Storage | None = None,
        client: BatchClient | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
        concurrency: int = 8,
        auto_pool: bool = False,
        job_wall_clock: float | None = None,
    ) -> AzureBatchCompute:
        compute = AzureBatchCompute(
            client or self.emu.client(retry_total=0),
            storage or self.storage,
            self.run_dir,
            run_id,
            submit_concurrency=concurrency,
            timeouts=timeouts,
            notify=self.notes.append,
            clock=clock or self.clock,
            sleep=sleep or self.clock.sleep,
            auto_pool=auto_pool,
            job_wall_clock=job_wall_clock,
        )
        self._computes.append(compute)
        return compute

    def close(self) -> None:
        for compute in self._computes:
            compute.close()
        self.client.close()


@pytest.fixture
def make_bench(tmp_path: Path) -> Iterator[Callable[..., Bench]]:
    made: list[Bench] = []

    def make(*, instant: bool = False, timings: Timings | None = None) -> Bench:
        n = len(made)
        emu = BatchEmulator(workdir=tmp_path / f"batch{n}", instant=instant, timings=timings)
        bench = Bench(emu, tmp_path / f"run{n}", tmp_path / f"storage{n}")
        made.append(bench)
        return bench

    yield make
    for bench in made:
        bench.close()
        bench.emu.close()
    for bench in made:
        assert bench.emu.internal_errors == []


@pytest.fixture
def bench(make_bench: Callable[..., Bench]) -> Bench:
    return make_bench()


def pool_spec(
    *,
    dedicated: int = 1,
    spot: int = 0,
    vm_size: str = VM_SIZE,
    image: ImageReference = UBUNTU,
    pool_id: str = POOL,
) -> PoolSpec:
    return PoolSpec(
        id=pool_id,
        vm_size=vm_size,
        image=image,
        node_agent_sku_id=NODE_AGENT,
        dedicated_nodes=dedicated,
        spot_nodes=spot,
    )


def task(
    task_id: str,
    command: str,
    *,
    index: int = 0,
    inputs: tuple[TaskInput, ...] = (),
    outputs: tuple[TaskOutput, ...] = (),
    logs: TaskLogs | None = None,
    max_retries: int = 0,
) -> RenderedTask:
    return RenderedTask(
        id=task_id,
        index=index,
        command=command,
        inputs=inputs,
        outputs=outputs,
        environment={},
        max_retries=max_retries,
        max_wall_clock=None,
        logs=logs,
    )


def clip_tasks(count: int) -> list[RenderedTask]:
    """Tasks as the mp4_to_mp3 workflow renders them: one input, one output, logs on completion."""
    logs = TaskLogs("outputs", f"batchflow-logs/{RUN}/")
    tasks = []
    for i in range(count):
        clip = f"clip {i:05d}"
        output = TaskOutput(f"{clip}.mp3", "outputs", f"runs/{RUN}/{clip}.mp3", OutputCondition.SUCCESS)
        tasks.append(
            task(
                f"clip-{i:05d}",
                f"ffmpeg -nostdin -i '{clip}.mp4' -vn -q:a 2 '{clip}.mp3'",
                index=i,
                inputs=(TaskInput("inputs", f"{clip}.mp4", f"{clip}.mp4"),),
                outputs=(output,),
                logs=logs,
            )
        )
    return tasks


def metadata(item: bm.BatchPool | bm.BatchJob) -> list[tuple[str | None, str | None]]:
    return [(m.name, m.value) for m in item.metadata or []]


def node_ids(client: BatchClient, pool_id: str = POOL) -> list[str]:
    """In the order the service lists them (the order batchflow reads them in)."""
    return [n.id or "" for n in client.list_nodes(pool_id)]


def statuses(emu: BatchEmulator, method: str, path: str) -> list[int]:
    return [r.status for r in emu.requests if r.method == method and r.path == path]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_completed(bench: Bench, compute: AzureBatchCompute, total: int) -> TaskCounts:
    """Polls as the runner's monitor does, one Get Task Counts per pass, until `total` tasks completed."""
    seen: list[TaskCounts] = []

    def done() -> bool:
        seen.append(compute.task_counts(JOB))
        return seen[-1].completed >= total

    bench.emu.wait_for(done, timeout=60, what=f"{total} completed tasks")
    return seen[-1]


# ---- create_pool -------------------------------------------------------------------------------


def test_create_pool_marks_it_with_the_run_id_and_wait_for_pool_returns_once_a_node_is_idle(
    bench: Bench,
) -> None:
    compute = bench.compute()
    start = StartTaskSpec(command='echo installing; echo done > "$AZ_BATCH_NODE_SHARED_DIR/ready"')

    assert compute.create_pool(pool_spec(dedicated=2), start) is True
    compute.wait_for_pool(POOL)

    pool = bench.client.get_pool(POOL)
    assert metadata(pool) == [("batchflow-run-id", RUN), ("batchflow-created-by", "batchflow")]
    # The service reads vmSize back lowercased (recorded: pool_get_right_after_create).
    assert (pool.vm_size, pool.target_dedicated_nodes, pool.target_low_priority_nodes) == (
        VM_SIZE.lower(),
        2,
        0,
    )
    assert pool.start_task is not None
    assert (
        pool.start_task.command_line
        == "/bin/sh -c 'echo installing; echo done > \"$AZ_BATCH_NODE_SHARED_DIR/ready\"'"
    )
    nodes = list(bench.client.list_nodes(POOL))
    assert bm.BatchNodeState.IDLE in {n.state for n in nodes}
    idle = next(n for n in nodes if n.state == bm.BatchNodeState.IDLE)
    assert (bench.emu.workdir / POOL / (idle.id or "") / "shared" / "ready").read_text() == "done\n"
    assert bench.notes[0] == "Waiting for pool [TestPool] to have a node ready..."
    assert statuses(bench.emu, "POST", "/pools") == [201]


def test_an_existing_compatible_pool_is_reused(bench: Bench) -> None:
    assert bench.compute(OTHER_RUN).create_pool(pool_spec(dedicated=1), None) is True
    outside = bm.BatchPoolCreateOptions(
        id="HandMade",
        vm_size=VM_SIZE.upper(),  # vm sizes ignore case
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.BatchVmImageReference(
                publisher="Canonical", offer="ubuntu-24_04-lts", sku="server", version="latest"
            ),
            node_agent_sku_id=NODE_AGENT,
        ),
        target_dedicated_nodes=1,
    )
    bench.client.create_pool(outside)
    compute = bench.compute()

    assert compute.create_pool(pool_spec(dedicated=4), None) is False
    assert compute.create_pool(pool_spec(pool_id="HandMade"), None) is False

    assert bench.notes == [
        f"  reusing existing pool [TestPool] (created by batchflow run {OTHER_RUN})",
        "  reusing existing pool [HandMade] (not created by batchflow)",
    ]
    assert statuses(bench.emu, "POST", "/pools") == [201, 201]  # nothing created, nothing changed
    pool = bench.client.get_pool(POOL)
    assert metadata(pool)[0] == ("batchflow-run-id", OTHER_RUN)
    assert pool.target_dedicated_nodes == 1


JAMMY = ImageReference("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts")


@pytest.mark.parametrize(
    ("spec", "problems"),
    [
        (
            pool_spec(vm_size="Standard_D4s_v3"),
            "vm_size is 'standard_d2s_v3', the workflow asks for 'Standard_D4s_v3'",
        ),
        (
            pool_spec(image=JAMMY),
            "image is canonical/ubuntu-24_04-lts/server/latest, the workflow asks for "
            "canonical/0001-com-ubuntu-server-jammy/22_04-lts/latest",
        ),
        (
            pool_spec(image=ImageReference("canonical", "ubuntu-24_04-lts", "server", "24.04.202501010")),
            "image is canonical/ubuntu-24_04-lts/server/latest, the workflow asks for "
            "canonical/ubuntu-24_04-lts/server/24.04.202501010",
        ),
        (
            pool_spec(vm_size="Standard_E2s_v3", image=JAMMY),
            "vm_size is 'standard_d2s_v3', the workflow asks for 'Standard_E2s_v3'; image is "
            "canonical/ubuntu-24_04-lts/server/latest, the workflow asks for "
            "canonical/0001-com-ubuntu-server-jammy/22_04-lts/latest",
        ),
    ],
    ids=["vm_size", "image", "image-version", "both"],
)
def test_an_existing_pool_that_does_not_fit_stops_the_run(
    bench: Bench, spec: PoolSpec, problems: str
) -> None:
    bench.compute(OTHER_RUN).create_pool(pool_spec(), None)
    compute = bench.compute()

    with pytest.raises(BatchflowError) as e:
        compute.create_pool(spec, None)

    assert str(e.value) == (
        f"pool 'TestPool' already exists and does not fit this workflow: {problems}. "
        "Change pool.id, or delete the pool"
    )
    assert statuses(bench.emu, "POST", "/pools") == [201]
    assert bench.notes == []
    assert bench.client.get_pool(POOL).vm_size == VM_SIZE.lower()


def test_a_pool_still_being_deleted_is_waited_for_then_created(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(timings=Timings(pool_delete=1.0))
    bench.compute(OTHER_RUN).create_pool(pool_spec(), None)
    earlier = bench.client.begin_delete_pool(POOL, polling_interval=1)  # an earlier run's cleanup
    assert bench.client.get_pool(POOL).state == bm.BatchPoolState.DELETING
    sleep = RealSleep()
    compute = bench.compute(sleep=sleep, clock=time.monotonic)

    assert compute.create_pool(pool_spec(), None) is True

    assert bench.notes == [
        "  pool [TestPool] is still being deleted (an earlier run); waiting for it to go..."
    ]
    assert sleep.sleeps and set(sleep.sleeps) == {FAST.delete_poll}
    assert statuses(bench.emu, "POST", "/pools") == [201, 201]
    assert metadata(bench.client.get_pool(POOL))[0] == ("batchflow-run-id", RUN)
    earlier.result()
    assert earlier.status() == "Succeeded"


# ---- wait_for_pool -------------------------------------------------------------------------------


def test_a_start_task_failing_on_every_node_stops_the_wait_with_its_exit_code_and_stderr(
    bench: Bench,
) -> None:
    bench.emu.fail_start_task(POOL, exit_code=100, stderr=APT_ERROR)
    compute = bench.compute()
    compute.create_pool(
        pool_spec(dedicated=2), StartTaskSpec(command="apt-get install -y ffmpeg", elevated=True)
    )

    with pytest.raises(BatchflowError) as e:
        compute.wait_for_pool(POOL)

    first = node_ids(bench.client)[0]
    saved = bench.run_dir / "start-task" / first
    assert str(e.value) == (
        f"the start task failed on all 2 node(s) of pool 'TestPool' (node {first}: exit code 100); "
        "last lines of its stderr:\n"
        "E: Unable to locate package ffmpeg\n"
        f"full logs: {saved}"
    )
    assert (saved / "stderr.txt").read_text() == APT_ERROR
    assert (saved / "stdout.txt").read_text() == ""
    assert bench.clock.now - 1000.0 < FAST.pool_ready  # it stopped at once, not at the timeout


def test_every_node_unusable_stops_the_wait(bench: Bench) -> None:
    compute = bench.compute()
    compute.create_pool(pool_spec(dedicated=2), None)
    bench.emu.wait_for(lambda: len(bench.emu.node_ids(POOL)) == 2, what="2 nodes")
    for node in bench.emu.node_ids(POOL):
        bench.emu.make_node_unusable(POOL, node)

    with pytest.raises(BatchflowError) as e:
        compute.wait_for_pool(POOL)

    first, second = node_ids(bench.client)
    assert str(e.value) == (
        f"no node of pool 'TestPool' can run tasks (2 unusable): {first}: {UNUSABLE} | {second}: {UNUSABLE}"
    )


def test_no_usable_node_within_pool_ready_is_an_error(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(timings=Timings(boot=3600))
    compute = bench.compute(timeouts=Timeouts(pool_ready=10.0, pool_poll=1.0))
    compute.create_pool(pool_spec(), None)
    bench.emu.settle()  # the node is allocated ("creating") before the first look

    with pytest.raises(BatchflowError) as e:
        compute.wait_for_pool(POOL)

    assert str(e.value) == "pool 'TestPool' had no usable node within 10 s (1 creating)"
    # Intervals grow by half; the last one ends at the deadline.
    assert bench.clock.sleeps == [1.0, 1.5, 2.25, 3.375, 1.875]
    assert bench.notes == ["Waiting for pool [TestPool] to have a node ready...", "  nodes: 1 creating"]


def test_a_pool_deleted_while_waiting_is_an_error(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(timings=Timings(boot=3600, pool_delete=3600))
    compute = bench.compute()
    compute.create_pool(pool_spec(), None)
    deleting = bench.client.begin_delete_pool(POOL, polling_interval=1)

    with pytest.raises(BatchflowError) as e:
        compute.wait_for_pool(POOL)
    assert str(e.value) == "pool 'TestPool' is being deleted"
    assert not deleting.done()
    stop = bench.emu.faults.fail_next("GET", "/pools/{pool}", status=500, count=None)  # ends the poller
    deleting.wait()
    assert (deleting.status(), stop.hits) == ("Failed", 1)


# A pool that cannot get nodes reports resizeErrors once its allocation is steady ("set only if one
# or more errors occurred during the last Pool resize, and only when the Pool allocationState is
# Steady": BatchPool.resizeErrors in the 2025-06-01 REST spec; codes from Microsoft's
# PoolResizeErrorCodes: AccountCoreQuotaReached, AccountSpotCoreQuotaReached, AllocationFailed).
QUOTA = "AccountCoreQuotaReached: The specified account has reached core quota"
QUOTA_HINT = (
    " (the Batch account's core quota: Azure portal > Batch account > Quotas; ask for more, "
    "or use a smaller vm_size or fewer nodes)"
)


@pytest.mark.parametrize(
    ("spec", "code", "message", "hint"),
    [
        (
            pool_spec(dedicated=2),
            "AccountCoreQuotaReached",
            "The specified account has reached core quota",
            True,
        ),
        (
            pool_spec(dedicated=0, spot=3),
            "AccountSpotCoreQuotaReached",
            "The specified account has reached spot core quota",
            True,
        ),
        (
            PoolSpec(
                id=POOL,
                vm_size=VM_SIZE,
                image=UBUNTU,
                node_agent_sku_id=NODE_AGENT,
                autoscale=AutoScaleSpec("$TargetDedicatedNodes = 2;", 300.0),
            ),
            "AllocationFailed",
            "Desired number of nodes could not be allocated",
            False,
        ),
    ],
    ids=["fixed-size", "spot", "autoscale"],
)
def test_a_pool_whose_resize_fails_stops_the_wait_at_once_with_batchs_code_and_message(
    bench: Bench, spec: PoolSpec, code: str, message: str, hint: bool
) -> None:
    bench.emu.fail_allocation(POOL, code, message)
    compute = bench.compute()
    compute.create_pool(spec, None)

    with pytest.raises(BatchflowError) as e:
        compute.wait_for_pool(POOL)

    assert str(e.value) == f"pool 'TestPool' could not get any node: {code}: {message}" + (
        QUOTA_HINT if hint else ""
    )
    assert len(bench.clock.sleeps) <= 2  # a poll or two, not pool_timeout (30 min by default)


def test_a_resize_error_for_spot_nodes_only_leaves_the_dedicated_ones_to_run_tasks(bench: Bench) -> None:
    bench.emu.fail_allocation(POOL, "AccountSpotCoreQuotaReached", "spot quota", dedicated=False)
    compute = bench.compute()
    compute.create_pool(pool_spec(dedicated=1, spot=2), None)

    compute.wait_for_pool(POOL)  # no error: a dedicated node is idle

    pool = bench.client.get_pool(POOL)
    assert pool.current_dedicated_nodes == 1 and pool.current_low_priority_nodes == 0
    assert [(e.code, e.message) for e in pool.resize_errors or []] == [
        ("AccountSpotCoreQuotaReached", "spot quota")
    ]


def test_an_autoscale_pool_refused_nodes_after_tasks_arrive_stops_the_monitor(bench: Bench) -> None:
    """The formula asks for nodes only later (when tasks wait); the quota refuses them: the monitor's
    health check finds the resize error instead of waiting out the monitor timeout."""
    autoscale = PoolSpec(
        id=POOL,
        vm_size=VM_SIZE,
        image=UBUNTU,
        node_agent_sku_id=NODE_AGENT,
        autoscale=AutoScaleSpec("$TargetDedicatedNodes = 0;", 300.0),
    )
    compute = bench.compute()
    compute.create_pool(autoscale, None)
    compute.wait_for_pool(POOL)  # steady with no node and no error: the formula waits for tasks
    compute.create_job(JobSpec(JOB), POOL, RUN)
    compute.add_tasks(JOB, [task("t1", "true")])
    bench.emu.fail_allocation(POOL, "AccountCoreQuotaReached", "The specified account has reached core quota")
    with bench.emu.store.lock:  # the formula's next evaluation asks for a node
        pool = bench.emu.store.pool(POOL)
        pool.target_dedicated = 1
        pool.set_allocation("resizing")
    bench.emu.settle()

    polls = 0
    with pytest.raises(BatchflowError) as e:
        for polls in range(1, 101):  # noqa: B007 (counted)
            compute.task_counts(JOB)
            compute.wait(FAST.health_interval)
    assert str(e.value) == f"pool 'TestPool' could not get any node: {QUOTA}{QUOTA_HINT}"
    # The first poll that finds nothing moving for health_interval looks at the pool: here the second.
    assert polls == 2


@pytest.mark.parametrize("other", ["upgradingos", "deallocated", "deallocating", "rebooting", "offline"])
def test_node_states_batchflow_does_not_run_tasks_on_neither_hide_nor_fake_a_broken_pool(
    bench: Bench, other: str
) -> None:
    """Node states from BatchNodeState (REST spec 2025-06-01: idle, rebooting, reimaging, running,
    unusable, creating, starting, waitingforstarttask, starttaskfailed, unknown, leavingpool, offline,
    preempted, upgradingos, deallocated, deallocating). One node unusable and one in `other`: not every
    node is broken, so the wait goes on; once the other is unusable too, the pool is broken."""
    compute = bench.compute(timeouts=Timeouts(pool_ready=5.0, pool_poll=1.0))
    compute.create_pool(pool_spec(dedicated=2), None)
    bench.emu.wait_for(lambda: len(bench.emu.node_ids(POOL)) == 2)
    first, second = bench.emu.node_ids(POOL)
    bench.emu.make_node_unusable(POOL, first)
    with bench.emu.store.lock:
        bench.emu.store.node(POOL, second).set_state(other)

    with pytest.raises(BatchflowError) as e:
        compute.wait_for_pool(POOL)
    assert str(e.value).startswith("pool 'TestPool' had no usable node within 5 s (")
    assert "1 unusable" in str(e.value)

    bench.emu.make_node_unusable(POOL, second)
    with pytest.raises(BatchflowError) as e:
        compute.wait_for_pool(POOL)
    assert str(e.value).startswith("no node of pool 'TestPool' can run tasks (2 unusable)")


# ---- create_job / seal_job -------------------------------------------------------------------------


def test_create_job_does_nothing_on_completion_until_sealed(bench: Bench) -> None:
    compute = bench.compute()
    compute.create_job(JobSpec(id=JOB, max_wall_clock=3600.0, max_task_retries=2), POOL, RUN)

    job = bench.client.get_job(JOB)
    assert job.all_tasks_complete_mode == bm.BatchAllTasksCompleteMode.NO_ACTION
    assert job.pool_info is not None and job.pool_info.pool_id == POOL
    assert job.constraints is not None and job.constraints.max_task_retry_count == 2
    assert metadata(job) == [("batchflow-run-id", RUN), ("batchflow-created-by", "batchflow")]
    bench.emu.settle()
    assert bench.client.get_job(JOB).state == bm.BatchJobState.ACTIVE  # no tasks yet, and still open

    compute.seal_job(JOB)

    assert bench.client.get_job(JOB).all_tasks_complete_mode == bm.BatchAllTasksCompleteMode.TERMINATE_JOB
    # With no task, even a sealed job stays active (recorded: job_get_terminatejob_no_tasks_active in
    # tests/recordings/jobs.json): batchflow never waits for a job to complete; cleanup deletes it.
    bench.emu.settle()
    assert bench.client.get_job(JOB).state == bm.BatchJobState.ACTIVE


def test_a_job_id_taken_in_the_account_stops_the_run(bench: Bench) -> None:
    bench.compute(OTHER_RUN).create_job(JobSpec(id=JOB), POOL, OTHER_RUN)
    bench.client.create_job(bm.BatchJobCreateOptions(id="HandMade", pool_info=bm.BatchPoolInfo(pool_id=POOL)))
    compute = bench.compute()

    with pytest.raises(BatchflowError) as ours:
        compute.create_job(JobSpec(id=JOB), POOL, RUN)
    with pytest.raises(BatchflowError) as theirs:
        compute.create_job(JobSpec(id="handmade"), POOL, RUN)  # job ids ignore case

    assert str(ours.value) == (
        f"job 'TestJob' already exists (left by batchflow run {OTHER_RUN}: `batchflow cleanup {OTHER_RUN}` "
        "removes it); Batch job ids are unique in an account: delete it or change job.id (JobExists)"
    )
    assert str(theirs.value) == (
        "job 'handmade' already exists; Batch job ids are unique in an account: delete it or change job.id "
        "(JobExists)"
    )
    assert metadata(bench.client.get_job(JOB))[0] == ("batchflow-run-id", OTHER_RUN)
    assert compute.task_results(JOB) == []  # not this run's job: nothing of it is reported


def test_a_job_still_being_deleted_is_waited_for_then_created(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(timings=Timings(job_delete=1.0))
    bench.compute(OTHER_RUN).create_job(JobSpec(id=JOB), POOL, OTHER_RUN)
    earlier = bench.client.begin_delete_job(JOB, polling_interval=1)
    sleep = RealSleep()
    compute = bench.compute(sleep=sleep, clock=time.monotonic)

    compute.create_job(JobSpec(id=JOB), POOL, RUN)

    assert bench.notes == ["  job [TestJob] is still being deleted (an earlier run); waiting..."]
    assert sleep.sleeps and set(sleep.sleeps) == {FAST.delete_poll}
    assert statuses(bench.emu, "POST", "/jobs") == [201, 409, 201]
    assert metadata(bench.client.get_job(JOB))[0] == ("batchflow-run-id", RUN)
    earlier.result()


def production_client(emu: BatchEmulator) -> BatchClient:
    """batchflow's own client (shared key, the SDK's retry policy) on the emulator over loopback HTTP."""
    environ = {
        "AZURE_BATCH_ENDPOINT": emu.serve(),
        "AZURE_BATCH_ACCOUNT": emu.account,
        "AZURE_BATCH_ACCESS_KEY": emu.key,
    }
    return batch_client(batch_auth(environ), connections=4)


def test_lost_answers_to_create_pool_and_create_job_are_resent_and_found_to_be_ours(bench: Bench) -> None:
    # azure-core resends a request that got no answer only for idempotent methods: not these POSTs.
    compute = bench.compute(client=production_client(bench.emu))
    bench.emu.faults.lose_response_next("POST", "/pools")
    bench.emu.faults.lose_response_next("POST", "/jobs")

    assert compute.create_pool(pool_spec(), None) is True
    compute.create_job(JobSpec(id=JOB), POOL, RUN)

    # Each was created by the first request; the resend got 409, and the owner is this run.
    assert statuses(bench.emu, "POST", "/pools") == [0, 409]
    assert statuses(bench.emu, "POST", "/jobs") == [0, 409]
    assert (compute.requests["create_pool"], compute.requests["create_job"]) == (2, 2)
    assert metadata(bench.client.get_pool(POOL))[0] == ("batchflow-run-id", RUN)
    assert metadata(bench.client.get_job(JOB))[0] == ("batchflow-run-id", RUN)
    assert bench.notes == []  # not "reusing": this run made the pool
    compute.add_tasks(JOB, [task("t1", "true")])
    assert [t.id for t in bench.client.list_tasks(JOB)] == ["t1"]


def test_a_lost_answer_to_seal_job_is_resent_and_a_job_already_completed_needs_no_seal(bench: Bench) -> None:
    compute = bench.compute()
    compute.create_job(JobSpec(id=JOB), "NoPoolYet", RUN)
    compute.add_tasks(JOB, [task("waits", "true")])  # no pool: it stays active, the job stays open
    bench.emu.faults.lose_response_next("PATCH", "/jobs/{job}")

    compute.seal_job(JOB)

    assert statuses(bench.emu, "PATCH", f"/jobs/{JOB}") == [0, 200]
    assert bench.client.get_job(JOB).all_tasks_complete_mode == bm.BatchAllTasksCompleteMode.TERMINATE_JOB

    # A job completed already (its first seal completed it, or it was terminated): the seal, or its
    # resend, gets 409 JobCompleted, and nothing is left to seal.
    compute.create_job(JobSpec(id="Done"), "NoPoolYet", RUN)
    bench.client.begin_terminate_job(
        "Done", BatchJobTerminateOptions(termination_reason="test"), polling_interval=0
    ).result()
    bench.emu.wait_for(lambda: bench.client.get_job("Done").state == bm.BatchJobState.COMPLETED)
    compute.seal_job("Done")
    assert statuses(bench.emu, "PATCH", "/jobs/Done") == [409]


# ---- add_tasks at scale ------------------------------------------------------------------------------


def test_10000_tasks_are_each_added_once_despite_503s_413s_and_lost_answers(
    make_bench: Callable[..., Bench], caplog: pytest.LogCaptureFixture
) -> None:
    bench = make_bench(instant=True)
    compute = bench.compute(concurrency=8)
    compute.create_pool(pool_spec(dedicated=4), None)
    compute.wait_for_pool(POOL)
    compute.create_job(JobSpec(id=JOB), POOL, RUN)
    tasks = clip_tasks(10_000)
    faults = bench.emu.faults
    faults.fail_next("POST", COLLECTION, status=503, count=5, after=3)
    faults.fail_next("POST", COLLECTION, status=413, count=2, after=10)
    faults.lose_response_next("POST", COLLECTION, count=3, after=20)
    caplog.set_level(logging.INFO, logger="batchflow")

    compute.add_tasks(JOB, tasks)
    compute.seal_job(JOB)

    # 100 chunks of 100; each 503 and each lost answer costs one resend, each 413 one request more (halves).
    assert bench.emu.count("POST", COLLECTION) == 100 + 5 + 3 + 2 * 2
    assert compute.requests["create_task_collection"] == 112
    assert Counter(statuses(bench.emu, "POST", f"/jobs/{JOB}/addtaskcollection")) == {
        200: 102,
        503: 5,
        413: 2,
        0: 3,
    }
    (report,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("added ")]
    match = re.fullmatch(
        r"added (\d+) tasks to job TestJob \((\d+) already there\) in 112 requests \(8 retried, 2 split\)",
        report,
    )
    assert match is not None, report
    added, existed = int(match[1]), int(match[2])
    assert added + existed == 10_000
    assert 0 < existed <= 300  # the chunks whose answer was lost: added, then found there on the resend

    final = wait_for_completed(bench, compute, 10_000)
    assert final == TaskCounts(succeeded=10_000)
    before = bench.emu.count("GET", TASK_COUNTS)
    assert compute.task_counts(JOB) == TaskCounts(succeeded=10_000)
    assert bench.emu.count("GET", TASK_COUNTS) == before + 1  # one request, whatever the number of tasks

    results = compute.task_results(JOB)
    assert len(results) == 10_000
    assert [r.id for r in results] == [t.id for t in tasks]  # each once, in the order of the ranges
    assert {(r.state, r.exit_code, r.attempts) for r in results} == {(TaskState.SUCCEEDED, 0, 1)}
    # Ten listings, one per range of 1,000 task ids, each one page: none waits for another's pages.
    listing = [r for r in bench.emu.requests if r.path == f"/jobs/{JOB}/tasks"]
    bounds = [f"'clip-{i:05d}'" for i in range(1000, 10_000, 1000)]
    assert sorted(r.query["$filter"] for r in listing) == sorted(
        [
            f"state eq 'completed' and id lt {bounds[0]}",
            *(f"state eq 'completed' and id ge {a} and id lt {b}" for a, b in itertools.pairwise(bounds)),
            f"state eq 'completed' and id ge {bounds[-1]}",
        ]
    )
    assert {r.query["$select"] for r in listing} == {"id,state,executionInfo"}
    assert not any("$skiptoken" in r.query for r in listing)
    assert compute.requests["list_tasks"] == 10
    ids = [t.id for t in bench.client.list_tasks(JOB, select=["id"])]
    assert len(ids) == len(set(ids)) == 10_000
    bench.emu.wait_for(lambda: bench.client.get_job(JOB).state == bm.BatchJobState.COMPLETED, what="done")


# ---- task_counts ---------------------------------------------------------------------------------------


@pytest.fixture
def waiting_job(make_bench: Callable[..., Bench]) -> tuple[Bench, AzureBatchCompute]:
    """250 tasks that stay active: the job's pool does not exist (yet). The compute's client has the
    SDK's default retry policy, to show that Get Task Counts is still one request."""
    bench = make_bench(instant=True)
    compute = bench.compute(client=bench.emu.client(), timeouts=Timeouts(transient_limit=4))
    compute.create_job(JobSpec(id=JOB), "NoPoolYet", RUN)
    compute.add_tasks(JOB, clip_tasks(250))
    return bench, compute


def test_task_counts_is_one_request_and_a_429_keeps_the_last_counts_and_stretches_the_next_wait(
    waiting_job: tuple[Bench, AzureBatchCompute],
) -> None:
    bench, compute = waiting_job
    emu = bench.emu

    assert compute.task_counts(JOB) == TaskCounts(active=250)
    assert emu.count("GET", TASK_COUNTS) == 1
    emu.faults.retry_after_next("GET", TASK_COUNTS, seconds=7)

    assert compute.task_counts(JOB) == TaskCounts(active=250)  # the last counts
    assert statuses(emu, "GET", f"/jobs/{JOB}/taskcounts") == [200, 429]  # the SDK did not retry
    assert emu.sleeps == []
    compute.wait(2.0)
    compute.wait(2.0)
    assert bench.clock.sleeps == [7.0, 2.0]  # the Retry-After once, then the caller's interval again

    emu.faults.fail_next("GET", TASK_COUNTS, status=503)
    emu.faults.lose_response_next("GET", TASK_COUNTS)
    assert compute.task_counts(JOB) == TaskCounts(active=250)
    assert compute.task_counts(JOB) == TaskCounts(active=250)
    assert compute.task_counts(JOB) == TaskCounts(active=250)  # answered: the failures in a row start over
    assert statuses(emu, "GET", f"/jobs/{JOB}/taskcounts") == [200, 429, 503, 0, 200]
    assert compute.requests["get_job_task_counts"] == 5


def test_task_counts_fails_on_a_non_transient_error_or_too_many_transient_ones(
    waiting_job: tuple[Bench, AzureBatchCompute],
) -> None:
    bench, compute = waiting_job

    with pytest.raises(BatchflowError) as missing:
        compute.task_counts("NoSuchJob")
    assert str(missing.value) == (
        f"cannot read the task counts of job 'NoSuchJob': 404 JobNotFound: {MESSAGES['JobNotFound']}"
    )

    bench.emu.faults.fail_next("GET", TASK_COUNTS, status=503, count=4)
    for _ in range(3):
        assert compute.task_counts(JOB) == TaskCounts()  # no counts yet: zeros
    with pytest.raises(BatchflowError) as busy:
        compute.task_counts(JOB)
    assert str(busy.value) == (
        f"cannot read the task counts of job 'TestJob': 4 failures in a row; last: 503 ServerBusy: "
        f"{MESSAGES['ServerBusy']}"
    )


# ---- node health while monitoring ---------------------------------------------------------------------


def test_queued_tasks_with_every_node_unusable_for_health_interval_stop_the_monitor(bench: Bench) -> None:
    compute = bench.compute()
    compute.create_pool(pool_spec(dedicated=1), None)
    compute.wait_for_pool(POOL)
    (node,) = bench.emu.node_ids(POOL)
    bench.emu.make_node_unusable(POOL, node)
    compute.create_job(JobSpec(id=JOB), POOL, RUN)
    compute.add_tasks(JOB, [task(f"t{i}", "true", index=i) for i in range(3)])
    compute.seal_job(JOB)

    assert compute.task_counts(JOB) == TaskCounts(active=3)
    looks = bench.emu.count("GET", "/nodecounts")
    compute.wait(FAST.health_interval - 1)
    assert compute.task_counts(JOB) == TaskCounts(active=3)
    assert bench.emu.count("GET", "/nodecounts") == looks  # not stuck for long enough to look at the nodes
    compute.wait(1.0)

    with pytest.raises(BatchflowError) as e:
        compute.task_counts(JOB)

    assert str(e.value) == f"no node of pool 'TestPool' can run tasks (1 unusable): {node}: {UNUSABLE}"
    assert bench.emu.count("GET", "/nodecounts") == looks + 1


# ---- Spot preemption ---------------------------------------------------------------------------------


def test_a_task_preempted_on_a_spot_node_runs_again_and_succeeds(bench: Bench) -> None:
    compute = bench.compute()
    compute.create_pool(pool_spec(dedicated=0, spot=1), None)
    compute.wait_for_pool(POOL)
    (node,) = bench.emu.node_ids(POOL)
    shared = bench.emu.workdir / POOL / node / "shared"
    script = (
        'echo run >> "$AZ_BATCH_NODE_SHARED_DIR/runs"; [ -f "$AZ_BATCH_NODE_SHARED_DIR/go" ] && exit 0; '
        "echo $$ > pid; exec sleep 60"
    )
    compute.create_job(JobSpec(id=JOB), POOL, RUN)
    compute.add_tasks(JOB, [task("work", script)])
    compute.seal_job(JOB)
    pid_file = bench.emu.workdir / POOL / node / "workitems" / JOB / "job-1" / "work" / "wd" / "pid"
    bench.emu.wait_for(pid_file.exists, what="the first run")
    assert compute.task_counts(JOB) == TaskCounts(running=1)

    bench.emu.preempt_node(POOL, node)
    assert compute.task_counts(JOB) == TaskCounts(active=1)
    compute.wait(FAST.health_interval)
    assert compute.task_counts(JOB) == TaskCounts(active=1)  # preempted is not broken: keep waiting
    assert bench.notes[-1] == (
        "  all Spot nodes of pool [TestPool] are preempted (1 preempted); "
        "waiting for Batch to bring nodes back"
    )
    (shared / "go").write_text("")
    bench.emu.restore_node(POOL, node)

    assert wait_for_completed(bench, compute, 1) == TaskCounts(succeeded=1)
    (result,) = compute.task_results(JOB)
    assert (result.id, result.state, result.exit_code, result.attempts) == ("work", TaskState.SUCCEEDED, 0, 1)
    assert (shared / "runs").read_text() == "run\nrun\n"
    info = bench.client.get_task(JOB, "work").execution_info
    assert info is not None and (info.requeue_count, info.retry_count) == (1, 0)
    bench.emu.wait_for(lambda: not alive(int(pid_file.read_text())), what="the preempted run to end")


# ---- task_results -----------------------------------------------------------------------------------


def test_task_results_fetch_the_logs_of_failed_tasks_and_list_the_succeeded_ones(
    bench: Bench, azurite: AzuriteInfo, tmp_path: Path
) -> None:
    inputs, logs = f"in{uuid.uuid4().hex[:16]}", f"logs{uuid.uuid4().hex[:16]}"
    with AzureBlobStorage(blob_auth(azurite.environ()), sas_ttl=600) as storage:
        for name in (inputs, logs):
            storage.ensure_container(name)
        words = tmp_path / "words.txt"
        words.write_text("one two three\n")
        storage.upload([UploadItem(words, inputs, "texts/words.txt", words.stat().st_size)])
        task_logs = TaskLogs(logs, f"batchflow-logs/{RUN}/")
        tasks = [
            task(
                "count",
                "wc -w < words.txt",
                inputs=(TaskInput(inputs, "texts/words.txt", "words.txt"),),
                logs=task_logs,
            ),
            task(
                "fails",
                'echo "attempt on $AZ_BATCH_NODE_ID"; echo "boom: $AZ_BATCH_TASK_ID" >&2; exit 3',
                max_retries=2,
                logs=task_logs,
            ),
            task("no-input", "cat gone.txt", inputs=(TaskInput(inputs, "gone.txt", "gone.txt"),), index=2),
        ]
        compute = bench.compute(storage=storage)
        compute.create_pool(pool_spec(), None)
        compute.wait_for_pool(POOL)
        compute.create_job(JobSpec(id=JOB), POOL, RUN)
        compute.add_tasks(JOB, tasks)
        compute.seal_job(JOB)
        assert wait_for_completed(bench, compute, 3) == TaskCounts(succeeded=1, failed=2)

        results = {r.id: r for r in compute.task_results(JOB)}
        uploaded = storage.list_blobs(logs, f"batchflow-logs/{RUN}/")

    (node,) = bench.emu.node_ids(POOL)
    folder = bench.run_dir / "tasks" / "fails"
    fails = results["fails"]
    assert (fails.state, fails.exit_code, fails.attempts, fails.failure) == (TaskState.FAILED, 3, 3, None)
    assert (fails.stdout_path, fails.stderr_path) == (folder / "stdout.txt", folder / "stderr.txt")
    assert (folder / "stderr.txt").read_text() == "boom: fails\n"
    assert (folder / "stdout.txt").read_text() == f"attempt on {node}\n"  # the last attempt's
    count = results["count"]
    assert (count.state, count.exit_code, count.attempts) == (TaskState.SUCCEEDED, 0, 1)
    assert (count.stdout_path, count.stderr_path) == (None, None)  # logs are fetched for failures only
    assert count.started_at is not None and count.ended_at is not None and count.started_at <= count.ended_at
    missing = results["no-input"]
    assert (missing.state, missing.exit_code, missing.attempts) == (TaskState.FAILED, None, 1)
    assert missing.failure is not None and missing.failure.startswith("BlobNotFound: ")
    assert (missing.stdout_path, missing.stderr_path) == (None, None)  # the command never ran
    assert sorted(p.name for p in (bench.run_dir / "tasks").iterdir()) == ["fails"]
    assert uploaded == [
        f"batchflow-logs/{RUN}/{t}/{name}"
        for t in ("count", "fails")
        for name in ("stderr.txt", "stdout.txt")
    ]
    listing = [r for r in bench.emu.requests if r.path == f"/jobs/{JOB}/tasks"]
    assert [(r.query["$filter"], r.query["$select"]) for r in listing] == [
        ("state eq 'completed'", "id,state,executionInfo")
    ]
    assert [r.id for r in compute.task_results(JOB, ["FAILS"])] == ["fails"]  # ids ignore case


def test_task_results_split_by_id_list_every_completed_task_once_known_to_the_run_or_not(
    make_bench: Callable[..., Bench],
) -> None:
    """Ranges of the ids the run added, open at both ends: tasks it did not add (ids below, between
    and above the bounds) are listed too, each once; a task still running is not. A range that cannot
    be listed fails the whole listing: no results with a range missing."""
    bench = make_bench()
    compute = bench.compute()
    compute.create_pool(pool_spec(dedicated=2), None)
    compute.wait_for_pool(POOL)
    compute.create_job(JobSpec(id=JOB), POOL, RUN)
    known = [task(f"k{i}", "exec sleep 60" if i == 5 else "true", index=i) for i in range(7)]
    compute.add_tasks(JOB, known)
    others = ["A0", "k3x", "zz"]  # not this run's: added by another client
    bodies = [bm.BatchTaskCreateOptions(id=i, command_line="true") for i in others]
    bench.client.create_task_collection(JOB, bm.BatchTaskGroup(task_values=bodies))
    wait_for_completed(bench, compute, 9)
    counted: list[str] = []
    results = TaskResults(bench.client, None, bench.run_dir, counted.append, concurrency=4, per_range=2)
    results.expect_tasks(JOB, [t.id for t in known])
    mark = len(bench.emu.requests)

    listed = results.completed(JOB)

    assert sorted(r.id for r in listed) == sorted(["k0", "k1", "k2", "k3", "k4", "k6", *others])
    assert {r.state for r in listed} == {TaskState.SUCCEEDED}
    filters = [r.query["$filter"] for r in bench.emu.requests[mark:] if r.path == f"/jobs/{JOB}/tasks"]
    assert sorted(filters) == [
        "state eq 'completed' and id ge 'k2' and id lt 'k4'",
        "state eq 'completed' and id ge 'k4' and id lt 'k6'",
        "state eq 'completed' and id ge 'k6'",
        "state eq 'completed' and id lt 'k2'",
    ]
    assert counted == ["list_tasks"] * 4

    bench.emu.faults.fail_next("GET", "/jobs/{job}/tasks", status=500, count=1, after=2)
    with pytest.raises(BatchflowError, match="cannot list the tasks of job 'TestJob'"):
        results.completed(JOB)
    compute.stop()


def _in_range(where: str, task_id: str, key: Callable[[str], str]) -> bool:
    """`where` (id_ranges' form: `id ge|lt 'x'`, joined by and) for `task_id`, ids ordered by `key`."""
    tests = re.findall(r"id (ge|lt) '([^']*)'", where)
    assert " and ".join(f"id {op} '{v}'" for op, v in tests) == where
    return all((key(task_id) >= key(v)) if op == "ge" else (key(task_id) < key(v)) for op, v in tests)


def test_id_ranges_hold_every_id_once_and_at_least_once_in_any_order_the_service_compares_in() -> None:
    assert id_ranges(["t1", "t2"], 1000) == [None]  # one page: one listing
    known = ["0", "b", "C", "d"]
    ranges = id_ranges(known, 1)
    assert ranges == ["id lt 'b'", "id ge 'b' and id lt 'C'", "id ge 'C' and id lt 'd'", "id ge 'd'"]
    bounded = [r for r in ranges if r is not None]
    ids = [*known, "", "-", "_", "9", "a", "B", "bb", "c", "Ca", "D", "dz", "zzz", "ZZZ"]
    without_case = {i: sum(_in_range(r, i, str.casefold) for r in bounded) for i in ids}
    assert set(without_case.values()) == {1}  # the order the ranges were cut in: each id once
    ordinal = {i: sum(_in_range(r, i, str) for r in bounded) for i in ids}  # 'C' < 'b' < 'd'
    assert min(ordinal.values()) == 1  # bounds out of order: still every id
    assert ordinal["Ca"] == 2  # ... some twice, which `completed` keeps once


def test_logs_come_from_the_log_container_when_the_node_has_them_no_more(
    bench: Bench, azurite: AzuriteInfo
) -> None:
    logs = f"logs{uuid.uuid4().hex[:16]}"
    with AzureBlobStorage(blob_auth(azurite.environ()), sas_ttl=600) as storage:
        storage.ensure_container(logs)
        compute = bench.compute(storage=storage)
        compute.create_pool(pool_spec(), None)
        compute.wait_for_pool(POOL)
        compute.create_job(JobSpec(id=JOB), POOL, RUN)
        failing = task(
            "fails", "echo out; echo err >&2; exit 1", logs=TaskLogs(logs, f"batchflow-logs/{RUN}/")
        )
        compute.add_tasks(JOB, [failing])
        compute.seal_job(JOB)
        assert wait_for_completed(bench, compute, 1) == TaskCounts(failed=1)
        # The node is gone (reimaged, preempted, deleted): Batch answers 404 for its files.
        bench.emu.faults.fail_next(
            "GET", "/jobs/{job}/tasks/{task}/files/*", status=404, code="NodeNotFound", count=2
        )

        (result,) = compute.task_results(JOB)

    folder = bench.run_dir / "tasks" / "fails"
    assert (result.stdout_path, result.stderr_path) == (folder / "stdout.txt", folder / "stderr.txt")
    assert (folder / "stdout.txt").read_text() == "out\n"
    assert (folder / "stderr.txt").read_text() == "err\n"
    statuses = [r.status for r in bench.emu.requests if "/files/" in r.path]
    assert statuses == [404, 404]


def test_a_log_the_node_lost_between_two_fetches_comes_from_the_log_container(
    bench: Bench, azurite: AzuriteInfo
) -> None:
    """The job completes with its last task and takes its auto pool along: the node can go after
    stdout.txt was fetched and before stderr.txt is (seen in CI as a lost stderr tail)."""
    logs = f"logs{uuid.uuid4().hex[:16]}"
    with AzureBlobStorage(blob_auth(azurite.environ()), sas_ttl=600) as storage:
        storage.ensure_container(logs)
        compute = bench.compute(storage=storage)
        compute.create_pool(pool_spec(), None)
        compute.wait_for_pool(POOL)
        compute.create_job(JobSpec(id=JOB), POOL, RUN)
        failing = task(
            "fails", "echo out; echo err >&2; exit 1", logs=TaskLogs(logs, f"batchflow-logs/{RUN}/")
        )
        compute.add_tasks(JOB, [failing])
        compute.seal_job(JOB)
        assert wait_for_completed(bench, compute, 1) == TaskCounts(failed=1)
        bench.emu.faults.fail_next(
            "GET", "/jobs/{job}/tasks/{task}/files/stderr.txt", status=404, code="NodeNotFound"
        )

        (result,) = compute.task_results(JOB)

    folder = bench.run_dir / "tasks" / "fails"
    assert (result.stdout_path, result.stderr_path) == (folder / "stdout.txt", folder / "stderr.txt")
    assert (folder / "stdout.txt").read_text() == "out\n"
    assert (folder / "stderr.txt").read_text() == "err\n"
    statuses = [(r.path.rsplit("/", 1)[-1], r.status) for r in bench.emu.requests if "/files/" in r.path]
    assert statuses == [("stdout.txt", 200), ("stderr.txt", 404)]


# ---- stop, delete_job, delete_pool -------------------------------------------------------------------


def test_stop_terminates_the_job_so_running_tasks_end(bench: Bench) -> None:
    compute = bench.compute()
    compute.create_pool(pool_spec(), None)
    compute.wait_for_pool(POOL)
    compute.create_job(JobSpec(id=JOB), POOL, RUN)
    compute.add_tasks(JOB, [task("long", "echo $$ > pid; exec sleep 60"), task("queued", "true", index=1)])
    (node,) = bench.emu.node_ids(POOL)
    pid_file = bench.emu.workdir / POOL / node / "workitems" / JOB / "job-1" / "long" / "wd" / "pid"
    bench.emu.wait_for(pid_file.exists, what="the task to run")

    compute.stop()

    assert bench.client.get_job(JOB).state == bm.BatchJobState.COMPLETED
    bench.emu.wait_for(lambda: not alive(int(pid_file.read_text())), what="the task's process to end")
    results = {r.id: r for r in compute.task_results(JOB)}
    long = results["long"]
    assert (long.state, long.exit_code, long.failure) == (
        TaskState.FAILED,
        None,
        "TaskEnded: The task was terminated because its job was terminated.",
    )
    compute.stop()  # again: the job is already completed
    assert statuses(bench.emu, "POST", f"/jobs/{JOB}/terminate") == [202, 409]


def test_delete_job_and_delete_pool_wait_for_the_service_and_tolerate_what_is_gone(bench: Bench) -> None:
    compute = bench.compute()
    compute.create_pool(pool_spec(), None)
    compute.create_job(JobSpec(id=JOB), POOL, RUN)

    compute.delete_job(JOB)
    compute.delete_pool(POOL)

    with pytest.raises(ResourceNotFoundError):
        bench.client.get_job(JOB)
    with pytest.raises(ResourceNotFoundError):
        bench.client.get_pool(POOL)
    assert bench.notes == ["  pool [TestPool] is being deleted; waiting for Batch to confirm..."]
    compute.delete_job(JOB)
    compute.delete_pool(POOL)
    assert statuses(bench.emu, "DELETE", f"/jobs/{JOB}") == [202]  # the second found it gone (a GET)
    assert statuses(bench.emu, "DELETE", f"/pools/{POOL}") == [202, 404]
    assert compute.task_results(JOB) == []


def test_delete_job_never_deletes_another_runs_job(bench: Bench) -> None:
    """The second of two runs: its create_job met JobExists (the first run's live job). Its cleanup
    asks to delete the job: the job's metadata names the other run, so it is kept."""
    first = bench.compute(OTHER_RUN)
    first.create_job(JobSpec(id=JOB), POOL, OTHER_RUN)
    second = bench.compute(RUN)
    with pytest.raises(BatchflowError):
        second.create_job(JobSpec(id=JOB), POOL, RUN)

    second.delete_job(JOB)

    assert statuses(bench.emu, "DELETE", f"/jobs/{JOB}") == []
    assert metadata(bench.client.get_job(JOB))[0] == ("batchflow-run-id", OTHER_RUN)
    first.delete_job(JOB)  # its own: deleted
    assert statuses(bench.emu, "DELETE", f"/jobs/{JOB}") == [202]


def test_a_delete_still_in_progress_after_the_timeout_is_an_error(make_bench: Callable[..., Bench]) -> None:
    bench = make_bench(timings=Timings(pool_delete=3600, job_delete=3600))
    compute = bench.compute(timeouts=Timeouts(delete=1.0, delete_poll=0.05))
    compute.create_pool(pool_spec(), None)
    compute.create_job(JobSpec(id=JOB), POOL, RUN)

    with pytest.raises(BatchflowError) as job:
        compute.delete_job(JOB)
    with pytest.raises(BatchflowError) as pool:
        compute.delete_pool(POOL)

    assert str(job.value) == "deleting job 'TestJob': still in progress after 1 s; Batch goes on with it"
    assert str(pool.value) == "deleting pool 'TestPool': still in progress after 1 s; Batch goes on with it"
    assert bench.client.get_job(JOB).state == bm.BatchJobState.DELETING
    assert bench.client.get_pool(POOL).state == bm.BatchPoolState.DELETING
    # The SDK's pollers go on in the background: an error ends them.
    faults = [
        bench.emu.faults.fail_next("GET", p, status=500, count=None) for p in ("/jobs/{j}", "/pools/{p}")
    ]
    bench.emu.wait_for(lambda: all(f.hits for f in faults), what="the pollers to stop")


@pytest.mark.parametrize("kind", ["job", "pool"])
def test_a_delete_poller_that_fails_is_an_error(make_bench: Callable[..., Bench], kind: str) -> None:
    bench = make_bench(timings=Timings(pool_delete=3600, job_delete=3600))
    compute = bench.compute()
    compute.create_pool(pool_spec(), None)
    compute.create_job(JobSpec(id=JOB), POOL, RUN)
    name = JOB if kind == "job" else POOL
    bench.emu.faults.fail_next("GET", f"/{kind}s/{{id}}", status=500)  # the poller's first look

    with pytest.raises(BatchflowError) as e:
        if kind == "job":
            compute.delete_job(JOB)
        else:
            compute.delete_pool(POOL)

    assert str(e.value) == f"deleting {kind} '{name}' failed (the service's poller ended 'Failed')"


def test_a_lost_answer_to_a_delete_resent_by_the_sdk_waits_for_the_delete_under_way(
    make_bench: Callable[..., Bench],
) -> None:
    bench = make_bench(timings=Timings(pool_delete=1.0, job_delete=1.0))
    compute = bench.compute(client=production_client(bench.emu), sleep=RealSleep(), clock=time.monotonic)
    compute.create_pool(pool_spec(), None)
    compute.create_job(JobSpec(id=JOB), POOL, RUN)
    bench.emu.faults.lose_response_next("DELETE", "/jobs/{job}")
    bench.emu.faults.lose_response_next("DELETE", "/pools/{pool}")

    compute.delete_job(JOB)
    compute.delete_pool(POOL)

    # The first DELETE was done; the SDK's resend found the job (pool) being deleted.
    assert statuses(bench.emu, "DELETE", f"/jobs/{JOB}") == [0, 409]
    assert statuses(bench.emu, "DELETE", f"/pools/{POOL}") == [0, 409]
    with pytest.raises(ResourceNotFoundError):
        bench.client.get_job(JOB)
    with pytest.raises(ResourceNotFoundError):
        bench.client.get_pool(POOL)


def test_deletes_and_stop_turn_a_service_out_of_reach_into_a_batchflow_error_or_a_warning(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    # The runner's cleanup goes on after a BatchflowError (a job it cannot delete, then the pool).
    compute = bench.compute()
    compute.create_pool(pool_spec(), None)
    compute.create_job(JobSpec(id=JOB), POOL, RUN)
    bench.emu.faults.refuse_connection_next("*", "*", count=None)

    compute.stop()
    with pytest.raises(BatchflowError) as job:
        compute.delete_job(JOB)
    with pytest.raises(BatchflowError) as pool:
        compute.delete_pool(POOL)

    refused = "ServiceRequestError: connection refused (injected by the Batch emulator)"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"cannot terminate job TestJob: {refused}: POST /jobs/TestJob/terminate"
    ]
    assert str(job.value) == f"cannot delete job 'TestJob': {refused}: DELETE /jobs/TestJob"
    assert str(pool.value) == f"cannot delete pool 'TestPool': {refused}: DELETE /pools/TestPool"
