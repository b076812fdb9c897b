"""`batchflow plan --output json` writes each upload and task as one line, made without json.dumps:
each line is exactly what json.dumps makes of the same data, and a secret in one is redacted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchflow.ledger import Entry
from batchflow.model import OutputCondition, RenderedTask, TaskInput, TaskOutput, UploadItem
from batchflow.plan_view import _task_json, _task_line, _upload_json, _upload_line
from batchflow.redact import JsonRedactor
from batchflow.resume import Decision

ODD = 'é 日本 "quoted" back\\slash\nline\ttab \x01 \u2028 😀'
TASKS = [
    RenderedTask("t1", 0, "cat ./a.mp4", (TaskInput("input", "a.mp4", "a.mp4"),), (), {}, 0, None),
    RenderedTask(
        "t-2",
        1,
        f"run {ODD!r}",
        (TaskInput("input", f"x/{ODD}", ODD), TaskInput("tools", "bin/run.sh", "lib/run.sh")),
        (
            TaskOutput(f"{ODD}.mp3", "output", f"runs/<run id>/{ODD}.mp3", OutputCondition.SUCCESS),
            TaskOutput("*.log", "logs", "runs/<run id>/logs/", OutputCondition.FAILURE),
        ),
        {"A": ODD, ODD: "b", "EMPTY": ""},
        3,
        600.5,
    ),
]
REUSED = Entry("k", "t1", "run-1", True, {})
DECISIONS = [None, Decision("t1", True, "new"), Decision("t1", False, "unchanged", REUSED)]


@pytest.mark.parametrize("decision", DECISIONS)
@pytest.mark.parametrize("task", TASKS, ids=["plain", "odd"])
def test_a_task_line_is_what_json_dumps_says(task: RenderedTask, decision: Decision | None) -> None:
    assert _task_line(task, decision) == json.dumps(_task_json(task, decision))


def test_an_upload_line_is_what_json_dumps_says() -> None:
    for item in [
        UploadItem(Path("/in/a.mp4"), "input", "a.mp4", 12),
        UploadItem(Path(f"/in/{ODD}"), "c", ODD, 0),
    ]:
        assert _upload_line(item) == json.dumps(_upload_json(item))


def test_a_line_with_a_secret_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchflow import plan_view

    monkeypatch.setenv("MY_PASSWORD", "s3cr3t-välue")
    redactor = JsonRedactor()
    tasks = [
        RenderedTask(f"t{i}", i, f"echo {i}", (TaskInput("input", f"{i}", f"{i}"),), (), {}, 0, None)
        for i in range(2500)
    ]
    tasks[1700] = RenderedTask("t1700", 1700, "login --password s3cr3t-välue", (), (), {}, 0, None)
    tasks[2] = RenderedTask("t2", 2, "curl 'https://x/y?sv=1&sig=abc%2F'", (), (), {}, 0, None)
    lines = list(
        plan_view._redacted_lines(
            redactor, tasks, lambda t: _task_line(t, None), lambda t: _task_json(t, None)
        )
    )
    assert len(lines) == 2500
    assert json.loads(lines[1700])["command"] == "login --password REDACTED"
    assert json.loads(lines[2])["command"] == "curl 'https://x/y?sv=1&sig=REDACTED'"
    assert lines[3] == _task_line(tasks[3], None)
    assert not any("s3cr3t" in line for line in lines)
