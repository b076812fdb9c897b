"""AzureBatchCompute with auto pools (azure.pool_lifetime: job, the default for a pool batchflow
creates): the pool goes with the job, Batch makes and deletes it. Driven through the real azure-batch
SDK against the Batch service emulator, batchflow's own waits on a fake clock (tests/test_azure_batch.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from azure.batch import models as bm
from conftest import WriteWorkflow
from test_azure_batch import APT_ERROR, FAST, JOB, POOL, RUN, Bench, make_bench, metadata, pool_spec, task

from batchflow.backends.azure import settings_of
from batchflow.backends.azure.batch import Timeouts, default_job_wall_clock
from batchflow.cli import main
from batchflow.errors import BatchflowError
from batchflow.model import JobSpec, StartTaskSpec
from batchflow.spec import load_workflow

pytest_plugins = ["azurite"]
__all__ = ["make_bench"]  # the fixture, shared with tests/test_azure_batch.py

AUTO_ID = re.compile(rf"{POOL}_[0-9A-F]{{8}}(-[0-9A-F]{{4}}){{3}}-[0-9A-F]{{12}}")


@pytest.fixture
def bench(make_bench: Callable[..., Bench]) -> Bench:
    return make_bench()


def auto_pool_of(bench: Bench) -> str:
    info = bench.client.get_job(JOB).execution_info
    assert info is not None and info.pool_id is not None
    return info.pool_id


def test_the_pool_is_made_with_the_job_and_waited_for_there(bench: Bench) -> None:
    compute = bench.compute(auto_pool=True, job_wall_clock=4800.0)

    assert compute.create_pool(pool_spec(dedicated=2), None) is True  # this run makes it
    compute.wait_for_pool(POOL)  # nothing to wait for before the job
    assert bench.emu.count("POST", "/pools") == 0
    assert list(bench.client.list_pools()) == []

    compute.create_job(JobSpec(JOB), POOL, RUN)

    pool_id = auto_pool_of(bench)
    assert AUTO_ID.fullmatch(pool_id), pool_id
    assert [n.state for n in bench.client.list_nodes(pool_id)].count("idle") >= 1  # waited for a node
    assert metadata(bench.client.get_pool(pool_id)) == [
        ("batchflow-run-id", RUN),
        ("batchflow-created-by", "batchflow"),
    ]
    job = bench.client.get_job(JOB)
    assert job.constraints is not None and job.constraints.max_wall_clock_time is not None
    assert job.constraints.max_wall_clock_time.total_seconds() == 4800.0
    assert bench.notes[0] == (
        f"  pool [{POOL}] is made with the job, as its auto pool: Batch deletes it when the job ends"
        " (azure.pool_lifetime: job)"
    )
    assert f"  auto pool [{pool_id}] made with job [{JOB}]; Batch deletes it when the job ends" in bench.notes
    assert f"Waiting for pool [{pool_id}] to have a node ready..." in bench.notes

    compute.add_tasks(JOB, [task("t1", "/bin/sh -c 'echo $AZ_BATCH_POOL_ID'")])
    compute.seal_job(JOB)
    bench.emu.wait_for(lambda: compute.task_counts(JOB).completed == 1, timeout=60, what="the task")
    [result] = compute.task_results(JOB)
    assert result.exit_code == 0
    # The job completed (terminatejob): Batch deletes its auto pool without being asked.
    bench.emu.wait_for(lambda: list(bench.client.list_pools()) == [], timeout=60, what="the auto pool gone")

    compute.delete_job(JOB)
    compute.delete_pool(POOL)  # the workflow's pool id means the auto pool, already gone: nothing to do
    assert bench.emu.count("DELETE", f"/pools/{pool_id}") == 1
    assert list(bench.client.list_jobs()) == []


def test_deleting_the_job_deletes_the_auto_pool_and_delete_pool_waits_for_it(bench: Bench) -> None:
    compute = bench.compute(auto_pool=True)
    compute.create_pool(pool_spec(), None)
    compute.create_job(JobSpec(JOB), POOL, RUN)
    pool_id = auto_pool_of(bench)

    compute.delete_job(JOB)
    compute.delete_pool(POOL)

    assert [p.id for p in bench.client.list_pools()] == []
    assert [
        r.status for r in bench.emu.requests if r.method == "DELETE" and r.path == f"/pools/{pool_id}"
    ] in (
        [404],  # Batch had deleted it with the job
        [409],  # still being deleted: waited for
        [202],
    )


def test_without_a_job_there_is_no_auto_pool_to_delete(bench: Bench) -> None:
    compute = bench.compute(auto_pool=True)
    compute.create_pool(pool_spec(), None)

    compute.delete_pool(POOL)  # e.g. the run stopped before its job was made

    assert bench.emu.count("DELETE", "*") == 0


def test_an_existing_pool_is_still_reused_and_the_job_runs_on_it(bench: Bench) -> None:
    bench.compute("20240101-000000-000").create_pool(pool_spec(), None)  # another run's named pool
    compute = bench.compute(auto_pool=True)

    assert compute.create_pool(pool_spec(), None) is False
    compute.wait_for_pool(POOL)
    compute.create_job(JobSpec(JOB), POOL, RUN)

    job = bench.client.get_job(JOB)
    assert job.pool_info is not None and job.pool_info.pool_id == POOL
    assert job.pool_info.auto_pool_specification is None
    assert any("reusing existing pool [TestPool]" in n for n in bench.notes)


def test_a_start_task_failing_on_the_auto_pool_stops_the_run_and_its_job_is_deleted(bench: Bench) -> None:
    bench.emu.fail_start_task(POOL, exit_code=100, stderr=APT_ERROR)  # every auto pool made with this prefix
    compute = bench.compute(auto_pool=True)
    compute.create_pool(pool_spec(dedicated=2), StartTaskSpec(command="apt-get install -y ffmpeg"))

    with pytest.raises(BatchflowError) as failed:
        compute.create_job(JobSpec(JOB), POOL, RUN)

    pool_id = auto_pool_of(bench)
    assert str(failed.value).startswith(f"the start task failed on all 2 node(s) of pool '{pool_id}'")
    assert APT_ERROR.strip() in str(failed.value)
    compute.delete_job(JOB)  # the run's cleanup: the job is this run's though create_job raised
    compute.delete_pool(POOL)
    assert list(bench.client.list_jobs()) == [] and list(bench.client.list_pools()) == []


def test_an_auto_pool_batch_could_not_make_is_explained(bench: Bench) -> None:
    bench.emu.fail_auto_pool("PoolQuotaReached", "The specified account has reached its pool quota.")
    compute = bench.compute(auto_pool=True)
    compute.create_pool(pool_spec(), None)

    with pytest.raises(BatchflowError) as failed:
        compute.create_job(JobSpec(JOB), POOL, RUN)

    assert str(failed.value) == (
        f"Batch could not create the auto pool of job {JOB!r}: PoolQuotaReached: "
        "The specified account has reached its pool quota."
    )
    compute.delete_job(JOB)
    assert list(bench.client.list_jobs()) == []


def test_stopping_the_run_terminates_the_job_and_batch_deletes_the_auto_pool(bench: Bench) -> None:
    compute = bench.compute(auto_pool=True)
    compute.create_pool(pool_spec(), None)
    compute.create_job(JobSpec(JOB), POOL, RUN)
    compute.add_tasks(JOB, [task("long", "/bin/sh -c 'exec sleep 60'")])
    bench.emu.wait_for(lambda: compute.task_counts(JOB).running == 1, timeout=60, what="the task running")

    compute.stop()  # Ctrl-C: nothing deleted yet

    bench.emu.wait_for(lambda: list(bench.client.list_pools()) == [], timeout=60, what="the auto pool gone")
    assert bench.client.get_job(JOB).state == bm.BatchJobState.COMPLETED


def test_the_default_job_wall_clock_outlasts_every_wait_of_a_live_run() -> None:
    timeouts = Timeouts(pool_ready=1800.0, submit=600.0)

    assert default_job_wall_clock(timeouts, 1800.0) == 1800.0 + 600.0 + 1800.0 + 600.0  # 1 h 20 min
    assert FAST.pool_ready + FAST.submit + 60.0 < default_job_wall_clock(FAST, 60.0)


# ---- the setting ---------------------------------------------------------------------------------


def test_pool_lifetime_is_job_unless_the_workflow_says_run(write_workflow: WriteWorkflow) -> None:
    assert settings_of(load_workflow(write_workflow("true"))).pool_lifetime == "job"
    wf = write_workflow("true", extra={"azure": {"pool_lifetime": "run"}})
    assert settings_of(load_workflow(wf)).pool_lifetime == "run"


def test_keeping_a_pool_batch_deletes_with_its_job_is_refused_before_anything_is_made(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow("true", extra={"cleanup": {"pool": "keep"}})
    line = next(i for i, t in enumerate(wf.read_text().splitlines(), 1) if t.startswith("  pool: keep"))

    assert main(["validate", str(wf), "--backend", "azure"]) == 2

    assert capsys.readouterr().err.splitlines() == [
        f"{wf}:{line}:9: cleanup.pool: a pool Batch deletes with its job cannot be kept"
        " (azure.pool_lifetime: job, the default): set azure.pool_lifetime: run to keep the pool for the"
        " next run",
        "1 problem; nothing was created.",
    ]
    kept = write_workflow("true", extra={"cleanup": {"pool": "keep"}, "azure": {"pool_lifetime": "run"}})
    assert main(["validate", str(kept), "--backend", "azure"]) == 0
    assert main(["validate", str(wf)]) == 0  # the local backend has no such pool
    capsys.readouterr()
