"""Content-keyed resume with Blob Storage: interrupt a run, run it again, change one input, and run the
same workflow from a second workspace (a second machine) sharing the storage account.

Twice: the local backend with `--storage azure` (Azurite), and `--backend azure` (the Batch emulator
running the tasks on this machine, Azurite as the storage). Every run is a real `python -m batchflow`
process, interrupted with a real signal. Which tasks a run executed is read from an execution log the
tasks append to; what it downloaded, from its download folder, emptied before each run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure_env import AzureEnv, rename_containers, unique_containers
from azurite import AzuriteInfo
from conftest import REPO, WriteWorkflow, in_out_storage
from test_resume import COMMAND

from batchflow.state import RunState

pytest_plugins = ["azurite", "azure_env"]

SAFETY_NET = 90.0
N = 6
ALL = [f"item-{i:02d}" for i in range(1, N + 1)]
FIRST, REST = ALL[:3], ALL[3:]  # the first half runs before the interrupt, the rest waits for the gate


def everything(*changed: str) -> dict[str, str]:
    """What the download folder holds after a run: every task's output (`changed` ones say CHANGED)."""
    return {f"{n}.out": "CHANGED\n" if n in changed else f"ITEM {int(n[-2:])}\n" for n in ALL}


class Workspace:
    """A copy of the workflow folder (workflow.yaml, inputs/, its .batchflow and out/), as one machine
    has it; every copy's tasks note what they ran in the one shared execution log."""

    def __init__(self, workflow: Path, shared: Path, backend: str, tmp_path: Path, outputs: str) -> None:
        self.wf = workflow
        self.folder = workflow.parent
        self.shared = shared
        self.backend = backend
        self.tmp = tmp_path
        self.outputs = outputs  # the output container

    def clone(self, folder: Path) -> Workspace:
        """The same workflow file and inputs in another folder: no run folder, nothing downloaded."""
        folder.mkdir()
        shutil.copyfile(self.wf, folder / self.wf.name)
        shutil.copytree(self.folder / "inputs", folder / "inputs")
        return Workspace(folder / self.wf.name, self.shared, self.backend, self.tmp, self.outputs)

    def args(self, *more: str) -> list[str]:
        where = (
            ["--backend", "azure"]
            if self.backend == "azure"
            else ["--storage", "azure", "--concurrency", "2"]
        )
        return [sys.executable, "-m", "batchflow", "run", str(self.wf), *where, *more]

    def env(self) -> dict[str, str]:
        """This process's environment (Azurite's connection string, the emulator's endpoint and key)."""
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "XDG_CACHE_HOME": str(self.tmp / "cache"),
        }

    def run(self, *more: str, expect: int = 0) -> str:
        """A whole run, into an emptied download folder; returns its stderr."""
        shutil.rmtree(self.folder / "out", ignore_errors=True)
        r = subprocess.run(
            self.args(*more), env=self.env(), capture_output=True, text=True, timeout=SAFETY_NET, check=False
        )
        assert r.returncode == expect, r.stderr
        return r.stderr

    def ran(self) -> list[str]:
        """What executed since the last call (and empties the log)."""
        log = self.shared / "ran"
        names = sorted(log.read_text(encoding="utf-8").split()) if log.exists() else []
        log.unlink(missing_ok=True)
        return names

    def downloaded(self) -> dict[str, str]:
        return {p.name: p.read_text(encoding="utf-8") for p in sorted((self.folder / "out").glob("*"))}

    def runs(self) -> list[Path]:
        root = self.folder / ".batchflow" / "runs"
        return sorted(p for p in root.iterdir() if (p / "state.json").is_file()) if root.is_dir() else []

    def latest_state(self) -> dict[str, Any]:
        return RunState.load(self.runs()[-1]).to_json()  # state.json, and each task's record (the journal)


def interrupt_at_half(ws: Workspace, signum: signal.Signals, half_done: Callable[[], bool]) -> str:
    """Start a run, send `signum` once `half_done()` (the first half finished, two of the rest running),
    and return the interrupted run's stderr."""
    proc = subprocess.Popen(
        ws.args(),
        env=ws.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the signal goes to batchflow alone, as `kill` sends it
    )
    try:
        deadline = time.monotonic() + SAFETY_NET
        while not half_done():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the first half never finished with two tasks running: {proc.communicate()[1]}")
            time.sleep(0.05)
        os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=SAFETY_NET)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    return err


def journal_says_half_done(ws: Workspace) -> Callable[[], bool]:
    """The local backend: the run's task journal has the first half succeeded (outputs stored) and two
    of the rest started."""

    def check() -> bool:
        lines = [json.loads(line) for p in ws.runs() for line in _lines(p / "tasks.jsonl")]
        ended = {e["task"] for e in lines if e["event"] == "ended" and e["state"] == "succeeded"}
        started = {e["task"] for e in lines if e["event"] == "started"}
        return ended == {f"task-{n}" for n in FIRST} and len(started - ended) == 2

    return check


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.endswith("}")]  # a line being written: later


def service_says_half_done(azure_env: AzureEnv) -> Callable[[], bool]:
    """The Azure backend: the service lists the first half completed (outputs uploaded) and two running."""

    def check() -> bool:
        try:
            tasks = list(azure_env.emulator.client().list_tasks("TestJob"))
        except ResourceNotFoundError:  # the job does not exist yet
            return False
        done = {t.id for t in tasks if t.state == "completed"}
        return done == {f"task-{n}" for n in FIRST} and sum(t.state == "running" for t in tasks) == 2

    return check


def make_workspace(write_workflow: WriteWorkflow, tmp_path: Path, backend: str) -> Workspace:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "slow").write_text("".join(f"{n}\n" for n in REST), encoding="utf-8")
    wf = write_workflow(
        COMMAND,
        inputs=N,
        tasks={"outputs": [{"pattern": "{{ input.stem }}.out", "container": "outputs"}]},
        extra={
            "storage": in_out_storage(),
            "vars": {"dir": str(shared)},
            "monitor": {"poll_interval": "100ms"},
        },
    )
    names = unique_containers("inputs", "outputs")
    rename_containers(wf, names)
    return Workspace(wf, shared, backend, tmp_path, names["outputs"])


def stored_outputs(blobs: BlobServiceClient, container: str, run: str) -> list[str]:
    prefix = f"runs/{run}/"
    return sorted(b.name[len(prefix) :] for b in blobs.get_container_client(container).list_blobs(prefix))


def the_scenario(
    ws: Workspace,
    signum: signal.Signals,
    half_done: Callable[[], bool],
    blobs: BlobServiceClient,
    pools_created: Callable[[], int],
) -> None:
    """The issue's done-when, on one storage account, from two workspaces."""
    container = ws.outputs

    # Interrupted at half: the first half succeeded, two of the rest were running, one queued.
    err = interrupt_at_half(ws, signum, half_done)
    assert f"interrupted. 3 succeeded, 2 failed, 1 not started of {N} tasks." in err, err
    assert ws.ran() == FIRST
    interrupted = ws.latest_state()["run_id"]
    assert stored_outputs(blobs, container, interrupted) == [f"{n}.out" for n in FIRST]

    # A plain re-run executes only what was left (the running ones and the queued one) and downloads
    # every output: the first half's copied under its own prefix.
    (ws.shared / "gate").touch()
    err = ws.run()
    assert ws.ran() == REST
    assert f"3 unchanged since run {interrupted}, 3 to run" in err
    assert ws.downloaded() == everything()
    state = ws.latest_state()
    resumed = state["run_id"]
    assert state["status"] == "succeeded"
    assert {t: r["reused_from"] for t, r in state["tasks"].items()} == {
        **{f"task-{n}": interrupted for n in FIRST},
        **{f"task-{n}": None for n in REST},
    }
    assert stored_outputs(blobs, container, resumed) == [f"{n}.out" for n in ALL]

    # Nothing changed: nothing runs, no pool is made, every output is downloaded again (from the
    # latest run, which holds them all).
    pools = pools_created()
    err = ws.run()
    assert ws.ran() == []
    assert f"{N} unchanged since run {resumed}, 0 to run" in err
    assert pools_created() == pools
    state = ws.latest_state()
    assert "pool" not in state["stage_seconds"]
    assert ws.downloaded() == everything()
    unchanged = state["run_id"]

    # One input changed: that task alone runs.
    (ws.folder / "inputs" / "item-02.txt").write_text("changed\n", encoding="utf-8")
    err = ws.run()
    assert ws.ran() == ["item-02"]
    assert f"{N - 1} unchanged since run {unchanged}, 1 to run" in err
    assert ws.downloaded() == everything("item-02")
    changed = ws.latest_state()["run_id"]

    # A second machine: the same workflow and inputs in another folder, sharing the storage account.
    # Its first run reads the ledger in storage, executes nothing and downloads every output.
    other = ws.clone(ws.tmp / "second-machine")
    pools = pools_created()
    err = other.run()
    assert other.ran() == []
    assert f"{N} unchanged since run {changed}, 0 to run" in err  # a run of the first machine
    assert pools_created() == pools
    assert other.downloaded() == everything("item-02")
    (state,) = (json.loads((p / "state.json").read_text(encoding="utf-8")) for p in other.runs())
    assert stored_outputs(blobs, container, state["run_id"]) == [f"{n}.out" for n in ALL]
    # ...and what it changes there, it alone runs.
    (other.folder / "inputs" / "item-05.txt").write_text("changed\n", encoding="utf-8")
    other.run()
    assert other.ran() == ["item-05"]
    assert other.downloaded() == everything("item-02", "item-05")


@pytest.fixture
def blobs(azurite: AzuriteInfo) -> Iterator[BlobServiceClient]:
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        yield service


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_resume_with_the_local_backend_and_blob_storage(
    write_workflow: WriteWorkflow,
    tmp_path: Path,
    blob_env: AzuriteInfo,
    blobs: BlobServiceClient,
    signum: signal.Signals,
) -> None:
    ws = make_workspace(write_workflow, tmp_path, "local")
    the_scenario(ws, signum, journal_says_half_done(ws), blobs, lambda: 0)


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_resume_on_the_azure_path(
    write_workflow: WriteWorkflow, tmp_path: Path, azure_env: AzureEnv, signum: signal.Signals
) -> None:
    ws = make_workspace(write_workflow, tmp_path, "azure")
    emulator = azure_env.emulator
    the_scenario(
        ws,
        signum,
        service_says_half_done(azure_env),
        azure_env.blobs,
        lambda: emulator.count("POST", "/pools"),
    )
