"""Typed events and their two reporters: the text one on stderr, the JSON-lines one on stdout
(`batchflow run --output jsonl`), down to a real run on the local backend read line by line."""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, WriteWorkflow, in_out_storage

from batchflow.cli import main
from batchflow.events import (
    Info,
    RunResult,
    RunStarted,
    Stage,
    StageName,
    TaskProgress,
    TransferKind,
    TransferProgress,
    Warn,
    event_json,
)
from batchflow.model import TaskCounts, TaskResult, TaskState
from batchflow.report import FanOut, JsonLinesReporter, Reporter, as_json
from batchflow.state import RunState, RunStatus

STAGES = ["upload", "reuse", "pool", "job", "tasks", "monitor", "download", "cleanup"]
SAFETY_NET = 60.0  # seconds; only so a broken run fails instead of hanging the suite


def test_each_event_as_json() -> None:
    folder = Path("/w/runs/r1")
    assert [
        event_json(e)
        for e in (
            RunStarted("r1", 5, "local", "azure", folder),
            Stage(StageName.UPLOAD),
            Info("Creating pool [p]..."),
            Warn("Pool [p] kept (cleanup.pool: keep)."),
            TaskProgress(TaskCounts(active=1, running=2, succeeded=3, failed=1), 7),
            TransferProgress(TransferKind.UPLOAD, 128, 300, 5_000_000, 9_000_000),
        )
    ] == [
        {
            "event": "run",
            "run_id": "r1",
            "tasks": 5,
            "backend": "local",
            "storage": "azure",
            "run_folder": "/w/runs/r1",
        },
        {"event": "stage", "stage": "upload"},
        {"event": "info", "message": "Creating pool [p]..."},
        {"event": "warning", "message": "Pool [p] kept (cleanup.pool: keep)."},
        {
            "event": "tasks",
            "total": 7,
            "active": 1,
            "running": 2,
            "succeeded": 3,
            "failed": 1,
            "completed": 4,
        },
        {
            "event": "transfer",
            "direction": "upload",
            "files": 128,
            "total_files": 300,
            "bytes_sent": 5_000_000,
            "total_bytes": 9_000_000,
        },
    ]


def test_the_result_is_what_output_json_prints(tmp_path: Path) -> None:
    state = RunState.create(tmp_path / "ws", tmp_path / "wf.yaml", "local", "r1")
    state.record_tasks([TaskResult("t1", TaskState.SUCCEEDED, 0, 1, outputs=("out/a",))])
    state.status, state.stage_seconds = RunStatus.SUCCEEDED, {"upload": 0.5}

    result = RunResult.of(state, ["out (1 downloaded, 0 unchanged)"])
    state.status = RunStatus.FAILED  # a snapshot: later changes do not show

    assert event_json(result) == {"event": "result", **as_json(state), "status": "succeeded"}
    assert set(as_json(state)) == {
        "run_id",
        "status",
        "workflow",
        "backend",
        "run_folder",
        "counts",
        "stage_seconds",
        "tasks",
        "message",
    }


class Recording(io.StringIO):
    """A stream that remembers what it held at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_json_lines_one_object_a_line_flushed_redacted_and_no_repeated_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MY_API_TOKEN", "tok-9f8e7d6c5b4a")
    stream = Recording()
    reporter = JsonLinesReporter(stream)
    same = TaskProgress(TaskCounts(running=2), 2)
    for event in (Stage(StageName.MONITOR), same, same, Info("got tok-9f8e7d6c5b4a"), same):
        reporter.emit(event)
    reporter.close_progress()

    lines = stream.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"event": "stage", "stage": "monitor"},
        {
            "event": "tasks",
            "total": 2,
            "active": 0,
            "running": 2,
            "succeeded": 0,
            "failed": 0,
            "completed": 0,
        },
        {"event": "info", "message": "got REDACTED"},
    ]
    assert stream.flushed == ["".join(f"{line}\n" for line in lines[: i + 1]) for i in range(3)]


class Closed(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_json_lines_go_quiet_once_the_reader_is_gone() -> None:
    reporter = JsonLinesReporter(Closed())
    reporter.emit(Info("one"))  # no error: the run must still stop its tasks and clean up
    reporter.emit(Warn("two"))


def test_the_text_reporter_shows_warnings_even_quiet_and_no_stage_line() -> None:
    loud, hushed = io.StringIO(), io.StringIO()
    both = FanOut(Reporter(loud, live=False), Reporter(hushed, quiet=True, live=False))
    for event in (Stage(StageName.POOL), Info("Creating pool [p]..."), Warn("Pool [p] kept.")):
        both.emit(event)
    both.close_progress()

    assert loud.getvalue().splitlines() == ["Creating pool [p]...", "Pool [p] kept."]
    assert hushed.getvalue().splitlines() == ["Pool [p] kept."]


# ---- a real run, read line by line --------------------------------------------------------------


def run_jsonl(workflow: Path, stderr: Path) -> tuple[int, list[dict[str, Any]], list[bool]]:
    """`batchflow run WORKFLOW --output jsonl` as a real process (stderr into a file): its exit code,
    each stdout line as JSON as it arrived, and whether the process still ran when it did."""
    events: list[dict[str, Any]] = []
    running: list[bool] = []
    deadline = time.monotonic() + SAFETY_NET
    with (
        stderr.open("w", encoding="utf-8") as err,
        subprocess.Popen(
            [sys.executable, "-m", "batchflow", "run", str(workflow), "--output", "jsonl"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(stderr.parent / "cache")},
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            assert line.endswith("\n")
            events.append(json.loads(line))  # every line valid JSON on its own
            running.append(proc.poll() is None)
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the run took longer than {SAFETY_NET:.0f}s")
        code = proc.wait(timeout=SAFETY_NET)
    return code, events, running


@pytest.mark.e2e
def test_run_output_jsonl_streams_every_event_as_it_happens_and_ends_with_the_result(
    write_workflow: WriteWorkflow, tmp_path: Path
) -> None:
    wf = write_workflow(
        "sleep 0.5; tr a-z A-Z < {{ input.path }} > {{ input.stem }}.out",
        inputs=3,
        tasks={"outputs": [{"pattern": "{{ input.stem }}.out", "container": "outputs"}]},
        extra={"storage": in_out_storage(), "monitor": {"poll_interval": "100ms"}},
    )
    code, events, running = run_jsonl(wf, tmp_path / "stderr.txt")

    assert code == 0, (tmp_path / "stderr.txt").read_text(encoding="utf-8")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run" and kinds[-1] == "result"
    assert set(kinds) == {"run", "stage", "info", "transfer", "tasks", "result"}
    assert [e["stage"] for e in events if e["event"] == "stage"] == STAGES
    run_folder = Path(events[0]["run_folder"])
    assert events[0] == {
        "event": "run",
        "run_id": run_folder.name,
        "tasks": 3,
        "backend": "local",
        "storage": "local",
        "run_folder": str(run_folder),
    }
    messages = [e["message"] for e in events if e["event"] == "info"]
    assert "Uploading 3 files to container [inputs]..." in messages
    assert "Creating job [TestJob]..." in messages
    assert "Deleting job [TestJob]..." in messages
    progress = [e for e in events if e["event"] == "tasks"]
    assert progress[-1] == {
        "event": "tasks",
        "total": 3,
        "active": 0,
        "running": 0,
        "succeeded": 3,
        "failed": 0,
        "completed": 3,
    }
    assert all(a != b for a, b in itertools.pairwise(progress))  # only changes
    # Streamed, not printed at the end: the run was still going when its monitor stage was read.
    [monitor] = [i for i, e in enumerate(events) if e == {"event": "stage", "stage": "monitor"}]
    assert running[monitor]

    result = events[-1]
    state = RunState.load(run_folder).to_json()  # state.json, and each task's record (the journal)
    assert (result["run_id"], result["status"], result["run_folder"]) == (
        run_folder.name,
        "succeeded",
        str(run_folder),
    )
    assert result["tasks"] == state["tasks"]
    assert result["counts"] == {"active": 0, "running": 0, "succeeded": 3, "failed": 0, "not_started": 0}
    assert set(result) == {"event", *as_json(RunState.load(run_folder))}
    # stderr has the text, as with any --output.
    err = (tmp_path / "stderr.txt").read_text(encoding="utf-8").splitlines()
    assert f"Run {run_folder.name}: succeeded. 3 succeeded, 0 failed of 3 tasks." in err
    assert err[-1] == f"Run folder: {run_folder}"
    assert (wf.parent / "out" / "item-01.out").read_text(encoding="utf-8") == "ITEM 1\n"


@pytest.mark.e2e
def test_run_output_jsonl_of_a_failing_run_and_of_an_invalid_workflow(
    write_workflow: WriteWorkflow, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow("exit 3", inputs=1, extra={"monitor": {"poll_interval": "100ms"}})
    code, events, _ = run_jsonl(wf, tmp_path / "stderr.txt")

    assert code == 1
    assert [e["stage"] for e in events if e["event"] == "stage"] == STAGES  # a failed task is no error
    result = events[-1]
    assert (result["event"], result["status"]) == ("result", "failed")
    assert result["tasks"]["task-item-01"]["exit_code"] == 3

    # An error ends the run: its result, then the error, the very last line.
    wf = write_workflow("sleep 30", inputs=1, extra={"monitor": {"timeout": "1s", "poll_interval": "100ms"}})
    code, events, _ = run_jsonl(wf, tmp_path / "stderr.txt")

    assert code == 1
    assert [e["event"] for e in events[-2:]] == ["result", "error"]
    assert events[-2]["status"] == "failed"
    assert events[-1] == {
        "event": "error",
        "error": "tasks did not finish within the monitor timeout (1s): 0/1 completed, 1 running, 0 queued",
        "exit_code": 1,
    }

    wf.write_text(wf.read_text(encoding="utf-8").replace("dedicated_nodes: 2", "dedicated_nodes: two"))
    assert main(["run", str(wf), "--output", "jsonl"]) == 2
    [line] = capsys.readouterr().out.splitlines()
    error = json.loads(line)
    # As every error line: "error" and "exit_code" (README), and the problems, as validate gives them.
    assert (error["event"], error["valid"]) == ("error", False)
    assert (error["error"], error["exit_code"]) == ("1 problem; nothing was created.", 2)
    assert [p["path"] for p in error["problems"]] == ["pool.dedicated_nodes"]


@pytest.mark.e2e
def test_run_output_jsonl_streams_what_input_discovery_skipped(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    """The warnings input discovery gives (a broken link skipped) reached stderr only, not the stream."""
    wf = write_workflow("true", inputs=1)
    (wf.parent / "inputs" / "broken.txt").symlink_to(wf.parent / "inputs" / "missing.txt")

    assert main(["run", str(wf), "--output", "jsonl"]) == 0

    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines()]
    skipped = f"skipped 'broken.txt': a broken link (to {wf.parent / 'inputs' / 'missing.txt'})"
    [warning] = [e for e in events if e["event"] == "warning"]
    assert warning["message"].startswith("warning: ") and warning["message"].endswith(skipped)
    assert warning["message"] in err.splitlines()  # stderr shows the same line, as before
    assert (events[0]["event"], events[1]["event"], events[-1]["event"]) == ("warning", "run", "result")


@pytest.mark.e2e
@pytest.mark.parametrize("force_color", [False, True])
def test_a_run_in_a_pipe_prints_plain_lines_without_importing_rich(
    write_workflow: WriteWorkflow, force_color: bool
) -> None:
    """Off a terminal the text reporter writes its lines itself (rich costs 25 ms of start-up), the
    same lines; FORCE_COLOR, which rich honours, brings rich and its colours."""
    wf = write_workflow("echo hi; exit 3", inputs=1)
    code = (
        "import sys; from batchflow.cli import main; code = main(['run', sys.argv[1]]); "
        "print(code, sorted({m.split('.')[0] for m in sys.modules} & {'rich'}))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TERM")}
    if force_color:
        env["FORCE_COLOR"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", code, str(wf)], capture_output=True, text=True, env=env, cwd=wf.parent
    )
    assert out.stdout.strip() == ("1 ['rich']" if force_color else "1 []"), out.stderr
    lines = out.stderr.splitlines()
    assert lines[0].startswith("Run ") and ": 1 tasks, backend local, storage local" in lines[0]
    assert any(line.startswith("Task task-item-01 failed (exit code 3, 1 attempt(s))") for line in lines)
    assert lines[-1].startswith("Run folder: ")


@pytest.mark.parametrize(
    "text",
    [
        "clip a:thumbs_up:b.mp4 done",
        "tab\tthen\ttabs\t!",
        "bell\x07 back\x08 cr\r vt\x0b ff\x0c end",
        "[bold]x[/]",
    ],
)
def test_plain_lines_are_what_rich_prints_off_a_terminal(text: str) -> None:
    """The reporter's own lines (off a terminal) are rich's, byte for byte, with emoji codes left as
    they are (a file may be named so) and the controls rich strips stripped."""
    from rich.console import Console

    plain = io.StringIO()
    Reporter(plain, live=False).emit(Warn(text))
    rich_out = io.StringIO()
    Console(file=rich_out, highlight=False, soft_wrap=True, emoji=False).print(text, markup=False)
    assert plain.getvalue() == rich_out.getvalue()
    assert ":thumbs_up:" in plain.getvalue() or ":thumbs_up:" not in text
