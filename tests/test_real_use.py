"""batchflow as users really run it: two runs at once, closed terminals, killed processes, full disks,
unwritable destinations, and the command line in pipes. Real processes, real signals, real folders.
"""

from __future__ import annotations

import contextlib
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
from conftest import REPO, WriteWorkflow, in_out_storage

from batchflow.cli import main
from batchflow.state import RunState

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
    """The run's record as JSON: state.json, and under "tasks" each task's (from the journal)."""
    return RunState.load(run).to_json()


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
    # Tasks long enough that the first run is still monitoring while the two refusals happen, even on
    # two busy CPUs: the first run is stopped by the test once both were refused (then it cleans up).
    wf = write_workflow("sleep 30", inputs=3, extra={"monitor": {"poll_interval": "100ms"}})
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
    sent = [(r.method, r.path) for r in azure_env.emulator.requests[requests_before:]]
    assert ("DELETE", "/jobs/TestJob") not in sent

    # The first run was unharmed: its tasks still run under its job. Stopped now, it cleans up itself.
    assert state_of(first_run)["stage"] == "monitor"
    os.killpg(first.pid, signal.SIGINT)
    _, err = finish(first)
    assert first.returncode == 130, err
    assert "Deleting job [TestJob]..." in err  # its own job, deleted by its own cleanup


# ---- 7. the command line -------------------------------------------------------------------------


def _state(workspace: Path, run_id: str, workflow: Path, status: str, *, pid: int | None = None) -> None:
    from batchflow.state import RunState, RunStatus

    state = RunState.create(workspace, workflow, "local", run_id)
    state.status = RunStatus(status)
    state.pid = pid if pid is not None else state.pid
    state.ended_at = None if status == "running" else time.time()
    state.save()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no such process now


@pytest.mark.parametrize(
    ("status", "code", "shown"),
    [
        ("succeeded", 0, "succeeded"),
        ("running", 0, "running"),  # this test's own process: alive
        ("failed", 1, "failed"),
        ("error", 1, "error"),
        ("interrupted", 130, "interrupted"),
        ("dead", 1, "dead"),  # recorded as running, but its process is gone
    ],
)
def test_status_exit_codes_say_how_the_run_ended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], status: str, code: int, shown: str
) -> None:
    workspace = tmp_path / "ws"
    recorded = "running" if status == "dead" else status
    _state(
        workspace,
        "20261201-000000-000-aaaaaa",
        tmp_path / "wf.yaml",
        recorded,
        pid=_dead_pid() if status == "dead" else None,
    )

    assert main(["status", "--workspace", str(workspace)]) == code
    assert capsys.readouterr().out.startswith(f"Run 20261201-000000-000-aaaaaa (local): {shown}, ")
    assert main(["status", "--workspace", str(workspace), "--output", "json"]) == code
    data = json.loads(capsys.readouterr().out)
    assert (data["status"], data["exit_code"]) == (shown, code)


def test_status_and_cleanup_of_a_workflow_pick_its_runs_not_another_workflows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two workflows in one folder share its workspace (.batchflow): --workflow X means X's runs."""
    workspace = tmp_path / ".batchflow"
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    _state(workspace, "20261201-000000-000-aaaaaa", first, "failed")
    _state(workspace, "20261201-000001-000-bbbbbb", second, "succeeded")  # the latest of the folder
    for wf in (first, second):
        wf.write_text("version: 1\n", encoding="utf-8")  # (only its path matters here)

    assert main(["status", "--workspace", str(workspace)]) == 0  # no --workflow: the latest run
    assert "20261201-000001-000-bbbbbb" in capsys.readouterr().out
    assert main(["status", "--workspace", str(workspace), "--workflow", str(first)]) == 1
    assert capsys.readouterr().out.startswith("Run 20261201-000000-000-aaaaaa (local): failed")
    args = ["cleanup", "--workspace", str(workspace), "--workflow", str(first), "--yes", "--output", "json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == "20261201-000000-000-aaaaaa"


def test_an_error_with_json_output_is_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--workspace", str(tmp_path), "--output", "json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": f"no runs in {tmp_path / 'runs'}", "exit_code": 1}
    assert err == f"error: no runs in {tmp_path / 'runs'}\n"


def test_piping_a_long_plan_to_head_gives_no_traceback(write_workflow: WriteWorkflow, tmp_path: Path) -> None:
    wf = write_workflow("echo {{ input.name }}", inputs=3000)
    script = (
        f"{sys.executable} -m batchflow plan {wf} --all --output json | head -c 100 >/dev/null; "
        "echo ${PIPESTATUS[0]} >&2"
    )
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert "Traceback" not in result.stderr
    assert "unexpected error" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "141"  # as a shell reports a closed pipe
    assert not (tmp_path / "cache" / "batchflow" / "batchflow.log").exists()


def test_the_progress_line_keeps_elapsed_time_and_eta_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import re

    from batchflow.events import TaskProgress
    from batchflow.model import TaskCounts
    from batchflow.report import Reporter

    monkeypatch.setenv("COLUMNS", "80")
    stream = io.StringIO()
    reporter = Reporter(stream, live=True)
    reporter.emit(TaskProgress(TaskCounts(active=800, running=2, succeeded=190, failed=8), 1000))
    reporter.close_progress()

    [line] = [line for line in stream.getvalue().splitlines() if line.startswith("Tasks")]
    assert len(line) <= 80
    assert re.search(r"198/1000 +\d:\d\d:\d\d ETA +(\d:\d\d:\d\d|-:--:--) ", line), line
    assert "failed 8" in line


def test_plain_progress_lines_show_elapsed_time_and_eta() -> None:
    import io

    from batchflow.events import TaskProgress
    from batchflow.model import TaskCounts
    from batchflow.report import Reporter

    now = [0.0]
    stream = io.StringIO()
    reporter = Reporter(stream, live=False, clock=lambda: now[0])
    reporter.emit(TaskProgress(TaskCounts(active=10), 10))
    now[0] = 6.0
    reporter.emit(TaskProgress(TaskCounts(active=6, succeeded=4), 10))
    now[0] = 15.0
    reporter.emit(TaskProgress(TaskCounts(succeeded=10), 10))

    assert stream.getvalue().splitlines() == [
        "Tasks 0/10: queued 10  running 0  succeeded 0  failed 0 (elapsed 0:00:00)",
        "Tasks 4/10: queued 6  running 0  succeeded 4  failed 0 (elapsed 0:00:06, ETA 0:00:09)",
        "Tasks 10/10: queued 0  running 0  succeeded 10  failed 0 (elapsed 0:00:15)",
    ]


# ---- 3. errors from the world: full disks, read-only destinations -------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """A real small file system: `tmpfs("out", "1m")`, or read-only with `ro=True`. Needs root, as
    CI and the development machines are (a tmpfs is the one way to get a really full disk)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted: list[Path] = []

    def mount(name: str, size: str, *, ro: bool = False) -> Path:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        options = f"size={size}" + (",ro" if ro else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _big_outputs(write_workflow: WriteWorkflow, destination: Path, size: int) -> Path:
    return write_workflow(
        f"head -c {size} /dev/zero > big.bin",
        inputs=3,
        tasks={
            "outputs": [{"pattern": "big.bin", "container": "outputs", "destination": "{{ input.stem }}.bin"}]
        },
        extra={
            "storage": in_out_storage(downloads=[{"container": "outputs", "destination": str(destination)}]),
            "monitor": {"poll_interval": "100ms"},
        },
    )


@pytest.mark.e2e
def test_a_full_download_disk_stops_with_one_line_cleans_up_and_batchflow_download_fetches_later(
    write_workflow: WriteWorkflow,
    tmpfs: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: exit 3 "unexpected error ... please report it", cleanup skipped, state `running`."""
    out = tmpfs("out", "1m")
    wf = _big_outputs(write_workflow, out, 700_000)  # 3 x 0.7 MB into 1 MB

    assert main(["run", str(wf)]) == 1

    err = capsys.readouterr().err
    [run] = runs(wf.parent / ".batchflow")
    last = err.splitlines()[-1]
    assert last.startswith("error: No space left on device: ")
    assert last.endswith(f"`batchflow download {run.name}` fetches them once the destination can take them")
    assert "Traceback" not in err and "unexpected error" not in err
    state = state_of(run)
    assert (state["status"], state["stage"]) == ("failed", "cleanup")
    assert {t["state"] for t in state["tasks"].values()} == {"succeeded"}  # the compute was done
    assert "Deleting pool [TestPool]..." in err  # cleaned up
    assert not (wf.parent / ".batchflow" / "pools" / "TestPool").exists()

    # Room again (a bigger disk at the same place): the outputs were never lost.
    subprocess.run(["mount", "-o", "remount,size=4m", str(out)], check=True)
    assert main(["download", run.name, "--workflow", str(wf)]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "item-01.bin",
        "item-02.bin",
        "item-03.bin",
    ]
    assert all((out / f"item-0{i}.bin").stat().st_size == 700_000 for i in (1, 2, 3))


@pytest.mark.e2e
def test_a_full_workspace_disk_fails_the_tasks_not_batchflow(
    write_workflow: WriteWorkflow,
    tmpfs: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The workspace (storage, task folders, run folder) on a 3 MB disk, outputs of 1.2 MB each."""
    workspace = tmpfs("ws", "3m")
    wf = _big_outputs(write_workflow, tmp_path / "out", 1_200_000)

    code = main(["run", str(wf), "--workspace", str(workspace)])

    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and "unexpected error" not in err
    [run] = runs(workspace)
    state = state_of(run)
    assert state["status"] == "failed"
    assert state["stage"] == "cleanup"
    assert "Deleting pool [TestPool]..." in err
    assert not (workspace / "pools" / "TestPool" / "nodes").exists()  # the task folders are gone


def test_a_full_disk_leaves_no_half_written_keys_or_ledger_in_the_run_folder(
    tmpfs: Callable[..., Path],
) -> None:
    """Before: keys.json.tmp or ledger.jsonl.tmp stayed in the run folder, and no re-run or gc
    removed it."""
    from batchflow.ledger import Parts, TaskKey, write_keys

    folder = tmpfs("run", "64k")
    keys = {f"task-{i:05d}": TaskKey("k" * 64, Parts(*("p" * 64,) * 4)) for i in range(2000)}
    with pytest.raises(OSError, match="No space left"):
        write_keys(folder, keys)
    assert list(folder.iterdir()) == []


@pytest.mark.e2e
def test_an_unwritable_download_destination_is_found_before_anything_is_created(
    write_workflow: WriteWorkflow, tmpfs: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: all compute done, then exit 3, outputs stranded with no command to fetch them."""
    read_only = tmpfs("ro", "1m", ro=True)
    wf = _big_outputs(write_workflow, read_only / "mp3", 10)

    assert main(["run", str(wf)]) == 2

    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"error: download destination {read_only / 'mp3'} cannot be written "
        f"(Read-only file system: {read_only}); nothing was created"
    ]
    assert not (wf.parent / ".batchflow").exists()  # (before: its locks/ folder)


# ---- 5 and 6, as the command line shows them ------------------------------------------------------


def test_validate_and_plan_print_what_input_discovery_skipped(
    write_workflow: WriteWorkflow, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow("cat {{ input.path }}", inputs=1)
    secret = tmp_path / "outside.txt"
    secret.write_text("not for storage\n", encoding="utf-8")
    (wf.parent / "inputs" / "link.txt").symlink_to(secret)

    assert main(["validate", str(wf), "--output", "json"]) == 0

    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["tasks"] == 1  # the link is not an input
    [warning] = result["warnings"]
    assert "link.txt" in warning
    assert err.splitlines() == [f"warning: {warning}"]
    assert main(["plan", str(wf)]) == 0
    assert f"warning: {warning}" in capsys.readouterr().err.splitlines()


@pytest.mark.e2e
def test_an_output_pattern_that_matched_nothing_is_named_in_the_summary(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow(
        "touch {{ input.stem }}.txt",
        inputs=1,
        tasks={
            "outputs": [
                {"pattern": "*.txt", "container": "outputs", "destination": "{{ input.stem }}/"},
                {"pattern": "*.mp3", "container": "outputs", "destination": "{{ input.stem }}/"},
            ]
        },
        extra={"storage": in_out_storage()},
    )

    assert main(["run", str(wf)]) == 0

    err = capsys.readouterr().err
    assert "Task task-item-01: output pattern '*.mp3' matched no file" in err.splitlines()
    [run] = runs(wf.parent / ".batchflow")
    assert state_of(run)["tasks"]["task-item-01"]["unmatched_outputs"] == ["*.mp3"]


# ---- 2. a terminal that really closes ------------------------------------------------------------


@pytest.mark.e2e
def test_closing_the_terminal_stops_the_tasks_and_cleans_up(write_workflow: WriteWorkflow) -> None:
    """batchflow on a real pseudo-terminal as its controlling terminal; closing the terminal's other
    side makes the kernel send SIGHUP, and from then on every write to the terminal fails (EIO).
    Before: the handler's own first line failed, so neither the tasks' stop nor the cleanup ran."""
    import fcntl
    import termios

    wf = write_workflow("echo $$ > ../pid; sleep 60", inputs=2, extra={"monitor": {"poll_interval": "100ms"}})
    workspace = wf.parent / ".batchflow"
    master, slave = os.openpty()

    def controlling_terminal() -> None:  # in the child, after setsid: the pty becomes its terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "batchflow", "run", str(wf), "--concurrency", "2"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "xterm", "COLUMNS": "80"},
        start_new_session=True,
        preexec_fn=controlling_terminal,  # the one way to give a child a controlling terminal
    )
    os.close(slave)
    pool = workspace / "pools" / "TestPool"
    try:

        def pids() -> list[int]:
            found = pool.glob("nodes/*/workitems/*/job-1/*/pid")
            return [int(text) for p in found if (text := p.read_text()).endswith("\n")]

        drained = bytearray()

        def two_running() -> bool:
            with contextlib.suppress(OSError):  # keep reading, so the terminal never blocks its writer
                os.set_blocking(master, False)
                with contextlib.suppress(BlockingIOError):
                    drained.extend(os.read(master, 65536))
            return len(pids()) == 2

        wait_for(two_running, "two tasks running")
        tasks = pids()
        os.close(master)  # the terminal closes: SIGHUP
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 130
    [run] = runs(workspace)
    state = state_of(run)
    assert (state["status"], state["message"]) == ("interrupted", "interrupted (SIGHUP)")
    assert state["cleanup_failures"] == []
    assert not (pool / "nodes").exists()  # cleaned up
    wait_for(lambda: not any(_alive(pid) for pid in tasks), "the tasks gone", timeout=10)


@pytest.mark.e2e
def test_a_second_ctrl_c_while_the_run_stops_still_cleans_up_and_reports_the_run(
    write_workflow: WriteWorkflow, finish: Callable[[subprocess.Popen[str]], tuple[str, str]]
) -> None:
    """Ctrl-C, and Ctrl-C again as soon as batchflow says it is stopping (an impatient user). Two
    tasks finished with 40 MB outputs, which the ledger hashes on the way out, so the second signal
    lands while the run stops, records or cleans up. Before: it left the runner from its except
    clause and the command printed only "Interrupted." ({"error": "interrupted"}), with no result;
    a pool could be left behind."""
    command = (
        "if [ {{ input.stem }} = item-01 ] || [ {{ input.stem }} = item-02 ]; then "
        "head -c 40000000 /dev/zero > {{ input.stem }}.out; "
        "else echo $$ > ../pid; sleep 60; fi"
    )
    wf = write_workflow(
        command,
        inputs=4,
        tasks={"outputs": [{"pattern": "{{ input.stem }}.out", "container": "outputs"}]},
        extra={"storage": in_out_storage(), "monitor": {"poll_interval": "100ms"}},
    )
    workspace = wf.parent / ".batchflow"
    pool = workspace / "pools" / "TestPool"
    proc = start(wf, "--concurrency", "2", "--output", "json")

    def sleepers() -> list[int]:
        found = pool.glob("nodes/*/workitems/*/job-1/*/pid")
        return [int(text) for p in found if (text := p.read_text()).endswith("\n")]

    wait_for(lambda: len(sleepers()) == 2, "the two sleeping tasks running")
    tasks = sleepers()
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.stderr is not None
    while "Interrupted: stopping running tasks" not in (line := proc.stderr.readline()):
        assert line, "batchflow ended without saying it stops the tasks"
    os.killpg(proc.pid, signal.SIGINT)  # again, at once
    out, err = finish(proc)

    assert proc.returncode == 130, err
    result = json.loads(out)
    assert result["status"] == "interrupted", out
    counts = result["counts"]
    assert counts["succeeded"] == 2, out  # (a stop cut short collected nothing: the journal's)
    assert counts["running"] == counts["active"] == 0, out  # the stop killed them: none still "running"
    [run] = runs(workspace)
    state = state_of(run)
    assert state["status"] == "interrupted"
    assert not (pool / "nodes").exists()  # cleaned up
    wait_for(lambda: not any(_alive(pid) for pid in tasks), "the tasks gone", timeout=10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat_line = Path(f"/proc/{pid}/stat").read_text()
    return stat_line[stat_line.rfind(")") + 2] != "Z"


@pytest.mark.e2e
def test_cleanup_of_a_dead_run_refuses_while_a_new_run_of_the_workflow_uses_its_pool(
    write_workflow: WriteWorkflow,
    finish: Callable[[subprocess.Popen[str]], tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Run A is SIGKILLed (its locks go with it); run B of the same workflow starts. `batchflow cleanup A`,
    as `status` advises, would remove the pool folders B runs in: it refuses, naming B."""
    wf = write_workflow(SLOW, inputs=2)
    workspace = wf.parent / ".batchflow"
    dead = start(wf)
    wait_for(lambda: in_stage(workspace, "monitor"), "run A monitoring")
    os.killpg(dead.pid, signal.SIGKILL)  # batchflow only: its tasks, in sessions of their own, live on
    dead.communicate()
    [run_a] = runs(workspace)
    live = start(wf)  # refused? no: A's locks died with it
    wait_for(lambda: len(runs(workspace)) == 2 and in_stage(workspace, "monitor"), "run B monitoring")
    run_b = runs(workspace)[-1]

    assert main(["cleanup", run_a.name, "--workspace", str(workspace), "--yes"]) == 2

    assert capsys.readouterr().err.startswith(f"error: job TestJob is in use by run {run_b.name} ")
    _, err = finish(live)
    assert live.returncode == 0, err
    assert state_of(run_b)["status"] == "succeeded"
    assert main(["cleanup", run_a.name, "--workspace", str(workspace), "--yes"]) == 0  # now it may
    capsys.readouterr()


# ---- 4. secrets in JSON output and state files -------------------------------------------------------


def test_json_output_and_the_state_file_are_redacted_but_paths_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchflow.state import RunState, RunStatus

    monkeypatch.setenv("MY_API_TOKEN", "tok-9f8e7d6c5b4a")
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path))  # a folder under a credential-like name: a path
    workspace = tmp_path / "ws"
    state = RunState.create(workspace, tmp_path / "wf.yaml", "local", "20261201-000000-000-aaaaaa")
    state.status, state.message, state.ended_at = RunStatus.FAILED, "task said tok-9f8e7d6c5b4a", time.time()
    state.save()

    text = (state.folder / "state.json").read_text(encoding="utf-8")
    assert "tok-9f8e7d6c5b4a" not in text and "task said REDACTED" in text
    assert json.loads(text)["workflow"] == str(tmp_path / "wf.yaml")  # the path under SECRETS_DIR kept
    assert main(["status", "--workspace", str(workspace), "--output", "json"]) == 1
    out = capsys.readouterr().out
    assert "tok-9f8e7d6c5b4a" not in out
    assert json.loads(out)["run_folder"] == str(state.folder)
