"""The bounded task submitter against the Batch emulator, through the real azure-batch SDK.

Waits go through a fake clock: back-offs and Retry-After are recorded and advance it, nothing sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.batch._model_base import SdkJSONEncoder
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceNotFoundError
from batch_emulator import DEFAULT_KEY, MESSAGES, BatchEmulator
from batch_emulator.transport import EmulatorTransport
from batch_emulator.wire import Request, Response, json_response
from fakes import FakeClock

from batchflow.backends.azure.batch_build import job_request, task_request
from batchflow.backends.azure.submit import SubmitReport, submit_tasks
from batchflow.errors import BatchflowError
from batchflow.model import JobSpec, OutputCondition, RenderedTask, ResolvedFile, TaskInput, TaskOutput

JOB = "SubmitJob"
COLLECTION = "/jobs/{job}/addtaskcollection"
OUT_URL = "https://acct.blob.core.windows.net/output?sv=2026&sp=cw&sig=abc"


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[BatchEmulator]:
    # The job's pool does not exist, so its tasks stay active: what was added is what the job holds.
    with BatchEmulator(workdir=tmp_path, instant=True) as emulator:
        emulator.client().create_job(job_request(JobSpec(id=JOB), "NoSuchPoolYet", "run-1"))
        yield emulator
        assert emulator.internal_errors == []


@pytest.fixture
def client(emu: BatchEmulator) -> BatchClient:
    return emu.client(retry_total=0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_tasks(count: int, *, env_bytes: int = 0, prefix: str = "task-") -> list[bm.BatchTaskCreateOptions]:
    """Realistic task bodies (the builder's), `env_bytes` of padding in an environment variable."""
    tasks = []
    for i in range(count):
        name = f"input {i:05d}.mp4"
        rendered = RenderedTask(
            id=f"{prefix}{i:05d}",
            index=i,
            command=f"ffmpeg -i '{name}' ./'{i:05d}.mp3'",
            inputs=(TaskInput("input", name, name),),
            outputs=(TaskOutput(f"{i:05d}.mp3", "output", f"runs/r1/{i:05d}.mp3", OutputCondition.SUCCESS),),
            environment={"PAD": "x" * env_bytes} if env_bytes else {},
            max_retries=1,
            max_wall_clock=600.0,
        )
        url = f"https://acct.blob.core.windows.net/input/input%20{i:05d}.mp4?sig=r"
        tasks.append(task_request(rendered, [ResolvedFile(url, name)], {"output": OUT_URL}, None, ""))
    return tasks


def job_task_ids(client: BatchClient, job_id: str = JOB) -> list[str]:
    """Every task id the service holds for the job, through the real List Tasks API."""
    return sorted(t.id for t in client.list_tasks(job_id, select=["id"]))


def ids(tasks: list[bm.BatchTaskCreateOptions]) -> list[str]:
    return sorted(t.id for t in tasks)


def collection_statuses(emu: BatchEmulator) -> list[int]:
    return [r.status for r in emu.requests if r.path.endswith("/addtaskcollection")]


# ---- chunking -------------------------------------------------------------------------------


def test_250_tasks_take_3_requests(emu: BatchEmulator, client: BatchClient) -> None:
    tasks = make_tasks(250)

    report = submit_tasks(client, JOB, tasks)

    assert report == SubmitReport(submitted=250, already_existed=0, requests=3, split_413=0, retries=0)
    assert collection_statuses(emu) == [200, 200, 200]
    assert job_task_ids(client) == ids(tasks)


def test_10000_tasks_take_100_requests_and_each_is_added_once(
    emu: BatchEmulator, client: BatchClient
) -> None:
    tasks = make_tasks(10_000)

    report = submit_tasks(client, JOB, tasks, concurrency=16)

    assert report == SubmitReport(submitted=10_000, already_existed=0, requests=100, split_413=0, retries=0)
    assert emu.count("POST", COLLECTION) == 100
    assert job_task_ids(client) == ids(tasks)


def test_large_tasks_are_chunked_under_the_body_limit(emu: BatchEmulator, client: BatchClient) -> None:
    tasks = make_tasks(100, env_bytes=15_000)  # about 1.5 MB in all

    report = submit_tasks(client, JOB, tasks)

    assert report == SubmitReport(submitted=100, already_existed=0, requests=2, split_413=0, retries=0)
    assert job_task_ids(client) == ids(tasks)


def test_a_chunk_the_service_finds_too_large_is_halved(emu: BatchEmulator, client: BatchClient) -> None:
    tasks = make_tasks(100, env_bytes=15_000)

    # A client-side limit above the service's 1 MiB: the one chunk of ~1.5 MB gets 413.
    report = submit_tasks(client, JOB, tasks, max_body_bytes=10_000_000)

    assert report == SubmitReport(submitted=100, already_existed=0, requests=3, split_413=1, retries=0)
    assert collection_statuses(emu) == [413, 200, 200]
    assert job_task_ids(client) == ids(tasks)


def test_an_injected_413_on_one_task_refuses_that_task(emu: BatchEmulator, client: BatchClient) -> None:
    tasks = make_tasks(3)
    emu.faults.fail_next("POST", COLLECTION, status=413, count=3)

    with pytest.raises(BatchflowError) as e:
        submit_tasks(client, JOB, tasks, concurrency=1)

    # 3 tasks -> 413 -> [1] [2] -> the single task is refused; [2] -> 413 -> [1] [1] -> both added.
    assert str(e.value) == (
        "Azure Batch refused 1 of 3 tasks of job 'SubmitJob':\n"
        f"  task-00000: RequestBodyTooLarge: {MESSAGES['RequestBodyTooLarge']}"
    )
    assert collection_statuses(emu) == [413, 413, 413, 200, 200]
    assert job_task_ids(client) == ["task-00001", "task-00002"]


def test_a_task_too_large_alone_is_never_sent(emu: BatchEmulator, client: BatchClient) -> None:
    tasks = [*make_tasks(2), *make_tasks(1, env_bytes=1_100_000, prefix="huge-")]

    with pytest.raises(BatchflowError) as e:
        submit_tasks(client, JOB, tasks)

    body = json.dumps(bm.BatchTaskGroup(task_values=[tasks[2]]), cls=SdkJSONEncoder, exclude_readonly=True)
    size = len(body.encode())
    assert size > 1_000_000
    assert str(e.value) == (
        "Azure Batch refused 1 of 3 tasks of job 'SubmitJob':\n"
        f"  huge-00000: RequestBodyTooLarge: its request body would be {size:,} bytes, over 1,000,000"
    )
    assert collection_statuses(emu) == [200]
    assert job_task_ids(client) == ["task-00000", "task-00001"]


# ---- transient failures -------------------------------------------------------------------------


def test_injected_503s_are_retried_with_growing_backoff(
    emu: BatchEmulator, client: BatchClient, clock: FakeClock
) -> None:
    tasks = make_tasks(250)
    emu.faults.fail_next("POST", COLLECTION, status=503, count=3)

    report = submit_tasks(
        client, JOB, tasks, concurrency=1, clock=clock, sleep=clock.sleep, jitter=lambda: 0.0
    )

    assert report == SubmitReport(submitted=250, already_existed=0, requests=6, split_413=0, retries=3)
    assert collection_statuses(emu) == [503, 503, 503, 200, 200, 200]
    assert clock.sleeps == [0.25, 0.5, 1.0]  # half of 0.5, 1, 2 s: the jitter adds up to the other half
    assert job_task_ids(client) == ids(tasks)


def test_jitter_spreads_the_backoff_up_to_its_ceiling(
    emu: BatchEmulator, client: BatchClient, clock: FakeClock
) -> None:
    emu.faults.fail_next("POST", COLLECTION, status=500, count=2)

    submit_tasks(client, JOB, make_tasks(1), clock=clock, sleep=clock.sleep, jitter=lambda: 0.999)

    assert clock.sleeps == [pytest.approx(0.49975), pytest.approx(0.9995)]


def test_429_retry_after_is_honoured(emu: BatchEmulator, client: BatchClient, clock: FakeClock) -> None:
    tasks = make_tasks(50)
    emu.faults.retry_after_next("POST", COLLECTION, seconds=7)

    report = submit_tasks(client, JOB, tasks, clock=clock, sleep=clock.sleep, jitter=lambda: 0.0)

    assert report == SubmitReport(submitted=50, already_existed=0, requests=2, split_413=0, retries=1)
    assert collection_statuses(emu) == [429, 200]
    assert clock.sleeps == [7.0]
    assert job_task_ids(client) == ids(tasks)


def test_a_lost_response_is_resent_and_its_tasks_count_as_already_existing(
    emu: BatchEmulator, client: BatchClient, clock: FakeClock
) -> None:
    tasks = make_tasks(250)
    emu.faults.lose_response_next("POST", COLLECTION)

    report = submit_tasks(client, JOB, tasks, concurrency=1, clock=clock, sleep=clock.sleep)

    # The first chunk was added, its answer lost: resent with the same ids, all 100 are TaskExists.
    assert report == SubmitReport(submitted=150, already_existed=100, requests=4, split_413=0, retries=1)
    assert collection_statuses(emu) == [0, 200, 200, 200]
    assert job_task_ids(client) == ids(tasks)


def test_a_refused_connection_is_resent(emu: BatchEmulator, client: BatchClient, clock: FakeClock) -> None:
    tasks = make_tasks(100)
    emu.faults.refuse_connection_next("POST", COLLECTION)

    report = submit_tasks(client, JOB, tasks, clock=clock, sleep=clock.sleep)

    assert report == SubmitReport(submitted=100, already_existed=0, requests=2, split_413=0, retries=1)
    assert job_task_ids(client) == ids(tasks)


def test_parallel_submission_with_every_kind_of_fault_adds_each_task_once(
    emu: BatchEmulator, client: BatchClient, clock: FakeClock
) -> None:
    tasks = make_tasks(3_000)
    emu.faults.fail_next("POST", COLLECTION, status=503, count=5, after=2)
    emu.faults.lose_response_next("POST", COLLECTION, count=4, after=7)
    emu.faults.refuse_connection_next("POST", COLLECTION, count=3, after=11)
    emu.faults.retry_after_next("POST", COLLECTION, seconds=2, count=2, after=13)

    report = submit_tasks(client, JOB, tasks, concurrency=8, clock=clock, sleep=clock.sleep)

    assert report.submitted + report.already_existed == 3_000
    # Each lost answer is a chunk of 100 added but unconfirmed (4, unless a resend's answer is lost too).
    assert report.already_existed in (100, 200, 300, 400)
    assert report.requests == 30 + 5 + 4 + 3 + 2
    assert report.retries == 14
    assert emu.count("POST", COLLECTION) == report.requests
    assert job_task_ids(client) == ids(tasks)


def test_a_permanent_503_ends_with_a_clear_error_before_the_deadline(
    emu: BatchEmulator, clock: FakeClock
) -> None:
    # A client with the SDK's default retry policy: the submitter still owns every retry.
    client = emu.client()
    emu.faults.fail_next("POST", COLLECTION, status=503, count=None)

    with pytest.raises(BatchflowError) as e:
        submit_tasks(client, JOB, make_tasks(250), deadline=60.0, clock=clock, sleep=clock.sleep)

    assert str(e.value) == (
        "250 of 250 tasks were not added to job 'SubmitJob' within 60 s;"
        f" last error: 503 ServerBusy: {MESSAGES['ServerBusy']}"
    )
    assert clock.now <= 60.0
    assert emu.sleeps == []  # the SDK's own retry policy never ran
    statuses = collection_statuses(emu)
    assert set(statuses) == {503}
    assert len(statuses) == len(clock.sleeps) + 3  # every wait is followed by a request, plus 3 first tries
    assert job_task_ids(client) == []


def test_a_retry_after_past_the_deadline_gives_up_at_once(
    emu: BatchEmulator, client: BatchClient, clock: FakeClock
) -> None:
    emu.faults.retry_after_next("POST", COLLECTION, seconds=120)

    with pytest.raises(BatchflowError) as e:
        submit_tasks(client, JOB, make_tasks(10), deadline=60.0, clock=clock, sleep=clock.sleep)

    assert str(e.value) == (
        "10 of 10 tasks were not added to job 'SubmitJob' within 60 s;"
        f" last error: 429 TooManyRequests: {MESSAGES['TooManyRequests']}"
    )
    assert clock.sleeps == []
    assert emu.count("POST", COLLECTION) == 1


# ---- refused tasks and other errors ------------------------------------------------------------


def test_tasks_the_service_refuses_are_listed_and_the_others_added(
    emu: BatchEmulator, client: BatchClient
) -> None:
    good = make_tasks(5)
    bad_id = bm.BatchTaskCreateOptions(id="bad id!", command_line="/bin/sh -c 'true'")
    no_command = bm.BatchTaskCreateOptions(id="no-command", command_line="   ")

    with pytest.raises(BatchflowError) as e:
        submit_tasks(client, JOB, [*good[:2], bad_id, *good[2:], no_command])

    assert str(e.value) == (
        "Azure Batch refused 2 of 7 tasks of job 'SubmitJob':\n"
        "  bad id!: InvalidPropertyValue: The value provided for one of the properties in the request body is"
        " invalid. (PropertyName=id; PropertyValue=bad id!; Reason=The task id can contain any combination of"
        " alphanumeric characters including hyphens and underscores, and cannot contain more than 64"
        " characters.)\n"
        "  no-command: MissingRequiredProperty: A required property was not specified in the request body."
        " (PropertyName=commandLine)"
    )
    assert job_task_ids(client) == ids(good)


def test_tasks_added_by_an_earlier_run_count_as_already_existing(
    emu: BatchEmulator, client: BatchClient
) -> None:
    tasks = make_tasks(150)
    submit_tasks(client, JOB, tasks[:60])

    report = submit_tasks(client, JOB, tasks)

    assert report == SubmitReport(submitted=90, already_existed=60, requests=2, split_413=0, retries=0)
    assert job_task_ids(client) == ids(tasks)


def test_an_error_retrying_cannot_fix_is_raised_as_is(emu: BatchEmulator, client: BatchClient) -> None:
    with pytest.raises(ResourceNotFoundError) as e:
        submit_tasks(client, "NoSuchJob", make_tasks(3))

    assert e.value.error is not None
    assert e.value.error.code == "JobNotFound"
    assert emu.count("POST", COLLECTION) == 1


def test_ids_that_differ_only_in_case_are_a_bug(client: BatchClient) -> None:
    tasks = [*make_tasks(1, prefix="Task-"), *make_tasks(1, prefix="task-")]

    with pytest.raises(
        ValueError, match="task ids 'Task-00000' and 'task-00000' are the same to Batch \\(ids ignore case\\)"
    ):
        submit_tasks(client, JOB, tasks)


def test_no_tasks_no_requests(emu: BatchEmulator, client: BatchClient) -> None:
    assert submit_tasks(client, JOB, []) == SubmitReport(0, 0, 0, 0, 0)
    assert emu.count("POST", COLLECTION) == 0


class PerTaskStatuses:
    """A stand-in service answering Add Task Collection with the per-task statuses a test scripts (each
    task's list is used up in turn, then "Success"), the way the live service shapes its answers
    (tests/recordings/tasks.json: 200 with one result per task, in any order)."""

    latency = 0.0

    def __init__(self, statuses: dict[str, list[str]]) -> None:
        self.statuses = statuses
        self.bodies: list[list[str]] = []

    def record_sleep(self, seconds: float) -> float:
        return 0.0

    def dispatch(self, request: Request) -> Response:
        sent = [t["id"] for t in json.loads(request.body)["value"]]
        self.bodies.append(sent)
        results = []
        for task_id in reversed(sent):
            status = self.statuses.get(task_id, []).pop(0) if self.statuses.get(task_id) else "Success"
            result: dict[str, object] = {"status": status, "taskId": task_id}
            if status.casefold() != "success":
                result["error"] = {"code": "ServerBusy", "message": {"lang": "en-US", "value": "busy"}}
            results.append(result)
        return json_response(200, {"value": results})


def test_per_task_server_errors_are_resent_and_an_unknown_status_is_not_counted_as_added() -> None:
    service = PerTaskStatuses({"a": ["servererror"], "b": ["ServerError", "ServerError"], "c": ["Pending"]})
    client = BatchClient(
        "https://x.eastus.batch.azure.com",
        AzureNamedKeyCredential("x", DEFAULT_KEY),
        transport=EmulatorTransport(service),
        retry_total=0,
    )

    with pytest.raises(BatchflowError) as e:
        submit_tasks(
            client,
            JOB,
            [bm.BatchTaskCreateOptions(id=i, command_line="true") for i in "abcd"],
            sleep=lambda s: None,
        )

    assert str(e.value).splitlines() == [
        f"Azure Batch refused 1 of 4 tasks of job {JOB!r}:",
        "  c: UnknownStatus: the service answered status 'Pending'",
    ]
    assert service.bodies == [["a", "b", "c", "d"], ["a", "b"], ["b"]]  # server errors resent, in any casing
