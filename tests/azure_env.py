"""Fixtures for runs on the Azure path: the Batch emulator on loopback HTTP and Azurite, wired into the
environment variables batchflow reads, exactly as a user would set them for a real account.

    def test_x(azure_env: AzureEnv) -> None:
        azure_env.emulator.override_start_task("LinuxFFmpegPool", azure_env.local_start_task(wf))
        main(["run", str(wf), "--backend", "azure"])

Load it as a plugin next to azurite (pytest_plugins = ["azurite", "azure_env"]). PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from azure.storage.blob import BlobServiceClient
from azurite import AzuriteInfo
from batch_emulator import BatchEmulator

from batchflow.backends.azure.batch_build import shell_command_line

STORAGE_VARIABLES = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_URL",
)
BATCH_VARIABLES = ("AZURE_BATCH_ENDPOINT", "AZURE_BATCH_ACCOUNT", "AZURE_BATCH_ACCESS_KEY")


@dataclass
class AzureEnv:
    emulator: BatchEmulator
    endpoint: str  # http://127.0.0.1:PORT, the emulator's loopback server
    azurite: AzuriteInfo
    blobs: BlobServiceClient

    def local_start_task(self, workflow: Path) -> str:
        """The workflow's `local.start_task` as a Batch command line: the emulator runs it instead of
        the pool's own start task (apt-get install has no place on this machine)."""
        doc: dict[str, Any] = yaml.safe_load(workflow.read_text(encoding="utf-8"))
        return shell_command_line(doc["local"]["start_task"]["command"])

    def blob_names(self, container: str) -> list[str]:
        return sorted(b.name for b in self.blobs.get_container_client(container).list_blobs())


def rename_containers(workflow: Path, names: dict[str, str]) -> None:
    """Rewrite every container name of a workflow file (`names`: old -> new)."""
    doc: dict[str, Any] = yaml.safe_load(workflow.read_text(encoding="utf-8"))

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (names.get(v, v) if k == "container" and isinstance(v, str) else walk(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    doc = walk(doc)
    storage = doc.setdefault("storage", {})
    storage["containers"] = [names.get(c, c) for c in storage.get("containers", [])]
    workflow.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")


def edit_workflow(workflow: Path, **sections: Any) -> None:
    """Merge `sections` (top-level keys -> dicts, merged one level deep) into a workflow file."""
    doc: dict[str, Any] = yaml.safe_load(workflow.read_text(encoding="utf-8"))
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    workflow.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")


def unique_containers(*names: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {n: f"{n}-{tag}" for n in names}


@pytest.fixture
def blob_env(azurite: AzuriteInfo, monkeypatch: pytest.MonkeyPatch) -> AzuriteInfo:
    """batchflow's storage environment points at Azurite (a connection string), and at nothing else."""
    for name in STORAGE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in azurite.environ().items():
        monkeypatch.setenv(name, value)
    return azurite


@pytest.fixture
def azure_env(tmp_path: Path, blob_env: AzuriteInfo, monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureEnv]:
    """A Batch emulator served on loopback (shared key) and Azurite, both in batchflow's environment."""
    with (
        BatchEmulator(workdir=tmp_path / "batch-service") as emu,
        BlobServiceClient.from_connection_string(blob_env.connection_string) as blobs,
    ):
        endpoint = emu.serve()
        for name in BATCH_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AZURE_BATCH_ENDPOINT", endpoint)
        monkeypatch.setenv("AZURE_BATCH_ACCOUNT", emu.account)
        monkeypatch.setenv("AZURE_BATCH_ACCESS_KEY", emu.key)
        yield AzureEnv(emu, endpoint, blob_env, blobs)
        assert emu.internal_errors == []
