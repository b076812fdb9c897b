"""Whole runs with local compute and Azure Blob Storage (Azurite): `batchflow run --storage azure`.

The same workflows as test_e2e_local.py, with real ffmpeg and real subprocesses; files reach the
tasks only through the SAS URLs the storage hands out, as they reach Batch nodes.
Every test renames the workflow's containers, so runs never share a container in the one Azurite.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from azure.storage.blob import BlobServiceClient
from azure_env import rename_containers, unique_containers
from azurite import AzuriteInfo
from conftest import WriteWorkflow, in_out_storage
from test_e2e_local import SAMPLE_NAMES, check_mp3s_match_inputs, injected, load_state, run_folders

from batchflow.cli import main

pytest_plugins = ["azurite", "azure_env"]

Copy = Callable[[str], Path]
_SIG = re.compile(r"sig=(?!REDACTED)[^&\s'\"]+", re.IGNORECASE)


@pytest.fixture
def service(azurite: AzuriteInfo) -> Iterator[BlobServiceClient]:
    with BlobServiceClient.from_connection_string(azurite.connection_string) as s:
        yield s


def run_of(err: str, workflow: Path) -> Path:
    """The run folder of the run whose stage lines are `err`."""
    match = re.search(r"^Run (\S+): \d+ tasks?, ", err, re.MULTILINE)
    assert match is not None, err
    return workflow.parent / ".batchflow" / "runs" / match.group(1)


def blob_names(service: BlobServiceClient, container: str) -> list[str]:
    return sorted(b.name for b in service.get_container_client(container).list_blobs())


@pytest.mark.e2e
def test_mp4_to_mp3_on_blob_storage_gives_the_same_mp3s_as_folder_storage(
    copy_workflow: Copy,
    tmp_path: Path,
    blob_env: AzuriteInfo,
    service: BlobServiceClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wf = copy_workflow("mp4_to_mp3")
    names = unique_containers("input", "output")
    rename_containers(wf, names)
    mp4_dir = wf.parent / "samples" / "mp4"
    mp3_dir = wf.parent / "out" / "mp3"

    # First with folder storage, keeping its MP3s aside.
    assert main(["run", str(wf), "--quiet"]) == 0
    folder_mp3s = {p.name: p.read_bytes() for p in mp3_dir.iterdir()}
    for p in mp3_dir.iterdir():
        p.unlink()
    capsys.readouterr()

    assert main(["run", str(wf), "--storage", "azure"]) == 0

    out, err = capsys.readouterr()
    assert out == ""
    run = run_of(err, wf)
    assert f"Run {run.name}: 5 tasks, backend local, storage azure" in err
    assert f"Uploading 5 files to container [{names['input']}]..." in err
    assert f"Outputs: {mp3_dir} (5 downloaded, 0 unchanged)" in err
    blob_mp3s = {p.name: p.read_bytes() for p in mp3_dir.iterdir()}
    assert sorted(blob_mp3s) == sorted(f"{n}.mp3" for n in SAMPLE_NAMES)
    check_mp3s_match_inputs(mp3_dir, mp4_dir)
    # The same ffmpeg on the same inputs: byte for byte the MP3s of the folder-storage run.
    assert blob_mp3s == folder_mp3s
    assert injected(wf.parent) == []

    # In the account: the inputs as uploaded, the MP3s under the run's prefix, and each task's logs
    # under the log prefix (not downloaded with the MP3s).
    assert blob_names(service, names["input"]) == sorted(f"{n}.mp4" for n in SAMPLE_NAMES)
    state = load_state(run)
    in_output = blob_names(service, names["output"])
    mp3s = sorted(f"runs/{run.name}/{n}.mp3" for n in SAMPLE_NAMES)
    logs = sorted(
        f"batchflow-logs/{run.name}/{t}/{f}" for t in state["tasks"] for f in ("stderr.txt", "stdout.txt")
    )
    ledger = [f"batchflow-ledger/mp4-to-mp3/{run.name}.jsonl"]  # what a second machine resumes from
    assert in_output == sorted(mp3s + logs + ledger)
    for task_id, task in state["tasks"].items():
        assert (task["state"], task["exit_code"], task["failure"]) == ("succeeded", 0, None), task_id
        assert task["outputs"] == [f"{names['output']}/runs/{run.name}/{Path(task['outputs'][0]).name}"]
    # A second run uploads nothing again: the blobs hold the same content.
    assert main(["run", str(wf), "--storage", "azure"]) == 0
    assert "  0 uploaded (0 B), 5 unchanged" in capsys.readouterr().err.splitlines()


@pytest.mark.e2e
def test_task_logs_reach_the_account_and_a_failure_is_explained(
    write_workflow: WriteWorkflow,
    blob_env: AzuriteInfo,
    service: BlobServiceClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wf = write_workflow(
        'if [ "$(cat {{ input.path }})" = "item 2" ]; then echo "bad input" >&2; exit 3; fi;'
        " tr a-z A-Z < {{ input.path }} > {{ input.stem }}.up",
        tasks={"outputs": [{"pattern": "{{ input.stem }}.up", "container": "outputs"}]},
        extra={"storage": in_out_storage()},
    )
    names = unique_containers("inputs", "outputs")
    rename_containers(wf, names)

    assert main(["run", str(wf), "--storage", "azure"]) == 1

    err = capsys.readouterr().err
    run = run_of(err, wf)
    assert "Task task-item-02 failed (exit code 3, 1 attempt(s))" in err
    assert "bad input" in err
    out_blobs = blob_names(service, names["outputs"])
    assert f"runs/{run.name}/item-01.up" in out_blobs
    assert f"runs/{run.name}/item-02.up" not in out_blobs  # success-only output of a failed task
    stderr = service.get_blob_client(names["outputs"], f"batchflow-logs/{run.name}/task-item-02/stderr.txt")
    assert stderr.download_blob().readall() == b"bad input\n"
    up = service.get_blob_client(names["outputs"], f"runs/{run.name}/item-01.up")
    assert up.download_blob().readall() == b"ITEM 1\n"


@pytest.mark.e2e
def test_cleanup_deletes_the_input_container_after_success_when_asked(
    write_workflow: WriteWorkflow, blob_env: AzuriteInfo, service: BlobServiceClient
) -> None:
    wf = write_workflow(
        "cat {{ input.path }} > {{ input.stem }}.out",
        tasks={"outputs": [{"pattern": "{{ input.stem }}.out", "container": "outputs"}]},
        extra={
            "storage": in_out_storage(),
            "cleanup": {"input_containers": "delete"},
        },
    )
    names = unique_containers("inputs", "outputs")
    rename_containers(wf, names)

    assert main(["run", str(wf), "--storage", "azure", "--quiet"]) == 0

    containers = {c.name for c in service.list_containers()}
    assert names["inputs"] not in containers  # deleted, as asked, after a run that succeeded
    assert names["outputs"] in containers  # kept: the default
    assert sorted(p.name for p in (wf.parent / "out").iterdir()) == ["item-01.out", "item-02.out"]


@pytest.mark.e2e
def test_no_signature_or_key_in_any_output_or_state_file(
    copy_workflow: Copy,
    blob_env: AzuriteInfo,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    wf = copy_workflow("word_count")
    data = yaml.safe_load(wf.read_text(encoding="utf-8"))
    names = unique_containers(*data["storage"]["containers"])
    rename_containers(wf, names)
    caplog.set_level("DEBUG", logger="batchflow")

    assert main(["run", str(wf), "--storage", "azure", "--output", "json"]) == 0
    assert main(["status", "--workflow", str(wf), "--output", "json"]) == 0
    out, err = capsys.readouterr()

    # batchflow's own log records, before any handler's redacting filter: nothing to redact in them.
    # (urllib3's and azure-core's debug loggers print request URLs; batchflow never shows them.)
    records = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("batchflow"))
    texts = {"stdout": out, "stderr": err, "batchflow log records": records}
    for path in (wf.parent / ".batchflow" / "runs").rglob("*"):
        if path.is_file() and path.parent.parent.name != "tasks":  # the tasks' own logs are theirs
            texts[str(path)] = path.read_text(encoding="utf-8", errors="replace")
    assert len(texts) > 4
    for where, text in texts.items():
        assert blob_env.account_key not in text, where
        assert _SIG.search(text) is None, where
        assert "AccountKey=" not in text or "AccountKey=REDACTED" in text, where
    summary, _ = json.JSONDecoder().raw_decode(out)
    assert summary["status"] == "succeeded"


def test_missing_credentials_exit_2_naming_the_variables_and_create_nothing(
    copy_workflow: Copy, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in (
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_ACCOUNT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    wf = copy_workflow("mp4_to_mp3")

    assert main(["run", str(wf), "--storage", "azure"]) == 2

    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: no Azure Storage credentials: set AZURE_STORAGE_ACCOUNT_URL (Entra ID sign-in), "
        "or AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY"
    ]
    assert not (wf.parent / ".batchflow").exists()


def test_outputs_in_one_shared_folder_are_downloaded_without_the_logs(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    """With storage.outputs_per_run false the whole output container is downloaded, logs excepted."""
    wf = write_workflow(
        "cat {{ input.path }} > {{ input.stem }}.out",
        tasks={"outputs": [{"pattern": "{{ input.stem }}.out", "container": "outputs"}]},
        extra={
            "storage": in_out_storage(outputs_per_run=False, logs={"container": "outputs", "prefix": "logs/"})
        },
    )

    assert main(["run", str(wf), "--quiet"]) == 0

    (run,) = run_folders(wf.parent / ".batchflow")
    stored = wf.parent / ".batchflow" / "storage" / "outputs"
    assert sorted(str(p.relative_to(stored)) for p in stored.rglob("*") if p.is_file()) == [
        f"batchflow-ledger/test-workflow/{run.name}.jsonl",
        "item-01.out",
        "item-02.out",
        f"logs/{run.name}/task-item-01/stderr.txt",
        f"logs/{run.name}/task-item-01/stdout.txt",
        f"logs/{run.name}/task-item-02/stderr.txt",
        f"logs/{run.name}/task-item-02/stdout.txt",
    ]
    assert sorted(p.name for p in (wf.parent / "out").rglob("*")) == ["item-01.out", "item-02.out"]
