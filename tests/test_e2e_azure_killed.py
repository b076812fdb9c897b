"""A `batchflow run --backend azure` process SIGKILLed mid-run (no cleanup, no signal handler): what
the Batch account does afterwards on its own, with nobody left to act (README.md, "When the client
dies"). The emulator's clock (`BatchEmulator.advance`) stands in for the hour and more that passes;
no test sleeps for it.

With azure.pool_lifetime: job (the default) the pool is the job's auto pool and the job always has a
max wall clock, so no node is left once that bound has passed. With azure.pool_lifetime: run the
named pool outlives the job, as documented, until `batchflow cleanup`.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.core.exceptions import ResourceNotFoundError
from azure_env import AzureEnv, rename_containers, unique_containers
from conftest import REPO, WriteWorkflow

pytest_plugins = ["azurite", "azure_env"]

JOB = "TestJob"
# The job's max wall clock when the workflow gives none (batch.default_job_wall_clock): the pool
# timeout (azure.pool_timeout, 30 min), the task submission (10 min), the monitor timeout
# (monitor.timeout, 30 min) and a 10 min margin.
DEFAULT_BOUND = datetime.timedelta(minutes=30 + 10 + 30 + 10)
SAFETY_NET = 60.0  # real seconds any step here may take; the job is younger than this when killed


def nodes_in_account(client: BatchClient) -> dict[str, list[str]]:
    """Every pool still in the account (deleting or not), with its nodes: what may be billing."""
    found = {}
    for pool in client.list_pools(select=["id"]):
        try:
            found[pool.id or ""] = [n.id or "" for n in client.list_nodes(pool.id or "")]
        except ResourceNotFoundError:  # deleted meanwhile
            continue
    return found


def job_state(client: BatchClient) -> tuple[str, str | None]:
    job = client.get_job(JOB)
    info = job.execution_info
    return str.casefold(job.state or ""), info.termination_reason if info is not None else None


def running_tasks(client: BatchClient) -> int:
    try:
        return sum(1 for t in client.list_tasks(JOB, select=["id", "state"]) if t.state == "running")
    except ResourceNotFoundError:
        return 0


def sealed(env: AzureEnv) -> bool:
    return env.emulator.count("PATCH", "/jobs/{job}") >= 1


def polling_nodes(env: AzureEnv) -> bool:
    """The client is polling the pool's node counts, waiting for a usable node."""
    return env.emulator.count("GET", "/nodecounts") >= 2


STAGES: dict[str, Callable[[AzureEnv, BatchClient], bool]] = {
    # The pool allocates nothing while the emulator is paused: the client is stuck waiting for a node,
    # no task added, the job not sealed. The nodes come up, idle, after it died.
    "waiting for nodes": lambda env, client: polling_nodes(env),
    # Every task added, the job sealed (terminate when all tasks complete), tasks running for 10 min.
    "tasks running": lambda env, client: sealed(env) and running_tasks(client) >= 2,
}


@pytest.fixture
def client(azure_env: AzureEnv) -> Iterator[BatchClient]:
    with azure_env.emulator.client(retry_total=0) as c:
        yield c


def kill_at(stage: str, wf: Path, env: AzureEnv, client: BatchClient) -> dict[str, list[str]]:
    """Run `wf` in a `batchflow run --backend azure` process, SIGKILL it at `stage`; the account's
    pools and their nodes once the service has moved on its own."""
    emu = env.emulator
    rename_containers(wf, unique_containers("inputs"))
    hold: AbstractContextManager[None] = emu.paused() if stage == "waiting for nodes" else nullcontext()
    with hold:
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchflow", "run", str(wf), "--backend", "azure", "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=REPO,
        )
        try:
            emu.wait_for(lambda: STAGES[stage](env, client), timeout=SAFETY_NET, what=stage)
            proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: the process is simply gone
        finally:
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err
    emu.wait_for(lambda: sum(map(len, nodes_in_account(client).values())) == 2, SAFETY_NET, "2 nodes")
    return nodes_in_account(client)


@pytest.mark.e2e
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_sigkilled_run_leaves_no_node_billing_past_the_jobs_max_wall_clock(
    write_workflow: WriteWorkflow, azure_env: AzureEnv, client: BatchClient, stage: str
) -> None:
    """The default (azure.pool_lifetime: job, no job.max_wall_clock): the bound is the job's derived
    max wall clock from its creation, then the auto pool's deletion."""
    emu = azure_env.emulator
    wf = write_workflow("sleep 600", inputs=2, extra={"monitor": {"poll_interval": "100ms"}})

    # Billing: the job's auto pool has its nodes (idle, or running tasks) and nobody is left.
    pools = kill_at(stage, wf, azure_env, client)
    [pool_id] = pools
    assert pool_id.startswith("TestPool_")
    job = client.get_job(JOB)
    assert job.constraints is not None and job.constraints.max_wall_clock_time == DEFAULT_BOUND
    assert job_state(client) == ("active", None)

    # Just before the bound (counted from the job's creation, less than SAFETY_NET s ago) nothing has
    # changed: Batch does not end the job early.
    emu.advance(DEFAULT_BOUND.total_seconds() - SAFETY_NET)
    emu.settle()
    assert nodes_in_account(client) == pools
    assert job_state(client) == ("active", None)

    # Past it: Batch terminates the job (its running tasks with it) and deletes its auto pool.
    emu.advance(SAFETY_NET)
    emu.wait_for(lambda: nodes_in_account(client) == {}, timeout=SAFETY_NET, what="the auto pool deleted")
    assert job_state(client) == ("completed", "MaxWallClockTimeExpiry")
    assert [p.id for p in client.list_pools()] == []
    assert emu.internal_errors == []


@pytest.mark.e2e
@pytest.mark.parametrize("stage", list(STAGES))
def test_with_a_named_pool_a_sigkilled_run_leaves_it_billing_until_cleanup(
    write_workflow: WriteWorkflow, azure_env: AzureEnv, client: BatchClient, stage: str
) -> None:
    """azure.pool_lifetime: run, the trade-off documented: the job still ends at its max wall clock
    (if it was made), but the named pool outlives it, its nodes idle and billing, until `batchflow
    cleanup`."""
    emu = azure_env.emulator
    extra = {"monitor": {"poll_interval": "100ms"}, "azure": {"pool_lifetime": "run"}}
    wf = write_workflow("sleep 600", inputs=2, extra=extra)

    pools = kill_at(stage, wf, azure_env, client)
    assert list(pools) == ["TestPool"]
    emu.advance(DEFAULT_BOUND.total_seconds() + 24 * 3600.0)
    emu.settle()
    assert nodes_in_account(client) == pools
    if stage == "tasks running":
        assert job_state(client) == ("completed", "MaxWallClockTimeExpiry")
    else:  # killed before the job was made: nothing at all would ever end the pool
        assert [j.id for j in client.list_jobs()] == []
    assert emu.internal_errors == []
