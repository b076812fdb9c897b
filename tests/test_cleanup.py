"""`batchflow cleanup` on the local backend: what a killed run left in the workspace, and its refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, WriteWorkflow

from batchflow.cli import main
from batchflow.state import JOURNAL_FILE, RecordState, RunState


def _started(pool: Path) -> list[Path]:
    """The marker the task writes in its task folder, on whichever node runs it."""
    return list(pool.glob("nodes/*/workitems/TestJob/job-1/task-item-01/started"))


def _wait_for_start(pool: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60  # a safety net for a broken run, not a timing
    while not _started(pool) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def _killed_run(write_workflow: WriteWorkflow, inputs: int = 1, **extra: Any) -> tuple[Path, Path, int]:
    """A real `batchflow run` SIGKILLed while its first task runs: (workflow, pool folder, task pid)."""
    wf = write_workflow("echo $$ > ../pid; touch ../started; sleep 60", inputs=inputs, extra=extra)
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
    return wf, pool, task_pid


@pytest.mark.e2e
def test_cleanup_stops_the_tasks_and_removes_the_node_folders_of_a_killed_local_run(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL of batchflow: its tasks, in sessions of their own, live on, and `status` said
    "running" forever. Now status says dead (exit 1) and cleanup stops the tasks, then removes the
    node folders."""
    wf, pool, task_pid = _killed_run(write_workflow)
    (run_folder,) = (wf.parent / ".batchflow" / "runs").iterdir()
    assert RunState.load(run_folder).tasks["task-item-01"].state is RecordState.RUNNING  # the journal's

    assert main(["status", "--workflow", str(wf)]) == 1
    out = capsys.readouterr().out
    assert ": dead, stage monitor" in out
    assert "Tasks: 1 total, 0 succeeded, 0 failed, 1 running" in out  # (before: not said anywhere)
    assert "batchflow cleanup" in out

    assert main(["cleanup", "--workflow", str(wf), "--output", "json"]) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["deleted"] == ["process of task task-item-01", "pool TestPool"]
    assert not _alive(task_pid)
    assert not pool.exists()
    state = RunState.load(wf.parent / ".batchflow" / "runs" / report["run_id"])
    assert state.cleaned_up == ["process of task task-item-01", "pool TestPool"]
    assert state.status == "dead"
    # The task cleanup stopped is recorded failed (the journal's last line for it), not running forever.
    saved = state.tasks["task-item-01"].to_json()
    assert (saved["state"], saved["failure"]) == (
        "failed",
        "its batchflow process died; stopped by batchflow cleanup",
    )
    assert saved["started_at"] is not None and saved["ended_at"] >= saved["started_at"]
    assert main(["status", "--workflow", str(wf), "--output", "json"]) == 1
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert (counts["running"], counts["failed"]) == (0, 1)


@pytest.mark.e2e
def test_cleanup_of_a_killed_local_run_counts_the_tasks_that_never_started(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    """One task at a time: two of the three were queued when batchflow was killed, and died with it.
    They were counted nowhere after the cleanup ("0 succeeded, 1 failed" of 3 tasks)."""
    wf, _pool, task_pid = _killed_run(write_workflow, inputs=3, local={"concurrency": 1})
    assert main(["cleanup", "--workflow", str(wf), "--yes"]) == 0
    capsys.readouterr()
    assert not _alive(task_pid)
    assert main(["status", "--workflow", str(wf), "--output", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in report["counts"].items() if v} == {"failed": 1, "not_started": 2}
    assert {tid: t["state"] for tid, t in report["tasks"].items()} == {
        "task-item-01": "failed",
        "task-item-02": "not_started",
        "task-item-03": "not_started",
    }


@pytest.mark.e2e
def test_an_unexpected_journal_line_blocks_neither_status_nor_cleanup(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    """A well-formed line batchflow does not know (another version's event) in the journal of a
    killed run made status and cleanup fail ("damaged"), leaving its task processes running."""
    wf, pool, task_pid = _killed_run(write_workflow)
    (run_folder,) = (wf.parent / ".batchflow" / "runs").iterdir()
    with open(run_folder / JOURNAL_FILE, "a", encoding="utf-8") as f:
        f.write('{"event": "queued", "task": "task-item-02", "at": 1764760000.0}\n')

    assert main(["status", "--workflow", str(wf)]) == 1
    assert ": dead, stage monitor" in capsys.readouterr().out

    assert main(["cleanup", "--workflow", str(wf), "--yes"]) == 0
    err = capsys.readouterr().err
    assert (
        err.splitlines()[-1]
        == f"Cleanup of run {run_folder.name}: process of task task-item-01, pool TestPool."
    )
    assert not _alive(task_pid)
    assert not pool.exists()


@pytest.mark.e2e
def test_the_runner_says_it_kept_the_pool(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow("true", inputs=1, extra={"cleanup": {"pool": "keep"}})

    assert main(["run", str(wf)]) == 0

    assert "Pool [TestPool] kept (cleanup.pool: keep)." in capsys.readouterr().err.splitlines()
    assert (wf.parent / ".batchflow" / "pools" / "TestPool").is_dir()


@pytest.mark.e2e
def test_cleanup_keeps_a_pool_the_workflow_keeps_and_removes_the_job(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    """cleanup.pool: keep was honoured by the run's own cleanup, not by `batchflow cleanup`, which
    removed the pool folder of a killed run whatever the workflow said."""
    wf, pool, task_pid = _killed_run(write_workflow, cleanup={"pool": "keep"})
    assert list(pool.glob("nodes/*/workitems/TestJob"))

    assert main(["cleanup", "--workflow", str(wf), "--yes", "--output", "json"]) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["deleted"] == ["process of task task-item-01", "job TestJob"]
    assert report["kept"] == ["pool TestPool (cleanup.pool: keep)"]
    assert not _alive(task_pid)
    assert pool.is_dir() and list(pool.glob("nodes/*/workitems/TestJob")) == []


@pytest.mark.e2e
def test_cleanup_reports_a_pool_folder_it_cannot_remove(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error from the file system while removing the pool folder (here a busy mount point) is one
    line of the report and exit 1, not an unexpected error with a traceback."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    wf, pool, task_pid = _killed_run(write_workflow)
    busy = pool / "nodes" / "node-0" / "shared"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(busy)], check=True)
    try:
        assert main(["cleanup", "--workflow", str(wf), "--yes", "--output", "json"]) == 1
    finally:
        subprocess.run(["umount", "-l", str(busy)], check=False)

    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["deleted"] == ["process of task task-item-01"]
    assert report["failed"] == [f"pool TestPool: Device or resource busy: {busy}"]
    assert f"  failed: pool TestPool: Device or resource busy: {busy}" in err.splitlines()
    assert not _alive(task_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"  # a zombie is not alive


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("cleanup", "stop it first (Ctrl-C cleans up)"),
        ("download", "it downloads itself"),
        ("retry", "let it end first"),
        ("attach", "nothing to attach"),
    ],
)
def test_a_command_that_needs_the_run_ended_refuses_a_run_still_running_with_exit_2(
    command: str, why: str, write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a second `batchflow run` of the workflow does (README, exit codes): nothing is touched."""
    wf = write_workflow("true", inputs=1)
    state = RunState.create(wf.parent / ".batchflow", wf, "local", "20261201-000000-000-abcdef")
    assert state.pid == os.getpid()  # this process: alive, and the run has not ended
    before = sorted(p.relative_to(wf.parent) for p in wf.parent.rglob("*"))

    assert main([command, "--workflow", str(wf)]) == 2

    assert capsys.readouterr().err.splitlines() == [
        f"error: run 20261201-000000-000-abcdef is still running (process {os.getpid()}): {why}"
    ]
    assert sorted(p.relative_to(wf.parent) for p in wf.parent.rglob("*")) == before


def test_cleanup_without_runs_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cleanup", "--workspace", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"error: no runs in {tmp_path / 'runs'}\n"


@pytest.mark.e2e
def test_the_next_run_stops_the_tasks_a_killed_run_left_running(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL of batchflow, then a plain `batchflow run` of the workflow: the dead run's task went
    on running, and writing into the task folders the new run laid out again, unseen. Now the new
    run stops it first, and says so."""
    wf, _pool, task_pid = _killed_run(write_workflow)
    wf.write_text(wf.read_text(encoding="utf-8").replace("sleep 60", "true"), encoding="utf-8")
    assert main(["run", str(wf)]) == 0
    err = capsys.readouterr().err
    assert "Stopping 1 task process(es) that run " in err and "(its batchflow process is gone)" in err, err
    assert not _alive(task_pid)
    assert main(["run", str(wf)]) == 0  # nothing left to stop: no second message
    assert "Stopping" not in capsys.readouterr().err


@pytest.mark.e2e
@pytest.mark.parametrize("before_boot", [False, True], ids=["since-boot", "before-boot"])
def test_a_run_stops_a_dead_runs_leftovers_once_and_never_those_of_a_run_from_before_the_boot(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str], before_boot: bool
) -> None:
    """A dead run's record of a live process group: stopped by the next run of the pool, and marked
    ended so that no later run looks at it again; left alone if the dead run began before this
    machine booted (its processes died then: the group now is someone else's)."""
    from batchflow.procinfo import boot_time, host_name, process_start

    wf = write_workflow("true", inputs=1)
    dead = wf.parent / ".batchflow" / "runs" / "20000101-000000-000-dead00"
    dead.mkdir(parents=True)
    booted = boot_time()
    assert booted is not None
    started = booted - 60 if before_boot else time.time() - 60
    (dead / "state.json").write_text(
        json.dumps({"ended_at": None, "pool_id": "TestPool", "host": host_name(), "started_at": started}),
        encoding="utf-8",
    )
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        record = {"pgid": stranger.pid, "task": "task-x", "start": process_start(stranger.pid)}
        (dead / "processes.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")

        assert main(["run", str(wf)]) == 0
        err = capsys.readouterr().err
        if before_boot:
            assert "Stopping" not in err
            assert stranger.poll() is None  # left alone
        else:
            assert f"Stopping 1 task process(es) that run {dead.name} left running" in err
            assert stranger.wait(timeout=10) is not None
            ended = [json.loads(line) for line in (dead / "processes.jsonl").read_text().splitlines()]
            assert ended[-1] == {"pgid": stranger.pid, "ended": True}
    finally:
        stranger.kill()
        stranger.wait()
