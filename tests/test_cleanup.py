"""`batchflow cleanup` on the local backend: what a killed run left in the workspace, and its refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, WriteWorkflow

from batchflow.cli import main
from batchflow.state import RunState


def _started(pool: Path) -> list[Path]:
    """The marker the task writes in its task folder, on whichever node runs it."""
    return list(pool.glob("nodes/*/workitems/TestJob/job-1/task-item-01/started"))


def _wait_for_start(pool: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60  # a safety net for a broken run, not a timing
    while not _started(pool) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.e2e
def test_cleanup_stops_the_tasks_and_removes_the_node_folders_of_a_killed_local_run(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL of batchflow: its tasks, in sessions of their own, live on, and `status` said
    "running" forever. Now status says dead (exit 1) and cleanup stops the tasks, then removes the
    node folders."""
    wf = write_workflow("echo $$ > ../pid; touch ../started; sleep 60", inputs=1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchflow", "run", str(wf), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    pool = wf.parent / ".batchflow" / "pools" / "TestPool"
    try:
        _wait_for_start(pool, proc)
        assert _started(pool), proc.stderr.read() if proc.stderr else ""
        ledger = wf.parent / ".batchflow" / "runs"
        deadline = time.monotonic() + 60  # the ledger line is written just after the task starts
        while not any("task-item-01" in p.read_text() for p in ledger.glob("*/processes.jsonl")):
            assert time.monotonic() < deadline, "no ledger line"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # batchflow (its session): no cleanup runs
        proc.communicate(timeout=30)
    assert pool.is_dir()
    task_pid = int((_started(pool)[0].parent / "pid").read_text())
    assert _alive(task_pid)  # the task outlived batchflow

    assert main(["status", "--workflow", str(wf)]) == 1
    out = capsys.readouterr().out
    assert ": dead, stage monitor" in out
    assert "batchflow cleanup" in out

    assert main(["cleanup", "--workflow", str(wf), "--output", "json"]) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["deleted"] == ["process of task task-item-01", "pool TestPool"]
    assert not _alive(task_pid)
    assert not pool.exists()
    state = RunState.load(wf.parent / ".batchflow" / "runs" / report["run_id"])
    assert state.cleaned_up == ["process of task task-item-01", "pool TestPool"]
    assert state.status == "dead"
    assert main(["status", "--workflow", str(wf)]) == 1
    capsys.readouterr()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"  # a zombie is not alive


def test_cleanup_refuses_a_run_that_is_still_running(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow("true", inputs=1)
    state = RunState.create(wf.parent / ".batchflow", wf, "local", "20261201-000000-000-abcdef")
    assert state.pid == os.getpid()  # this process: alive, and the run has not ended

    assert main(["cleanup", "--workflow", str(wf)]) == 1

    assert capsys.readouterr().err.splitlines() == [
        f"error: run 20261201-000000-000-abcdef is still running (process {os.getpid()}): "
        "stop it first (Ctrl-C cleans up)"
    ]


def test_cleanup_without_runs_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cleanup", "--workspace", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"error: no runs in {tmp_path / 'runs'}\n"
