"""batchflow as users really run it: two runs at once, closed terminals, killed processes, full disks,
unwritable destinations, and the command line in pipes. Real processes, real signals, real folders.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure_env import AzureEnv, rename_containers, unique_containers
from conftest import REPO, WriteWorkflow

from batchflow.cli import main

pytest_plugins = ["azurite", "azure_env"]

SLOW = "sleep 3; echo done > ../../done-$AZ_BATCH_TASK_ID"  # a task that takes a while


def start(workflow: Path, *args: str) -> subprocess.Popen[str]:
    """`batchflow run WORKFLOW ARGS` as a real process, in its own session like a terminal's job."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchflow", "run", str(workflow), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=REPO,
        start_new_session=True,
    )


def runs(workspace: Path) -> list[Path]:
    folder = workspace / "runs"
    return sorted(p for p in folder.iterdir() if (p / "state.json").is_file()) if folder.is_dir() else []


def state_of(run: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run / "state.json").read_text(encoding="utf-8"))
    return data


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:g} s")
        time.sleep(0.05)


def in_stage(workspace: Path, stage: str) -> bool:
    found = runs(workspace)
    return bool(found) and state_of(found[-1]).get("stage") == stage


@pytest.fixture
def finish() -> Iterator[Callable[[subprocess.Popen[str]], tuple[str, str]]]:
    """Wait for a started run to end; kill whatever is left at the end of the test."""
    started: list[subprocess.Popen[str]] = []

    def wait(proc: subprocess.Popen[str]) -> tuple[str, str]:
        started.append(proc)
        return proc.communicate(timeout=120)

    yield wait
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---- 1. two runs of one workflow at once ---------------------------------------------------------


@pytest.mark.e2e
def test_a_second_local_run_of_a_running_workflow_refuses_at_once_and_the_first_is_unharmed(
    write_workflow: WriteWorkflow,
    finish: Callable[[subprocess.Popen[str]], tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: both ran in the same task folders and corrupted each other (21 of 40 tasks failed)."""
    wf = write_workflow(SLOW, inputs=4)
    workspace = wf.parent / ".batchflow"
    first = start(wf)
    wait_for(lambda: in_stage(workspace, "monitor"), "first run monitoring")
    [first_run] = runs(workspace)

    assert main(["run", str(wf)]) == 2

    err = capsys.readouterr().err
    assert err.startswith(f"error: job TestJob is in use by run {first_run.name} (pid {first.pid} on ")
    assert runs(workspace) == [first_run]  # the second run created no run folder
    _, err = finish(first)
    assert first.returncode == 0, err
    state = state_of(first_run)
    assert state["status"] == "succeeded"
    assert {t["state"] for t in state["tasks"].values()} == {"succeeded"} and len(state["tasks"]) == 4

    # Once the first run is over, the workflow runs again.
    assert main(["run", str(wf), "--quiet"]) == 0


@pytest.mark.e2e
def test_a_second_azure_run_from_another_workspace_refuses_and_deletes_nothing_of_the_first(
    azure_env: AzureEnv,
    write_workflow: WriteWorkflow,
    tmp_path: Path,
    finish: Callable[[subprocess.Popen[str]], tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: the second run failed with JobExists, and its cleanup then deleted the FIRST run's live
    job (the first ended "0 succeeded, 0 failed of 40"). Another workspace stands for another machine:
    the workspace's lock cannot see it, the account can."""
    wf = write_workflow("sleep 2", inputs=3, extra={"monitor": {"poll_interval": "100ms"}})
    rename_containers(wf, unique_containers("inputs"))
    workspace = wf.parent / ".batchflow"
    first = start(wf, "--backend", "azure")
    wait_for(lambda: in_stage(workspace, "monitor"), "first run monitoring")
    [first_run] = runs(workspace)
    requests_before = len(azure_env.emulator.requests)

    elsewhere = tmp_path / "other-machine"
    assert main(["run", str(wf), "--backend", "azure", "--workspace", str(elsewhere)]) == 2

    err = capsys.readouterr().err
    assert err.startswith(
        f"error: job 'TestJob' already exists in the Batch account (batchflow run {first_run.name}: "
    )
    assert not (elsewhere / "runs").exists()
    sent = [(r.method, r.path) for r in azure_env.emulator.requests[requests_before:]]
    assert ("DELETE", "/jobs/TestJob") not in sent and ("DELETE", "/pools/TestPool") not in sent
    assert {m for m, _ in sent} == {"GET"}  # it looked, and changed nothing

    assert main(["run", str(wf), "--backend", "azure"]) == 2  # the same workspace: refused too
    capsys.readouterr()

    _, err = finish(first)
    assert first.returncode == 0, err
    state = state_of(first_run)
    assert (state["status"], len(state["tasks"])) == ("succeeded", 3)
