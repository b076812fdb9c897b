"""Replay suite: recorded requests sent to the Batch emulator; its answers must agree with the real ones.

Each flow replays, in order, requests the Azure SDK test suites sent to live Batch accounts
(tests/recordings/, sources in each fixture) through the real azure-batch SDK's pipeline
(`BatchClient.send_request`: signing, serialisation) to the emulator. Every answer must have the
recorded status and error code, and agree with the recorded body at each path batchflow reads
(`reads`): states, allocation state, casing, defaults, counts, per-task results, paging.

Where the emulator cannot take a recorded request as it is, the step sends another body (`body=`)
and says why; the answer is still compared with the recorded one. Requests are sent at api-version
2025-06-01, the version batchflow uses, whatever version they were recorded at.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from batch_emulator import API_VERSION, BatchEmulator
from recorded import Exchange, exchange

Json = Any


@dataclass(frozen=True)
class Step:
    name: str  # the recorded exchange
    reads: tuple[str, ...] = ()  # paths batchflow reads: "a.b", "value[*]/status", "keys:value[*]"
    settle: bool = False  # let the service move on before this request (else nothing moves)
    body: Json = field(default=None, compare=False)  # sent instead of the recorded body (say why)
    setup: Callable[[BatchClient], None] | None = None  # state the recording had, made before the step


POOL_READS = (
    "id",
    "state",
    "allocationState",
    "vmSize",
    "virtualMachineConfiguration/imageReference/publisher",
    "virtualMachineConfiguration/imageReference/offer",
    "virtualMachineConfiguration/imageReference/sku",
    "virtualMachineConfiguration/imageReference/version",
    "enableAutoScale",
    "currentDedicatedNodes",
    "currentLowPriorityNodes",
    "targetDedicatedNodes",
    "targetLowPriorityNodes",
    "resizeErrors",
)
JOB_READS = ("id", "state", "onAllTasksComplete", "onTaskFailure", "poolInfo/poolId", "metadata")
ERROR_READS = ("code", "keys:values[*]")


def _pool(pool_id: str, **extra: Any) -> Callable[[BatchClient], None]:
    def make(client: BatchClient) -> None:
        client.create_pool(
            bm.BatchPoolCreateOptions(
                id=pool_id,
                vm_size="standard_d2_v2",
                virtual_machine_configuration=bm.VirtualMachineConfiguration(
                    image_reference=bm.BatchVmImageReference(
                        publisher="canonical", offer="ubuntu-24_04-lts", sku="server"
                    ),
                    node_agent_sku_id="batch.node.ubuntu 24.04",
                ),
                **extra,
            )
        )

    return make


def _job(job_id: str, pool_id: str = "no-pool") -> Callable[[BatchClient], None]:
    def make(client: BatchClient) -> None:
        client.create_job(bm.BatchJobCreateOptions(id=job_id, pool_info=bm.BatchPoolInfo(pool_id=pool_id)))

    return make


def _all(*makers: Callable[[BatchClient], object]) -> Callable[[BatchClient], None]:
    def make(client: BatchClient) -> None:
        for m in makers:
            m(client)

    return make


FLOWS: dict[str, list[Step]] = {
    # .NET AddTaskCollection (2025-06-01): pool with 0 targets -> resizing -> steady; job; tasks.
    "pool_job_tasks": [
        Step("pool_create_zero_target"),
        Step("pool_get_right_after_create", POOL_READS),
        Step("pool_get_steady_zero_nodes", POOL_READS, settle=True),
        Step("nodes_list_empty_zero_target", ("value",)),
        Step("job_create"),
        Step("job_get_after_create", JOB_READS),
        Step("add_task_collection_success", ("value[*]/status", "value[*]/taskId", "keys:value[*]")),
        Step("job_delete"),
    ],
    # Python update_pools (azure-batch 15.1.0): defaults, $select, delete -> deleting -> 404.
    "pool_defaults_and_delete": [
        Step("pool_create_defaults_omitted"),
        Step(
            "pool_get_metadata_defaults",
            tuple(r for r in POOL_READS if r != "resizeErrors"),
            settle=True,
        ),
        Step("pool_get_select_id_state", ("id", "state", "keys:")),
        Step("pool_delete_accepted"),
        Step("pool_get_while_deleting", ("id", "state", "allocationState", "currentDedicatedNodes")),
        Step("pool_get_after_delete_not_found", ERROR_READS, settle=True),
    ],
    "pool_lists": [
        Step(
            "pool_list_maxresults_next_link",
            ("has:odata.nextLink", "value[*]/id"),
            setup=_all(_pool("jssdkPool-Basic2f40"), _pool("jssdkPool-Basic2f41")),
        ),
        Step("pool_list_filter_select", ("value[*]/id", "value[*]/state", "keys:value[*]")),
        Step("invalid_query_parameter_maxresults", ERROR_READS),
    ],
    "node_counts": [
        Step(
            "pool_node_counts_single_pool_zero",
            (
                "value[*]/poolId",
                "keys:value[*]/dedicated",
                "keys:value[*]/lowPriority",
                "value[*]/dedicated/total",
            ),
            setup=_pool("batch_iaas_1824222e", target_dedicated_nodes=0),
        ),
    ],
    "job_terminate": [
        Step("job_terminate_force", setup=_job("terminateJob")),
        Step(
            "job_get_after_terminate_completed",
            ("id", "state", "executionInfo/terminateReason"),
            settle=True,
        ),
    ],
    "job_patch_and_delete": [
        Step("job_patch_metadata", setup=_job("batchJob2")),
        Step("job_get_metadata", ("id", "state", "metadata")),
        Step("job_delete_py", setup=_job("batch_job2_")),
        Step("job_get_deleting", ("id", "state")),
        Step("job_get_after_delete_not_found", ERROR_READS, settle=True),
    ],
    "job_terminatejob_with_no_task": [
        # Recorded with an auto pool (poolLifetimeOption job, no prefix, no keepAlive sent).
        Step("job_create_terminatejob"),
        Step(
            "job_get_terminatejob_no_tasks_active",
            (
                "id",
                "state",
                "onAllTasksComplete",
                "poolInfo/poolId",
                "poolInfo/autoPoolSpecification/poolLifetimeOption",
                "poolInfo/autoPoolSpecification/keepAlive",
                "keys:executionInfo",
                "has:executionInfo/poolId",
            ),
            settle=True,
        ),
    ],
    "tasks": [
        Step("task_create_single", setup=_job("batch")),
        Step("task_get_active", ("id", "state", "executionInfo/retryCount", "executionInfo/requeueCount")),
        Step(
            "task_counts_new_job",
            ("taskCounts", "taskSlotCounts"),
            setup=_job("BatchUser-testGetTaskCountssync"),
        ),
        Step("add_task_collection_results_out_of_order", ("value[*]/status",), setup=_job("batchJob1")),
        Step("task_create_output_files", setup=_job("jssdkJob-Basicf761")),
        Step("task_get_output_files_casing", ("outputFiles[*]/uploadOptions/uploadCondition",)),
        Step(
            "task_list_select_id_state",
            ("keys:value[*]",),
            setup=_all(
                _job("BatchUser-testOutputFilessync"),
                lambda c: c.create_task_collection(
                    "BatchUser-testOutputFilessync",
                    bm.BatchTaskGroup(
                        task_values=[
                            bm.BatchTaskCreateOptions(id="mytasksync", command_line="true"),
                            bm.BatchTaskCreateOptions(id="mytask1sync", command_line="true"),
                        ]
                    ),
                ),
            ),
        ),
    ],
    "errors": [
        Step("pool_not_found", ERROR_READS),
        Step("pool_exists", ERROR_READS, setup=_pool("BatchUser-testIaaSpool", target_dedicated_nodes=0)),
        Step("job_create_before_exists"),  # a job on an auto pool, as recorded
        Step("job_exists", ERROR_READS),
        Step("pool_resize_not_found", ERROR_READS),
    ],
}


# ---- the replay ------------------------------------------------------------------------------------


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[BatchEmulator]:
    with BatchEmulator(workdir=tmp_path / "batch") as emulator:
        yield emulator
        assert emulator.internal_errors == []


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_the_emulator_answers_recorded_requests_as_the_service_did(emu: BatchEmulator, flow: str) -> None:
    client = emu.client(retry_total=0)
    with emu.paused():
        for step in FLOWS[flow]:
            if step.setup is not None:
                step.setup(client)
            if step.settle:
                _settle(emu)
            recorded = exchange(step.name)
            status, body = _send(client, recorded, step.body)
            where = f"{flow}/{step.name} ({recorded.source.path} entry {recorded.source.entry})"
            assert status == recorded.response.status, f"{where}: status {status}: {body}"
            for path in step.reads:
                _agree(recorded.response.body, body, path, where)


def test_a_wrong_key_is_refused_as_recorded(emu: BatchEmulator) -> None:
    recorded = exchange("auth_failed_unknown_account")
    wrong = base64.b64encode(b"not this account's key").decode()
    client = BatchClient(emu.endpoint, AzureNamedKeyCredential(emu.account, wrong), transport=emu.transport())
    _job("BatchUser-testAddMultiTasksWithErrorsync")(emu.client(retry_total=0))

    status, body = _send(client, recorded, None)

    assert status == recorded.response.status == 403
    assert body["code"] == recorded.response.body["code"] == "AuthenticationFailed"


def test_a_body_over_1_mib_is_refused_as_recorded(emu: BatchEmulator) -> None:
    """The recording's one task has 10,000 resource files; its SAS URLs were replaced with REDACTED
    in the recording, so the body is rebuilt with URLs of a real SAS's length."""
    recorded = exchange("request_body_too_large")
    task = dict(recorded.request.body["value"][0])
    url = "https://account.blob.core.windows.net/container/blob?" + "sv=2025-01-05&sig=" + "x" * 60
    task["resourceFiles"] = [{"httpUrl": url, "filePath": f"resourceFile{i}"} for i in range(10_000)]
    _job("BatchUser-failIfPoisonTaskTooLarge-sync")(emu.client(retry_total=0))

    status, body = _send(emu.client(retry_total=0), recorded, {"value": [task]})

    assert status == 413
    for path in (*ERROR_READS, "values"):
        _agree(recorded.response.body, body, path, "request_body_too_large")


# ---- helpers ---------------------------------------------------------------------------------------


def _settle(emu: BatchEmulator) -> None:
    with emu.store.lock:
        emu.store.paused = False
    emu.settle()
    with emu.store.lock:
        emu.store.paused = True


def _send(client: BatchClient, recorded: Exchange, body: Json) -> tuple[int, Json]:
    query = {k: v for k, v in recorded.request.query.items() if k.lower() != "api-version"}
    query["api-version"] = API_VERSION
    content = body if body is not None else recorded.request.body
    request = HttpRequest(
        recorded.request.method,
        recorded.request.path,
        params=query,
        json=content,
        headers={"Content-Type": "application/json; odata=minimalmetadata"} if content is not None else None,
    )
    try:
        response = client.send_request(request)
    except HttpResponseError as e:  # azure-batch's send_request raises for error statuses
        assert e.response is not None
        response = e.response  # type: ignore[assignment]
    text = response.text()
    return response.status_code, json.loads(text) if text.strip() else None


def _agree(recorded: Json, answered: Json, path: str, where: str) -> None:
    kind, _, path = path.rpartition(":")
    if kind == "has":
        assert _values(answered, path) and _values(recorded, path), f"{where}: {path} missing"
        return
    if kind == "keys":
        if path:
            want = sorted({tuple(sorted(v)) for v in _values(recorded, path) if isinstance(v, dict)})
            got = sorted({tuple(sorted(v)) for v in _values(answered, path) if isinstance(v, dict)})
        else:
            want = [tuple(sorted(k for k in recorded if k != "odata.metadata"))]
            got = [tuple(sorted(k for k in answered if k != "odata.metadata"))]
        assert got == want, f"{where}: the keys of {path or 'the body'}: {got} != recorded {want}"
        return
    want = _values(recorded, path)
    got = _values(answered, path)
    if path.startswith("value[*]"):  # list items and per-task results come in any order
        assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, want)), (
            f"{where}: {path}: {got} != {want}"
        )
        return
    assert got == want, f"{where}: {path}: {got} != recorded {want}"


def _values(doc: Json, path: str) -> list[Json]:
    """Every value at `path` ("a/b", "value[*]/c"); a missing key gives no value."""
    nodes: list[Json] = [doc]
    for part in path.split("/") if path else []:
        spread = part.endswith("[*]")
        key = part[:-3] if spread else part
        nxt: list[Json] = []
        for node in nodes:
            if isinstance(node, dict) and key in node:
                value = node[key]
                nxt.extend(value if spread and isinstance(value, list) else [value])
        nodes = nxt
    return nodes
