"""The run state (state.json) as typed values, and the task journal (tasks.jsonl) that makes
`batchflow status` live: real files, real threads, this process's own pid as the live run."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from batchflow.cli import main
from batchflow.errors import BatchflowError
from batchflow.model import TaskResult, TaskState
from batchflow.state import (
    JOURNAL_FILE,
    STATE_FILE,
    RecordState,
    RunState,
    RunStatus,
    TaskJournal,
    TaskRecord,
    read_journal,
)

RUN_ID = "20261201-000000-000-aaaaaa"


def new_state(tmp_path: Path) -> RunState:
    return RunState.create(tmp_path / "ws", tmp_path / "wf.yaml", "local", RUN_ID)


def result(task_id: str, state: TaskState, folder: Path, **more: Any) -> TaskResult:
    logs = folder / "tasks" / task_id
    return TaskResult(
        task_id,
        state,
        more.pop("exit_code", 0 if state is TaskState.SUCCEEDED else 1),
        more.pop("attempts", 1),
        started_at=more.pop("started_at", 1000.0),
        ended_at=more.pop("ended_at", 1001.5),
        stdout_path=logs / "stdout.txt",
        stderr_path=logs / "stderr.txt",
        **more,
    )


def raw(state: RunState) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((state.folder / STATE_FILE).read_text(encoding="utf-8"))
    return data


def rewrite(state: RunState, change: Any) -> None:
    data = raw(state)
    change(data)
    (state.folder / STATE_FILE).write_text(json.dumps(data), encoding="utf-8")


# ---- state.json: typed in memory, the same JSON on disk -----------------------------------------


def journal_records(state: RunState) -> dict[str, dict[str, Any]]:
    """Each task's last line in the journal, as JSON, without its "event" and "task" keys."""
    out: dict[str, dict[str, Any]] = {}
    for line in (state.folder / JOURNAL_FILE).read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        assert entry.pop("event") == "ended"
        out[entry.pop("task")] = entry
    return out


def test_state_json_keeps_its_shape_and_loads_back_typed(tmp_path: Path) -> None:
    """state.json holds the run; the journal every task's record, one line each, as JSON."""
    state = new_state(tmp_path)
    state.record_tasks(
        [
            result("t1", TaskState.SUCCEEDED, state.folder, outputs=("out/t1.mp3",)),
            result("t2", TaskState.FAILED, state.folder, failure="killed", unmatched_outputs=("*.mp3",)),
        ]
    )
    state.mark_not_started(["t1", "t2", "t3"])
    state.status, state.ended_at = RunStatus.FAILED, 2000.0
    state.save()

    data = raw(state)
    assert data["status"] == "failed"
    assert "tasks" not in data
    assert set(data) == set(state.to_json()) - {"tasks"}
    assert (
        journal_records(state)
        == state.to_json()["tasks"]
        == {
            "t1": {
                "state": "succeeded",
                "exit_code": 0,
                "attempts": 1,
                "started_at": 1000.0,
                "ended_at": 1001.5,
                "failure": None,
                "stdout": "tasks/t1/stdout.txt",
                "stderr": "tasks/t1/stderr.txt",
                "outputs": ["out/t1.mp3"],
                "unmatched_outputs": [],
                "reused_from": None,
            },
            "t2": {
                "state": "failed",
                "exit_code": 1,
                "attempts": 1,
                "started_at": 1000.0,
                "ended_at": 1001.5,
                "failure": "killed",
                "stdout": "tasks/t2/stdout.txt",
                "stderr": "tasks/t2/stderr.txt",
                "outputs": [],
                "unmatched_outputs": ["*.mp3"],
                "reused_from": None,
            },
            "t3": {
                "state": "not_started",
                "exit_code": None,
                "attempts": 0,
                "started_at": None,
                "ended_at": None,
                "failure": None,
                "stdout": None,
                "stderr": None,
                "outputs": [],
                "unmatched_outputs": [],
                "reused_from": None,
            },
        }
    )
    loaded = RunState.load(state.folder)
    assert loaded == state
    assert loaded.status is RunStatus.FAILED
    assert loaded.tasks["t3"] == TaskRecord(RecordState.NOT_STARTED)
    assert loaded.counts() == {"active": 0, "running": 0, "succeeded": 1, "failed": 1, "not_started": 1}


def test_a_task_stopped_before_it_ran_is_not_started_but_one_that_ran_stays_failed(tmp_path: Path) -> None:
    state = new_state(tmp_path)
    state.record_tasks(
        [
            result("ran", TaskState.FAILED, state.folder, failure="killed"),
            result("never", TaskState.FAILED, state.folder, started_at=None, failure="cancelled", attempts=1),
        ]
    )
    state.mark_not_started(["ran", "never"])
    assert state.tasks["ran"].state is RecordState.FAILED
    never = state.tasks["never"]
    assert (never.state, never.failure, never.attempts) == (RecordState.NOT_STARTED, None, 0)
    assert never.stderr == "tasks/never/stderr.txt"  # what else it had stays


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(status="paused"), "status: expected one of 'running', 'succeeded', 'failed', "),
        (
            lambda d: d["tasks"]["t1"].update(exit_code="0"),
            "tasks.t1.exit_code: expected a whole number, got str '0'",
        ),
        (
            lambda d: d["tasks"]["t1"].update(attempts=True),
            "tasks.t1.attempts: expected a whole number, got bool",
        ),
        (lambda d: d["tasks"]["t1"].update(state="done"), "tasks.t1.state: expected one of 'active', "),
        (lambda d: d["tasks"]["t1"].update(outputs="a.mp3"), "tasks.t1.outputs: expected a list, got str"),
        (lambda d: d["tasks"]["t1"].pop("state"), "tasks.t1: 'state' is missing"),
        (lambda d: d.update(pool_created="yes"), "pool_created: expected true or false, got str 'yes'"),
        (
            lambda d: d.update(containers_created=["a", 1]),
            "containers_created[1]: expected a string, got int 1",
        ),
        (lambda d: d.update(stage_seconds={"upload": "1s"}), "stage_seconds.upload: expected a number"),
        (lambda d: d.pop("run_id"), "state: 'run_id' is missing"),
        (lambda d: d.update(tasks=[]), "tasks: expected an object, got list []"),
    ],
)
def test_loading_is_strict_about_types(tmp_path: Path, change: Any, message: str) -> None:
    """Of a state.json as earlier versions wrote it too, with the task records in it."""
    state = new_state(tmp_path)
    state.record_tasks([result("t1", TaskState.SUCCEEDED, state.folder)])
    state.save()
    rewrite(state, lambda d: d.update(tasks=state.to_json()["tasks"]))
    rewrite(state, change)

    with pytest.raises(BatchflowError) as caught:
        RunState.load(state.folder)
    assert str(caught.value).startswith(f"run state {state.folder / STATE_FILE} is damaged: {message}")


def test_loading_tolerates_a_missing_optional_key(tmp_path: Path) -> None:
    """A state.json from before a field existed, or a task record with only its state."""
    state = new_state(tmp_path)
    state.save()
    optional = ["storage", "pid_start", "overrides", "host", "cleanup_failures", "cleaned_up", "job_created"]

    def older(data: dict[str, Any]) -> None:
        for key in optional:
            data.pop(key)
        data["unknown_later_field"] = 1  # and a key from a later version is ignored
        data["tasks"] = {"t1": {"state": "succeeded", "exit_code": 0}}

    rewrite(state, older)
    loaded = RunState.load(state.folder)
    assert (loaded.storage, loaded.pid_start, loaded.overrides, loaded.host) == ("local", None, {}, None)
    assert (loaded.cleanup_failures, loaded.cleaned_up, loaded.job_created) == ([], [], False)
    assert loaded.tasks == {"t1": TaskRecord(RecordState.SUCCEEDED, exit_code=0)}


def test_saving_writes_the_run_not_its_tasks_and_records_append_only_what_changed(tmp_path: Path) -> None:
    """state.json was rewritten whole, every task in it, at every stage (2.3 s a save at 100,000
    tasks): now its size does not depend on the tasks, whose records are appended once each."""
    state = new_state(tmp_path)
    state.save()
    empty = (state.folder / STATE_FILE).stat().st_size
    journal = TaskJournal(state.folder)  # what the local compute writes as tasks end
    for i in range(500):
        journal.task_ended(result(f"t{i:03d}", TaskState.SUCCEEDED, state.folder))
    written = (state.folder / JOURNAL_FILE).read_bytes()

    # The runner collects the same results: nothing is appended for them.
    state.record_tasks([result(f"t{i:03d}", TaskState.SUCCEEDED, state.folder) for i in range(500)])
    for stage in ("monitor", "download", "cleanup"):
        state.stage = stage
        state.save()
    assert (state.folder / JOURNAL_FILE).read_bytes() == written
    assert (state.folder / STATE_FILE).stat().st_size == empty + len('"cleanup"') - len('"plan"')
    assert len(state.tasks) == 500

    # A record that changes is appended (one line), and wins.
    state.record({"t007": TaskRecord(RecordState.FAILED, failure="gone")})
    state.record({"t008": state.tasks["t008"]})  # unchanged: nothing
    lines = (state.folder / JOURNAL_FILE).read_bytes()[len(written) :].decode().splitlines()
    assert [json.loads(line)["task"] for line in lines] == ["t007"]
    loaded = RunState.load(state.folder)
    assert loaded == state
    assert loaded.tasks["t007"] == TaskRecord(RecordState.FAILED, failure="gone")


def test_a_state_json_of_an_earlier_version_loads_and_its_records_move_to_the_journal(
    tmp_path: Path,
) -> None:
    """Earlier versions wrote every task's record into state.json at the end, where it won over
    the journal. Such a run still loads as it was; the first change it gets (a cleanup, an
    attach) appends those records to the journal, and state.json is the new, short one."""
    state = new_state(tmp_path)
    journal = TaskJournal(state.folder)
    journal.task_started("t1", 1, 100.0)
    journal.task_started("t2", 1, 100.0)
    journal.task_ended(result("t3", TaskState.FAILED, state.folder))
    old = {
        "t1": TaskRecord(RecordState.SUCCEEDED, exit_code=0, attempts=1, started_at=100.0),
        "t3": TaskRecord(RecordState.NOT_STARTED),
    }
    rewrite(state, lambda d: d.update(tasks={tid: r.to_json() for tid, r in old.items()}))

    expected = {**old, "t2": TaskRecord(RecordState.RUNNING, attempts=1, started_at=100.0)}
    assert RunState.load(state.folder).tasks == expected
    assert RunState.load(state.folder, journal=False).tasks == old

    dead = RunState.load(state.folder, journal=False)  # as `batchflow cleanup` loads a dead run
    dead.end_dead_tasks("stopped", 200.0)
    dead.save()
    assert "tasks" not in raw(dead)
    stopped = TaskRecord(RecordState.FAILED, attempts=1, started_at=100.0, ended_at=200.0, failure="stopped")
    after = {**expected, "t2": stopped}
    assert RunState.load(state.folder).tasks == after
    assert read_journal(state.folder) == after


# ---- the task journal ----------------------------------------------------------------------------


def test_the_journal_takes_events_from_many_threads_one_whole_line_each(tmp_path: Path) -> None:
    state = new_state(tmp_path)
    journal = TaskJournal(state.folder)
    threads, per_thread = 8, 50
    go = threading.Barrier(threads)

    def worker(w: int) -> None:
        go.wait()
        for i in range(per_thread):
            task_id = f"w{w}-t{i:02d}"
            journal.task_started(task_id, 1, time.time())
            if i % 5 == 0:  # a retry: a second attempt starts after the first failed
                journal.task_ended(result(task_id, TaskState.FAILED, state.folder))
                journal.task_started(task_id, 2, time.time())
            if i % 10 != 9:  # every tenth still runs
                journal.task_ended(result(task_id, TaskState.SUCCEEDED, state.folder, attempts=2))

    pool = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()

    lines = (state.folder / JOURNAL_FILE).read_text(encoding="utf-8").splitlines()
    per = per_thread * 2 - per_thread // 10 + 2 * (per_thread // 5)
    assert len(lines) == threads * per
    entries = [json.loads(line) for line in lines]  # every line whole
    assert {e["event"] for e in entries} == {"started", "ended"}
    records = read_journal(state.folder)
    assert len(records) == threads * per_thread
    running = {tid for tid, r in records.items() if r.state is RecordState.RUNNING}
    assert running == {f"w{w}-t{i:02d}" for w in range(threads) for i in range(9, per_thread, 10)}
    assert records["w0-t00"] == TaskRecord.of(
        result("w0-t00", TaskState.SUCCEEDED, state.folder, attempts=2), state.folder
    )


def test_a_retry_shows_as_running_again_since_its_first_start(tmp_path: Path) -> None:
    state = new_state(tmp_path)
    journal = TaskJournal(state.folder)
    journal.task_started("t1", 1, 100.0)
    journal.task_ended(result("t1", TaskState.FAILED, state.folder, started_at=100.0))
    journal.task_started("t1", 2, 130.0)

    assert read_journal(state.folder) == {"t1": TaskRecord(RecordState.RUNNING, attempts=2, started_at=100.0)}


def test_the_journal_is_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_API_TOKEN", "tok-9f8e7d6c5b4a")
    state = new_state(tmp_path)
    TaskJournal(state.folder).task_ended(
        result("t1", TaskState.FAILED, state.folder, failure="upload refused for tok-9f8e7d6c5b4a")
    )

    text = (state.folder / JOURNAL_FILE).read_text(encoding="utf-8")
    assert "tok-9f8e7d6c5b4a" not in text
    assert read_journal(state.folder)["t1"].failure == "upload refused for REDACTED"


def test_a_full_disk_is_logged_once_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = new_state(tmp_path)
    path = state.folder / JOURNAL_FILE
    path.symlink_to("/dev/full")  # every write: ENOSPC, "No space left on device"
    journal = TaskJournal(state.folder)

    with caplog.at_level(logging.WARNING, logger="batchflow"):
        for i in range(5):
            journal.task_started(f"t{i}", 1, 100.0)  # never raises
            journal.task_ended(result(f"t{i}", TaskState.SUCCEEDED, state.folder))

    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith(f"cannot write the task journal {path} ")
    assert "No space left on device" in warning.getMessage()

    # Space again: the line a failed write may have cut short is ended first; the rest reads.
    path.unlink()
    path.write_text('{"event": "started", "task": "cut', encoding="utf-8")
    journal.task_started("t9", 1, 200.0)
    assert read_journal(state.folder) == {"t9": TaskRecord(RecordState.RUNNING, attempts=1, started_at=200.0)}


def test_a_journal_line_of_the_wrong_shape_or_an_unknown_event_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One odd line (another version's event, a wrong type) used to make every command that loads
    the run fail: the journal only makes status live, so the line is skipped and said once."""
    state = new_state(tmp_path)
    (state.folder / JOURNAL_FILE).write_text(
        '{"event": "started", "task": "t1", "attempt": "1", "at": 1}\n'
        '{"event": "queued", "task": "t2", "at": 1}\n'
        '{"event": "started", "task": "t3", "attempt": 1, "at": 5}\n'
        "[1, 2]\n",
        encoding="utf-8",
    )

    with caplog.at_level(logging.WARNING, logger="batchflow"):
        loaded = RunState.load(state.folder)

    assert loaded.tasks == {"t3": TaskRecord(RecordState.RUNNING, attempts=1, started_at=5.0)}
    assert [r.getMessage() for r in caplog.records] == [
        f"task journal {state.folder / JOURNAL_FILE}: 3 line(s) skipped, not understood "
        "(the first: line 1.attempt: expected a whole number, got str '1')"
    ]


def test_counts_add_up_to_the_task_count_only_while_the_run_goes_on(tmp_path: Path) -> None:
    state = new_state(tmp_path)
    state.task_count = 4
    state.record_tasks([result("t1", TaskState.SUCCEEDED, state.folder)])
    assert state.counts() == {"active": 3, "running": 0, "succeeded": 1, "failed": 0, "not_started": 0}
    state.status = RunStatus.FAILED  # ended: what it recorded, no more
    assert state.counts() == {"active": 0, "running": 0, "succeeded": 1, "failed": 0, "not_started": 0}


def test_load_merges_the_journal_and_the_end_of_the_run_wins(tmp_path: Path) -> None:
    state = new_state(tmp_path)
    journal = TaskJournal(state.folder)
    journal.task_started("t1", 1, 100.0)  # the run recorded t1 at its end: that record wins
    journal.task_started("t2", 1, 100.0)  # journal only: running
    journal.task_started("t3", 1, 100.0)
    journal.task_ended(result("t3", TaskState.FAILED, state.folder, failure="killed"))  # journal only: failed
    state.record_tasks([result("t1", TaskState.SUCCEEDED, state.folder, attempts=3)])
    state.save()

    loaded = RunState.load(state.folder)
    assert loaded.tasks["t1"] == state.tasks["t1"]
    assert loaded.tasks["t2"] == TaskRecord(RecordState.RUNNING, attempts=1, started_at=100.0)
    assert (loaded.tasks["t3"].state, loaded.tasks["t3"].failure) == (RecordState.FAILED, "killed")
    assert [tid for tid, _ in loaded.running_tasks()] == ["t2"]


# ---- batchflow status while the run goes on ------------------------------------------------------


def test_status_of_a_running_run_shows_its_running_tasks_the_longest_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = new_state(tmp_path)  # this process's pid and start time: a live run
    state.stage, state.task_count = "monitor", 10
    state.save()
    journal = TaskJournal(state.folder)
    now = time.time()
    for i in range(7):  # t0 started first, t6 last
        journal.task_started(f"t{i}", 1, now - 3600 - 65 + i * 600)
    journal.task_ended(result("t2", TaskState.SUCCEEDED, state.folder))
    first_try = now - 3600 - 65 + 3 * 600
    journal.task_ended(
        result("t3", TaskState.FAILED, state.folder, failure="exit code 3", started_at=first_try)
    )
    journal.task_started("t3", 2, now)  # its retry runs
    journal.task_started("t7", 1, now - 5)
    journal.task_ended(result("t8", TaskState.FAILED, state.folder, failure="missing input"))
    (state.folder / "tasks" / "t8").mkdir()
    (state.folder / "tasks" / "t8" / "stderr.txt").write_text("no such blob\n", encoding="utf-8")

    assert main(["status", "--workspace", str(tmp_path / "ws")]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        f"Run {RUN_ID} (local): running, stage monitor",
        f"Workflow: {tmp_path / 'wf.yaml'}",
        "Tasks: 10 total, 1 succeeded, 1 failed, 1 queued",  # t9: no word of it yet (7 run)
    ]
    assert lines[3] == "Running: 7 tasks, the longest first"
    shown = [line.split(": ", 1) for line in lines[4:9]]
    assert [tid.strip() for tid, _ in shown] == ["t0", "t1", "t3", "t4", "t5"]  # t3 by its first start
    assert shown[0][1] == "running for 1:01:05" or shown[0][1] == "running for 1:01:06"
    assert shown[2][1].endswith(", attempt 2") and "attempt" not in shown[1][1]
    assert lines[9:] == [
        "  ... and 2 more",
        "  t8: missing input",
        "    | no such blob",
        f"Run folder: {state.folder}",
    ]

    assert main(["status", "--workspace", str(tmp_path / "ws"), "--output", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["status"], data["exit_code"]) == ("running", 0)
    # They add up to the task count: the task the journal does not name yet is queued.
    assert data["counts"] == {"active": 1, "running": 7, "succeeded": 1, "failed": 1, "not_started": 0}
    assert data["tasks"]["t7"]["state"] == "running"


def test_status_of_a_finished_run_shows_no_running_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = new_state(tmp_path)
    TaskJournal(state.folder).task_started("t1", 1, time.time())
    state.status, state.ended_at, state.task_count = RunStatus.INTERRUPTED, time.time(), 1
    state.save()

    assert main(["status", "--workspace", str(tmp_path / "ws")]) == 130
    out = capsys.readouterr().out
    assert "interrupted" in out.splitlines()[0]
    assert "Running:" not in out
