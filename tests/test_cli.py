"""The command line without running tasks: validate, plan, schema, status, and runs refused up front.

Every command is called as `main([...])`; exit codes, stdout and stderr are checked exactly.
A command that refuses a workflow must leave the disk as it found it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import WriteWorkflow

from batchflow.cli import main

MP4_TASK_COMMAND = (
    '"$AZ_BATCH_NODE_SHARED_DIR/bin/ffmpeg" -hide_banner -loglevel error -y '
    "-i {input} -vn -b:a {bitrate} ./{stem}.mp3"
)
LOCATED = re.compile(r"^.+:\d+:\d+: ")  # file:line:col: ...


def tree(root: Path) -> set[str]:
    """Every file and folder under `root`, relative: what a command must not change."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def position(path: Path, line_text: str, value: str) -> tuple[int, int]:
    """1-based (line, column) of `value` on the only line of `path` that contains `line_text`."""
    lines = [(i, line) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
    found = [(i, line) for i, line in lines if line_text in line]
    assert len(found) == 1, f"{line_text!r} is on {len(found)} lines of {path}"
    number, line = found[0]
    return number, line.index(value, line.index(line_text)) + 1


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} is not exactly once in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")


# ---- validate -----------------------------------------------------------------------------


def test_validate_a_valid_workflow(
    copy_workflow: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    wf = copy_workflow("mp4_to_mp3")
    before = tree(wf.parent)

    assert main(["validate", str(wf)]) == 0

    out, err = capsys.readouterr()
    assert (out, err) == ("", f"{wf}: valid (5 tasks)\n")
    assert tree(wf.parent) == before


def test_validate_json_of_a_valid_workflow(
    copy_workflow: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    wf = copy_workflow("word_count")

    assert main(["validate", str(wf), "--output", "json"]) == 0

    out, err = capsys.readouterr()
    assert json.loads(out) == {"valid": True, "problems": [], "warnings": [], "tasks": 4}
    assert err == ""


def test_validate_broken_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wf = tmp_path / "broken.yaml"
    wf.write_text("version: 1\nname: [unclosed\n", encoding="utf-8")

    assert main(["validate", str(wf)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{wf}:3:1: invalid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence at line 2, column 7)\n"
        "1 problem; nothing was created.\n"
    )
    assert LOCATED.match(err)
    assert "Traceback" not in err


def test_validate_broken_yaml_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wf = tmp_path / "broken.yaml"
    wf.write_text("version: 1\nname: [unclosed\n", encoding="utf-8")

    assert main(["validate", str(wf), "--output", "json"]) == 2

    out, err = capsys.readouterr()
    assert json.loads(out) == {
        "valid": False,
        "problems": [
            {
                "file": str(wf),
                "line": 3,
                "column": 1,
                "path": "",
                "message": "invalid YAML: expected ',' or ']', but got '<stream end>' "
                "(while parsing a flow sequence at line 2, column 7)",
            }
        ],
        "error": "1 problem; nothing was created.",
        "exit_code": 2,
    }
    assert err.endswith("1 problem; nothing was created.\n")


def test_validate_reports_every_problem_at_once(
    copy_workflow: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    wf = copy_workflow("mp4_to_mp3")
    edit(wf, "vm_size: Standard_A1_v2", "vm_size: 5")
    edit(wf, "  timeout: 30m", "  timeout: soon")
    vm_line, vm_col = position(wf, "vm_size: 5", "5")
    timeout_line, timeout_col = position(wf, "timeout: soon", "soon")

    assert main(["validate", str(wf)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{wf}:{vm_line}:{vm_col}: pool.vm_size: 5 is not of type 'string'",
        f"{wf}:{timeout_line}:{timeout_col}: monitor.timeout: 'soon' is not a valid duration: use seconds "
        "(90) or a string like '90s', '30m', '1h30m', '2d', '500ms' or 'PT30M'",
        "2 problems; nothing was created.",
    ]
    assert "Traceback" not in err

    assert main(["validate", str(wf), "--output", "json"]) == 2
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [(p["path"], p["line"], p["column"]) for p in problems] == [
        ("pool.vm_size", vm_line, vm_col),
        ("monitor.timeout", timeout_line, timeout_col),
    ]


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_a_glob_that_matches_nothing_creates_nothing(
    command: str, copy_workflow: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    wf = copy_workflow("mp4_to_mp3")
    edit(wf, 'include: ["*.mp4"]', 'include: ["*.nothing"]')
    line, col = position(wf, 'pattern: "*.mp4"', '"*.mp4"')
    before = tree(wf.parent)

    assert main([command, str(wf)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{wf}:{line}:{col}: tasks.foreach.pattern: '*.mp4' matches nothing: the uploads to container "
        "'input' found no files (check their source, include and exclude)\n"
        "1 problem; nothing was created.\n"
    )
    # No workspace (.batchflow), so no run folder, no storage containers, no pool folders; no downloads.
    assert tree(wf.parent) == before


# ---- plan ---------------------------------------------------------------------------------


def test_plan_table(
    copy_workflow: Callable[[str], Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps at the terminal width; 80 without a terminal
    wf = copy_workflow("mp4_to_mp3")
    before = tree(wf.parent)

    assert main(["plan", str(wf)]) == 0

    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[:3] == [
        f"Workflow mp4-to-mp3 ({wf})",
        "Uploads: 5 files, 146,469 bytes",
        "Pool [LinuxFFmpegPool]: Standard_A1_v2, 0 dedicated + 5 Spot nodes, 1 task slot(s) per node",
    ]
    assert "Job [LinuxFFmpegJob]: 5 tasks" in lines
    for name in ["café", "it's $(touch INJECTED)", "plain", "sample 1", "semi;colon & amp"]:
        assert any(
            f"│ {name}.mp4 " in line and f"output/runs/<run id>/{name}.mp3" in line for line in lines
        ), name
    assert "more tasks" not in out
    # After the table, the rest of the run plan: logs, downloads, cleanup.
    assert lines[-3:] == [
        "Task logs: output/batchflow-logs/<run id>/<task id>/",
        "Download: output/runs/<run id>/ (not batchflow-logs/, batchflow-ledger/) -> "
        f"{wf.parent / 'out' / 'mp3'}",
        "Cleanup: job deleted; pool delete-if-created",
    ]
    assert tree(wf.parent) == before


def test_plan_lines_above_the_table_are_never_wrapped(
    copy_workflow: Callable[[str], Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # what rich assumes for a pipe
    wf = copy_workflow("mp4_to_mp3")

    assert main(["plan", str(wf)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[2:5] == [
        "Pool [LinuxFFmpegPool]: Standard_A1_v2, 0 dedicated + 5 Spot nodes, 1 task slot(s) per node",
        'Start task: mkdir -p "$AZ_BATCH_NODE_SHARED_DIR/bin" && ln -sf "$(command -v ffmpeg || '
        "python3 -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')\" "
        '"$AZ_BATCH_NODE_SHARED_DIR/bin/ffmpeg" && "$AZ_BATCH_NODE_SHARED_DIR/bin/ffmpeg" -version',
        "Job [LinuxFFmpegJob]: 5 tasks",
    ]
    table = [line for line in lines[5:] if line[:1] in "┏┃┡│└"]
    assert table and max(len(line) for line in table) <= 80  # the table still fits the width


def test_plan_lists_the_first_20_tasks_unless_all(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    wf = write_workflow("cat {{ input.path }}", inputs=23)
    before = tree(wf.parent)

    assert main(["plan", str(wf)]) == 0
    out = capsys.readouterr().out
    shown = re.findall(r"│ (task-item-\d\d) ", out)
    assert shown == [f"task-item-{i:02d}" for i in range(1, 21)]
    assert "Job [TestJob]: 23 tasks" in out.splitlines()
    assert "... 3 more tasks (--all to list them)" in out.splitlines()

    assert main(["plan", str(wf), "--all"]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"│ (task-item-\d\d) ", out) == [f"task-item-{i:02d}" for i in range(1, 24)]
    assert "more tasks" not in out
    assert tree(wf.parent) == before


def test_plan_json_lists_every_task_with_its_command(
    copy_workflow: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    wf = copy_workflow("mp4_to_mp3")
    before = tree(wf.parent)

    assert main(["plan", str(wf), "--output", "json", "--set", "bitrate=192k"]) == 0

    out, err = capsys.readouterr()
    assert err == ""
    plan = json.loads(out)
    assert plan["task_count"] == 5
    assert plan["pool"]["id"] == "LinuxFFmpegPool"
    by_input = {t["inputs"][0]["file_path"]: t["command"] for t in plan["tasks"]}
    assert by_input == {
        "café.mp4": MP4_TASK_COMMAND.format(input="'./café.mp4'", bitrate="192k", stem="'café'"),
        "it's $(touch INJECTED).mp4": MP4_TASK_COMMAND.format(
            input="'./it'\"'\"'s $(touch INJECTED).mp4'",
            bitrate="192k",
            stem="'it'\"'\"'s $(touch INJECTED)'",
        ),
        "plain.mp4": MP4_TASK_COMMAND.format(input="./plain.mp4", bitrate="192k", stem="plain"),
        "sample 1.mp4": MP4_TASK_COMMAND.format(input="'./sample 1.mp4'", bitrate="192k", stem="'sample 1'"),
        "semi;colon & amp.mp4": MP4_TASK_COMMAND.format(
            input="'./semi;colon & amp.mp4'", bitrate="192k", stem="'semi;colon & amp'"
        ),
    }
    assert len({t["id"] for t in plan["tasks"]}) == 5
    assert tree(wf.parent) == before


def test_plan_with_an_undeclared_variable(
    copy_workflow: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    wf = copy_workflow("mp4_to_mp3")

    assert main(["plan", str(wf), "--set", "bitrat=192k"]) == 2

    assert capsys.readouterr().err == (
        f"{wf}: --set: 'bitrat' is not declared in vars; did you mean 'bitrate'?\n"
        "1 problem; nothing was created.\n"
    )


# ---- schema, status, usage ----------------------------------------------------------------


def test_schema_prints_the_packaged_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0

    out, err = capsys.readouterr()
    assert out == (Path(__file__).resolve().parent.parent / "schemas" / "workflow.schema.json").read_text(
        encoding="utf-8"
    )
    assert json.loads(out)["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert err == ""


def test_status_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--workspace", str(tmp_path / ".batchflow")]) == 1

    out, err = capsys.readouterr()
    assert (out, err) == ("", f"error: no runs in {tmp_path / '.batchflow' / 'runs'}\n")


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    assert "the following arguments are required: workflow" in capsys.readouterr().err


# ---- runs refused before anything exists --------------------------------------------------


def test_run_with_a_missing_required_tool_creates_nothing(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow(
        "no-such-tool-xyz {{ input.path }}", extra={"local": {"requires": ["no-such-tool-xyz"]}}
    )
    before = tree(wf.parent)

    assert main(["run", str(wf)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "error: the workflow requires 'no-such-tool-xyz' (local.requires), not found on PATH. "
        "Install it first (e.g. `sudo apt-get install no-such-tool-xyz` or `brew install no-such-tool-xyz`), "
        "or pip-install it into batchflow's environment.\n"
    )
    assert tree(wf.parent) == before
