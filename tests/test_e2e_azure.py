"""Whole runs on the Azure path: `batchflow run --backend azure` with the real azure-batch SDK talking over
loopback HTTP to the Batch service emulator, which runs the tasks on this machine, fetching their inputs
and storing their outputs through SAS URLs in Azurite. Real ffmpeg, real subprocesses.

The emulator replaces the example's Azure start task (apt-get install ffmpeg, as root) with the
workflow's own local start task; everything else is the workflow as written.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from azure_env import AzureEnv, edit_workflow, rename_containers, unique_containers
from conftest import REPO, WriteWorkflow, in_out_storage
from media import audio_duration
from test_e2e_local import SAMPLE_NAMES, check_mp3s_match_inputs, injected, load_state

from batchflow.cli import main

pytest_plugins = ["azurite", "azure_env"]

Copy = Callable[[str], Path]
_SIG = re.compile(r"sig=(?!REDACTED)[^&\s'\"]+", re.IGNORECASE)
POOL, JOB = "LinuxFFmpegPool", "LinuxFFmpegJob"


def run_of(err: str, workflow: Path) -> Path:
    match = re.search(r"^Run (\S+): \d+ tasks?, ", err, re.MULTILINE)
    assert match is not None, err
    return workflow.parent / ".batchflow" / "runs" / match.group(1)


def fast(workflow: Path) -> None:
    """Poll the emulator every 0.1 s instead of every 5 s (the service answers at once here)."""
    edit_workflow(workflow, monitor={"poll_interval": "100ms"})


def leftovers(env: AzureEnv) -> tuple[list[str], list[str]]:
    client = env.emulator.client()
    pools = [p.id or "" for p in client.list_pools() if p.state != "deleting"]
    jobs = [j.id or "" for j in client.list_jobs() if j.state != "deleting"]
    return pools, jobs


@pytest.mark.e2e
def test_mp4_to_mp3_on_azure_batch_gives_the_mp3s_of_the_local_backend(
    copy_workflow: Copy, azure_env: AzureEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = copy_workflow("mp4_to_mp3")
    names = unique_containers("input", "output")
    rename_containers(wf, names)
    fast(wf)
    mp4_dir, mp3_dir = wf.parent / "samples" / "mp4", wf.parent / "out" / "mp3"

    assert main(["run", str(wf), "--quiet"]) == 0  # the local backend, for comparison
    local = {p.name: audio_duration(p) for p in mp3_dir.iterdir()}
    for p in mp3_dir.iterdir():
        p.unlink()
    capsys.readouterr()
    azure_env.emulator.override_start_task(POOL, azure_env.local_start_task(wf))

    assert main(["run", str(wf), "--backend", "azure"]) == 0

    out, err = capsys.readouterr()
    assert out == ""
    run = run_of(err, wf)
    lines = err.splitlines()
    assert lines[0] == f"Run {run.name}: 5 tasks, backend azure, storage azure"
    for expected in (
        f"Uploading 5 files to container [{names['input']}]...",
        f"Creating pool [{POOL}]...",
        f"  pool [{POOL}] is made with the job, as its auto pool: Batch deletes it when the job ends"
        " (azure.pool_lifetime: job)",
        f"Creating job [{JOB}]...",
        f"Adding 5 tasks to job [{JOB}]...",
        f"Downloading container [{names['output']}] to {mp3_dir}...",
        f"Deleting job [{JOB}]...",
        f"Deleting pool [{POOL}]...",
        f"Run {run.name}: succeeded. 5 succeeded, 0 failed of 5 tasks.",
        f"Outputs: {mp3_dir} (5 downloaded, 0 unchanged)",
    ):
        assert expected in lines, expected
    # The same MP3s, in number and duration, as the local backend made.
    assert sorted(p.name for p in mp3_dir.iterdir()) == sorted(f"{n}.mp3" for n in SAMPLE_NAMES)
    azure = {p.name: audio_duration(p) for p in mp3_dir.iterdir()}
    assert azure.keys() == local.keys()
    for name, seconds in azure.items():
        assert seconds == pytest.approx(local[name], abs=0.05), name
    check_mp3s_match_inputs(mp3_dir, mp4_dir)
    assert injected(wf.parent) == []

    # What went to the service: the job, with its auto pool (no pool of its own), sealed.
    [made] = [line for line in lines if line.startswith("  auto pool [")]
    assert re.fullmatch(rf"  auto pool \[{POOL}_[0-9A-F-]{{36}}\] made with job \[{JOB}\]; .+", made), made
    state = load_state(run)
    assert (state["status"], state["pool_created"], state["backend"], state["storage"]) == (
        "succeeded",
        True,
        "azure",
        "azure",
    )
    assert {t["state"] for t in state["tasks"].values()} == {"succeeded"}
    emu = azure_env.emulator
    assert emu.count("POST", "/pools") == 0
    assert emu.count("POST", "/jobs") == 1
    assert emu.count("POST", "/jobs/{job}/addtaskcollection") == 1
    assert emu.count("PATCH", "/jobs/{job}") == 1  # onAllTasksComplete -> terminatejob
    assert leftovers(azure_env) == ([], [])  # nothing left billing
    logs = [b for b in azure_env.blob_names(names["output"]) if b.startswith(f"batchflow-logs/{run.name}/")]
    assert len(logs) == 10  # stdout.txt and stderr.txt of every task, uploaded by the nodes
    assert emu.internal_errors == []


@pytest.mark.e2e
def test_a_failed_task_is_explained_and_its_logs_survive_cleanup(
    write_workflow: WriteWorkflow, azure_env: AzureEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow(
        'if [ "$(cat {{ input.path }})" = "item 2" ]; then echo "cannot read item 2" >&2; exit 3; fi;'
        " cp {{ input.path }} {{ input.stem }}.out",
        tasks={"outputs": [{"pattern": "{{ input.stem }}.out", "container": "outputs"}], "max_retries": 1},
        extra={
            "storage": in_out_storage(),
            "monitor": {"poll_interval": "100ms"},
        },
    )
    rename_containers(wf, unique_containers("inputs", "outputs"))

    assert main(["run", str(wf), "--backend", "azure"]) == 1

    err = capsys.readouterr().err
    run = run_of(err, wf)
    assert "Task task-item-02 failed (exit code 3, 2 attempt(s))" in err
    assert "    | cannot read item 2" in err
    state = load_state(run)
    failed = state["tasks"]["task-item-02"]
    assert (failed["state"], failed["exit_code"], failed["attempts"]) == ("failed", 3, 2)
    # Fetched from the node before the job was deleted: still there after cleanup.
    assert (run / failed["stderr"]).read_text(encoding="utf-8") == "cannot read item 2\n"
    assert state["tasks"]["task-item-01"]["state"] == "succeeded"
    assert leftovers(azure_env) == ([], [])
    assert sorted(p.name for p in (wf.parent / "out").iterdir()) == ["item-01.out"]


@pytest.mark.e2e
def test_a_start_task_failure_stops_the_run_within_seconds_with_its_stderr(
    copy_workflow: Copy, azure_env: AzureEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = copy_workflow("mp4_to_mp3")
    rename_containers(wf, unique_containers("input", "output"))
    fast(wf)
    azure_env.emulator.fail_start_task(POOL, exit_code=100, stderr="E: Unable to locate package ffmpeg\n")
    started = time.monotonic()

    assert main(["run", str(wf), "--backend", "azure"]) == 1

    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    run = run_of(err, wf)
    assert re.search(
        rf"error: the start task failed on all 5 node\(s\) of pool '{POOL}_[0-9A-F-]{{36}}'", err
    )
    assert "(node " in err and "exit code 100" in err
    assert "E: Unable to locate package ffmpeg" in err
    assert elapsed < 60, elapsed  # a safety net against waiting out the 30 min timeouts, not a benchmark
    state = load_state(run)
    assert state["status"] == "failed"
    assert "Unable to locate package ffmpeg" in state["message"]
    assert leftovers(azure_env) == ([], [])  # the job and its auto pool are deleted
    assert azure_env.emulator.count("POST", "/jobs") == 1
    saved = list((run / "start-task").glob("*/stderr.txt"))
    assert [p.read_text(encoding="utf-8") for p in saved] == ["E: Unable to locate package ffmpeg\n"]


@pytest.mark.e2e
def test_an_existing_pool_is_reused_and_kept(
    write_workflow: WriteWorkflow, azure_env: AzureEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow("cat {{ input.path }}", extra={"monitor": {"poll_interval": "100ms"}})
    rename_containers(wf, unique_containers("inputs"))
    from azure.batch import models as bm

    client = azure_env.emulator.client()
    client.create_pool(
        bm.BatchPoolCreateOptions(
            id="TestPool",
            vm_size="standard_a1_v2",
            virtual_machine_configuration=bm.VirtualMachineConfiguration(
                image_reference=bm.BatchVmImageReference(
                    publisher="canonical", offer="ubuntu-24_04-lts", sku="server", version="latest"
                ),
                node_agent_sku_id="batch.node.ubuntu 24.04",
            ),
            target_dedicated_nodes=1,
        )
    )

    assert main(["run", str(wf), "--backend", "azure"]) == 0

    err = capsys.readouterr().err
    assert "  reusing existing pool [TestPool] (not created by batchflow)" in err.splitlines()
    assert err.count("reusing existing pool") == 1  # said once (the runner said it again before)
    assert "Deleting pool [TestPool]..." not in err
    assert leftovers(azure_env) == (["TestPool"], [])  # the job is gone, the pool the user made stays


@pytest.mark.e2e
def test_missing_batch_settings_exit_2_and_create_nothing(
    copy_workflow: Copy,
    azure_env: AzureEnv,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wf = copy_workflow("mp4_to_mp3")
    monkeypatch.delenv("AZURE_BATCH_ENDPOINT")

    assert main(["run", str(wf), "--backend", "azure"]) == 2

    err = capsys.readouterr().err
    assert err.startswith("error: no Azure Batch account: set AZURE_BATCH_ENDPOINT to the account URL")
    assert not (wf.parent / ".batchflow").exists()
    assert azure_env.emulator.requests == []

    monkeypatch.setenv("AZURE_BATCH_ENDPOINT", "http://batch.example.com")
    assert main(["run", str(wf), "--backend", "azure"]) == 2
    assert "must be an https:// URL" in capsys.readouterr().err

    assert main(["run", str(wf), "--backend", "azure", "--storage", "local"]) == 2
    assert "the azure backend needs Azure Blob Storage" in capsys.readouterr().err


@pytest.mark.e2e
def test_task_counts_that_lag_still_end_the_run_with_every_tasks_true_result(
    copy_workflow: Copy, azure_env: AzureEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    """Get Task Counts "may not always be up to date" (Microsoft, REST spec 2025-06-01): the emulator
    answers counts a second old; the run still records all 5 tasks, each with its real result."""
    wf = copy_workflow("mp4_to_mp3")
    rename_containers(wf, unique_containers("input", "output"))
    fast(wf)
    azure_env.emulator.override_start_task(POOL, azure_env.local_start_task(wf))
    azure_env.emulator.lag_task_counts(1.0)

    assert main(["run", str(wf), "--backend", "azure"]) == 0

    run = run_of(capsys.readouterr().err, wf)
    state = load_state(run)
    assert len(state["tasks"]) == 5
    assert {t["state"] for t in state["tasks"].values()} == {"succeeded"}
    assert {t["exit_code"] for t in state["tasks"].values()} == {0}
    assert len(list((wf.parent / "out" / "mp3").iterdir())) == 5


@pytest.mark.e2e
def test_a_wrong_key_or_endpoint_stops_the_run_in_seconds_before_any_upload(
    copy_workflow: Copy,
    azure_env: AzureEnv,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Tried as a user would, a wrong key uploaded 216 MB before the service's 403. Now one request
    (list at most one pool) is made first: 403 AuthenticationFailed -> exit 2, nothing created."""
    wf = copy_workflow("mp4_to_mp3")
    names = unique_containers("input", "output")
    rename_containers(wf, names)
    wrong = base64.b64encode(b"not the account key").decode()
    monkeypatch.setenv("AZURE_BATCH_ACCESS_KEY", wrong)

    assert main(["run", str(wf), "--backend", "azure"]) == 2

    err = capsys.readouterr().err
    endpoint = os.environ["AZURE_BATCH_ENDPOINT"]
    refused = f"error: Azure Batch at {endpoint} refused the credentials: 403 AuthenticationFailed"
    assert err.startswith(refused)
    assert wrong not in err
    assert [(r.method, r.path) for r in azure_env.emulator.requests] == [("GET", "/pools")]
    assert not (wf.parent / ".batchflow").exists()  # no run folder
    assert not azure_env.blobs.get_container_client(names["input"]).exists()  # no container, no upload

    # An endpoint where nothing answers: exit 2 as well, naming the variable to check.
    monkeypatch.setenv("AZURE_BATCH_ACCESS_KEY", azure_env.emulator.key)
    monkeypatch.setenv("AZURE_BATCH_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    start = time.monotonic()
    assert main(["run", str(wf), "--backend", "azure"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach Azure Batch at http://127.0.0.1:9: ServiceRequestError")
    assert err.rstrip().endswith("(check AZURE_BATCH_ENDPOINT)")
    assert time.monotonic() - start < 60  # in seconds, not after the SDK's long retries
    assert not (wf.parent / ".batchflow").exists()


@pytest.mark.e2e
def test_a_pool_that_would_never_get_a_node_is_refused_before_anything_is_created(
    copy_workflow: Copy, azure_env: AzureEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    """No dedicated node, no Spot node, no autoscale: the service accepts such a pool (a recorded 201
    for targetDedicatedNodes 0), and a new user's run waited 658 s for nodes. batchflow refuses it."""
    wf = copy_workflow("mp4_to_mp3")
    text = wf.read_text(encoding="utf-8")
    wf.write_text(text.replace("  spot_nodes: 5\n", ""), encoding="utf-8")
    line = next(i for i, t in enumerate(wf.read_text().splitlines(), 1) if t.startswith("  dedicated_nodes:"))

    assert main(["run", str(wf), "--backend", "azure"]) == 2

    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"{wf}:{line}:20: pool.dedicated_nodes: the pool would never get a node: set dedicated_nodes or "
        "spot_nodes to 1 or more, or give an autoscale formula",
        "1 problem; nothing was created.",
    ]
    assert azure_env.emulator.requests == []
    assert not (wf.parent / ".batchflow").exists()
    assert main(["plan", str(wf), "--backend", "azure"]) == 2  # plan says so too
    assert main(["validate", str(wf), "--backend", "azure"]) == 2  # and validate for Batch
    assert main(["validate", str(wf)]) == 0  # the local backend ignores node counts
    capsys.readouterr()


@pytest.mark.e2e
def test_no_signature_or_key_in_any_output_or_state_file(
    copy_workflow: Copy,
    azure_env: AzureEnv,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    wf = copy_workflow("mp4_to_mp3")
    rename_containers(wf, unique_containers("input", "output"))
    fast(wf)
    azure_env.emulator.override_start_task(POOL, azure_env.local_start_task(wf))
    caplog.set_level("DEBUG", logger="batchflow")

    # Every event as JSON lines (the last, "result", is what --output json prints), then status as JSON.
    assert main(["run", str(wf), "--backend", "azure", "--output", "jsonl"]) == 0
    stream, run_err = capsys.readouterr()
    assert [json.loads(line)["event"] for line in stream.splitlines()][-1] == "result"  # every line JSON
    assert main(["plan", str(wf), "--backend", "azure", "--all"]) == 0
    assert main(["status", "--workflow", str(wf)]) == 0
    assert main(["status", "--workflow", str(wf), "--output", "json"]) == 0
    out, err = capsys.readouterr()

    records = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("batchflow"))
    texts = {"stdout": out, "jsonl stream": stream, "stderr": run_err + err, "batchflow log records": records}
    for path in (wf.parent / ".batchflow").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".log", ".txt"):
            texts[str(path)] = path.read_text(encoding="utf-8", errors="replace")
    assert any(p.endswith("state.json") for p in texts)
    for where, text in texts.items():
        assert azure_env.azurite.account_key not in text, where
        assert azure_env.emulator.key not in text, where
        assert _SIG.search(text) is None, where


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_ctrl_c_or_a_closed_terminal_leaves_no_pool_or_job(
    azure_env: AzureEnv, tmp_path: Path, write_workflow: WriteWorkflow, signum: signal.Signals
) -> None:
    """SIGINT (Ctrl-C) or SIGHUP (terminal closed, SSH dropped: ignored before, the pool and job kept
    billing) to a real `batchflow run --backend azure` process while its tasks run."""
    wf = write_workflow(
        "echo started > /dev/null; sleep 60",
        inputs=3,
        extra={"monitor": {"poll_interval": "100ms"}},
    )
    rename_containers(wf, unique_containers("inputs"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchflow", "run", str(wf), "--backend", "azure"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    emu = azure_env.emulator
    try:
        emu.wait_for(lambda: _running_tasks(azure_env) >= 2, timeout=60, what="tasks running")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Interrupted: stopping running tasks..." in err
    assert "Deleting pool [TestPool]..." in err
    assert leftovers(azure_env) == ([], [])
    run = run_of(err, wf)
    state = load_state(run)
    how = "Ctrl-C" if signum == signal.SIGINT else "SIGHUP"
    assert (state["status"], state["message"]) == ("interrupted", f"interrupted ({how})")
    # Counted as the local backend counts them: the running ones failed, the queued one not started.
    assert f"Run {run.name}: interrupted. 0 succeeded, 2 failed, 1 not started of 3 tasks." in err


def _running_tasks(env: AzureEnv) -> int:
    client = env.emulator.client()
    try:
        return sum(1 for t in client.list_tasks("TestJob") if t.state == "running")
    except Exception:  # the job does not exist yet
        return 0


@pytest.mark.e2e
@pytest.mark.parametrize("lifetime", ["run", "job"])
def test_cleanup_removes_what_a_killed_run_left(
    write_workflow: WriteWorkflow, azure_env: AzureEnv, capsys: pytest.CaptureFixture[str], lifetime: str
) -> None:
    """A run killed without a chance to clean up (SIGKILL): `batchflow cleanup` finds its pool and job,
    the named pool (azure.pool_lifetime: run) as the job's auto pool (job), by their metadata."""
    extra = {"monitor": {"poll_interval": "100ms"}, "azure": {"pool_lifetime": lifetime}}
    wf = write_workflow("sleep 60", inputs=2, extra=extra)
    rename_containers(wf, unique_containers("inputs"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchflow", "run", str(wf), "--backend", "azure", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        azure_env.emulator.wait_for(lambda: _running_tasks(azure_env) >= 1, timeout=60, what="a task running")
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    [pool], jobs = leftovers(azure_env)
    assert jobs == ["TestJob"]
    if lifetime == "run":
        assert pool == "TestPool"
    else:
        assert re.fullmatch(r"TestPool_[0-9A-F-]{36}", pool), pool

    assert main(["cleanup", "--workflow", str(wf), "--output", "json"]) == 0

    out, err = capsys.readouterr()
    report: dict[str, Any] = json.loads(out)
    assert report["deleted"] == ["job TestJob", f"pool {pool}"]
    assert report["failed"] == []
    assert err.splitlines()[-1] == f"Cleanup of run {report['run_id']}: job TestJob, pool {pool}."
    assert leftovers(azure_env) == ([], [])
    # Again: nothing left to remove.
    assert main(["cleanup", "--workflow", str(wf)]) == 0
    assert (
        capsys.readouterr().err.splitlines()[-1]
        == f"Cleanup of run {report['run_id']}: nothing left to remove."
    )
