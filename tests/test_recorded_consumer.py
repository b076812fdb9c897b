"""Consumer suite: the real Batch service's recorded answers, fed to batchflow's own client code.

Each test hands batchflow (the submitter, AzureBatchCompute) a BatchClient whose requests are answered
by `RecordedService` with exchanges the live service gave (tests/recordings/, sources in each
fixture), through the real azure-batch SDK. batchflow must conclude what it would conclude on the
real service: tasks added, counts, node health, results, not found, exists, body too large.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from azure.batch import models as bm
from fakes import FakeClock
from recorded import Exchange, exchange
from recorded_service import NoRecordedAnswer, RecordedService

from batchflow.backends.azure.batch import AzureBatchCompute, Timeouts
from batchflow.backends.azure.submit import submit_tasks
from batchflow.errors import BatchflowError, ConfigurationError
from batchflow.model import ImageReference, JobSpec, PoolSpec, TaskCounts, TaskState

RUN = "20250101-120000-000"


def at(ex: Exchange, path: str, method: str | None = None) -> Exchange:
    """The same recorded answer, to another request (another pool's or job's id; for an error, another
    operation): for flows whose steps were recorded against different resources. Only the request's
    path (and method) change; the answer stays exactly as recorded."""
    request = dataclasses.replace(ex.request, path=path, method=method or ex.request.method)
    return dataclasses.replace(ex, request=request)


class Harness:
    def __init__(self, tmp_path: Path, *exchanges: Exchange) -> None:
        self.service = RecordedService(exchanges)
        self.client = self.service.client()
        self.clock = FakeClock(1000.0)
        self.notes: list[str] = []
        self.compute = AzureBatchCompute(
            self.client,
            None,
            tmp_path / "run",
            RUN,
            timeouts=Timeouts(pool_ready=10.0, pool_poll=5.0, delete=60.0, delete_poll=0.0),
            notify=self.notes.append,
            clock=self.clock,
            sleep=self.clock.sleep,
        )

    @property
    def sent(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path, _, _ in self.service.requests]


MakeHarness = Callable[..., Harness]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[MakeHarness]:
    made: list[Harness] = []

    def make(*exchanges: Exchange) -> Harness:
        h = Harness(tmp_path / str(len(made)), *exchanges)
        made.append(h)
        return h

    yield make
    for h in made:
        h.client.close()


def tasks(*ids: str) -> list[bm.BatchTaskCreateOptions]:
    return [bm.BatchTaskCreateOptions(id=i, command_line="/bin/sh -c 'true'") for i in ids]


# ---- Add Task Collection -------------------------------------------------------------------------


def test_recorded_success_answers_count_as_added(harness: MakeHarness) -> None:
    """The live service answers "Success" (capital S) where the spec and the SDK say "success":
    compared case-sensitively, as before, every task read as refused and the run stopped."""
    h = harness(exchange("add_task_collection_success"))
    report = submit_tasks(h.client, "batchJob1", tasks("Task1"), sleep=lambda s: None)
    assert (report.submitted, report.already_existed, report.requests, report.retries) == (1, 0, 1, 0)


def test_recorded_results_out_of_order_are_matched_by_task_id(harness: MakeHarness) -> None:
    recorded = exchange("add_task_collection_results_out_of_order")
    sent = [t["id"] for t in recorded.request.body["value"]]
    answered = [r["taskId"] for r in recorded.response.body["value"]]
    assert answered != sent and sorted(answered) == sorted(sent)
    h = harness(recorded)

    report = submit_tasks(h.client, "batchJob1", tasks(*sent), sleep=lambda s: None)

    assert (report.submitted, report.requests) == (len(sent), 1)


# ---- counts --------------------------------------------------------------------------------------


def test_recorded_task_counts(harness: MakeHarness) -> None:
    h = harness(exchange("task_counts_completed_mixed"), exchange("task_counts_new_job"))
    assert h.compute.task_counts("jssdkJob-Basicf761") == TaskCounts(
        active=0, running=0, succeeded=2, failed=3
    )
    assert h.compute.task_counts("BatchUser-testGetTaskCountssync") == TaskCounts()


# ---- node health ---------------------------------------------------------------------------------


def pool_spec(pool_id: str) -> PoolSpec:
    return PoolSpec(
        pool_id, "Standard_D1_v2", ImageReference("canonical", "ubuntu-24_04-lts", "server"), "agent"
    )


def test_recorded_node_counts_of_a_booting_pool_are_not_a_broken_pool(harness: MakeHarness) -> None:
    """/nodecounts lists every pool of the account (recorded with three); batchflow reads only its
    own pool's entry, with all 16 state counters and the service's total."""
    steady = exchange("pool_get_steady_zero_nodes")
    counts = exchange("pool_node_counts")
    pool_ids = [p["poolId"] for p in counts.response.body["value"]]
    booting, leaving = pool_ids[0], pool_ids[1]  # 4 dedicated nodes starting; 2 leaving the pool
    h = harness(
        *(at(steady, f"/pools/{booting}") for _ in range(3)),
        *(counts for _ in range(3)),
    )

    with pytest.raises(BatchflowError) as e:
        h.compute.wait_for_pool(booting)

    assert str(e.value) == f"pool {booting!r} had no usable node within 10 s (4 starting)"
    assert h.notes[-1] == "  nodes: 4 starting"

    h = harness(at(steady, f"/pools/{leaving}"), counts)
    h.compute.timeouts = Timeouts(pool_ready=0.0)
    with pytest.raises(BatchflowError) as e:
        h.compute.wait_for_pool(leaving)
    assert str(e.value) == f"pool {leaving!r} had no usable node within 0 s (2 leaving pool)"


# ---- results -------------------------------------------------------------------------------------


def test_recorded_task_list_active_tasks_are_no_results(harness: MakeHarness, tmp_path: Path) -> None:
    """A list answer holding active tasks (a reactivated one among them) yields no result: only
    completed tasks are results, whatever the list returns."""
    h = harness(exchange("job_create"), exchange("task_list_all"))
    h.compute.create_job(JobSpec("jssdkJob-Basicf761"), "pool", RUN)
    assert h.compute.task_results("jssdkJob-Basicf761") == []
    assert h.sent == [("POST", "/jobs"), ("GET", "/jobs/jssdkJob-Basicf761/tasks")]
    _, _, query, _ = h.service.requests[1]
    assert query["$filter"] == "state eq 'completed'"


def test_recorded_completed_task_reads_as_succeeded(harness: MakeHarness) -> None:
    done = exchange("task_get_completed_success")
    listing = dataclasses.replace(
        done,
        request=dataclasses.replace(done.request, path="/jobs/batch/tasks"),
        response=dataclasses.replace(done.response, body={"value": [done.response.body]}),
    )
    h = harness(exchange("job_create"), listing)
    h.compute.create_job(JobSpec("batch"), "filepool", RUN)

    [result] = h.compute.task_results("batch")

    assert (result.id, result.state, result.exit_code, result.attempts, result.failure) == (
        "test_task",
        TaskState.SUCCEEDED,
        0,
        1,
        None,
    )
    assert result.started_at is not None and result.ended_at is not None
    assert result.ended_at > result.started_at


def test_a_request_the_recordings_cannot_answer_fails_loudly(harness: MakeHarness) -> None:
    h = harness()
    with pytest.raises(NoRecordedAnswer):
        h.compute.task_counts("nothing-recorded")


def test_recorded_resize_errors_stop_the_wait_with_batchs_code_and_message(harness: MakeHarness) -> None:
    """A steady pool with no node and resizeErrors (recorded: ResizeStopped) will get none."""
    h = harness(exchange("pool_get_resize_errors"), exchange("pool_node_counts_single_pool_zero"))

    with pytest.raises(BatchflowError) as e:
        h.compute.wait_for_pool("scalepool")

    assert str(e.value) == (
        "pool 'scalepool' could not get any node: ResizeStopped: "
        "Desired number of low priority nodes could not be allocated due to a stop resize operation"
    )
    assert h.clock.sleeps == []  # the first poll says it


# ---- not found, exists, too large, refused ---------------------------------------------------------


def recorded_pool_spec(ex: Exchange) -> PoolSpec:
    """The pool as the workflow would ask for it, from a recorded pool's own answer (vmSize in the
    casing of the request, not the lowercased echo)."""
    body = ex.response.body
    image = body["virtualMachineConfiguration"]["imageReference"]
    return PoolSpec(
        body["id"],
        "STANDARD_D1_v2",
        ImageReference(image["publisher"], image["offer"], image["sku"]),
        body["virtualMachineConfiguration"]["nodeAgentSKUId"],
        dedicated_nodes=1,
    )


def test_recorded_not_found_then_created(harness: MakeHarness) -> None:
    got = exchange("pool_get_right_after_create")
    spec = recorded_pool_spec(got)
    h = harness(at(exchange("pool_not_found"), f"/pools/{spec.id}"), exchange("pool_create_zero_target"))

    assert h.compute.create_pool(spec, None) is True  # 404 PoolNotFound -> create -> 201

    assert h.sent == [("GET", f"/pools/{spec.id}"), ("POST", "/pools")]


def test_recorded_pool_exists_is_reused_when_it_fits(harness: MakeHarness) -> None:
    """409 PoolExists (another client created it meanwhile): the pool is read and reused, its vmSize
    compared without case (the service echoes it lowercased: standard_d1_v2 for STANDARD_D1_v2)."""
    got = exchange("pool_get_right_after_create")
    spec = recorded_pool_spec(got)
    h = harness(
        at(exchange("pool_not_found"), f"/pools/{spec.id}"),
        exchange("pool_exists"),
        got,
    )

    assert h.compute.create_pool(spec, None) is False

    assert h.notes == [f"  reusing existing pool [{spec.id}] (not created by batchflow)"]


def test_recorded_job_exists_stops_the_run_naming_the_job(harness: MakeHarness) -> None:
    h = harness(exchange("job_exists"), at(exchange("job_get_after_create"), "/jobs/batchJob1"))

    with pytest.raises(BatchflowError) as e:
        h.compute.create_job(JobSpec("batchJob1"), "pool", RUN)

    assert str(e.value) == (
        "job 'batchJob1' already exists; Batch job ids are unique in an account: "
        "delete it or change job.id (JobExists)"
    )


def test_recorded_body_too_large_is_split_and_a_single_task_too_large_is_refused(
    harness: MakeHarness,
) -> None:
    too_large = exchange("request_body_too_large")
    h = harness(*(too_large for _ in range(3)))
    job = "BatchUser-failIfPoisonTaskTooLarge-sync"

    with pytest.raises(BatchflowError) as e:
        submit_tasks(h.client, job, tasks("a", "b"), sleep=lambda s: None)

    assert str(e.value).splitlines() == [
        f"Azure Batch refused 2 of 2 tasks of job {job!r}:",
        "  a: RequestBodyTooLarge: The request body is too large and exceeds the maximum permissible limit.",
        "  b: RequestBodyTooLarge: The request body is too large and exceeds the maximum permissible limit.",
    ]
    assert len(h.service.requests) == 3  # the pair, then each half alone


def test_recorded_authentication_failure_is_a_configuration_error(harness: MakeHarness) -> None:
    """403 AuthenticationFailed (not 401: azure-batch raises a plain HttpResponseError for it)."""
    h = harness(at(exchange("auth_failed_unknown_account"), "/pools", "GET"))

    with pytest.raises(ConfigurationError) as e:
        h.compute.check_access("job")

    assert str(e.value).startswith(
        "Azure Batch at the Batch account refused the credentials: 403 AuthenticationFailed: "
        "Server failed to authenticate the request."
    )
    assert "RequestId" not in str(e.value)
