"""batch_rest sends the requests azure-batch's own operations send, and raises what they raise.

Each case sends one request both ways through a real BatchClient (shared key, the SDK's pipeline)
whose transport records what it is given and answers from a script: the SDK operation
(`create_task_collection`, `list_tasks`) and batchflow's (batch_rest). Method, URL, headers and body
bytes must be the same; only the headers that differ from one request to the next (request id,
date, the signature over the date) are left out. Then the same answers, errors included, must read
the same: task results as the SDK's models would give them, errors as the SDK's exceptions.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from batch_bodies import rendered_task
from batch_emulator import DEFAULT_KEY
from batch_emulator.transport import EmulatorTransport
from batch_emulator.wire import Request, Response, json_response

from batchflow.backends.azure import batch_rest, results
from batchflow.backends.azure.batch_build import task_body, task_request, wire
from batchflow.model import OutputCondition, ResolvedFile, TaskOutput, TaskState

ENDPOINT = "https://acct.westeurope.batch.azure.com"
PER_REQUEST = frozenset({"x-ms-client-request-id", "client-request-id", "ocp-date", "date", "authorization"})
JOB_IDS = ["SubmitJob", "job_with-dashes_01", "a job/with ünïcode?&=#%"]
Answer = Callable[[Request], Response]


class Recorder:
    """The transport's service: records each request, answers with `answer`."""

    latency = 0.0

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.sent: list[Request] = []

    def dispatch(self, request: Request) -> Response:
        self.sent.append(request)
        return self.answer(request)

    def record_sleep(self, seconds: float) -> float:
        return 0.0

    def client(self) -> BatchClient:
        credential = AzureNamedKeyCredential("acct", DEFAULT_KEY)
        return BatchClient(ENDPOINT, credential, transport=EmulatorTransport(self), retry_total=0)


def comparable(request: Request) -> tuple[str, str, dict[str, str], bytes]:
    headers = {k.lower(): v for k, v in request.headers.items() if k.lower() not in PER_REQUEST}
    return request.method, request.url, headers, request.body


def both_ways(
    answer: Answer, sdk: Callable[[BatchClient], object], ours: Callable[[BatchClient], object]
) -> None:
    sdk_side, our_side = Recorder(answer), Recorder(answer)
    sdk(sdk_side.client())
    ours(our_side.client())
    assert [comparable(r) for r in our_side.sent] == [comparable(r) for r in sdk_side.sent]
    assert our_side.sent, "nothing was sent"


def some_tasks() -> list[bm.BatchTaskCreateOptions]:
    url = "https://acct.blob.core.windows.net/output?sv=2026&sp=cw&sig=abc"
    tasks = []
    for i in range(5):
        outputs = (TaskOutput(f"clip {i}.mp3", "output", f"runs/r/clip {i}.mp3", OutputCondition.SUCCESS),)
        task = rendered_task(
            id=f"clip-{i}", command=f"echo 'é {i}'", outputs=outputs, environment={"N": str(i)} if i else {}
        )
        inputs = [
            ResolvedFile(f"https://acct.blob.core.windows.net/in/clip%20{i}.mp4?sig=r", f"clip {i}.mp4")
        ]
        tasks.append(task_request(task, inputs, {"output": url}, url if i % 2 else None, "logs/r/"))
    return tasks


def added(request: Request) -> Response:
    values = json.loads(request.body)["value"]
    return json_response(200, {"value": [{"status": "Success", "taskId": t["id"]} for t in values]})


# ---- the requests -------------------------------------------------------------------------------


@pytest.mark.parametrize("job_id", JOB_IDS)
def test_add_task_collection_sends_what_the_sdk_sends(job_id: str) -> None:
    tasks = some_tasks()
    body = batch_rest.task_group_body([json.dumps(wire(t)) for t in tasks])

    both_ways(
        added,
        lambda c: c.create_task_collection(job_id, bm.BatchTaskGroup(task_values=tasks), retry_total=0),
        lambda c: batch_rest.send(c, batch_rest.add_task_collection_request(job_id, body), retry_total=0),
    )


def test_the_group_body_is_the_sdks_bytes_and_task_body_its_wire() -> None:
    tasks = some_tasks()
    sdk_body = Recorder(added)
    sdk_body.client().create_task_collection("j", bm.BatchTaskGroup(task_values=tasks))
    task = rendered_task(id="t", environment={"Q": 'it\'s "so" ü'})

    assert batch_rest.task_group_body([json.dumps(wire(t)) for t in tasks]).encode() == sdk_body.sent[0].body
    assert batch_rest.task_group_body([]) == json.dumps({"value": []})
    assert json.dumps(task_body(task, [], {}, None, "")) == json.dumps(
        wire(task_request(task, [], {}, None, ""))
    )


NEXT_LINKS = [
    # as the live service writes it (tests/recordings, pool_list_maxresults_next_link)
    "{base}/jobs/{job}/tasks?maxresults=1000&api-version=2025-06-01&$skiptoken=Sanitized",
    # as the emulator writes it
    "{base}/jobs/{job}/tasks?api-version=2025-06-01&maxresults=1000&$skiptoken=eyJhIjogMX0%3D",
    # with the query repeated, quoted, and an api-version of another spelling
    "{base}/jobs/{job}/tasks?$filter=state%20eq%20%27completed%27&$select=id,state&API-Version=2020-01-01&$skiptoken=a%2Fb",
]


@pytest.mark.parametrize("link", NEXT_LINKS)
@pytest.mark.parametrize("job_id", JOB_IDS[::2])
def test_list_tasks_pages_are_asked_for_as_the_sdk_asks(job_id: str, link: str) -> None:
    next_link = link.format(base=ENDPOINT, job=quote(job_id, safe=""))

    def pages(request: Request) -> Response:  # two pages: every next link has a $skiptoken
        first = "skiptoken" not in request.url.lower()
        body: dict[str, Any] = {"value": [{"id": "a" if first else "b", "state": "completed"}]}
        if first:
            body["odata.nextLink"] = next_link
        return json_response(200, body)

    where, select = "state eq 'completed'", ["id", "state", "executionInfo"]
    both_ways(
        pages,
        lambda c: list(c.list_tasks(job_id, filter=where, select=select)),
        lambda c: [
            batch_rest.send(c, batch_rest.list_tasks_request(job_id, filter=where, select=select)),
            batch_rest.send(c, batch_rest.next_page_request(next_link)),
        ],
    )


# ---- the answers --------------------------------------------------------------------------------


def error(status: int, code: str, values: list[dict[str, str]] | None = None) -> Answer:
    body: dict[str, Any] = {
        "code": code,
        "message": {"lang": "en-US", "value": f"{code} here.\nRequestId:1\nTime:2"},
    }
    if values:
        body["values"] = values
    return lambda request: json_response(status, body)


ERRORS: list[Answer] = [
    error(404, "JobNotFound"),
    error(409, "JobCompleted"),
    error(401, "AuthenticationFailed"),
    error(413, "RequestBodyTooLarge", [{"key": "MaxLimit", "value": "1048576"}]),
    error(503, "ServerBusy"),
    lambda request: Response(500, {"Content-Type": "text/html"}, b"<html>a proxy said no</html>"),
    lambda request: Response(502, {}, b""),
]


def raised(send: Callable[[], object]) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as e:
        send()
    return e.value


def reading(e: HttpResponseError) -> tuple[object, ...]:
    model = e.model
    message = model.message.value if isinstance(model, bm.BatchError) and model.message else None
    values = (
        [(d.key, d.value) for d in model.error_values or []] if isinstance(model, bm.BatchError) else None
    )
    return type(e), e.status_code, e.error.code if e.error else None, type(model), message, values


@pytest.mark.parametrize("answer", ERRORS)
def test_errors_raise_what_the_sdk_raises(answer: Answer) -> None:
    tasks = some_tasks()[:1]
    sdk = raised(
        lambda: Recorder(answer).client().create_task_collection("j", bm.BatchTaskGroup(task_values=tasks))
    )
    body = batch_rest.task_group_body([json.dumps(wire(tasks[0]))])
    client = Recorder(answer).client()
    ours = raised(lambda: batch_rest.send(client, batch_rest.add_task_collection_request("j", body)))
    listing = raised(
        lambda: batch_rest.send(
            client, batch_rest.list_tasks_request("j", filter="state eq 'completed'", select=["id"])
        )
    )

    assert reading(ours) == reading(sdk)
    assert reading(listing) == reading(sdk)


TIMES = [
    "2025-06-01T12:00:00.1234567Z",  # the service: seven digits
    "2025-06-01T12:00:00.123Z",  # the emulator: milliseconds
    "2025-06-01T12:00:00Z",
    "2025-06-01T12:00:00.9999999Z",
    "2025-06-01T12:00:00.5+02:00",
    "2025-06-01t12:00:00.25z",
    "1999-12-31T23:59:59.000001Z",
]


@pytest.mark.parametrize("text", TIMES)
def test_times_read_as_the_sdk_reads_them(text: str) -> None:
    start = bm.BatchTaskExecutionInfo({"startTime": text, "retryCount": 0, "requeueCount": 0}).start_time

    assert isinstance(start, datetime.datetime)
    assert results._epoch(text) == start.timestamp()


@pytest.mark.parametrize("text", ["", "yesterday", "2025-13-01T00:00:00Z", "2025-06-01", 1748779200, None])
def test_a_time_that_cannot_be_read_is_left_out(text: object) -> None:
    assert results._epoch(text) is None


LISTED: list[dict[str, Any]] = [
    {
        "id": "ok",
        "state": "completed",
        "executionInfo": {
            "startTime": "2025-06-01T12:00:00.1234567Z",
            "endTime": "2025-06-01T12:00:03.5Z",
            "exitCode": 0,
            "result": "success",
            "retryCount": 0,
            "requeueCount": 0,
        },
    },
    {
        "id": "Exit3",
        "state": "completed",
        "executionInfo": {
            "startTime": "2025-06-01T12:00:00Z",
            "endTime": "2025-06-01T12:01:00Z",
            "exitCode": 3,
            "result": "Failure",  # enums in any case
            "retryCount": 2,
            "requeueCount": 1,
            "failureInfo": {"category": "usererror", "code": "FailureExitCode", "message": "exit 3"},
        },
    },
    {
        "id": "missing-input",
        "state": "completed",
        "executionInfo": {
            "result": "failure",
            "retryCount": 0,
            "requeueCount": 0,
            "failureInfo": {"category": "usererror", "code": "BlobNotFound", "message": "gone\nRequestId: x"},
        },
    },
    {"id": "no-info", "state": "completed"},
]


def model_result(task: bm.BatchTask) -> tuple[object, ...]:
    """What the task's SDK model says, read as batchflow read it before issue 12."""
    info = task.execution_info
    ok = info is not None and info.result is not None and info.result.casefold() == "success"
    failure = None
    if info is not None and info.failure_info is not None and info.failure_info.code != "FailureExitCode":
        failure = f"{info.failure_info.code}: {(info.failure_info.message or '').splitlines()[0]}"
    return (
        task.id,
        TaskState.SUCCEEDED if ok else TaskState.FAILED,
        info.exit_code if info is not None else None,
        (info.retry_count or 0) + 1 if info is not None else 0,
        info.start_time.timestamp() if info is not None and info.start_time else None,
        info.end_time.timestamp() if info is not None and info.end_time else None,
        failure,
    )


@pytest.mark.parametrize("task", LISTED, ids=[t["id"] for t in LISTED])
def test_a_listed_task_reads_as_its_sdk_model_says(task: dict[str, Any]) -> None:
    r = results._result(task, None, None)

    assert (r.id, r.state, r.exit_code, r.attempts, r.started_at, r.ended_at, r.failure) == model_result(
        bm.BatchTask(task)
    )
