"""The Batch service emulator, driven by the real azure-batch SDK through its transport (and over HTTP).

Every test checks what a client sees: status codes, error codes and messages through the SDK's own
exceptions, resource states, files, and blobs in Azurite. Waits poll the emulator with a generous
timeout; nothing asserts on elapsed time.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.batch.models._models import BatchJobTerminateOptions as TerminateOptions  # not exported in 15.1.0
from azure.core.credentials import AccessToken, AzureNamedKeyCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceResponseError,
)
from azure.core.rest import HttpResponse
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)
from azurite import AzuriteInfo
from batch_emulator import DEFAULT_KEY, MESSAGES, BatchEmulator, message_text

pytest_plugins = ["azurite"]

VM = bm.VirtualMachineConfiguration(
    image_reference=bm.BatchVmImageReference(publisher="canonical", offer="ubuntu-24_04-lts", sku="server"),
    node_agent_sku_id="batch.node.ubuntu 24.04",
)
SH = "/bin/sh -c "


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[BatchEmulator]:
    with BatchEmulator(workdir=tmp_path / "batch") as e:
        yield e
        assert e.internal_errors == []


@pytest.fixture
def instant(tmp_path: Path) -> Iterator[BatchEmulator]:
    with BatchEmulator(workdir=tmp_path / "batch", instant=True) as e:
        yield e
        assert e.internal_errors == []


def pool(
    pool_id: str,
    *,
    dedicated: int | None = 1,
    spot: int | None = None,
    slots: int | None = None,
    start_task: bm.BatchStartTask | None = None,
) -> bm.BatchPoolCreateOptions:
    return bm.BatchPoolCreateOptions(
        id=pool_id,
        vm_size="Standard_A1_v2",
        virtual_machine_configuration=VM,
        target_dedicated_nodes=dedicated,
        target_low_priority_nodes=spot,
        task_slots_per_node=slots,
        start_task=start_task,
        metadata=[bm.BatchMetadataItem(name="batchflow-run-id", value="run-1")],
    )


def job(job_id: str, pool_id: str, **kwargs: Any) -> bm.BatchJobCreateOptions:
    return bm.BatchJobCreateOptions(id=job_id, pool_info=bm.BatchPoolInfo(pool_id=pool_id), **kwargs)


def task(task_id: str, command: str, **kwargs: Any) -> bm.BatchTaskCreateOptions:
    return bm.BatchTaskCreateOptions(id=task_id, command_line=command, **kwargs)


def sh(script: str) -> str:
    """A command line running `script` under /bin/sh (Batch itself runs no shell)."""
    return SH + "'" + script.replace("'", "'\\''") + "'"


def add(
    client: BatchClient, job_id: str, tasks: list[bm.BatchTaskCreateOptions]
) -> list[bm.BatchTaskCreateResult]:
    result = client.create_task_collection(job_id, bm.BatchTaskGroup(task_values=tasks))
    return list(result.result_values or [])


def wait(emu: BatchEmulator, condition: Callable[[], bool], what: str) -> None:
    emu.wait_for(condition, timeout=60, what=what)


def node_states(client: BatchClient, pool_id: str) -> list[str]:
    return sorted(bm.BatchNodeState(n.state).value for n in client.list_nodes(pool_id))


def wait_task(emu: BatchEmulator, client: BatchClient, job_id: str, task_id: str, state: str) -> bm.BatchTask:
    wait(emu, lambda: client.get_task(job_id, task_id).state == state, f"task {task_id} {state}")
    return client.get_task(job_id, task_id)


def error_of(e: HttpResponseError) -> tuple[int | None, str | None, str]:
    assert isinstance(e.model, bm.BatchError)
    assert e.model.message is not None and e.model.message.value is not None
    return e.status_code, e.error.code if e.error else None, message_text(e.model.message.value)


# ---- pools ------------------------------------------------------------------------------------


def test_pool_create_get_conflict_delete(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_pool(pool("Pool-1", dedicated=2, spot=1, slots=2))
    got = client.get_pool("pool-1")
    assert (got.id, got.vm_size, got.target_dedicated_nodes, got.target_low_priority_nodes) == (
        "Pool-1",
        "standard_a1_v2",  # lowercased, as the service answers (recorded: pool_get_right_after_create)
        2,
        1,
    )
    assert got.task_slots_per_node == 2
    assert [(m.name, m.value) for m in got.metadata or []] == [("batchflow-run-id", "run-1")]
    selected = client.get_pool("Pool-1", select=["id", "state"]).as_dict()
    assert {k: v for k, v in selected.items() if not k.startswith("odata.")} == {
        "id": "Pool-1",
        "state": "active",
    }

    with pytest.raises(ResourceExistsError) as exists:
        client.create_pool(pool("POOL-1"))  # ids ignore case
    assert error_of(exists.value) == (409, "PoolExists", "The specified pool already exists.")

    wait(emu, lambda: node_states(client, "Pool-1") == ["idle"] * 3, "3 idle nodes")
    nodes = list(client.list_nodes("Pool-1"))
    assert sorted(bool(n.is_dedicated) for n in nodes) == [False, True, True]
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}["Pool-1"]
    assert counts.dedicated is not None and counts.low_priority is not None
    assert (counts.dedicated.idle, counts.dedicated.total, counts.low_priority.idle) == (2, 2, 1)
    after = client.get_pool("Pool-1")
    assert (after.allocation_state, after.current_dedicated_nodes, after.current_low_priority_nodes) == (
        bm.AllocationState.STEADY,
        2,
        1,
    )

    with emu.paused():
        poller = client.begin_delete_pool("Pool-1", polling_interval=0)
        assert client.get_pool("Pool-1", select=["state"]).state == bm.BatchPoolState.DELETING
        with pytest.raises(ResourceExistsError) as deleting:
            client.create_pool(pool("Pool-1"))
        assert error_of(deleting.value)[1] == "PoolBeingDeleted"
    poller.result()
    assert poller.status() == "Succeeded"
    with pytest.raises(ResourceNotFoundError) as gone:
        client.get_pool("Pool-1")
    assert error_of(gone.value) == (404, "PoolNotFound", "The specified pool does not exist.")
    with pytest.raises(ResourceNotFoundError):
        client.begin_delete_pool("Pool-1")


@pytest.mark.parametrize(
    ("body", "status", "code", "values"),
    [
        (
            {"id": "p", "virtualMachineConfiguration": {}},
            400,
            "MissingRequiredProperty",
            {"PropertyName": "vmSize"},
        ),
        ({"id": "bad id!", "vmSize": "S"}, 400, "InvalidPropertyValue", {"PropertyName": "id"}),
        (
            {
                "id": "p",
                "vmSize": "S",
                "enableAutoScale": True,
                "autoScaleFormula": "$TargetDedicatedNodes=1;",
            }
            | {"targetDedicatedNodes": 1},
            400,
            "InvalidPropertyValue",
            {"PropertyName": "targetDedicatedNodes"},
        ),
        (
            {"id": "p", "vmSize": "S", "enableAutoScale": True},
            400,
            "MissingRequiredProperty",
            {"PropertyName": "autoScaleFormula"},
        ),
        (
            {"id": "p", "vmSize": "S", "targetDedicatedNodes": 1, "taskSlotsPerNode": 0},
            400,
            "InvalidPropertyValue",
            {"PropertyName": "taskSlotsPerNode"},
        ),
        (
            {"id": "p", "vmSize": "S", "targetDedicatedNodes": 1, "resizeTimeout": "PT1M"},
            400,
            "InvalidPropertyValue",
            {"PropertyName": "resizeTimeout"},
        ),
    ],
)
def test_pool_validation(
    emu: BatchEmulator, body: dict[str, Any], status: int, code: str, values: dict[str, str]
) -> None:
    client = emu.client(retry_total=0)
    wire = {"virtualMachineConfiguration": VM.as_dict(), **body}
    with pytest.raises(HttpResponseError) as e:
        client.create_pool(bm.BatchPoolCreateOptions(wire))
    assert error_of(e.value)[:2] == (status, code)
    assert e.value.model is not None
    details = {d.key: d.value for d in e.value.model.error_values or []}
    assert details.items() >= values.items()
    assert list(client.list_pools()) == []


def test_autoscale_pool_reads_its_formula(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    options = bm.BatchPoolCreateOptions(
        id="auto",
        vm_size="S",
        virtual_machine_configuration=VM,
        enable_auto_scale=True,
        auto_scale_formula=(
            "$TargetDedicatedNodes = 1; $TargetLowPriorityNodes = 2; $NodeDeallocationOption = requeue;"
        ),
    )
    client.create_pool(options)
    wait(emu, lambda: node_states(client, "auto") == ["idle"] * 3, "3 idle nodes")
    got = client.get_pool("auto")
    assert (got.enable_auto_scale, got.target_dedicated_nodes, got.target_low_priority_nodes) == (True, 1, 2)
    assert got.auto_scale_run is not None
    assert (
        got.auto_scale_run.results
        == "$TargetDedicatedNodes=1;$TargetLowPriorityNodes=2;$NodeDeallocationOption=requeue"
    )


def test_node_filter_and_files(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    start = bm.BatchStartTask(
        command_line=sh('echo "node $AZ_BATCH_NODE_ID" > "$AZ_BATCH_NODE_SHARED_DIR/who.txt"')
    )
    client.create_pool(pool("p", dedicated=2, start_task=start))
    wait(emu, lambda: node_states(client, "p") == ["idle", "idle"], "2 idle nodes")
    assert len(list(client.list_nodes("p", filter="state eq 'idle'", select=["id", "state"]))) == 2
    assert list(client.list_nodes("p", filter="state eq 'starttaskfailed'")) == []
    node = next(iter(client.list_nodes("p")))
    assert (
        node.start_task_info is not None
        and node.start_task_info.result == bm.BatchTaskExecutionResult.SUCCESS
    )
    names = {f.name for f in client.list_node_files("p", node.id, recursive=True)}
    assert {"shared/who.txt", "startup/stdout.txt", "startup/stderr.txt", "startup/wd"} <= names
    content = b"".join(client.download_node_file("p", node.id, "shared/who.txt"))
    assert content == f"node {node.id}\n".encode()
    with pytest.raises(ResourceNotFoundError) as missing:
        b"".join(client.download_node_file("p", node.id, "shared/nothing.txt"))
    assert error_of(missing.value)[1] == "FileNotFound"


# ---- authentication ----------------------------------------------------------------------------


def test_wrong_key_is_refused(emu: BatchEmulator) -> None:
    wrong = AzureNamedKeyCredential(emu.account, "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMzI=")
    client = BatchClient(emu.endpoint, wrong, transport=emu.transport(), retry_total=0)
    with pytest.raises(HttpResponseError) as e:
        client.create_pool(pool("p"))
    assert error_of(e.value) == (403, "AuthenticationFailed", MESSAGES["AuthenticationFailed"])
    with pytest.raises(ResourceNotFoundError):  # the right key gets through: no such pool
        emu.client(retry_total=0).get_pool("p")


def test_wrong_account_is_refused(emu: BatchEmulator) -> None:
    other = AzureNamedKeyCredential("otheracct", DEFAULT_KEY)
    client = BatchClient(emu.endpoint, other, transport=emu.transport(), retry_total=0)
    with pytest.raises(HttpResponseError) as e:
        list(client.list_pools())
    assert error_of(e.value)[:2] == (403, "AuthenticationFailed")


def test_unknown_api_version_is_refused(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0, api_version="2020-01-01")
    with pytest.raises(HttpResponseError) as e:
        list(client.list_pools())
    assert error_of(e.value)[:2] == (400, "InvalidQueryParameterValue")


class StaticToken:
    """A TokenCredential with a fixed token, recording the scopes asked for."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


def test_bearer_token(tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    with BatchEmulator(workdir=tmp_path, token=token) as emu:
        good = StaticToken(token)
        BatchClient(emu.endpoint, good, transport=emu.transport(), retry_total=0).create_pool(pool("p"))
        assert good.scopes == ["https://batch.core.windows.net//.default"]
        bad = BatchClient(emu.endpoint, StaticToken("stolen"), transport=emu.transport(), retry_total=0)
        with pytest.raises(ClientAuthenticationError) as e:
            bad.get_pool("p")
        assert e.value.status_code == 401


# ---- jobs ---------------------------------------------------------------------------------------


def test_job_lifecycle(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_job(job("j", "later-pool", metadata=[bm.BatchMetadataItem(name="k", value="v")]))
    with pytest.raises(ResourceExistsError) as exists:
        client.create_job(job("J", "later-pool"))
    assert error_of(exists.value) == (409, "JobExists", "The specified job already exists.")
    got = client.get_job("j")
    assert (got.state, got.all_tasks_complete_mode, got.pool_info.pool_id) == (
        bm.BatchJobState.ACTIVE,
        bm.BatchAllTasksCompleteMode.NO_ACTION,
        "later-pool",
    )
    # The pool does not exist: Batch accepts the job and its tasks stay active until it does.
    assert [r.status for r in add(client, "j", [task("t1", sh("exit 0"))])] == ["Success"]
    emu.settle()
    assert client.get_task("j", "t1").state == bm.BatchTaskState.ACTIVE

    client.update_job("j", bm.BatchJobUpdateOptions(priority=5))
    assert client.get_job("j").priority == 5
    # With no options, begin_terminate_job sends no content-type and fails in the SDK (15.1.0): pass a reason.
    poller = client.begin_terminate_job(
        "j", TerminateOptions(termination_reason="UserTerminate"), polling_interval=0
    )
    poller.result()
    assert poller.status() == "Succeeded"
    done = client.get_job("j")
    assert done.state == bm.BatchJobState.COMPLETED
    assert done.execution_info is not None and done.execution_info.termination_reason == "UserTerminate"
    assert client.get_task("j", "t1").state == bm.BatchTaskState.ACTIVE  # active tasks stay active
    with pytest.raises(ResourceExistsError) as completed:
        add(client, "j", [task("t2", sh("exit 0"))])
    assert error_of(completed.value)[1] == "JobCompleted"

    deleter = client.begin_delete_job("j", polling_interval=0)
    deleter.result()
    assert deleter.status() == "Succeeded"
    with pytest.raises(ResourceNotFoundError) as gone:
        client.get_job("j")
    assert error_of(gone.value) == (404, "JobNotFound", "The specified job does not exist.")


def test_a_terminatejob_job_completes_when_its_tasks_do_but_not_with_no_task(instant: BatchEmulator) -> None:
    """The spec says a job with no tasks counts as complete; the recorded service kept a zero-task
    terminatejob job "active" 21 s, until deleted (tests/recordings/jobs.json,
    job_get_terminatejob_no_tasks_active). The recording wins."""
    client = instant.client(retry_total=0)
    client.create_pool(pool("p"))
    client.create_job(job("empty", "p"))
    client.create_job(job("full", "p"))
    assert all(r.status == "Success" for r in add(client, "full", [task(f"t{i}", "x") for i in range(5)]))
    wait(instant, lambda: client.get_job_task_counts("full").task_counts.completed == 5, "5 completed")
    assert client.get_job("full").state == bm.BatchJobState.ACTIVE  # noaction: stays active
    for job_id in ("empty", "full"):
        client.update_job(job_id, bm.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))

    wait(instant, lambda: client.get_job("full").state == bm.BatchJobState.COMPLETED, "full done")
    info = client.get_job("full").execution_info
    assert info is not None and info.termination_reason == "AllTasksComplete"
    instant.settle()
    assert client.get_job("empty").state == bm.BatchJobState.ACTIVE


def test_terminate_job_kills_running_tasks(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_pool(pool("p"))
    client.create_job(job("j", "p"))
    add(client, "j", [task("sleeper", sh("echo $$ > pid; exec sleep 60"))])
    wait_task(emu, client, "j", "sleeper", bm.BatchTaskState.RUNNING)
    pid_file = task_dir(emu, client, "j", "sleeper") / "wd" / "pid"
    wait(emu, pid_file.exists, "the pid file")
    pid = int(pid_file.read_text())
    client.begin_terminate_job("j", TerminateOptions(termination_reason="stop"), polling_interval=0).result()
    ended = client.get_task("j", "sleeper")
    assert ended.state == bm.BatchTaskState.COMPLETED
    assert ended.execution_info is not None and ended.execution_info.failure_info is not None
    assert ended.execution_info.failure_info.code == "TaskEnded"
    wait(emu, lambda: not _alive(pid), "the task's process to end")


def test_job_wall_clock_expiry_terminates_the_job(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_pool(pool("p"))
    limit = bm.BatchJobConstraints(max_wall_clock_time=datetime.timedelta(seconds=1))
    client.create_job(job("j", "p", constraints=limit))
    add(client, "j", [task("long", sh("exec sleep 60"))])
    wait(emu, lambda: client.get_job("j").state == bm.BatchJobState.COMPLETED, "the job to expire")
    info = client.get_job("j").execution_info
    assert info is not None and info.termination_reason == "MaxWallClockTimeExpiry"
    ended = client.get_task("j", "long").execution_info
    assert ended is not None and ended.failure_info is not None and ended.failure_info.code == "TaskEnded"


def test_terminate_and_delete_single_tasks(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_job(job("j", "no-pool"))
    add(client, "j", [task("a", "x"), task("b", "x")])
    client.terminate_task("j", "a")
    ended = client.get_task("j", "a")
    assert ended.state == bm.BatchTaskState.COMPLETED
    assert ended.execution_info is not None and ended.execution_info.result == "failure"
    with pytest.raises(ResourceExistsError) as again:
        client.terminate_task("j", "a")
    assert error_of(again.value)[1] == "TaskCompleted"
    client.delete_task("j", "b")
    with pytest.raises(ResourceNotFoundError) as gone:
        client.get_task("j", "b")
    assert error_of(gone.value) == (404, "TaskNotFound", "The specified task does not exist.")
    counts = client.get_job_task_counts("j").task_counts
    assert (counts.active, counts.completed, counts.failed) == (0, 1, 1)


def test_a_job_wall_clock_runs_from_the_jobs_creation_on_the_services_clock(instant: BatchEmulator) -> None:
    """maxWallClockTime is "measured from the time the Job is created" (BatchJobConstraints), also when
    a PATCH sets it later; `advance` moves the service's clock, no test waits for it."""
    client = instant.client(retry_total=0)
    client.create_job(job("j", "no-pool"))
    instant.advance(3000)
    limit = bm.BatchJobConstraints(max_wall_clock_time=datetime.timedelta(hours=1))
    client.update_job("j", bm.BatchJobUpdateOptions(constraints=limit))
    instant.settle()
    assert client.get_job("j").state == bm.BatchJobState.ACTIVE
    instant.advance(601)
    wait(instant, lambda: client.get_job("j").state == bm.BatchJobState.COMPLETED, "the job to expire")
    info = client.get_job("j").execution_info
    assert info is not None and info.termination_reason == "MaxWallClockTimeExpiry"
    with pytest.raises(ValueError, match="only moves forward"):
        instant.advance(-1)


# ---- auto pools ---------------------------------------------------------------------------------


def auto_job(
    job_id: str, *, prefix: str | None = "run-pool", keep_alive: bool | None = None, **kwargs: Any
) -> bm.BatchJobCreateOptions:
    spec = bm.BatchPoolSpecification(
        vm_size="Standard_A1_v2",
        virtual_machine_configuration=VM,
        target_dedicated_nodes=1,
        metadata=[bm.BatchMetadataItem(name="batchflow-run-id", value="run-1")],
    )
    auto = bm.BatchAutoPoolSpecification(
        auto_pool_id_prefix=prefix,
        pool_lifetime_option=bm.BatchPoolLifetimeOption.JOB,
        keep_alive=keep_alive,
        pool=spec,
    )
    return bm.BatchJobCreateOptions(
        id=job_id, pool_info=bm.BatchPoolInfo(auto_pool_specification=auto), **kwargs
    )


def auto_pool_id(client: BatchClient, job_id: str) -> str:
    info = client.get_job(job_id).execution_info
    assert info is not None and info.pool_id is not None
    return info.pool_id


def test_an_auto_pool_is_made_with_its_job(instant: BatchEmulator) -> None:
    client = instant.client(retry_total=0)
    client.create_job(auto_job("j"))
    client.create_job(auto_job("k", prefix=None))

    made = client.get_job("j")
    pool_id = auto_pool_id(client, "j")
    assert re.fullmatch(r"run-pool_[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}", pool_id)
    assert re.fullmatch(r"[0-9A-F]{8}(-[0-9A-F]{4}){3}-[0-9A-F]{12}", auto_pool_id(client, "k"))
    assert made.pool_info is not None and made.pool_info.pool_id is None
    auto = made.pool_info.auto_pool_specification
    assert auto is not None and (auto.pool_lifetime_option, auto.keep_alive) == ("job", False)
    pool_made = client.get_pool(pool_id)
    assert [(m.name, m.value) for m in pool_made.metadata or []] == [("batchflow-run-id", "run-1")]
    wait(instant, lambda: node_states(client, pool_id) == ["idle"], "the auto pool's node")
    add(client, "j", [task("t", "true")])
    wait_task(instant, client, "j", "t", "completed")
    assert client.get_task("j", "t").node_info.pool_id == pool_id  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["all tasks complete", "terminated", "wall clock", "deleted"])
def test_an_auto_pool_is_deleted_when_its_job_ends(instant: BatchEmulator, how: str) -> None:
    client = instant.client(retry_total=0)
    limit = bm.BatchJobConstraints(max_wall_clock_time=datetime.timedelta(hours=2))
    client.create_job(auto_job("j", constraints=limit))
    pool_id = auto_pool_id(client, "j")
    wait(instant, lambda: node_states(client, pool_id) == ["idle"], "the auto pool's node")
    if how == "all tasks complete":
        add(client, "j", [task("t", "true")])
        client.update_job("j", bm.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    elif how == "terminated":
        client.begin_terminate_job(
            "j", TerminateOptions(termination_reason="stop"), polling_interval=0
        ).result()
    elif how == "wall clock":
        instant.advance(2 * 3600)
    else:
        client.begin_delete_job("j", polling_interval=0).result()

    wait(instant, lambda: pool_id not in [p.id for p in client.list_pools()], "the auto pool to go")
    if how != "deleted":
        assert client.get_job("j").state == bm.BatchJobState.COMPLETED


def test_an_auto_pool_kept_alive_outlives_its_job(instant: BatchEmulator) -> None:
    client = instant.client(retry_total=0)
    client.create_job(auto_job("j", keep_alive=True))
    pool_id = auto_pool_id(client, "j")
    client.begin_terminate_job("j", TerminateOptions(termination_reason="stop"), polling_interval=0).result()
    instant.settle()
    assert client.get_pool(pool_id).state == bm.BatchPoolState.ACTIVE


def test_a_failed_auto_pool_completes_its_job_with_the_scheduling_error(instant: BatchEmulator) -> None:
    client = instant.client(retry_total=0)
    instant.fail_auto_pool("PoolQuotaReached", "The specified account has reached its pool quota.")
    client.create_job(auto_job("j"))

    found = client.get_job("j")
    assert found.state == bm.BatchJobState.COMPLETED
    info = found.execution_info
    assert info is not None and info.pool_id is None and info.scheduling_error is not None
    assert (info.scheduling_error.code, info.scheduling_error.category) == ("PoolQuotaReached", "usererror")
    assert list(client.list_pools()) == []
    client.create_job(auto_job("k"))  # the fault was for one auto pool only
    assert client.get_pool(auto_pool_id(client, "k"))


@pytest.mark.parametrize(
    ("change", "status", "code", "name"),
    [
        (lambda b: b["poolInfo"].update(poolId="p"), 400, "InvalidPropertyValue", "poolInfo"),
        (
            lambda b: b["poolInfo"]["autoPoolSpecification"].update(autoPoolIdPrefix="x" * 21),
            400,
            "InvalidPropertyValue",
            "autoPoolIdPrefix",
        ),
        (
            lambda b: b["poolInfo"]["autoPoolSpecification"].update(poolLifetimeOption="jobschedule"),
            400,
            "InvalidPropertyValue",
            "poolLifetimeOption",
        ),
        (
            lambda b: b["poolInfo"]["autoPoolSpecification"].pop("pool"),
            400,
            "MissingRequiredProperty",
            "autoPoolSpecification.pool",
        ),
        (
            lambda b: b["poolInfo"]["autoPoolSpecification"]["pool"].pop("vmSize"),
            400,
            "MissingRequiredProperty",
            "vmSize",
        ),
    ],
    ids=["pool id and auto pool", "prefix too long", "schedule lifetime", "no pool", "no vm size"],
)
def test_auto_pool_validation(
    instant: BatchEmulator, change: Callable[[dict[str, Any]], object], status: int, code: str, name: str
) -> None:
    client = instant.client(retry_total=0)
    body = auto_job("j").as_dict(exclude_readonly=True)
    change(body)
    with pytest.raises(HttpResponseError) as refused:
        client.create_job(bm.BatchJobCreateOptions(body))
    assert error_of(refused.value)[:2] == (status, code)
    assert refused.value.model is not None
    details = {d.key: d.value for d in refused.value.model.error_values or []}
    assert details["PropertyName"] == name
    assert list(client.list_jobs()) == [] and list(client.list_pools()) == []


# ---- adding tasks -------------------------------------------------------------------------------


def test_add_task_collection_limits(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_job(job("j", "no-pool-yet"))  # tasks stay active: nothing runs
    with pytest.raises(HttpResponseError) as too_many:
        add(client, "j", [task(f"t{i}", "x") for i in range(101)])
    assert error_of(too_many.value) == (413, "RequestBodyTooLarge", MESSAGES["RequestBodyTooLarge"])
    assert client.get_job_task_counts("j").task_counts.active == 0  # nothing of it was added

    big = [bm.EnvironmentSetting(name="BLOB", value="x" * 300_000)]
    with pytest.raises(HttpResponseError) as too_big:
        add(client, "j", [task(f"b{i}", "x", environment_settings=big) for i in range(4)])
    assert error_of(too_big.value)[:2] == (413, "RequestBodyTooLarge")
    assert [r.status for r in add(client, "j", [task("b0", "x", environment_settings=big)])] == ["Success"]

    results = add(client, "j", [task(f"t{i}", "x") for i in range(100)])
    # "Success" with a capital S, in no particular order: as recorded (tests/recordings/tasks.json,
    # add_task_collection_success and add_task_collection_results_out_of_order).
    assert sorted((r.status, r.task_id) for r in results) == sorted(("Success", f"t{i}") for i in range(100))
    assert [r.task_id for r in results] != [f"t{i}" for i in range(100)]
    assert client.get_job_task_counts("j").task_counts.active == 101


def test_add_task_collection_per_task_errors(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_job(job("j", "no-pool-yet"))
    add(client, "j", [task("Existing", "x")])
    results = add(
        client,
        "j",
        [
            task("new-1", "x"),
            task("existing", "x"),
            task("bad/id", "x"),
            task("new-2", "x"),
            task("NEW-1", "x"),
        ],
    )
    summary = {(r.status, r.task_id, r.error.code if r.error else None) for r in results}
    assert summary == {
        ("Success", "new-1", None),
        ("clienterror", "existing", "TaskExists"),
        ("clienterror", "bad/id", "InvalidPropertyValue"),
        ("Success", "new-2", None),
        ("clienterror", "NEW-1", "TaskExists"),
    }
    exists = next(r.error for r in results if r.task_id == "existing")
    assert exists is not None and exists.message is not None and exists.message.value is not None
    assert message_text(exists.message.value) == "The specified task already exists."
    assert client.get_job_task_counts("j").task_counts.active == 3
    with pytest.raises(ResourceExistsError) as single:
        client.create_task("j", task("new-2", "x"))
    assert error_of(single.value)[1] == "TaskExists"
    client.create_task("j", task("single", "x"))
    assert client.get_task("j", "single").command_line == "x"
    with pytest.raises(ResourceNotFoundError) as no_job:
        add(client, "nope", [task("t", "x")])
    assert error_of(no_job.value)[1] == "JobNotFound"


# ---- monitoring -------------------------------------------------------------------------------


def test_task_counts_and_paged_listing(instant: BatchEmulator) -> None:
    client = instant.client(retry_total=0)
    client.create_job(job("waiting", "no-pool"))
    for start in range(0, 250, 100):
        add(client, "waiting", [task(f"w{i:03d}", "x") for i in range(start, min(start + 100, 250))])
    counts = client.get_job_task_counts("waiting")
    assert counts.task_counts.as_dict() == {
        "active": 250,
        "running": 0,
        "completed": 0,
        "succeeded": 0,
        "failed": 0,
    }
    assert counts.task_slot_counts.active == 250

    before = instant.count("GET", "/jobs/{job}/tasks")
    listed = list(
        client.list_tasks("waiting", filter="state eq 'active'", select=["id", "state"], max_results=100)
    )
    assert [t.id for t in listed] == [f"w{i:03d}" for i in range(250)]
    assert {t.state for t in listed} == {bm.BatchTaskState.ACTIVE}
    assert all(t.command_line is None for t in listed)  # only what $select asked for
    assert instant.count("GET", "/jobs/{job}/tasks") - before == 3  # pages of 100, 100, 50

    client.create_pool(pool("p", dedicated=2, slots=4))
    client.create_job(job("run", "p"))
    for start in range(0, 250, 100):
        add(client, "run", [task(f"r{i:03d}", "x") for i in range(start, min(start + 100, 250))])
    wait(instant, lambda: client.get_job_task_counts("run").task_counts.succeeded == 250, "250 succeeded")
    done = list(
        client.list_tasks(
            "run", filter="state eq 'completed' and executionInfo/result eq 'success'", max_results=100
        )
    )
    assert len(done) == 250
    assert list(client.list_tasks("run", filter="executionInfo/result eq 'failure'")) == []
    assert instant.count("GET", "/jobs/{job}/taskcounts") >= 1

    with pytest.raises(HttpResponseError) as bad_filter:
        list(client.list_tasks("run", filter="colour eq 'red'"))
    assert error_of(bad_filter.value)[:2] == (400, "InvalidQueryParameterValue")
    with pytest.raises(HttpResponseError) as bad_select:
        list(client.list_tasks("run", select=["id", "colour"]))
    assert error_of(bad_select.value)[:2] == (400, "InvalidQueryParameterValue")


def test_list_tasks_filters_only_on_what_microsofts_table_lists(instant: BatchEmulator) -> None:
    """docs: https://learn.microsoft.com/rest/api/batchservice/odata-filters-in-batch#list-tasks"""
    client = instant.client(retry_total=0)
    client.create_pool(pool("p", dedicated=1, slots=4))
    client.create_job(job("run", "p"))
    add(client, "run", [task(f"t{i}", "x") for i in range(3)])
    wait(instant, lambda: client.get_job_task_counts("run").task_counts.succeeded == 3, "3 succeeded")
    documented = [
        "id ge 't1' and id lt 't2'",
        "startswith(id, 't')",
        "state ne 'active'",
        "stateTransitionTime ge datetime'2000-01-01T00:00:00Z'",
        "creationTime lt datetime'2999-01-01T00:00:00Z'",
        "executionInfo/endTime gt datetime'2000-01-01T00:00:00Z'",
        "executionInfo/exitCode eq 0",
        "executionInfo/result ne 'failure'",
    ]
    assert [len(list(client.list_tasks("run", filter=f, select=["id"]))) for f in documented] == [
        1,
        3,
        3,
        3,
        3,
        3,
        3,
        3,
    ]
    for undocumented in (
        "requiredSlots eq 1",  # a task property, but not in the table
        "executionInfo/retryCount eq 0",
        "state gt 'active'",  # state: eq, ne only
        "executionInfo/result ge 'success'",
        "startswith(state, 'c')",
    ):
        with pytest.raises(HttpResponseError) as refused:
            list(client.list_tasks("run", filter=undocumented))
        assert error_of(refused.value)[:2] == (400, "InvalidQueryParameterValue"), undocumented


def test_a_task_listing_bounded_by_id_lists_what_a_scan_of_every_task_finds(instant: BatchEmulator) -> None:
    """The emulator starts a listing at its lower bound on id and ends it past the upper one: the
    same tasks, page after page, as the filter applied to every task."""
    client = instant.client(retry_total=0)
    client.create_job(job("waiting", "no-pool"))
    ids = [f"w{i:03d}" for i in range(250)] + ["W-upper", "a", "zz"]
    for start in range(0, len(ids), 100):
        add(client, "waiting", [task(i, "x") for i in ids[start : start + 100]])
    every = [t.id for t in client.list_tasks("waiting", select=["id"])]
    assert len(every) == len(ids)
    cases: list[tuple[str, Callable[[str], bool]]] = [  # each filter, and the same test in Python
        ("id ge 'w050' and id lt 'w120'", lambda i: "w050" <= i < "w120"),
        ("id gt 'w050' and id le 'w120'", lambda i: "w050" < i <= "w120"),
        ("id lt 'w010'", lambda i: i < "w010"),
        ("id ge 'w240'", lambda i: i >= "w240"),
        ("state eq 'active' and id ge 'W1' and id lt 'w2'", lambda i: "w1" <= i < "w2"),  # without case
        ("id ge 'w100' and id ge 'w200' and id lt 'w300' and id lt 'w210'", lambda i: "w200" <= i < "w210"),
        ("id lt 'w010' or id ge 'w245'", lambda i: i < "w010" or i >= "w245"),  # no bounds: a scan
        ("not (id lt 'w245')", lambda i: i >= "w245"),
        ("id ge 'x'", lambda i: i >= "x"),
        ("id lt 'a'", lambda i: i < "a"),
    ]
    for where, test in cases:
        before = instant.count("GET", "/jobs/{job}/tasks")
        paged = [t.id for t in client.list_tasks("waiting", filter=where, select=["id"], max_results=7)]
        pages = instant.count("GET", "/jobs/{job}/tasks") - before
        scanned = [i for i in every if test(i.lower())]
        assert paged == scanned, where
        assert pages == max(1, -(-len(scanned) // 7)), where  # pages of 7, none empty


def test_a_task_listing_with_select_shows_what_the_full_listing_shows(instant: BatchEmulator) -> None:
    """The emulator renders only the properties a page shows and its filter reads: the same values."""
    client = instant.client(retry_total=0)
    client.create_pool(pool("p", dedicated=1, slots=4))
    client.create_job(job("run", "p"))
    add(client, "run", [task(f"t{i}", "x") for i in range(3)])
    wait(instant, lambda: client.get_job_task_counts("run").task_counts.succeeded == 3, "3 succeeded")
    full = [t.as_dict() for t in client.list_tasks("run")]
    for select in (
        ["id", "state", "executionInfo"],
        ["url", "eTag", "creationTime", "lastModified", "stateTransitionTime"],
        ["id", "commandLine", "constraints"],
    ):
        for where in (None, "state eq 'completed'", "stateTransitionTime ge datetime'2000-01-01T00:00:00Z'"):
            listed = [t.as_dict() for t in client.list_tasks("run", filter=where, select=select)]
            assert listed == [{k: t[k] for k in select} for t in full], (select, where)


def test_ten_thousand_instant_tasks(instant: BatchEmulator) -> None:
    client = instant.client(retry_total=0)
    client.create_pool(pool("p", dedicated=4, slots=8))
    client.create_job(job("big", "p"))

    def submit(chunk: int) -> int:
        tasks = [task(f"task-{chunk:03d}-{i:02d}", "x") for i in range(100)]
        return sum(r.status == "Success" for r in add(client, "big", tasks))

    with ThreadPoolExecutor(8) as pool_:
        assert sum(pool_.map(submit, range(100))) == 10_000
    client.update_job("big", bm.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    wait(
        instant,
        lambda: client.get_job("big", select=["state"]).state == bm.BatchJobState.COMPLETED,
        "job done",
    )
    counts = client.get_job_task_counts("big").task_counts
    assert (counts.completed, counts.succeeded, counts.failed, counts.active) == (10_000, 10_000, 0, 0)
    assert instant.count("POST", "/jobs/big/addtaskcollection") == 100


# ---- running tasks for real -------------------------------------------------------------------


def task_dir(emu: BatchEmulator, client: BatchClient, job_id: str, task_id: str) -> Path:
    info = client.get_task(job_id, task_id).node_info
    assert info is not None and info.pool_id is not None and info.node_id is not None
    assert info.task_root_directory == f"workitems/{job_id}/job-1/{task_id}"
    return emu.workdir / info.pool_id / info.node_id / "workitems" / job_id / "job-1" / task_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass(frozen=True)
class Blobs:
    """Two fresh Azurite containers: task inputs (read by SAS URL) and outputs (a create/write SAS URL)."""

    service: BlobServiceClient
    inputs: str
    outputs: str
    outputs_url: str
    read_url: Callable[[str], str]


@pytest.fixture
def blobs(azurite: AzuriteInfo) -> Iterator[Blobs]:
    suffix = uuid.uuid4().hex[:8]
    inputs, outputs = f"in-{suffix}", f"out-{suffix}"
    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    write = generate_container_sas(
        azurite.account_name,
        outputs,
        account_key=azurite.account_key,
        permission=ContainerSasPermissions(write=True, create=True),
        expiry=expiry,
    )

    def read_url(blob: str) -> str:
        sas = generate_blob_sas(
            azurite.account_name,
            inputs,
            blob,
            account_key=azurite.account_key,
            permission=BlobSasPermissions(read=True),
            expiry=expiry,
        )
        return f"{azurite.blob_endpoint}/{inputs}/{quote(blob)}?{sas}"

    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        service.create_container(inputs)
        service.create_container(outputs)
        yield Blobs(service, inputs, outputs, f"{azurite.blob_endpoint}/{outputs}?{write}", read_url)


def output(pattern: str, container_url: str, path: str, condition: str) -> bm.OutputFile:
    return bm.OutputFile(
        file_pattern=pattern,
        destination=bm.OutputFileDestination(
            container=bm.OutputFileBlobContainerDestination(container_url=container_url, path=path)
        ),
        upload_options=bm.OutputFileUploadConfiguration(upload_condition=condition),
    )


def test_real_tasks_with_resource_and_output_files(emu: BatchEmulator, blobs: Blobs) -> None:
    out_url, read_url = blobs.outputs_url, blobs.read_url
    blobs.service.get_blob_client(blobs.inputs, "in/data file.txt").upload_blob(b"payload\n")
    client = emu.client(retry_total=0)
    start = bm.BatchStartTask(command_line=sh('echo ready > "$AZ_BATCH_NODE_SHARED_DIR/ready.txt"'))
    client.create_pool(pool("p", dedicated=1, slots=2, start_task=start))
    client.create_job(
        job("j", "p", common_environment_settings=[bm.EnvironmentSetting(name="FROM_JOB", value="job value")])
    )
    ok_script = (
        "mkdir -p out/sub && tr a-z A-Z < input.txt > out/upper.txt && "
        'cp "$AZ_BATCH_NODE_SHARED_DIR/ready.txt" out/sub/ready.txt && '
        'env | grep -e ^AZ_BATCH_ -e ^FROM_ -e ^HOME= | sort > env.txt && pwd && echo "$FROM_JOB/$MINE"'
    )
    ok = task(
        "ok",
        sh(ok_script),
        resource_files=[bm.ResourceFile(http_url=read_url("in/data file.txt"), file_path="input.txt")],
        environment_settings=[bm.EnvironmentSetting(name="MINE", value="task value")],
        output_files=[
            output("out/**/*.txt", out_url, "results/ok", "tasksuccess"),
            output("env.txt", out_url, "meta/ok-env.txt", "tasksuccess"),
            output("../stdout.txt", out_url, "logs/ok/stdout.txt", "taskcompletion"),
            output("out/*.txt", out_url, "failed/ok", "taskfailure"),
        ],
    )
    bad = task(
        "bad",
        sh("echo oops >&2; exit 2"),
        output_files=[
            output("../stderr.txt", out_url, "logs/bad/stderr.txt", "taskfailure"),
            output("*.txt", out_url, "results/bad", "tasksuccess"),
        ],
    )
    missing = task(
        "missing-input",
        sh("exit 0"),
        resource_files=[bm.ResourceFile(http_url=read_url("in/absent.txt"), file_path="absent.txt")],
    )
    assert [r.status for r in add(client, "j", [ok, bad, missing])] == ["Success"] * 3
    for task_id in ("ok", "bad", "missing-input"):
        wait_task(emu, client, "j", task_id, bm.BatchTaskState.COMPLETED)

    outputs = blobs.service.get_container_client(blobs.outputs)
    assert sorted(b.name for b in outputs.list_blobs()) == [
        "logs/bad/stderr.txt",
        "logs/ok/stdout.txt",
        "meta/ok-env.txt",
        "results/ok/sub/ready.txt",
        "results/ok/upper.txt",
    ]

    def blob_text(name: str) -> str:
        data: bytes = outputs.download_blob(name).readall()
        return data.decode()

    wd = task_dir(emu, client, "j", "ok") / "wd"
    assert blob_text("results/ok/upper.txt") == "PAYLOAD\n"
    assert blob_text("results/ok/sub/ready.txt") == "ready\n"
    assert blob_text("logs/ok/stdout.txt") == f"{wd}\njob value/task value\n"
    assert blob_text("logs/bad/stderr.txt") == "oops\n"
    node_id = wd.parts[-6]
    env = dict(line.split("=", 1) for line in blob_text("meta/ok-env.txt").splitlines())
    node_root = emu.workdir / "p" / node_id
    assert env == {
        "AZ_BATCH_ACCOUNT_NAME": "testacct",
        "AZ_BATCH_ACCOUNT_URL": "https://testacct.eastus.batch.azure.com/",
        "AZ_BATCH_JOB_ID": "j",
        "AZ_BATCH_NODE_ID": node_id,
        "AZ_BATCH_NODE_IS_DEDICATED": "true",
        "AZ_BATCH_NODE_MOUNTS_DIR": str(node_root / "fsmounts"),
        "AZ_BATCH_NODE_ROOT_DIR": str(node_root),
        "AZ_BATCH_NODE_SHARED_DIR": str(node_root / "shared"),
        "AZ_BATCH_NODE_STARTUP_DIR": str(node_root / "startup"),
        "AZ_BATCH_POOL_ID": "p",
        "AZ_BATCH_TASK_DIR": str(wd.parent),
        "AZ_BATCH_TASK_ID": "ok",
        "AZ_BATCH_TASK_USER": "_azbatch",
        "AZ_BATCH_TASK_USER_IDENTITY": "PoolNonAdmin",
        "AZ_BATCH_TASK_WORKING_DIR": str(wd),
        "FROM_JOB": "job value",
        "HOME": str(wd),
    }

    done = client.get_task("j", "ok").execution_info
    assert done is not None and (done.exit_code, done.result, done.failure_info) == (0, "success", None)
    failed = client.get_task("j", "bad").execution_info
    assert failed is not None and failed.failure_info is not None
    assert (failed.exit_code, failed.result, failed.failure_info.code) == (2, "failure", "FailureExitCode")
    assert failed.failure_info.category == bm.BatchErrorSourceCategory.USER_ERROR
    no_input = client.get_task("j", "missing-input").execution_info
    assert no_input is not None and no_input.failure_info is not None
    assert (no_input.exit_code, no_input.failure_info.code, no_input.retry_count) == (None, "BlobNotFound", 0)

    files = {f.name for f in client.list_task_files("j", "ok", recursive=True)}
    assert {"stdout.txt", "stderr.txt", "wd", "wd/input.txt", "wd/out/upper.txt", "wd/env.txt"} <= files
    assert b"".join(client.download_task_file("j", "bad", "stderr.txt")) == b"oops\n"
    props = client.get_task_file_properties("j", "ok", "wd/input.txt")
    assert (props.content_length, props.is_directory) == (8, False)
    assert list(client.list_tasks("j", filter="executionInfo/result eq 'failure'", select=["id"])) != []
    assert sorted(t.id for t in client.list_tasks("j", filter="executionInfo/result eq 'failure'")) == [
        "bad",
        "missing-input",
    ]


def test_command_line_runs_without_a_shell(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_pool(pool("p"))
    client.create_job(job("j", "p"))
    add(client, "j", [task("words", "echo '$HOME' two"), task("nowhere", "no-such-program --flag")])
    wait_task(emu, client, "j", "words", bm.BatchTaskState.COMPLETED)
    assert b"".join(client.download_task_file("j", "words", "stdout.txt")) == b"$HOME two\n"
    info = wait_task(emu, client, "j", "nowhere", bm.BatchTaskState.COMPLETED).execution_info
    assert info is not None and info.failure_info is not None
    assert info.failure_info.code == "CommandProgramNotFound"


def test_start_task_failure_is_visible_on_the_node(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    stderr = "E: Unable to locate package ffmpeg\n"
    emu.fail_start_task("p", exit_code=100, stderr=stderr)
    client.create_pool(
        pool("p", dedicated=2, start_task=bm.BatchStartTask(command_line="apt-get install -y ffmpeg"))
    )
    wait(emu, lambda: node_states(client, "p") == ["starttaskfailed"] * 2, "2 start task failures")
    for node in client.list_nodes("p"):
        info = node.start_task_info
        assert info is not None and info.failure_info is not None
        assert (info.state, info.exit_code, info.result) == ("completed", 100, "failure")
        assert info.failure_info.code == "FailureExitCode"
        assert b"".join(client.download_node_file("p", node.id, "startup/stderr.txt")).decode() == stderr
    counts = next(iter(client.list_pool_node_counts()))
    assert counts.dedicated is not None and counts.dedicated.start_task_failed == 2

    # A start task that really fails, retried once; nothing is scheduled on its node.
    start = bm.BatchStartTask(
        command_line=sh("echo boom >&2; exit 3"), max_task_retry_count=1, wait_for_success=True
    )
    client.create_pool(pool("real", dedicated=1, start_task=start))
    client.create_job(job("j", "real"))
    add(client, "j", [task("never", "true")])
    wait(emu, lambda: node_states(client, "real") == ["starttaskfailed"], "the real start task failure")
    node = next(iter(client.list_nodes("real")))
    assert node.start_task_info is not None
    assert (node.start_task_info.exit_code, node.start_task_info.retry_count) == (3, 1)
    assert b"".join(client.download_node_file("real", node.id, "startup/stderr.txt")) == b"boom\n"
    assert client.get_task("j", "never").state == bm.BatchTaskState.ACTIVE


def test_start_task_override(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    install = "apt-get update && apt-get install -y ffmpeg"
    stand_in = (
        'mkdir -p "$AZ_BATCH_NODE_SHARED_DIR/bin" && echo stand-in > "$AZ_BATCH_NODE_SHARED_DIR/bin/ffmpeg"'
    )
    emu.override_start_task("p", sh(stand_in))
    client.create_pool(pool("p", start_task=bm.BatchStartTask(command_line=sh(install))))
    wait(emu, lambda: node_states(client, "p") == ["idle"], "an idle node")
    (node_id,) = emu.node_ids("p")
    assert (emu.workdir / "p" / node_id / "shared" / "bin" / "ffmpeg").read_text() == "stand-in\n"
    start = client.get_pool("p").start_task
    assert start is not None and start.command_line == sh(install)


def test_max_wall_clock_kills_the_process_group(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_pool(pool("p"))
    client.create_job(job("j", "p"))
    limit = bm.BatchTaskConstraints(max_wall_clock_time=datetime.timedelta(seconds=1), max_task_retry_count=3)
    add(client, "j", [task("slow", sh("sleep 60 & echo $! > child; wait"), constraints=limit)])
    info = wait_task(emu, client, "j", "slow", bm.BatchTaskState.COMPLETED).execution_info
    assert info is not None and info.failure_info is not None
    assert (info.result, info.failure_info.code, info.retry_count) == ("failure", "TaskEnded", 0)
    child = int((task_dir(emu, client, "j", "slow") / "wd" / "child").read_text())
    wait(emu, lambda: not _alive(child), "the background child to be killed")
    constraints = client.get_task("j", "slow").constraints
    assert constraints is not None and constraints.max_wall_clock_time == datetime.timedelta(seconds=1)


def test_retries(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_pool(pool("p"))
    client.create_job(job("j", "p", constraints=bm.BatchJobConstraints(max_task_retry_count=2)))
    counter = 'n=$(cat "$AZ_BATCH_NODE_SHARED_DIR/$AZ_BATCH_TASK_ID" 2>/dev/null || echo 0); n=$((n+1)); '
    counter += 'echo $n > "$AZ_BATCH_NODE_SHARED_DIR/$AZ_BATCH_TASK_ID"; echo "attempt $n"; [ $n -ge 3 ]'
    one_retry = bm.BatchTaskConstraints(max_task_retry_count=1)
    add(client, "j", [task("third-time", sh(counter)), task("gives-up", sh(counter), constraints=one_retry)])
    lucky = wait_task(emu, client, "j", "third-time", bm.BatchTaskState.COMPLETED).execution_info
    assert lucky is not None and (lucky.result, lucky.exit_code, lucky.retry_count) == ("success", 0, 2)
    assert lucky.last_retry_time is not None
    assert b"".join(client.download_task_file("j", "third-time", "stdout.txt")) == b"attempt 3\n"
    unlucky = wait_task(emu, client, "j", "gives-up", bm.BatchTaskState.COMPLETED).execution_info
    assert unlucky is not None and (unlucky.result, unlucky.exit_code, unlucky.retry_count) == (
        "failure",
        1,
        1,
    )
    counts = client.get_job_task_counts("j").task_counts
    assert (counts.succeeded, counts.failed) == (1, 1)


def test_spot_preemption_requeues_the_running_task(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_pool(pool("p", dedicated=None, spot=1))
    client.create_job(job("j", "p"))
    script = 'echo run >> "$AZ_BATCH_NODE_SHARED_DIR/runs"; [ -f "$AZ_BATCH_NODE_SHARED_DIR/go" ] && exit 0; '
    script += "echo $$ > pid; exec sleep 60"
    add(client, "j", [task("work", sh(script))])
    wait_task(emu, client, "j", "work", bm.BatchTaskState.RUNNING)
    (node_id,) = emu.node_ids("p")
    shared = emu.workdir / "p" / node_id / "shared"
    pid_file = task_dir(emu, client, "j", "work") / "wd" / "pid"
    wait(emu, pid_file.exists, "the first run")
    first = int(pid_file.read_text())

    emu.preempt_node("p", node_id)
    requeued = client.get_task("j", "work")
    assert requeued.state == bm.BatchTaskState.ACTIVE
    assert requeued.execution_info is not None and requeued.execution_info.requeue_count == 1
    assert node_states(client, "p") == ["preempted"]
    counts = next(iter(client.list_pool_node_counts()))
    assert counts.low_priority is not None and counts.low_priority.preempted == 1
    wait(emu, lambda: not _alive(first), "the preempted run's process to end")

    (shared / "go").write_text("")
    emu.restore_node("p", node_id)
    done = wait_task(emu, client, "j", "work", bm.BatchTaskState.COMPLETED).execution_info
    assert done is not None and (done.result, done.requeue_count, done.retry_count) == ("success", 1, 0)
    assert (shared / "runs").read_text() == "run\nrun\n"


def test_unusable_node_requeues_and_the_task_runs_elsewhere(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_pool(pool("p", dedicated=2))
    wait(emu, lambda: node_states(client, "p") == ["idle", "idle"], "2 idle nodes")
    client.create_job(job("j", "p"))
    script = '[ -f "$AZ_BATCH_NODE_SHARED_DIR/bad" ] && exec sleep 60; echo "ran on $AZ_BATCH_NODE_ID"'
    first, second = emu.node_ids("p")
    (emu.workdir / "p" / first / "shared" / "bad").write_text("")
    (emu.workdir / "p" / second / "shared" / "bad").write_text("")
    add(client, "j", [task("t", sh(script))])
    running = wait_task(emu, client, "j", "t", bm.BatchTaskState.RUNNING).node_info
    assert running is not None and running.node_id is not None
    stuck = running.node_id
    healthy = second if stuck == first else first
    (emu.workdir / "p" / healthy / "shared" / "bad").unlink()
    emu.make_node_unusable("p", stuck)
    wait_task(emu, client, "j", "t", bm.BatchTaskState.COMPLETED)
    assert b"".join(client.download_task_file("j", "t", "stdout.txt")) == f"ran on {healthy}\n".encode()
    assert client.get_node("p", stuck).state == bm.BatchNodeState.UNUSABLE
    counts = next(iter(client.list_pool_node_counts()))
    assert counts.dedicated is not None and (counts.dedicated.unusable, counts.dedicated.idle) == (1, 1)
    emu.restore_node("p", stuck)
    wait(emu, lambda: node_states(client, "p") == ["idle", "idle"], "the node back")


def test_resize_pool(instant: BatchEmulator) -> None:
    client = instant.client(retry_total=0)
    client.create_pool(pool("p", dedicated=1))
    client.begin_resize_pool(
        "p", bm.BatchPoolResizeOptions(target_dedicated_nodes=3), polling_interval=0
    ).result()
    wait(instant, lambda: node_states(client, "p") == ["idle"] * 3, "3 idle nodes")
    client.begin_resize_pool(
        "p", bm.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=0
    ).result()
    assert node_states(client, "p") == ["idle"]
    assert client.get_pool("p").current_dedicated_nodes == 1


def test_only_spot_nodes_are_preempted(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_pool(pool("d"))
    wait(emu, lambda: node_states(client, "d") == ["idle"], "a dedicated node")
    (node_id,) = emu.node_ids("d")
    with pytest.raises(ValueError, match=f"node {node_id} is dedicated: only Spot"):
        emu.preempt_node("d", node_id)


# ---- faults -----------------------------------------------------------------------------------


def test_server_busy_then_success_with_sdk_retries(instant: BatchEmulator) -> None:
    client = instant.client()  # the SDK's default retry policy
    client.create_job(job("j", "p"))
    rule = instant.faults.fail_next("GET", "/jobs/{job}/taskcounts", status=503, count=3)
    assert client.get_job_task_counts("j").task_counts.active == 0
    assert rule.hits == 3
    assert instant.count("GET", "/jobs/j/taskcounts") == 4
    assert [r.status for r in instant.requests if r.path == "/jobs/j/taskcounts"] == [503, 503, 503, 200]

    no_retry = instant.client(retry_total=0)
    instant.faults.fail_next("GET", "/jobs/{job}/taskcounts", status=503)
    with pytest.raises(HttpResponseError) as busy:
        no_retry.get_job_task_counts("j")
    assert error_of(busy.value) == (503, "ServerBusy", MESSAGES["ServerBusy"])


def test_throttling_retry_after_is_honoured(instant: BatchEmulator) -> None:
    client = instant.client()
    client.create_job(job("j", "p"))
    instant.faults.retry_after_next("GET", "/jobs/{job}/taskcounts", seconds=7)
    client.get_job_task_counts("j")
    assert instant.sleeps == [7.0]  # the SDK waited what the service asked (scaled to 0 by the emulator)
    no_retry = instant.client(retry_total=0)
    instant.faults.retry_after_next("GET", "/jobs/{job}/taskcounts", seconds=2)
    with pytest.raises(HttpResponseError) as throttled:
        no_retry.get_job_task_counts("j")
    assert throttled.value.status_code == 429
    response = throttled.value.response
    assert isinstance(response, HttpResponse) and response.headers["Retry-After"] == "2"


def test_lost_response_after_the_service_acted(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_job(job("j", "no-pool"))
    tasks = [task(f"t{i}", "x") for i in range(3)]
    emu.faults.lose_response_next("POST", ".../addtaskcollection")
    with pytest.raises(ServiceResponseError):
        add(client, "j", tasks)
    assert client.get_job_task_counts("j").task_counts.active == 3  # it was done
    resent = add(client, "j", tasks)
    assert [(r.status, r.error.code if r.error else None) for r in resent] == [
        ("clienterror", "TaskExists")
    ] * 3
    assert [r.status for r in emu.requests if r.path == "/jobs/j/addtaskcollection"] == [0, 200]


def test_fault_patterns_and_counts(emu: BatchEmulator) -> None:
    client = emu.client(retry_total=0)
    client.create_job(job("j", "no-pool"))
    emu.faults.fail_next("*", "/jobs/*", status=500, after=1, count=None)
    client.get_job("j")  # the first matching request passes
    for _ in range(2):
        with pytest.raises(HttpResponseError) as e:
            client.get_job("j")
        assert error_of(e.value)[:2] == (500, "InternalError")
    emu.faults.clear()
    assert client.get_job("j").id == "j"
    with pytest.raises(ValueError, match="give the error code"):
        emu.faults.fail_next("GET", "*", status=418)


# ---- over HTTP ----------------------------------------------------------------------------------


def test_loopback_http_server(emu: BatchEmulator) -> None:
    url = emu.serve()
    emu.latency = 0.001  # injected per request, on this path too
    with BatchClient(url, emu.credential(), retry_total=0) as client:
        client.create_pool(pool("p"))
        assert client.get_pool("p").id == "p"
        emu.faults.lose_response_next("GET", "/pools/{pool}")
        with pytest.raises(ServiceResponseError):
            client.get_pool("p")
    wrong_key = AzureNamedKeyCredential(emu.account, "d3Jvbmcta2V5")
    with BatchClient(url, wrong_key, retry_total=0) as wrong, pytest.raises(HttpResponseError) as e:
        wrong.get_pool("p")
    assert error_of(e.value)[:2] == (403, "AuthenticationFailed")
    body = json.loads(e.value.response.text()) if e.value.response is not None else {}
    assert body["code"] == "AuthenticationFailed"
