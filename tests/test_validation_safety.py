"""Mistakes caught at validation, not after the compute: unsafe blob names in output destinations and
upload prefixes, glob outputs whose files can overwrite each other across tasks; and an output glob
that matched nothing, reported with the task's result."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import WriteWorkflow, in_out_storage

from batchflow.backends.local.scheduler import LocalCompute
from batchflow.backends.local.storage import LocalStorage
from batchflow.cli import main
from batchflow.model import ImageReference, JobSpec, OutputCondition, PoolSpec, RenderedTask, TaskOutput

STORAGE = {
    "containers": ["inputs", "outputs"],
    "uploads": [{"source": "inputs", "container": "inputs", "include": ["*.txt"]}],
}


def position(wf: Path, text: str) -> str:
    """`file:line:col` of the first occurrence of `text` in the workflow file (of its quote, if quoted)."""
    for number, line in enumerate(wf.read_text(encoding="utf-8").splitlines(), 1):
        column = line.find(text)
        if column != -1:
            quoted = column > 0 and line[column - 1] in "'\""
            return f"{wf}:{number}:{column + 1 - quoted}"
    raise AssertionError(f"{text!r} is not in {wf}")


def refused(wf: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """`validate` and `run` both exit 2 before creating anything; the problem lines."""
    assert main(["validate", str(wf)]) == 2
    err = capsys.readouterr().err
    assert main(["run", str(wf)]) == 2
    assert capsys.readouterr().err == err
    assert not (wf.parent / ".batchflow").exists()  # no workspace, no storage, no pool
    return [line for line in err.splitlines() if line.startswith(str(wf))]


# ---- '..' and other unsafe names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("destination", "shown", "reason"),
    [
        ("../{{ input.stem }}.out", "'../item-01.out'", "blob name: contains a '..' segment"),
        ("results/../../x/", "'results/../../x/'", "blob name prefix: contains a '..' segment"),
        ("/abs/{{ input.stem }}.out", "'/abs/item-01.out'", "blob name: absolute path"),
    ],
)
def test_an_unsafe_output_destination_is_a_validation_problem(
    write_workflow: WriteWorkflow,
    capsys: pytest.CaptureFixture[str],
    destination: str,
    shown: str,
    reason: str,
) -> None:
    """Found at run time before, when the task had run and its output could not be stored."""
    pattern = "{{ input.stem }}.out" if not destination.endswith("/") else "*.out"
    wf = write_workflow(
        "echo x > {{ input.stem }}.out",
        inputs=1,
        tasks={"outputs": [{"pattern": pattern, "container": "outputs", "destination": destination}]},
        extra={"storage": STORAGE},
    )
    where = position(wf, destination.split("{")[0] if "{" in destination else destination)
    assert refused(wf, capsys) == [f"{where}: tasks.outputs[0].destination: {shown} is not a safe {reason}"]


def test_an_unsafe_upload_prefix_is_a_validation_problem(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow(
        "true",
        extra={
            "storage": {
                "containers": ["inputs"],
                "uploads": [
                    {"source": "inputs", "container": "inputs", "include": ["*.txt"], "prefix": "../up"}
                ],
            }
        },
    )
    assert (
        f"{position(wf, '../up')}: storage.uploads[0].prefix: not a safe blob name prefix:"
        " contains a '..' segment"
    ) in refused(wf, capsys)


# ---- glob outputs that can collide across tasks --------------------------------------------------------


def test_a_glob_output_shared_by_every_task_is_refused(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three tasks each writing `*.mp3` under one destination lost one of three outputs in silence."""
    wf = write_workflow(
        "echo x > song.mp3",
        inputs=3,
        tasks={"outputs": [{"pattern": "*.mp3", "container": "outputs", "destination": "mp3/"}]},
        extra={"storage": STORAGE},
    )
    assert refused(wf, capsys) == [
        f"{position(wf, 'mp3/')}: tasks.outputs[0].destination: the files '*.mp3' matches land under"
        " 'mp3/' in container 'outputs' for 3 tasks (e.g. 'task-item-01', input item-01.txt, and"
        " 'task-item-02', input item-02.txt), so two tasks' files of the same name would overwrite each"
        " other; make the destination depend on the task (destination: '{{ input.stem }}/') or name the"
        " task's own file in the pattern ('{{ input.stem }}.mp3')"
    ]


def test_a_glob_output_without_destination_is_refused_at_its_pattern(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow(
        "echo x > a.out",
        tasks={"outputs": [{"pattern": "{{ input.stem }}/*.out", "container": "outputs"}]},
        extra={"storage": STORAGE},
    )
    (line,) = refused(wf, capsys)
    assert line.startswith(f"{position(wf, '{{ input.stem }}/*.out')}: tasks.outputs[0].pattern: the files")
    assert "land at the top in container 'outputs' for 2 tasks" in line
    assert line.endswith("('{{ input.stem }}.out')")


@pytest.mark.parametrize(
    ("inputs", "output"),
    [
        (3, {"pattern": "*.mp3", "container": "outputs", "destination": "{{ input.stem }}/"}),
        (3, {"pattern": "{{ input.stem }}.mp3", "container": "outputs"}),
        (1, {"pattern": "*.mp3", "container": "outputs"}),  # one task: nothing to collide with
    ],
)
def test_outputs_that_cannot_collide_are_accepted(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str], inputs: int, output: dict[str, str]
) -> None:
    wf = write_workflow("true", inputs=inputs, tasks={"outputs": [output]}, extra={"storage": STORAGE})
    assert main(["validate", str(wf)]) == 0, capsys.readouterr().err


# ---- an output glob that matched nothing --------------------------------------------------------------


def test_an_output_glob_that_matched_nothing_is_in_the_task_result(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    storage.ensure_container("out")
    compute = LocalCompute(tmp_path / "ws", storage, tmp_path / "run", 1)
    pool = PoolSpec("pool1", "Standard_A1_v2", ImageReference("canonical", "ubuntu", "server"), "sku", 1)
    outputs = (
        TaskOutput("*.mp3", "out", "", OutputCondition.SUCCESS),
        TaskOutput("*.txt", "out", "", OutputCondition.SUCCESS),
        TaskOutput("*.log", "out", "", OutputCondition.FAILURE),  # does not apply: not reported
        TaskOutput("missing/*.wav", "out", "", OutputCondition.COMPLETION),
    )
    task = RenderedTask("t1", 0, "echo x > a.txt", (), outputs, {}, 0, None)
    try:
        compute.create_pool(pool, None)
        compute.create_job(JobSpec("job1"), "pool1", "run-1")
        compute.add_tasks("job1", [task])
        deadline = time.monotonic() + 60
        while compute.task_counts("job1").completed < 1 and time.monotonic() < deadline:
            compute.wait(1.0)
        (result,) = compute.task_results("job1")
    finally:
        compute.stop()
    assert result.exit_code == 0 and result.failure is None
    assert result.outputs == ("out/a.txt",)
    assert result.unmatched_outputs == ("*.mp3", "missing/*.wav")


def test_glob_outputs_whose_fixed_parts_keep_the_tasks_apart_are_accepted(
    write_workflow: WriteWorkflow,
) -> None:
    """`{{ input.stem }}_*.mp3` with no destination: each task's files start with its own stem, so no
    two tasks can write the same name. `part_*.mp3` for every task can: refused."""
    from batchflow.errors import InvalidWorkflow
    from batchflow.render import build_plan
    from batchflow.spec import load_workflow

    def outputs(pattern: str) -> Path:
        return write_workflow(
            "true",
            inputs=3,
            tasks={"outputs": [{"pattern": pattern, "container": "outputs"}]},
            extra={"storage": in_out_storage()},
        )

    assert len(build_plan(load_workflow(outputs("{{ input.stem }}_*.mp3"))).tasks) == 3
    assert len(build_plan(load_workflow(outputs("*_{{ input.stem }}.mp3"))).tasks) == 3
    with pytest.raises(InvalidWorkflow) as refused:
        build_plan(load_workflow(outputs("part_*.mp3")))
    assert "would overwrite each other" in str(refused.value)
