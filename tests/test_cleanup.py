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
def test_cleanup_removes_the_node_folders_of_a_killed_local_run(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow("touch ../started; sleep 60", inputs=1)
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
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # batchflow and its task: no cleanup runs
        proc.communicate(timeout=30)
    assert pool.is_dir()

    assert main(["cleanup", "--workflow", str(wf), "--output", "json"]) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["deleted"] == ["pool TestPool"]
    assert not pool.exists()
    state = RunState.load(wf.parent / ".batchflow" / "runs" / report["run_id"])
    assert state.cleaned_up == ["pool TestPool"]


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
