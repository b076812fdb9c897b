"""Every request body batchflow sends to Azure Batch, checked against Microsoft's REST spec.

The spec: Azure/azure-rest-api-specs, specification/batch/data-plane/Batch/stable/2025-06-01/BatchService.json
at commit 1a5eebb5a7e9527caf25fc7d14fec34907ee4334 (api-version 2025-06-01, the version azure-batch
15.1 speaks). The definitions and request paths batchflow needs are transcribed in
tests/spec/batch_2025_06_01.json; tests/spec_check.py turns them into a strict JSON Schema
(unknown properties, case-sensitive enums, ISO 8601 durations, int32 ranges, required and readOnly
properties). No network: the file is read from disk, and the SDK's requests go to a recording
transport in this process.

The bodies are batchflow's own: the example workflows loaded and rendered by batchflow.spec and
batchflow.render, sent by AzureBatchCompute through the real azure-batch client (whatever the SDK
serializes is what is checked), and the builders of batchflow/backends/azure/batch_build.py for the
cases the examples do not reach (autoscale, Spot, start task files, every output condition, ...).
Planted wrong bodies show that the check does fail, with the message it gives.
"""

from __future__ import annotations

import base64
import copy
import datetime
import enum
import importlib
import json
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.credentials import AzureNamedKeyCredential
from batch_bodies import rendered_task, sent_body
from batch_emulator import BatchEmulator
from batch_emulator.transport import EmulatorTransport
from batch_emulator.wire import Request, Response, json_response
from fakes import FakeClock
from spec_check import SPEC_FILE, check_request, is_duration, is_uri, operation_schema, problems, spec

from batchflow.backends.azure.auth import blob_auth
from batchflow.backends.azure.batch import AzureBatchCompute
from batchflow.backends.azure.batch_build import (
    auto_pool_specification,
    job_request,
    pool_request,
    seal_job_request,
    task_request,
)
from batchflow.backends.azure.storage import AzureBlobStorage
from batchflow.model import (
    AutoScaleSpec,
    ImageReference,
    JobSpec,
    OutputCondition,
    PoolSpec,
    ResolvedFile,
    StartTaskSpec,
    TaskLogs,
    TaskOutput,
)
from batchflow.render import build_plan
from batchflow.spec import load_workflow

COMMIT = "1a5eebb5a7e9527caf25fc7d14fec34907ee4334"
SPEC_PATH = "specification/batch/data-plane/Batch/stable/2025-06-01/BatchService.json"
RUN = "20250101-120000-000"
ENDPOINT = "https://acct.westeurope.batch.azure.com"
FAKE_KEY = base64.b64encode(b"not a real key, never sent anywhere").decode()
SAS_CLOCK = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
UBUNTU = ImageReference("canonical", "ubuntu-24_04-lts", "server")
AGENT = "batch.node.ubuntu 24.04"
HOSTILE_NAMES = [
    "it's $(touch INJECTED).mp4",
    'quote "double" `tick` $HOME.mp4',
    "semi;colon & amp | pipe > gt.mp4",
    "new\nline\ttab.mp4",
    "café ünïcode.mp4",
    "dir ü/a b#c%d?e.mp4",
]
# What batchflow sends, and the definition each body must match (the spec's paths, see the file).
BATCHFLOW_OPERATIONS = [
    ("POST", "/pools", "BatchPoolCreateOptions"),
    ("POST", "/jobs", "BatchJobCreateOptions"),
    ("POST", "/jobs/{jobId}/addtaskcollection", "BatchTaskGroup"),
    ("PATCH", "/jobs/{jobId}", "BatchJobUpdateOptions"),
]


# ---- a Batch service that only records -----------------------------------------------------


@dataclass(frozen=True)
class Sent:
    method: str
    path: str  # decoded URL path, no query
    body: Any  # the parsed JSON body, None without one

    @property
    def operation(self) -> str:
        """`POST /jobs/{jobId}/addtaskcollection` for `POST /jobs/LinuxFFmpegJob/addtaskcollection`."""
        parts = self.path.split("/")
        if len(parts) > 2 and parts[1] in _ID_NAMES:
            parts[2] = _ID_NAMES[parts[1]]
        return f"{self.method} {'/'.join(parts)}"


_ID_NAMES = {"pools": "{poolId}", "jobs": "{jobId}"}


def _error(code: str) -> dict[str, Any]:
    return {"code": code, "message": {"lang": "en-US", "value": f"{code} (recording transport)"}}


class EmptyAccount:
    """A Batch account with nothing in it, behind the emulator's azure-core transport
    (`RecordingTransport()`): records every request the SDK sends; answers 404 to a GET of a pool or
    job, success to creations, "Success" to every task of a collection (as the live service spells it)."""

    latency = 0.0

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self._lock = threading.Lock()

    def record_sleep(self, seconds: float) -> float:
        raise AssertionError(f"the SDK tried to wait {seconds} s: no request here should be retried")

    def dispatch(self, request: Request) -> Response:
        body = json.loads(request.body) if request.body else None
        sent = Sent(request.method, unquote(urlsplit(request.url).path), body)
        with self._lock:
            self.sent.append(sent)
        status, answer = self._answer(sent)
        return Response(status) if answer is None else json_response(status, answer)

    def _answer(self, sent: Sent) -> tuple[int, Any]:
        match sent.operation:
            case "GET /pools/{poolId}":
                return 404, _error("PoolNotFound")
            case "GET /jobs/{jobId}":
                return 404, _error("JobNotFound")
            case "POST /pools" | "POST /jobs":
                return 201, None
            case "PATCH /jobs/{jobId}":
                return 200, None
            case "POST /jobs/{jobId}/addtaskcollection":
                return 200, {"value": [{"status": "Success", "taskId": t["id"]} for t in sent.body["value"]]}
        return 400, _error(f"UnexpectedRequest {sent.operation}")


class RecordedEmulator:
    """The Batch emulator, recording every request the SDK sends it (as EmptyAccount does): for the
    auto pool flow, which reads back the job and the pool Batch made for it."""

    latency = 0.0

    def __init__(self, emulator: BatchEmulator) -> None:
        self.emulator = emulator
        self.sent: list[Sent] = []
        self._lock = threading.Lock()

    def record_sleep(self, seconds: float) -> float:
        raise AssertionError(f"the SDK tried to wait {seconds} s: no request here should be retried")

    def dispatch(self, request: Request) -> Response:
        body = json.loads(request.body) if request.body else None
        with self._lock:
            self.sent.append(Sent(request.method, unquote(urlsplit(request.url).path), body))
        return self.emulator.dispatch(request)


def storage() -> AzureBlobStorage:
    """Account-key Blob Storage: SAS URLs are signed locally, nothing is sent."""
    env = {"AZURE_STORAGE_ACCOUNT": "acct", "AZURE_STORAGE_KEY": FAKE_KEY}
    return AzureBlobStorage(blob_auth(env), sas_ttl=3600, clock=lambda: SAS_CLOCK)


def sent_for_workflow(workflow_file: Path, run_dir: Path, *, auto_pool: bool = False) -> list[Sent]:
    """What batchflow's Azure backend sends to create the pool and job of `workflow_file`, add its
    tasks and seal the job: the workflow loaded and rendered as `batchflow run --backend azure`
    does, with outputs and logs placed per run as the runner places them. With `auto_pool` the pool
    goes with the job (azure.pool_lifetime: job), to the emulator (instant), which makes it."""
    workflow = load_workflow(workflow_file)
    plan = build_plan(workflow, "azure")
    logs = (
        None if workflow.logs is None else TaskLogs(workflow.logs.container, f"{workflow.logs.prefix}{RUN}/")
    )
    prefix = f"runs/{RUN}/" if workflow.outputs_per_run else ""
    tasks = [
        replace(
            t, outputs=tuple(replace(o, destination=prefix + o.destination) for o in t.outputs), logs=logs
        )
        for t in plan.tasks
    ]
    with BatchEmulator(workdir=run_dir / "emulator", instant=True, account="acct", key=FAKE_KEY) as emu:
        account: EmptyAccount | RecordedEmulator = RecordedEmulator(emu) if auto_pool else EmptyAccount()
        client = BatchClient(
            emu.endpoint if auto_pool else ENDPOINT,
            AzureNamedKeyCredential("acct", FAKE_KEY),
            transport=EmulatorTransport(account),
            retry_total=0,
        )
        clock = FakeClock(0.0, emu.settle)
        with storage() as blobs:
            compute = AzureBatchCompute(
                client, blobs, run_dir, RUN, auto_pool=auto_pool, clock=clock, sleep=clock.sleep
            )
            try:
                assert compute.create_pool(workflow.pool, plan.start_task, plan.start_task_inputs) is True
                if auto_pool:
                    compute.wait_for_pool(workflow.pool.id)  # nothing to wait for before the job
                compute.create_job(workflow.job, workflow.pool.id, RUN)
                compute.add_tasks(workflow.job.id, tasks)
                compute.seal_job(workflow.job.id)
            finally:
                compute.close()
    return account.sent


def bodies(sent: list[Sent]) -> list[Any]:
    return [s.body for s in sent if s.body is not None]


def task_group(tasks: list[bm.BatchTaskCreateOptions]) -> Any:
    return sent_body(bm.BatchTaskGroup(task_values=tasks))


# ---- the transcription ------------------------------------------------------------------------


def test_the_transcription_names_its_source_and_every_reference_resolves() -> None:
    data = spec()
    assert data["source"]["repo"] == "Azure/azure-rest-api-specs"
    assert data["source"]["path"] == SPEC_PATH
    assert data["source"]["commit"] == COMMIT
    assert data["source"]["api-version"] == "2025-06-01"
    refs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.update(v.removeprefix("#/definitions/") for k, v in node.items() if k == "$ref")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data["definitions"])
    assert refs - set(data["definitions"]) == set(data["not_transcribed"])
    assert not set(data["definitions"]) & set(data["not_transcribed"])


@pytest.mark.parametrize(("method", "template", "definition"), BATCHFLOW_OPERATIONS)
def test_each_request_batchflow_sends_has_its_body_definition(
    method: str, template: str, definition: str
) -> None:
    assert operation_schema(method, template) == definition
    concrete = template.replace("{jobId}", "LinuxFFmpegJob")
    assert operation_schema(method.lower(), concrete) == definition


def test_an_operation_outside_the_transcription_is_an_error() -> None:
    with pytest.raises(KeyError, match="no transcribed operation DELETE /pools/P"):
        operation_schema("DELETE", "/pools/P")


# The spec and azure-batch 15.1 are generated from the same TypeSpec: the SDK's models are an
# independent check of the transcription: property names, readOnly flags, types and formats
# (duration, date-time), references, enum values and which properties are required.
SDK_NAMES = {"OutputFileUploadConfig": "OutputFileUploadConfiguration"}  # renamed in azure-batch 15.1
NOT_IN_SDK = {  # definitions the SDK has no model for (it reuses another, or dropped the feature)
    "AuthenticationTokenSettings",
    "Azure.Core.eTag",
    "BatchAccessScope",
    "BatchJobNetworkConfigurationUpdate",
    "BatchPoolInfoUpdate",
}
SDK_LACKS = {("BatchTaskCreateOptions", "authenticationTokenSettings")}  # in the spec, not in 15.1
SDK_REUSES = {  # the SDK types these with the create-side model
    ("BatchJobUpdateOptions", "poolInfo"): "BatchPoolInfo",
    ("BatchJobUpdateOptions", "networkConfiguration"): "BatchJobNetworkConfiguration",
}
SDK_MODULE = importlib.import_module("azure.batch.models._models")


def sdk_kind(hint: Any) -> tuple[Any, ...]:
    """What an SDK model's type annotation says a property is, in the terms of spec_kind."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
    if typing.get_origin(hint) is typing.Union:
        return ("enum", enums[0].__name__) if enums else sdk_kind(args[0]) if len(args) == 1 else ("?", hint)
    if typing.get_origin(hint) is list:
        return ("array", sdk_kind(args[0]))
    simple = {str: "string", int: "integer", bool: "boolean", float: "number"}
    if hint in simple:
        return (simple[hint],)
    if hint is datetime.timedelta:
        return ("string", "duration")
    if hint is datetime.datetime:
        return ("string", "date-time")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return ("enum", hint.__name__)
    if isinstance(hint, type):
        return ("model", {v: k for k, v in SDK_NAMES.items()}.get(hint.__name__, hint.__name__))
    return ("?", hint)


def spec_kind(schema: dict[str, Any]) -> tuple[Any, ...]:
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/definitions/")
        target = spec()["definitions"].get(name, {})
        if name == "Azure.Core.eTag":
            return ("string",)
        return ("enum", name) if "enum" in target else ("model", name)
    if schema["type"] == "array":
        return ("array", spec_kind(schema["items"]))
    if "enum" in schema:
        return ("enum", schema["x-ms-enum"]["name"])
    if schema.get("format") in ("duration", "date-time"):
        return (schema["type"], schema["format"])
    return (schema["type"],)


def test_the_transcription_agrees_with_the_azure_batch_models() -> None:
    mismatches = []
    for name, definition in spec()["definitions"].items():
        if name in NOT_IN_SDK:
            assert not hasattr(bm, name)
            continue
        sdk = getattr(bm, SDK_NAMES.get(name, name))
        if "enum" in definition:
            if sorted(e.value for e in sdk) != sorted(definition["enum"]):
                mismatches.append(f"{name}: enum {sorted(e.value for e in sdk)} != {definition['enum']}")
            continue
        hints = typing.get_type_hints(sdk, globalns={**vars(SDK_MODULE), "_models": bm})
        fields = {f._rest_name: attr for attr, f in type(sdk())._attr_to_rest_field.items()}
        visibility = {f._rest_name: f._visibility for f in type(sdk())._attr_to_rest_field.values()}
        properties = definition["properties"]
        for prop in sorted(set(fields) | set(properties)):
            if (name, prop) in SDK_LACKS:
                assert prop not in fields
                continue
            if prop not in fields or prop not in properties:
                mismatches.append(f"{name}.{prop}: only in {'the spec' if prop in properties else 'the SDK'}")
                continue
            schema, hint = properties[prop], hints[fields[prop]]
            expected = ("model", SDK_REUSES[name, prop]) if (name, prop) in SDK_REUSES else spec_kind(schema)
            facts = {
                "readOnly": (visibility[prop] == ["read"], bool(schema.get("readOnly"))),
                "type": (sdk_kind(hint), expected),
                "required": (type(None) not in typing.get_args(hint), prop in definition.get("required", [])),
            }
            mismatches += [f"{name}.{prop}: {k} sdk={a} spec={b}" for k, (a, b) in facts.items() if a != b]
    assert mismatches == []


# ---- the checker's own rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "PT15M",
        "PT15M00S",
        "P1D",
        "P7D",
        "PT1H30M",
        "PT07M30S",
        "P1DT02H00M00S",
        "PT0.5S",
        "PT00.500000S",
        "P2W",
        "P0D",
    ],
)
def test_iso_8601_durations(value: str) -> None:
    assert is_duration(value)


@pytest.mark.parametrize(
    "value",
    [
        "15 minutes",
        "15M",
        "P",
        "PT",
        "P1DT",
        "PT15m",
        "pt15m",
        "PT1.5H",
        "P1W2D",
        "-PT1M",
        "PT15M ",
        "900",
        "P1Y2",
        "PT٣S",
    ],
)
def test_not_iso_8601_durations(value: str) -> None:
    assert not is_duration(value)


def test_uris_must_be_absolute_and_percent_encoded() -> None:
    assert is_uri("https://acct.blob.core.windows.net/input/sample%201.mp4?sv=2026&sig=a%2Bb%3D")
    for bad in [
        "https://acct/a b.mp4",
        "/input/a.mp4",
        "https://acct/café.mp4",
        "acct.blob.core.windows.net/x",
    ]:
        assert not is_uri(bad), bad


# ---- the example workflows, through the real SDK -------------------------------------------------


@pytest.mark.parametrize("name", ["mp4_to_mp3", "word_count"])
def test_every_body_the_example_workflows_send_matches_the_spec(
    name: str, copy_workflow: Callable[[str], Path], tmp_path: Path
) -> None:
    sent = sent_for_workflow(copy_workflow(name), tmp_path / "run")

    bodies = [s for s in sent if s.body is not None]
    assert [s.operation for s in bodies] == [f"{m} {t}" for m, t, _ in BATCHFLOW_OPERATIONS]
    assert {f"{s.method} {s.path}": check_request(s.method, s.path, s.body) for s in bodies} == {
        f"{s.method} {s.path}": [] for s in bodies
    }


@pytest.mark.parametrize("name", ["mp4_to_mp3", "word_count"])
def test_every_body_the_example_workflows_send_with_an_auto_pool_matches_the_spec(
    name: str, copy_workflow: Callable[[str], Path], tmp_path: Path
) -> None:
    """azure.pool_lifetime: job (the default): no Create Pool, the pool goes with the job."""
    sent = sent_for_workflow(copy_workflow(name), tmp_path / "run", auto_pool=True)

    bodies = [s for s in sent if s.body is not None]
    assert [s.operation for s in bodies] == [f"{m} {t}" for m, t, _ in BATCHFLOW_OPERATIONS[1:]]
    assert {f"{s.method} {s.path}": check_request(s.method, s.path, s.body) for s in bodies} == {
        f"{s.method} {s.path}": [] for s in bodies
    }
    auto = bodies[0].body["poolInfo"]["autoPoolSpecification"]
    assert (auto["poolLifetimeOption"], auto["keepAlive"]) == ("job", False)
    [named] = [
        s.body for s in sent_for_workflow(copy_workflow(name), tmp_path / "named") if s.path == "/pools"
    ]
    assert auto["pool"] == {k: v for k, v in named.items() if k != "id"}
    assert auto["autoPoolIdPrefix"] == named["id"][:20]


def test_the_mp4_to_mp3_bodies_carry_what_the_workflow_asks_for(
    copy_workflow: Callable[[str], Path], tmp_path: Path
) -> None:
    pool, job, collection, update = bodies(sent_for_workflow(copy_workflow("mp4_to_mp3"), tmp_path))

    assert (pool["targetDedicatedNodes"], pool["targetLowPriorityNodes"], pool["resizeTimeout"]) == (
        0,
        5,
        "PT15M00S",
    )
    assert pool["startTask"]["userIdentity"] == {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}
    assert job["constraints"]["maxWallClockTime"] == "PT30M00S"
    assert job["onAllTasksComplete"] == "noaction"
    assert update == {"onAllTasksComplete": "terminatejob"}
    tasks = collection["value"]
    assert len(tasks) == 5
    for task in tasks:
        assert [f["uploadOptions"]["uploadCondition"] for f in task["outputFiles"]] == [
            "tasksuccess",
            "taskcompletion",
            "taskcompletion",
        ]
        assert [f["filePattern"] for f in task["outputFiles"][1:]] == ["../stdout.txt", "../stderr.txt"]
        assert len(task["resourceFiles"]) == 1
        assert task["constraints"] == {
            "maxWallClockTime": "PT10M00S",
            "retentionTime": "P1D",
            "maxTaskRetryCount": 1,
        }


def test_the_word_count_bodies_carry_what_the_workflow_asks_for(
    copy_workflow: Callable[[str], Path], tmp_path: Path
) -> None:
    pool, job, collection, _ = bodies(sent_for_workflow(copy_workflow("word_count"), tmp_path))

    assert "startTask" not in pool
    assert (pool["targetDedicatedNodes"], pool["taskSlotsPerNode"]) == (1, 2)
    assert job["constraints"]["maxWallClockTime"] == "PT15M00S"
    for task in collection["value"]:
        assert task["id"].startswith("count-")
        assert [f["filePath"] for f in task["resourceFiles"]][1:] == ["wordcount.py"]
        assert task["outputFiles"][0]["uploadOptions"] == {"uploadCondition": "tasksuccess"}


# ---- the builders, for the cases the examples do not reach --------------------------------------


def resolved(blob: str, file_path: str | None = None) -> ResolvedFile:
    with storage() as blobs:
        return ResolvedFile(blobs.resource_url("input", blob), file_path or blob.rsplit("/", 1)[-1])


def container_url(name: str) -> str:
    with storage() as blobs:
        return blobs.container_url(name)


def pool_spec(**overrides: Any) -> PoolSpec:
    fields: dict[str, Any] = {
        "id": "P",
        "vm_size": "Standard_D2s_v3",
        "image": UBUNTU,
        "node_agent_sku_id": AGENT,
    }
    fields.update(overrides)
    return PoolSpec(**fields)


def spot_pool_with_start_task() -> Any:
    start = StartTaskSpec(
        command="apt-get update && apt-get install -y ffmpeg",
        elevated=True,
        wait_for_success=True,
        max_retries=2,
        environment={"DEBIAN_FRONTEND": "noninteractive", "EMPTY": ""},
    )
    files = [resolved("tools/setup.sh", "tools/setup.sh"), resolved("tools/ffmpeg.tar.xz")]
    return sent_body(pool_request(pool_spec(spot_nodes=5, task_slots_per_node=4), start, files, RUN))


def dedicated_and_spot_pool() -> Any:
    return sent_body(pool_request(pool_spec(dedicated_nodes=2, spot_nodes=3), None, [], RUN))


def autoscale_pool() -> Any:
    formula = "$TargetLowPriorityNodes = min(10, $PendingTasks.GetSample(1));"
    spec_ = pool_spec(
        image=ImageReference("canonical", "ubuntu-24_04-lts", "server", "24.04.202501010"),
        autoscale=AutoScaleSpec(formula=formula, evaluation_interval=450.0),
    )
    start = StartTaskSpec(command='mkdir -p "$AZ_BATCH_NODE_SHARED_DIR/bin"', wait_for_success=False)
    return sent_body(pool_request(spec_, start, [], RUN))


def autoscale_pool_at_the_longest_interval() -> Any:
    autoscale = AutoScaleSpec(formula="$TargetDedicatedNodes = 1;", evaluation_interval=168 * 3600.0)
    return sent_body(pool_request(pool_spec(autoscale=autoscale), None, [], RUN))


def job_with_wall_clock_and_retries() -> Any:
    return sent_body(job_request(JobSpec(id="J", max_wall_clock=5400.0, max_task_retries=3), "P", RUN))


def job_without_limits() -> Any:
    return sent_body(job_request(JobSpec(id="J"), "P", RUN))


def job_with_a_derived_wall_clock() -> Any:
    return sent_body(job_request(JobSpec(id="J"), "P", RUN, default_wall_clock=4800.0))


def job_on_an_auto_spot_pool_with_start_task() -> Any:
    start = StartTaskSpec(command="apt-get install -y ffmpeg", elevated=True, max_retries=2)
    pool = pool_spec(id="LinuxFFmpegPool-with-a-long-name", spot_nodes=5, task_slots_per_node=4)
    auto = auto_pool_specification(pool, start, [resolved("tools/setup.sh", "tools/setup.sh")], RUN)
    return sent_body(job_request(JobSpec(id="J", max_task_retries=1), auto, RUN, default_wall_clock=4800.0))


def job_on_an_auto_autoscale_pool() -> Any:
    autoscale = AutoScaleSpec(formula="$TargetDedicatedNodes = 1;", evaluation_interval=300.0)
    auto = auto_pool_specification(pool_spec(autoscale=autoscale), None, [], RUN)
    return sent_body(job_request(JobSpec(id="J", max_wall_clock=600.0), auto, RUN))


def seal() -> Any:
    return sent_body(seal_job_request())


def task_with_everything() -> Any:
    outputs = (
        TaskOutput("sample 1.mp3", "output", f"runs/{RUN}/sample 1.mp3", OutputCondition.SUCCESS),
        TaskOutput("debug/*.log", "logs", f"runs/{RUN}/debug/", OutputCondition.FAILURE),
        TaskOutput("**/*.json", "output", "", OutputCondition.COMPLETION),
        TaskOutput("a[[]1].mp3", "output", f"runs/{RUN}/a[1].mp3", OutputCondition.SUCCESS),
    )
    task = rendered_task(
        outputs=outputs,
        environment={"BITRATE": "128k", "EMPTY": "", "QUOTED": 'it\'s "so"'},
        max_retries=2,
        max_wall_clock=600.5,
    )
    inputs = [resolved("sample 1.mp4"), *(resolved(n) for n in HOSTILE_NAMES)]
    urls = {"output": container_url("output"), "logs": container_url("logs")}
    request = task_request(task, inputs, urls, urls["logs"], f"batchflow-logs/{RUN}/")
    return task_group([request])


def minimal_task() -> Any:
    return task_group([task_request(rendered_task(id="t", command="true", inputs=()), [], {}, None, "")])


def tasks_kept_a_week_without_retries() -> Any:
    task = rendered_task(inputs=(), max_retries=0, max_wall_clock=86400.0 * 3)
    return task_group([task_request(task, [], {}, None, "", retention=datetime.timedelta(days=7))])


def a_full_collection() -> Any:
    url = container_url("output")
    tasks = [
        task_request(
            rendered_task(
                id=f"clip-{i:05d}",
                outputs=(TaskOutput(f"clip {i}.mp3", "output", f"clip {i}.mp3", OutputCondition.SUCCESS),),
            ),
            [resolved(f"clip {i}.mp4")],
            {"output": url},
            url,
            f"batchflow-logs/{RUN}/",
        )
        for i in range(100)  # the most one Add Task Collection request may carry
    ]
    return task_group(tasks)


BUILT: list[tuple[str, Callable[[], Any]]] = [
    ("BatchPoolCreateOptions", spot_pool_with_start_task),
    ("BatchPoolCreateOptions", dedicated_and_spot_pool),
    ("BatchPoolCreateOptions", autoscale_pool),
    ("BatchPoolCreateOptions", autoscale_pool_at_the_longest_interval),
    ("BatchJobCreateOptions", job_with_wall_clock_and_retries),
    ("BatchJobCreateOptions", job_without_limits),
    ("BatchJobCreateOptions", job_with_a_derived_wall_clock),
    ("BatchJobCreateOptions", job_on_an_auto_spot_pool_with_start_task),
    ("BatchJobCreateOptions", job_on_an_auto_autoscale_pool),
    ("BatchJobUpdateOptions", seal),
    ("BatchTaskGroup", task_with_everything),
    ("BatchTaskGroup", minimal_task),
    ("BatchTaskGroup", tasks_kept_a_week_without_retries),
    ("BatchTaskGroup", a_full_collection),
]


@pytest.mark.parametrize(("definition", "build"), BUILT, ids=[b.__name__ for _, b in BUILT])
def test_built_bodies_match_the_spec(definition: str, build: Callable[[], Any]) -> None:
    assert problems(definition, build()) == []


def test_the_built_bodies_are_the_ones_the_tests_mean() -> None:
    spot = spot_pool_with_start_task()
    assert (spot["targetDedicatedNodes"], spot["targetLowPriorityNodes"]) == (0, 5)
    assert spot["startTask"]["userIdentity"]["autoUser"]["elevationLevel"] == "admin"
    assert [f["filePath"] for f in spot["startTask"]["resourceFiles"]] == ["tools/setup.sh", "ffmpeg.tar.xz"]
    assert spot["startTask"]["environmentSettings"][1] == {"name": "EMPTY", "value": ""}
    auto = autoscale_pool()
    assert (auto["enableAutoScale"], auto["autoScaleEvaluationInterval"]) == (True, "PT07M30S")
    assert not {"targetDedicatedNodes", "targetLowPriorityNodes", "resizeTimeout"} & set(auto)
    assert autoscale_pool_at_the_longest_interval()["autoScaleEvaluationInterval"] == "P7D"
    assert job_with_wall_clock_and_retries()["constraints"] == {
        "maxWallClockTime": "PT01H30M00S",
        "maxTaskRetryCount": 3,
    }
    [task] = task_with_everything()["value"]
    assert [f["uploadOptions"]["uploadCondition"] for f in task["outputFiles"]] == [
        "tasksuccess",
        "taskfailure",
        "taskcompletion",
        "tasksuccess",
        "taskcompletion",
        "taskcompletion",
    ]
    assert task["constraints"] == {
        "maxWallClockTime": "PT10M00.5S",
        "retentionTime": "P1D",
        "maxTaskRetryCount": 2,
    }
    assert len(task["resourceFiles"]) == 1 + len(HOSTILE_NAMES)
    assert task["environmentSettings"][1] == {"name": "EMPTY", "value": ""}
    assert len(a_full_collection()["value"]) == 100
    assert job_with_a_derived_wall_clock()["constraints"]["maxWallClockTime"] == "PT01H20M00S"
    auto = job_on_an_auto_spot_pool_with_start_task()["poolInfo"]["autoPoolSpecification"]
    assert (auto["autoPoolIdPrefix"], auto["poolLifetimeOption"], auto["keepAlive"]) == (
        "LinuxFFmpegPool-with",
        "job",
        False,
    )
    assert auto["pool"]["targetLowPriorityNodes"] == 5
    assert auto["pool"]["startTask"]["userIdentity"]["autoUser"]["elevationLevel"] == "admin"
    scaled = job_on_an_auto_autoscale_pool()["poolInfo"]["autoPoolSpecification"]["pool"]
    assert (scaled["enableAutoScale"], scaled["autoScaleEvaluationInterval"]) == (True, "PT05M00S")


# ---- planted wrong bodies: the check fails, and says why ---------------------------------------


def _pool() -> Any:
    return spot_pool_with_start_task()


def _task_group() -> Any:
    return task_with_everything()


def _rename(node: dict[str, Any], old: str, new: str) -> None:
    node[new] = node.pop(old)


@dataclass(frozen=True)
class Planted:
    name: str
    definition: str
    base: Callable[[], Any]
    plant: Callable[[Any], None]
    expected: list[str]


def _set(path: str, value: Any) -> Callable[[Any], None]:
    """A planting that sets the value at `path` ('startTask.maxTaskRetryCount', 'value.0.id')."""

    def plant(body: Any) -> None:
        *parents, last = path.split(".")
        node = body
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[int(last) if last.isdigit() else last] = value

    return plant


def _delete(path: str) -> Callable[[Any], None]:
    def plant(body: Any) -> None:
        *parents, last = path.split(".")
        node = body
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        del node[last]

    return plant


PLANTED = [
    Planted(
        "an auto pool's lifetime in title case",
        "BatchJobCreateOptions",
        job_on_an_auto_spot_pool_with_start_task,
        _set("poolInfo.autoPoolSpecification.poolLifetimeOption", "Job"),
        [
            "$.poolInfo.autoPoolSpecification.poolLifetimeOption: 'Job' is not a value of"
            " BatchPoolLifetimeOption; allowed: jobschedule, job; the spec spells it 'job'"
            " (enums are case-sensitive)"
        ],
    ),
    Planted(
        "an auto pool given an id of its own (Batch names it)",
        "BatchJobCreateOptions",
        job_on_an_auto_spot_pool_with_start_task,
        _set("poolInfo.autoPoolSpecification.pool.id", "P"),
        [
            "$.poolInfo.autoPoolSpecification.pool.id: unknown property 'id': BatchPoolSpecification has"
            " no such property"
        ],
    ),
    Planted(
        "misspelt vmSize",
        "BatchPoolCreateOptions",
        _pool,
        lambda b: _rename(b, "vmSize", "vmsize"),
        [
            "$.vmsize: unknown property 'vmsize': BatchPoolCreateOptions has no such property"
            " (did you mean 'vmSize'?)",
            "$: missing required property 'vmSize' (BatchPoolCreateOptions)",
        ],
    ),
    Planted(
        "the SDK's attribute name instead of the wire name",
        "BatchPoolCreateOptions",
        _pool,
        lambda b: _rename(b["virtualMachineConfiguration"], "nodeAgentSKUId", "nodeAgentSkuId"),
        [
            "$.virtualMachineConfiguration.nodeAgentSkuId: unknown property 'nodeAgentSkuId':"
            " VirtualMachineConfiguration has no such property (did you mean 'nodeAgentSKUId'?)",
            "$.virtualMachineConfiguration: missing required property 'nodeAgentSKUId'"
            " (VirtualMachineConfiguration)",
        ],
    ),
    Planted(
        "invented maxWallClock",
        "BatchJobCreateOptions",
        job_with_wall_clock_and_retries,
        lambda b: _rename(b["constraints"], "maxWallClockTime", "maxWallClock"),
        [
            "$.constraints.maxWallClock: unknown property 'maxWallClock': BatchJobConstraints has no such"
            " property (did you mean 'maxWallClockTime'?)"
        ],
    ),
    Planted(
        "upload condition spelt as its x-ms-enum name",
        "BatchTaskGroup",
        _task_group,
        _set("value.0.outputFiles.0.uploadOptions.uploadCondition", "TaskSuccess"),
        [
            "$.value[0].outputFiles[0].uploadOptions.uploadCondition: 'TaskSuccess' is not a value of"
            " OutputFileUploadCondition; allowed: tasksuccess, taskfailure, taskcompletion;"
            " the spec spells it 'tasksuccess' (enums are case-sensitive)"
        ],
    ),
    Planted(
        "terminate mode in camel case",
        "BatchJobUpdateOptions",
        seal,
        _set("onAllTasksComplete", "terminateJob"),
        [
            "$.onAllTasksComplete: 'terminateJob' is not a value of BatchAllTasksCompleteMode;"
            " allowed: noaction, terminatejob; the spec spells it 'terminatejob' (enums are case-sensitive)"
        ],
    ),
    Planted(
        "elevation level in title case",
        "BatchPoolCreateOptions",
        _pool,
        _set("startTask.userIdentity.autoUser.elevationLevel", "Admin"),
        [
            "$.startTask.userIdentity.autoUser.elevationLevel: 'Admin' is not a value of ElevationLevel;"
            " allowed: nonadmin, admin; the spec spells it 'admin' (enums are case-sensitive)"
        ],
    ),
    Planted(
        "a duration in words",
        "BatchPoolCreateOptions",
        _pool,
        _set("resizeTimeout", "15 minutes"),
        [
            "$.resizeTimeout: '15 minutes' is not an ISO 8601 duration (format: duration),"
            " e.g. 'PT15M', 'P1D', 'PT1H30M'"
        ],
    ),
    Planted(
        "a duration in seconds",
        "BatchTaskGroup",
        _task_group,
        _set("value.0.constraints.retentionTime", 86400),
        ["$.value[0].constraints.retentionTime: 86400 is not of type 'string'"],
    ),
    Planted(
        "a task without its command line",
        "BatchTaskGroup",
        _task_group,
        _delete("value.0.commandLine"),
        ["$.value[0]: missing required property 'commandLine' (BatchTaskCreateOptions)"],
    ),
    Planted(
        "a task carrying its state",
        "BatchTaskGroup",
        _task_group,
        _set("value.0.state", "active"),
        ["$.value[0].state: unknown property 'state': BatchTaskCreateOptions has no such property"],
    ),
    Planted(
        "a read-only image property",
        "BatchPoolCreateOptions",
        _pool,
        _set("virtualMachineConfiguration.imageReference.exactVersion", "24.04.202501010"),
        [
            "$.virtualMachineConfiguration.imageReference.exactVersion: read-only property:"
            " the service sets it, a request must not send it"
        ],
    ),
    Planted(
        "a job replaced with its read-only state (PUT /jobs/{jobId})",
        "BatchJob",
        lambda: {"poolInfo": {"poolId": "P"}, "onAllTasksComplete": "terminatejob"},
        _set("state", "active"),
        ["$.state: read-only property: the service sets it, a request must not send it"],
    ),
    Planted(
        "a task failure mode in a job update (only Create Job takes it)",
        "BatchJobUpdateOptions",
        seal,
        _set("onTaskFailure", "noaction"),
        [
            "$.onTaskFailure: unknown property 'onTaskFailure': BatchJobUpdateOptions has no such property",
        ],
    ),
    Planted(
        "a node count past int32",
        "BatchPoolCreateOptions",
        _pool,
        _set("targetLowPriorityNodes", 2**31),
        ["$.targetLowPriorityNodes: 2147483648 is outside the int32 range [-2147483648, 2147483647]"],
    ),
    Planted(
        "a boolean as a string",
        "BatchPoolCreateOptions",
        _pool,
        _set("startTask.waitForSuccess", "true"),
        ["$.startTask.waitForSuccess: 'true' is not of type 'boolean'"],
    ),
    Planted(
        "an environment setting without a name",
        "BatchPoolCreateOptions",
        _pool,
        _delete("startTask.environmentSettings.0.name"),
        ["$.startTask.environmentSettings[0]: missing required property 'name' (EnvironmentSetting)"],
    ),
    Planted(
        "a resource file URL with a raw space",
        "BatchTaskGroup",
        _task_group,
        _set("value.0.resourceFiles.0.httpUrl", "https://acct.blob.core.windows.net/input/sample 1.mp4"),
        [
            "$.value[0].resourceFiles[0].httpUrl: 'https://acct.blob.core.windows.net/input/sample 1.mp4'"
            " is not an absolute URI of RFC 3986 characters (format: uri)"
        ],
    ),
    Planted(
        "the collection under the SDK's attribute name",
        "BatchTaskGroup",
        _task_group,
        lambda b: _rename(b, "value", "values"),
        [
            "$.values: unknown property 'values': BatchTaskGroup has no such property"
            " (did you mean 'value'?)",
            "$: missing required property 'value' (BatchTaskGroup)",
        ],
    ),
    Planted(
        "a pool network the transcription does not cover",
        "BatchPoolCreateOptions",
        _pool,
        _set("networkConfiguration", {"subnetId": "/subscriptions/s/resourceGroups/g/providers/x/subnets/y"}),
        [
            "$.networkConfiguration: a NetworkConfiguration value, a definition batch_2025_06_01.json"
            " does not transcribe: transcribe it from the spec before sending it"
        ],
    ),
]


@pytest.mark.parametrize("planted", PLANTED, ids=[p.name for p in PLANTED])
def test_planted_wrong_bodies_fail_with_the_reason(planted: Planted) -> None:
    body = copy.deepcopy(planted.base())
    assert problems(planted.definition, body) == []
    planted.plant(body)

    assert problems(planted.definition, body) == sorted(planted.expected)


def test_the_spec_file_is_the_one_the_checker_reads() -> None:
    assert Path(__file__).resolve().parent / "spec" / "batch_2025_06_01.json" == SPEC_FILE
