"""A run whose batchflow process died while its Azure job ran on is taken over, not redone: a plain
`batchflow run` of the same workflow (or `batchflow attach RUN`) finds the dead run's live job, adds no
task twice, monitors it to the end, downloads and cleans up as the run itself would have.

Real `python -m batchflow` processes killed with SIGKILL, the Batch emulator running the tasks on this
machine, Azurite as the storage.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from azure_env import AzureEnv, rename_containers, unique_containers
from conftest import REPO, WriteWorkflow, in_out_storage
from test_e2e_azure import leftovers

from batchflow.cli import main

pytest_plugins = ["azurite", "azure_env"]

# Each task notes that it started, waits for the gate, then writes its output.
COMMAND = (
    "echo {{ input.stem }} >> {{ vars.dir }}/started; "
    "while [ ! -e {{ vars.dir }}/gate ]; do sleep 0.05; done; "
    "tr a-z A-Z < {{ input.path }} > {{ input.stem }}.out"
)


def _workflow(
    write_workflow: WriteWorkflow, tmp_path: Path, n: int, command: str = COMMAND
) -> tuple[Path, Path]:
    shared = tmp_path / "shared"
    shared.mkdir()
    wf = write_workflow(
        command,
        inputs=n,
        tasks={"outputs": [{"pattern": "{{ input.stem }}.out", "container": "outputs"}]},
        extra={
            "storage": in_out_storage(),
            "vars": {"dir": str(shared)},
            "monitor": {"poll_interval": "100ms"},
        },
    )
    rename_containers(wf, unique_containers("inputs", "outputs"))
    return wf, shared


def _kill_while_running(
    wf: Path, shared: Path, azure_env: AzureEnv, running: int, command: tuple[str, ...] = ()
) -> None:
    """SIGKILL the run (or `command`) once `running` tasks started (the pool's two nodes run two at
    a time)."""
    argv = command or ("run", str(wf), "--backend", "azure", "--quiet")
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchflow", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    started = shared / "started"
    try:
        azure_env.emulator.wait_for(
            lambda: started.exists() and len(started.read_text().split()) >= running,
            timeout=60,
            what=f"{running} tasks running",
        )
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def _state(wf: Path) -> dict[str, Any]:
    (folder,) = sorted((wf.parent / ".batchflow" / "runs").iterdir())
    data: dict[str, Any] = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return data


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["run", "attach"])
def test_a_run_killed_while_its_job_runs_is_taken_over_not_redone(
    how: str,
    write_workflow: WriteWorkflow,
    azure_env: AzureEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    n = 3
    wf, shared = _workflow(write_workflow, tmp_path, n)
    _kill_while_running(wf, shared, azure_env, 2)  # two running, the third still queued
    dead = _state(wf)
    assert dead["status"] == "running"  # as the killed process left it
    pools, jobs = leftovers(azure_env)
    assert jobs == ["TestJob"] and len(pools) == 1  # the job's auto pool (azure.pool_lifetime: job)

    (shared / "gate").touch()
    args = ["run", str(wf), "--backend", "azure"] if how == "run" else ["attach", "--workflow", str(wf)]
    assert main(args) == 0

    err = capsys.readouterr().err
    assert f"Attaching to run {dead['run_id']}" in err
    # One run folder: the dead run's, finished by this process; each task ran once.
    state = _state(wf)
    assert state["run_id"] == dead["run_id"] and state["status"] == "succeeded"
    assert sorted((shared / "started").read_text().split()) == [f"item-{i:02d}" for i in range(1, n + 1)]
    out = wf.parent / "out"
    assert {p.name: p.read_text() for p in out.glob("*.out")} == {
        f"item-{i:02d}.out": f"ITEM {i}\n" for i in range(1, n + 1)
    }
    assert leftovers(azure_env) == ([], [])  # cleaned up as the run would have


@pytest.mark.e2e
def test_attach_refuses_a_local_run_and_a_run_that_ended(
    write_workflow: WriteWorkflow, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow("true", inputs=1)
    assert main(["run", str(wf), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["attach", "--workflow", str(wf)]) == 1
    assert "whose tasks do not outlive batchflow" in capsys.readouterr().err


@pytest.mark.e2e
def test_attach_finishes_the_dead_run_as_it_was_planned_and_the_next_run_picks_up_what_changed(
    write_workflow: WriteWorkflow,
    azure_env: AzureEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An input rewritten and another added while the dead run's job ran on: attach neither uploads
    the rewritten one over the blob its queued task reads nor keys that task by the new content,
    and adds no task for the new one. The next run redoes just those two."""
    n = 3
    wf, shared = _workflow(write_workflow, tmp_path, n)
    _kill_while_running(wf, shared, azure_env, 2)  # two running, item-03 still queued
    (folder,) = sorted((wf.parent / ".batchflow" / "runs").iterdir())
    keys = (folder / "keys.json").read_bytes()
    inputs = tmp_path / "inputs"
    (inputs / "item-03.txt").write_text("changed 3\n", encoding="utf-8")
    (inputs / "item-04.txt").write_text("item 4\n", encoding="utf-8")

    (shared / "gate").touch()
    assert main(["attach", "--workflow", str(wf)]) == 0
    capsys.readouterr()
    out = wf.parent / "out"
    assert {p.name: p.read_text() for p in out.glob("*.out")} == {
        f"item-{i:02d}.out": f"ITEM {i}\n"
        for i in range(1, n + 1)  # item-03 as uploaded before
    }
    assert (folder / "keys.json").read_bytes() == keys
    assert sorted((shared / "started").read_text().split()) == ["item-01", "item-02", "item-03"]

    assert main(["run", str(wf), "--backend", "azure"]) == 0
    err = capsys.readouterr().err
    assert "2 to run" in err, err
    assert sorted((shared / "started").read_text().split()) == [
        "item-01",
        "item-02",
        "item-03",
        "item-03",
        "item-04",
    ]
    assert (out / "item-03.out").read_text() == "CHANGED 3\n"
    assert (out / "item-04.out").read_text() == "ITEM 4\n"
    assert leftovers(azure_env) == ([], [])


@pytest.mark.e2e
def test_attach_waits_for_a_task_whose_input_was_deleted_since_and_keeps_its_output(
    write_workflow: WriteWorkflow,
    azure_env: AzureEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """item-03's input file is deleted while the dead run's job runs on (its blob is in storage, and
    the task reads that): attach waits for it too and downloads its output, instead of ending with
    the other two and deleting the job under it. The warning names it; the next run, with no input
    for it, has nothing to do."""
    n = 3
    wf, shared = _workflow(write_workflow, tmp_path, n)
    _kill_while_running(wf, shared, azure_env, 2)  # two running, item-03 still queued
    (folder,) = sorted((wf.parent / ".batchflow" / "runs").iterdir())
    keys = (folder / "keys.json").read_bytes()
    (tmp_path / "inputs" / "item-03.txt").unlink()
    (shared / "gate").touch()
    capsys.readouterr()
    assert main(["attach", "--workflow", str(wf)]) == 0
    err = capsys.readouterr().err
    assert "3 succeeded, 0 failed of 3 tasks" in err, err
    assert "1 task(s) of the run are no longer in the plan (task-item-03;" in err, err
    assert (folder / "keys.json").read_bytes() == keys  # a second attach would see item-03 too
    ledger = [json.loads(line) for line in (folder / "ledger.jsonl").read_text().splitlines()]
    assert sorted(e["task"] for e in ledger) == ["task-item-01", "task-item-02"]  # no key: not reusable
    out = wf.parent / "out"
    assert {p.name: p.read_text() for p in out.glob("*.out")} == {
        f"item-{i:02d}.out": f"ITEM {i}\n" for i in range(1, n + 1)
    }
    assert sorted((shared / "started").read_text().split()) == ["item-01", "item-02", "item-03"]
    assert leftovers(azure_env) == ([], [])

    assert main(["run", str(wf), "--backend", "azure"]) == 0
    assert "0 to run" in capsys.readouterr().err
    assert sorted((shared / "started").read_text().split()) == ["item-01", "item-02", "item-03"]


@pytest.mark.e2e
def test_attach_waits_for_the_job_when_every_task_left_in_the_plan_was_reused(
    write_workflow: WriteWorkflow,
    azure_env: AzureEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The dead run reused item-01 and item-02 and ran item-03, whose input is then deleted: the
    plan attach rebuilds has no task to run, and the job it finds still has item-03 running."""
    wf, shared = _workflow(write_workflow, tmp_path, 2)
    (shared / "gate").touch()
    assert main(["run", str(wf), "--backend", "azure", "--quiet"]) == 0
    (shared / "gate").unlink()
    item = tmp_path / "inputs" / "item-03.txt"
    item.write_text("item 3\n", encoding="utf-8")
    _kill_while_running(wf, shared, azure_env, 3)  # the first run's two, then item-03
    item.unlink()
    (shared / "gate").touch()
    capsys.readouterr()
    assert main(["attach", "--workflow", str(wf)]) == 0
    err = capsys.readouterr().err
    assert "3 succeeded, 0 failed of 3 tasks" in err, err
    assert "no longer in the plan (task-item-03;" in err, err
    assert (wf.parent / "out" / "item-03.out").read_text() == "ITEM 3\n"
    assert leftovers(azure_env) == ([], [])


@pytest.mark.e2e
def test_attach_to_a_run_that_took_tasks_from_an_earlier_run_waits_only_for_its_own(
    write_workflow: WriteWorkflow,
    azure_env: AzureEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The dead run reused two tasks (never in its job) and ran two: attach monitors those two and
    ends, instead of waiting for the reused ones until the monitor's timeout."""
    wf, shared = _workflow(write_workflow, tmp_path, 2)
    (shared / "gate").touch()
    assert main(["run", str(wf), "--backend", "azure", "--quiet"]) == 0
    (shared / "gate").unlink()
    for i in (3, 4):
        (tmp_path / "inputs" / f"item-{i:02d}.txt").write_text(f"item {i}\n", encoding="utf-8")
    _kill_while_running(wf, shared, azure_env, 4)  # the first run's two, then this run's two
    (shared / "gate").touch()
    capsys.readouterr()
    assert main(["attach", "--workflow", str(wf)]) == 0
    err = capsys.readouterr().err
    assert "4 succeeded, 0 failed of 4 tasks" in err
    assert "no longer in the plan" not in err
    assert sorted((shared / "started").read_text().split()) == [f"item-{i:02d}" for i in range(1, 5)]
    out = wf.parent / "out"
    assert {p.name: p.read_text() for p in out.glob("*.out")} == {
        f"item-{i:02d}.out": f"ITEM {i}\n" for i in range(1, 5)
    }
    assert leftovers(azure_env) == ([], [])


@pytest.mark.e2e
def test_attach_to_a_dead_retry_runs_only_what_the_retry_submitted(
    write_workflow: WriteWorkflow,
    azure_env: AzureEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A retry reruns the failed item-02, takes item-01 from the first run and leaves out item-03,
    whose input changed (a new key, no failure to retry). Killed while item-02 runs, it is attached
    to: attach waits for item-02 alone, not for item-03, which is in no job."""
    failing = "if [ -e {{ vars.dir }}/fail-{{ input.stem }} ]; then exit 3; fi; " + COMMAND
    wf, shared = _workflow(write_workflow, tmp_path, 3, failing)
    (shared / "fail-item-02").touch()
    (shared / "gate").touch()
    assert main(["run", str(wf), "--backend", "azure", "--quiet"]) == 1
    (shared / "fail-item-02").unlink()
    (shared / "gate").unlink()
    (tmp_path / "inputs" / "item-03.txt").write_text("changed 3\n", encoding="utf-8")
    # The first run noted item-01 and item-03 (item-02 failed first); the retry's item-02 is the third.
    _kill_while_running(wf, shared, azure_env, 3, ("retry", "--workflow", str(wf), "--quiet"))
    (shared / "gate").touch()
    capsys.readouterr()
    assert main(["attach", "--workflow", str(wf)]) == 0
    err = capsys.readouterr().err
    assert "Attaching to run" in err
    assert "no longer in the plan" not in err  # item-03, left out by the retry, is in no job
    assert sorted((shared / "started").read_text().split()) == ["item-01", "item-02", "item-03"]
    assert (wf.parent / "out" / "item-02.out").read_text() == "ITEM 2\n"
    assert leftovers(azure_env) == ([], [])
