"""A backend is one object in one registry: the test-only thread backend (tests/thread_backend),
registered the way the real ones are, gets its workflow block, its CLI choice, its start task, whole
runs and `batchflow cleanup`, with no line of batchflow naming it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import thread_backend
import yaml
from conftest import REPO, WriteWorkflow, in_out_storage
from thread_backend.storage import MemoryStorage

from batchflow import spec
from batchflow.backends import registry
from batchflow.cli import main
from batchflow.errors import ConfigurationError
from batchflow.state import RunState

SAFETY_NET = 60.0  # seconds; only so a broken run fails instead of hanging the suite
# A batchflow process with the thread backend registered, as a plugin would register it.
PLUGIN_MAIN = (
    "import sys; from batchflow.backends import registry; "
    "registry.register('thread', 'thread_backend:BACKEND'); "
    "from batchflow.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.fixture
def thread() -> Iterator[None]:
    """The thread backend in the registry for one test; the registry as it was afterwards."""
    before = dict(registry.BACKENDS)
    registry.register("thread", "thread_backend:BACKEND")
    try:
        yield
    finally:
        registry.unregister("thread")
        if "thread" in before:
            registry.register("thread", before["thread"])
        assert before == registry.BACKENDS
        assert "thread" not in spec.schema()["properties"]  # the schema cache keys on generation()


def line_of(path: Path, text: str) -> tuple[int, int]:
    """1-based (line, column) of the first `text` in the file."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if text in line:
            return number, line.index(text) + 1
    raise AssertionError(f"{text!r} not in {path}")


def upper_workflow(write: WriteWorkflow, command: str | None = None, **more: Any) -> Path:
    """Two inputs; each task uppercases what the start task left in the node's shared folder, then
    its input, into <stem>.upper, downloaded to out/."""
    command = command or (
        'cat "$AZ_BATCH_NODE_SHARED_DIR/greeting" {{ input.path }} | tr a-z A-Z > {{ input.stem }}.upper'
    )
    return write(
        command,
        tasks={"outputs": [{"pattern": "{{ input.stem }}.upper", "container": "outputs"}], **more},
        extra={
            "storage": in_out_storage(),
            "thread": {
                "workers": 2,
                "start_task": {
                    "command": 'echo "hi from $AZ_BATCH_NODE_ID" > "$AZ_BATCH_NODE_SHARED_DIR/greeting"'
                },
            },
        },
    )


def test_the_composed_schema_gains_the_thread_block(thread: None) -> None:
    assert registry.names() == ["local", "azure", "thread"]
    composed = spec.schema()
    assert composed["properties"]["thread"] == thread_backend.BACKEND.settings_schema
    assert '"thread": {' in spec.schema_text()


def test_validate_reports_a_bad_thread_value_at_its_position(
    thread: None, write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow("true", extra={"thread": {"workers": "two"}})
    line, column = line_of(wf, "two")

    assert main(["validate", str(wf)]) == 2

    assert capsys.readouterr().err.splitlines() == [
        f"{wf}:{line}:{column}: thread.workers: 'two' is not of type 'integer'",
        "1 problem; nothing was created.",
    ]


def test_its_problems_are_reported_with_backend_thread_only(
    thread: None, write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow("true", extra={"thread": {"workers": 50}})
    line, column = line_of(wf, "50")

    assert main(["validate", str(wf)]) == 0  # the local backend has no use for thread.workers
    capsys.readouterr()
    assert main(["validate", str(wf), "--backend", "thread"]) == 2

    assert capsys.readouterr().err.splitlines() == [
        f"{wf}:{line}:{column}: thread.workers: at most 8 workers, not 50: each is a thread of the "
        "batchflow process",
        "1 problem; nothing was created.",
    ]


def test_backend_thread_is_a_cli_choice_only_while_registered(
    thread: None, write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow("true")
    assert main(["validate", str(wf), "--backend", "thread"]) == 0
    capsys.readouterr()
    registry.unregister("thread")

    assert main(["validate", str(wf), "--backend", "thread"]) == 2

    assert "argument --backend: invalid choice: 'thread'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_backend_help_lists_every_backend_with_its_description(
    thread: None, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    assert main([command, "--help"]) == 0

    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    for backend in registry.all_backends():
        assert f"{backend.name}: {backend.description}" in shown
    assert "thread: test only: tasks run from worker threads on folder nodes; files live in memory" in shown


class _NamedPool(thread_backend.ThreadBackend):
    name = "pool"


NAMED_POOL = _NamedPool()  # a backend whose block would be the workflow's own `pool:`
REFUSED = (
    "backend test_backend_plugin:NAMED_POOL cannot be named 'pool': its block would be the workflow "
    "file's own 'pool' key. Name it otherwise (the workflow's keys: cleanup, description, job, monitor, "
    "name, pool, storage, tasks, vars, version)"
)


def test_a_backend_named_like_a_key_of_the_workflow_file_is_refused(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    """Such a backend made the schema raise ValueError: every command exited 3, "unexpected error"."""
    wf = write_workflow("true")
    try:
        with pytest.raises(ConfigurationError) as caught:
            registry.register("pool", "test_backend_plugin:NAMED_POOL")
        assert str(caught.value) == REFUSED
        assert "pool" not in registry.BACKENDS

        registry.BACKENDS["pool"] = "test_backend_plugin:NAMED_POOL"  # past register, by hand
        assert main(["validate", str(wf)]) == 2
        assert capsys.readouterr().err == f"error: {REFUSED}\n"
    finally:
        registry.unregister("pool")


def test_plan_uses_the_thread_start_task(
    thread: None, write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow(
        "true",
        extra={"thread": {"start_task": {"command": "echo thread"}}},
    )
    doc = yaml.safe_load(wf.read_text(encoding="utf-8"))
    doc["pool"]["start_task"] = {"command": "echo pool"}
    wf.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    plans = {}
    for backend in ("thread", "local"):
        assert main(["plan", str(wf), "--backend", backend, "--output", "json"]) == 0
        plans[backend] = json.loads(capsys.readouterr().out)["pool"]["start_task"]
    assert plans == {"thread": "echo thread", "local": "echo pool"}


@pytest.mark.e2e
def test_a_run_on_the_thread_backend_converts_files_end_to_end(
    thread: None, write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = upper_workflow(write_workflow)

    assert main(["run", str(wf), "--backend", "thread", "--quiet"]) == 0

    out = wf.parent / "out"
    seen = {p.name: p.read_text(encoding="utf-8") for p in out.iterdir()}
    assert sorted(seen) == ["item-01.upper", "item-02.upper"]
    assert {name: text.splitlines()[1] for name, text in seen.items()} == {
        "item-01.upper": "ITEM 1",
        "item-02.upper": "ITEM 2",
    }
    assert {text.splitlines()[0] for text in seen.values()} <= {"HI FROM NODE-0", "HI FROM NODE-1"}
    err = capsys.readouterr().err.splitlines()
    workspace = wf.parent / ".batchflow"
    (folder,) = (workspace / "runs").iterdir()
    assert f"Run {folder.name}: succeeded. 2 succeeded, 0 failed of 2 tasks." in err
    assert f"Outputs: {out} (2 downloaded, 0 unchanged)" in err
    state = RunState.load(folder)
    assert (state.backend, state.storage, state.pool_created) == ("thread", "thread", True)
    assert not (workspace / "thread" / folder.name).exists()  # its pool went with the run
    logs = MemoryStorage(thread_backend.store_name(workspace)).list_blobs("outputs", "batchflow-logs/")
    assert logs == [
        f"batchflow-logs/{folder.name}/task-item-0{i}/{name}"
        for i in (1, 2)
        for name in ("stderr.txt", "stdout.txt")
    ]


@pytest.mark.e2e
def test_a_failing_task_fails_the_run_with_its_stderr_in_the_summary(
    thread: None, write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = upper_workflow(write_workflow, "echo broken-{{ input.stem }} >&2; exit 3", max_retries=1)

    assert main(["run", str(wf), "--backend", "thread", "--quiet"]) == 1

    err = capsys.readouterr().err.splitlines()
    assert "Task task-item-01 failed (exit code 3, 2 attempt(s))" in err
    assert "    | broken-item-01" in err
    assert "    | broken-item-02" in err


@pytest.mark.e2e
def test_cleanup_stops_and_removes_what_a_killed_thread_run_left(
    thread: None, write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL of batchflow mid-run: its task lives on in a session of its own, its job and pool
    folders stay. A new run refuses the job; `batchflow cleanup` stops the task and removes both."""
    wf = write_workflow(
        "echo $$ > ../pid; touch ../started; sleep 60", inputs=1, extra={"thread": {"workers": 1}}
    )
    workspace = wf.parent / ".batchflow"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", PLUGIN_MAIN, "run", str(wf), "--backend", "thread", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    started = "thread/*/nodes/node-0/workitems/TestJob/job-1/task-item-01/started"
    try:
        deadline = time.monotonic() + SAFETY_NET
        while not (list(workspace.glob(started)) and list(workspace.glob("thread/*/procs/*.json"))):
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read() if proc.stderr else ""
            )
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # batchflow and its threads: no cleanup runs
        proc.communicate(timeout=30)
    (marker,) = workspace.glob(started)
    task_pid = int((marker.parent / "pid").read_text(encoding="utf-8"))
    assert alive(task_pid)
    (run,) = (workspace / "runs").iterdir()

    assert main(["run", str(wf), "--backend", "thread", "--quiet"]) == 2  # check_access: the job is there
    assert f"`batchflow cleanup {run.name}` removes it" in capsys.readouterr().err

    assert main(["cleanup", run.name, "--workspace", str(workspace), "--yes", "--output", "json"]) == 0

    report = json.loads(capsys.readouterr().out)
    assert (report["deleted"], report["kept"], report["failed"]) == (
        ["process of task task-item-01", "job TestJob", "pool TestPool"],
        [],
        [],
    )
    deadline = time.monotonic() + SAFETY_NET
    while alive(task_pid):
        assert time.monotonic() < deadline, f"task process {task_pid} outlived the cleanup"
        time.sleep(0.02)
    assert not (workspace / "thread" / run.name).exists()
    state = RunState.load(run)
    assert (state.status, state.cleaned_up) == ("dead", report["deleted"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except FileNotFoundError:  # gone since the kill(0)
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie waiting to be reaped is gone
