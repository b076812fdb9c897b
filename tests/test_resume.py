"""Content-keyed resume, as users work: interrupt a run, run it again, change one input, retry failures.

Every run is a real `python -m batchflow` process on the local backend (real files, real processes,
real signals). Which tasks a run executed is read from an execution log the tasks append to, and
from the run's own records.
"""

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
from conftest import WriteWorkflow, in_out_storage

from batchflow.state import RunState

REPO = Path(__file__).resolve().parent.parent
SAFETY_NET = 60.0

# Upper-cases its input into <stem>.out and notes that it ran; an item listed in the `slow` file
# waits for the gate file first, so a test can interrupt the run while those run.
COMMAND = (
    "if grep -qx '{{ input.stem }}' {{ vars.dir }}/slow 2>/dev/null; then "
    "while [ ! -e {{ vars.dir }}/gate ]; do sleep 0.05; done; fi; "
    "tr a-z A-Z < {{ input.path }} > {{ input.stem }}.out && echo {{ input.stem }} >> {{ vars.dir }}/ran"
)


def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "COLUMNS": "250",  # `batchflow plan`'s table, unfolded
    }


def batchflow(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchflow", *args],
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=SAFETY_NET,
        check=False,
    )


class Runs:
    """A workflow of `n` inputs with its execution log."""

    def __init__(self, tmp_path: Path, write_workflow: WriteWorkflow, n: int = 6, **tasks: Any) -> None:
        self.tmp = tmp_path
        self.dir = tmp_path / "shared"
        self.dir.mkdir()
        self.wf = write_workflow(
            COMMAND,
            inputs=n,
            tasks={"outputs": [{"pattern": "{{ input.stem }}.out", "container": "outputs"}], **tasks},
            extra={"storage": in_out_storage(), "vars": {"dir": str(self.dir)}},
        )

    def run(self, *more: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        r = batchflow(self.tmp, "run", str(self.wf), "--concurrency", "2", *more)
        assert r.returncode == expect, r.stderr
        return r

    def ran(self) -> list[str]:
        """What executed since the last call (and empties the log)."""
        log = self.dir / "ran"
        names = sorted(log.read_text(encoding="utf-8").split()) if log.exists() else []
        log.unlink(missing_ok=True)
        return names

    def latest_state(self) -> dict[str, Any]:
        folders = sorted((self.wf.parent / ".batchflow" / "runs").iterdir())
        return RunState.load(folders[-1]).to_json()  # state.json, and each task's record (the journal)

    def downloaded(self) -> dict[str, str]:
        out = self.wf.parent / "out"
        return {p.name: p.read_text(encoding="utf-8") for p in sorted(out.glob("*.out"))}


def _failing(runs: Runs, *names: str) -> Path:
    """Make the tasks of `names` fail (exit 1) until the returned file is deleted."""
    flaky = runs.dir / "fail"
    flaky.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    text = runs.wf.read_text(encoding="utf-8").replace(
        "tr a-z A-Z", "! grep -qx '{{ input.stem }}' {{ vars.dir }}/fail && tr a-z A-Z", 1
    )
    runs.wf.write_text(text, encoding="utf-8")
    return flaky


ALL = [f"item-{i:02d}" for i in range(1, 7)]


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_after_an_interrupt_a_rerun_does_only_what_is_left_and_downloads_everything(
    tmp_path: Path, write_workflow: WriteWorkflow, signum: signal.Signals
) -> None:
    runs = Runs(tmp_path, write_workflow)
    (runs.dir / "slow").write_text("item-04\nitem-05\nitem-06\n", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchflow", "run", str(runs.wf), "--concurrency", "2"],
        env=env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + SAFETY_NET
        log = runs.dir / "ran"
        while sorted(log.read_text(encoding="utf-8").split() if log.exists() else []) != ALL[:3]:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the first three tasks never finished: {proc.communicate()[1]}")
            time.sleep(0.05)
        time.sleep(0.3)  # two slow tasks are running now
        os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=SAFETY_NET)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert runs.ran() == ["item-01", "item-02", "item-03"]

    (runs.dir / "gate").touch()
    second = runs.run()
    assert runs.ran() == ["item-04", "item-05", "item-06"]  # the interrupted and the never started
    assert "3 unchanged since run" in second.stderr and "3 to run" in second.stderr
    assert runs.downloaded() == {f"{n}.out": f"ITEM {int(n[-2:])}\n" for n in ALL}
    state = runs.latest_state()
    assert state["status"] == "succeeded"
    reused = sorted(t for t, r in state["tasks"].items() if r["reused_from"])
    assert reused == ["task-item-01", "task-item-02", "task-item-03"]

    third = runs.run()
    assert runs.ran() == []  # nothing changed: nothing runs
    assert "6 unchanged since" in third.stderr and "0 to run" in third.stderr
    assert "pool" not in runs.latest_state()["stage_seconds"]  # no pool was even created
    assert runs.downloaded() == {f"{n}.out": f"ITEM {int(n[-2:])}\n" for n in ALL}


@pytest.mark.e2e
def test_changing_one_input_reruns_that_task_alone_and_force_reruns_all(
    tmp_path: Path, write_workflow: WriteWorkflow
) -> None:
    runs = Runs(tmp_path, write_workflow)
    runs.run()
    assert runs.ran() == ALL

    (tmp_path / "inputs" / "item-03.txt").write_text("changed\n", encoding="utf-8")
    plan = batchflow(tmp_path, "plan", str(runs.wf), "--output", "json")
    assert plan.returncode == 0, plan.stderr
    why = {t["id"]: (t["run"], t["reason"]) for t in json.loads(plan.stdout)["tasks"]}
    assert why["task-item-03"] == (True, "input changed")
    assert {why[f"task-{n}"] for n in ALL if n != "item-03"} == {(False, "unchanged")}
    runs.run()
    assert runs.ran() == ["item-03"]
    assert runs.downloaded()["item-03.out"] == "CHANGED\n"

    runs.run("--force")
    assert runs.ran() == ALL


@pytest.mark.e2e
def test_a_changed_command_or_var_reruns_and_plan_says_why(
    tmp_path: Path, write_workflow: WriteWorkflow
) -> None:
    runs = Runs(tmp_path, write_workflow, n=2)
    runs.run()
    runs.ran()
    text = runs.wf.read_text(encoding="utf-8").replace("tr a-z A-Z", "tr a-z A-Z | cat")
    runs.wf.write_text(text, encoding="utf-8")
    plan = batchflow(tmp_path, "plan", str(runs.wf))
    assert plan.returncode == 0, plan.stderr
    assert "Resume: 2 to run" in plan.stdout
    assert plan.stdout.count("yes: command changed") == 2
    runs.run()
    assert runs.ran() == ["item-01", "item-02"]


@pytest.mark.e2e
def test_retry_reruns_only_the_failed_tasks(tmp_path: Path, write_workflow: WriteWorkflow) -> None:
    runs = Runs(tmp_path, write_workflow, n=4)
    flaky = _failing(runs, "item-02")
    runs.run(expect=1)
    assert runs.ran() == ["item-01", "item-03", "item-04"]

    flaky.unlink()
    retry = batchflow(tmp_path, "retry", "--workflow", str(runs.wf))
    assert retry.returncode == 0, retry.stderr
    assert runs.ran() == ["item-02"]
    assert "Retrying 1 failed task(s)" in retry.stderr
    assert runs.downloaded() == {f"item-0{i}.out": f"ITEM {i}\n" for i in range(1, 5)}
    again = batchflow(tmp_path, "retry", "--workflow", str(runs.wf))
    assert again.returncode == 0 and "nothing to retry" in again.stderr


@pytest.mark.e2e
def test_retry_names_the_failed_tasks_no_longer_in_the_plan(
    tmp_path: Path, write_workflow: WriteWorkflow
) -> None:
    runs = Runs(tmp_path, write_workflow, n=3)
    flaky = _failing(runs, "item-02", "item-03")
    runs.run(expect=1)
    assert runs.ran() == ["item-01"]

    flaky.unlink()
    (tmp_path / "inputs" / "item-03.txt").unlink()
    retry = batchflow(tmp_path, "retry", "--workflow", str(runs.wf))
    assert retry.returncode == 0, retry.stderr
    assert runs.ran() == ["item-02"]
    assert "1 of the 2 failed task(s) are no longer in the plan (task-item-03;" in retry.stderr, retry.stderr


@pytest.mark.e2e
def test_a_run_reads_no_output_back_and_a_stored_output_changed_since_is_redone(
    tmp_path: Path, write_workflow: WriteWorkflow
) -> None:
    """The ledger records each output's version (folder storage), not an MD5 read back at the end of
    the run (seconds for gigabytes of video): a re-run that finds the very file recorded reuses it
    unread; one written, replaced or deleted since is redone."""
    runs = Runs(tmp_path, write_workflow)
    runs.run()
    assert runs.ran() == ALL
    run_id = runs.latest_state()["run_id"]
    stored = {p.stem: p for p in (tmp_path / ".batchflow").rglob(f"runs/{run_id}/*.out")}
    assert sorted(stored) == ALL
    cache = tmp_path / ".batchflow" / "storage" / ".batchflow-digests.json"
    known = json.loads(cache.read_text(encoding="utf-8")) if cache.exists() else {}
    assert not [name for name in json.dumps(known).split('"') if name.endswith(".out")]  # none read
    ledger = tmp_path / ".batchflow" / "runs" / run_id / "ledger.jsonl"
    outputs = [
        o for line in ledger.read_text(encoding="utf-8").splitlines() for o in json.loads(line)["outputs"]
    ]
    assert len(outputs) == len(ALL) and all(len(o) == 5 and o[3] is None for o in outputs)

    with stored["item-02"].open("r+", encoding="utf-8") as f:  # edited in place, same size
        f.write("EDITED!")
    same_size = tmp_path / "other"
    same_size.write_text(stored["item-04"].read_text(encoding="utf-8").lower(), encoding="utf-8")
    same_size.replace(stored["item-04"])  # another file, the same size
    stored["item-05"].unlink()
    plan = batchflow(tmp_path, "plan", str(runs.wf), "--output", "json")
    assert plan.returncode == 0, plan.stderr
    why = {t["id"]: (t["run"], t["reason"]) for t in json.loads(plan.stdout)["tasks"]}
    changed = ["item-02", "item-04", "item-05"]
    assert {why[f"task-{n}"] for n in changed} == {(True, "outputs missing")}
    assert {why[f"task-{n}"] for n in ALL if n not in changed} == {(False, "unchanged")}

    runs.run()
    assert runs.ran() == changed
    assert runs.downloaded() == {f"{n}.out": f"ITEM {int(n[-2:])}\n" for n in ALL}
    runs.run()  # the reused outputs (linked, the same files) are recorded by version too
    assert runs.ran() == []
