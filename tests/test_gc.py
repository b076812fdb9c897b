"""`batchflow gc` as users need it: after a SIGKILL, with the run folder deleted, beside a live run.

Real `python -m batchflow` runs killed with real signals; on Azure, the Batch emulator and Azurite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from azure_env import AzureEnv, rename_containers, unique_containers
from conftest import REPO, WriteWorkflow, in_out_storage
from test_e2e_azure import leftovers
from test_e2e_local import alive

from batchflow.cli import main

pytest_plugins = ["azurite", "azure_env"]
SAFETY_NET = 60.0
SLEEPER = "echo $$ >> {{ vars.pids }}; exec sleep 300"


def start(wf: Path, *more: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "batchflow", "run", str(wf), "--quiet", *more],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )


def wait_for_pids(pids: Path, n: int, proc: subprocess.Popen[str]) -> list[int]:
    deadline = time.monotonic() + SAFETY_NET
    while True:
        found = [int(x) for x in pids.read_text().split()] if pids.exists() else []
        if len(found) >= n:
            return found
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"tasks never started: {proc.communicate()[1]}")
        time.sleep(0.05)


def gc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = main(["gc", *args, "--output", "json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


@pytest.mark.e2e
def test_gc_stops_a_dead_local_runs_processes_and_removes_its_pool_then_prunes_its_folder(
    write_workflow: WriteWorkflow, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pids = tmp_path / "pids"
    wf = write_workflow(SLEEPER, inputs=2, extra={"vars": {"pids": str(pids)}})
    proc = start(wf, "--concurrency", "2")
    tasks = wait_for_pids(pids, 2, proc)
    proc.kill()  # SIGKILL: no cleanup, the tasks (in sessions of their own) run on
    proc.communicate(timeout=SAFETY_NET)
    assert all(alive(p) for p in tasks)
    workspace = wf.parent / ".batchflow"
    (run,) = sorted((workspace / "runs").iterdir())

    # Without a terminal and without --yes: listed, nothing removed.
    code, report, err = gc(capsys, "--workflow", str(wf))
    assert code == 0 and report["removed"] == []
    assert "no terminal to ask on: --yes removes them" in err
    kinds = sorted(line.split(" ", 1)[0] for line in report["remove"])
    assert kinds == ["pool", "task"]  # "pool folder ...", "task processes ..."
    assert any(
        line.startswith("run folder") and "a re-run resumes from it" in line for line in report["keep"]
    )
    assert all(alive(p) for p in tasks)

    code, report, _ = gc(capsys, "--workflow", str(wf), "--yes")
    assert code == 0 and len(report["removed"]) == 2
    deadline = time.monotonic() + SAFETY_NET
    while any(alive(p) for p in tasks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in tasks)
    assert not (workspace / "pools" / "TestPool").exists()
    assert run.is_dir()  # a re-run resumes from it

    code, report, _ = gc(capsys, "--workflow", str(wf), "--older-than", "0s", "--yes")
    assert code == 0 and report["removed"] == [f"run folder {run}"]
    assert not run.exists()


@pytest.mark.e2e
def test_gc_leaves_a_live_run_alone(
    write_workflow: WriteWorkflow, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pids = tmp_path / "pids"
    wf = write_workflow(SLEEPER, inputs=1, extra={"vars": {"pids": str(pids)}})
    proc = start(wf)
    try:
        (task,) = wait_for_pids(pids, 1, proc)
        code, report, _ = gc(capsys, "--workflow", str(wf), "--older-than", "0s", "--yes")
        assert code == 0 and report["remove"] == [] and report["removed"] == []
        assert alive(task) and proc.poll() is None
    finally:
        proc.terminate()
        proc.communicate(timeout=SAFETY_NET)


@pytest.mark.e2e
def test_gc_removes_a_dead_azure_runs_pool_and_job_even_with_its_run_folder_deleted(
    write_workflow: WriteWorkflow, azure_env: AzureEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pids = tmp_path / "pids"
    wf = write_workflow(
        SLEEPER, inputs=1, extra={"vars": {"pids": str(pids)}, "monitor": {"poll_interval": "100ms"}}
    )
    rename_containers(wf, unique_containers("inputs"))
    proc = start(wf, "--backend", "azure")
    wait_for_pids(pids, 1, proc)
    proc.kill()
    proc.communicate(timeout=SAFETY_NET)
    (pool,), jobs = leftovers(azure_env)  # the job's auto pool (azure.pool_lifetime: job)
    assert jobs == ["TestJob"]
    shutil.rmtree(wf.parent / ".batchflow" / "runs")  # the run folder is gone (a lost laptop, rm -rf)

    # A run unknown here may be another machine's live one: kept until it is old enough.
    code, report, _ = gc(capsys, "--workflow", str(wf), "--yes")
    assert code == 0 and report["removed"] == []
    assert sorted(line.split(" ", 1)[0] for line in report["keep"]) == ["job", "pool"]
    assert leftovers(azure_env) == ([pool], ["TestJob"])

    code, report, _ = gc(capsys, "--workflow", str(wf), "--older-than", "0s", "--yes")
    assert code == 0
    assert sorted(report["removed"]) == ["job TestJob", f"pool {pool}"]
    assert leftovers(azure_env) == ([], [])


@pytest.mark.e2e
def test_pruning_an_old_run_removes_its_folder_and_its_stored_files_but_not_the_downloads(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow(
        "tr a-z A-Z < {{ input.path }} > {{ input.stem }}.out",
        inputs=2,
        tasks={"outputs": [{"pattern": "{{ input.stem }}.out", "container": "outputs"}]},
        extra={"storage": in_out_storage()},
    )
    assert main(["run", str(wf), "--quiet"]) == 0
    capsys.readouterr()
    workspace = wf.parent / ".batchflow"
    (run,) = sorted((workspace / "runs").iterdir())
    stored = workspace / "storage" / "outputs"
    assert sorted(p.name for p in (stored / "runs" / run.name).iterdir()) == ["item-01.out", "item-02.out"]

    code, report, _ = gc(capsys, "--workflow", str(wf), "--older-than", "0s", "--yes")
    assert code == 0
    kinds = sorted(line.split(" (", 1)[0] for line in report["removed"])
    assert kinds == [
        f"run folder {run}",
        f"stored files outputs/batchflow-ledger/test-workflow/{run.name}.jsonl",
        f"stored files outputs/batchflow-logs/{run.name}/",
        f"stored files outputs/runs/{run.name}/",
    ]
    assert not run.exists() and not (stored / "runs" / run.name).exists()
    assert sorted(p.name for p in (wf.parent / "out").iterdir()) == ["item-01.out", "item-02.out"]
