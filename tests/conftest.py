"""Fixtures any test may use: repo workflows copied into tmp_path, and a guard against real networks."""

from __future__ import annotations

import ipaddress
import shutil
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


class RealNetworkBlocked(AssertionError):
    """A test tried to reach a non-loopback address (a real Azure endpoint, or anything else)."""


def is_loopback(host: object) -> bool:
    if not isinstance(host, str):
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:  # a host name: only the names above are known to stay on this machine
        return False


def check_address(address: Any) -> None:
    """Raise unless `address` is a loopback (host, port, ...) tuple or a Unix socket path."""
    if isinstance(address, (str, bytes)):  # AF_UNIX: stays on this machine
        return
    host = address[0] if isinstance(address, tuple) and address else address
    if not is_loopback(host):
        raise RealNetworkBlocked(
            f"test tried to connect to {address!r}: tests never reach a real network or Azure endpoint "
            "(only 127.0.0.1, ::1 and localhost are allowed)"
        )


@pytest.fixture(autouse=True)
def no_real_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection to a non-loopback address fails loudly, before name resolution."""
    connect = socket.socket.connect
    connect_ex = socket.socket.connect_ex
    create_connection = socket.create_connection

    def guarded_connect(self: socket.socket, address: Any) -> None:
        check_address(address)
        connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        check_address(address)
        return connect_ex(self, address)

    def guarded_create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        check_address(address)
        return create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "create_connection", guarded_create_connection)


def upload_sources(workflow_file: Path) -> list[str]:
    """The `storage.uploads[*].source` folders of a workflow file, as written (relative to it)."""
    data = yaml.safe_load(workflow_file.read_text(encoding="utf-8"))
    uploads = (data.get("storage") or {}).get("uploads") or []
    return [u["source"] for u in uploads]


@pytest.fixture
def copy_workflow(tmp_path: Path) -> Callable[[str], Path]:
    """`copy_workflow("mp4_to_mp3")` -> tmp_path/mp4_to_mp3.yaml, with its upload folders beside it.

    Runs of the copy keep their workspace (.batchflow) and downloads inside tmp_path, never in the repo.
    """

    def copy(name: str) -> Path:
        source = WORKFLOWS / f"{name}.yaml"
        target = tmp_path / source.name
        shutil.copyfile(source, target)
        for folder in upload_sources(source):
            if Path(folder).is_absolute() or ".." in Path(folder).parts:
                raise ValueError(f"{source}: upload source {folder!r} is outside the workflow folder")
            shutil.copytree(WORKFLOWS / folder, tmp_path / folder, dirs_exist_ok=True)
        return target

    return copy


def in_out_storage(**more: Any) -> dict[str, Any]:
    """A `storage:` section for write_workflow: inputs/*.txt uploaded to container "inputs", container
    "outputs" downloaded to out/; `more` adds or replaces keys."""
    return {
        "containers": ["inputs", "outputs"],
        "uploads": [{"source": "inputs", "container": "inputs", "include": ["*.txt"]}],
        "downloads": [{"container": "outputs", "destination": "out"}],
        **more,
    }


class WriteWorkflow(Protocol):
    def __call__(
        self,
        command: str,
        *,
        inputs: int = 2,
        tasks: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path: ...


@pytest.fixture
def write_workflow(tmp_path: Path) -> WriteWorkflow:
    """A small valid workflow in tmp_path: one task per file of tmp_path/inputs (item-01.txt, ...).

    Task ids are `task-item-01`, ...; `tasks` adds keys under `tasks:`, `extra` adds top-level sections.
    """

    def write(
        command: str,
        *,
        inputs: int = 2,
        tasks: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        folder = tmp_path / "inputs"
        folder.mkdir(exist_ok=True)
        for i in range(1, inputs + 1):
            (folder / f"item-{i:02d}.txt").write_text(f"item {i}\n", encoding="utf-8")
        doc: dict[str, Any] = {
            "version": 1,
            "name": "test-workflow",
            "storage": {
                "containers": ["inputs"],
                "uploads": [{"source": "inputs", "container": "inputs", "include": ["*.txt"]}],
            },
            "pool": {
                "id": "TestPool",
                "vm_size": "Standard_A1_v2",
                "image": {"publisher": "canonical", "offer": "ubuntu-24_04-lts", "sku": "server"},
                "node_agent_sku_id": "batch.node.ubuntu 24.04",
                "dedicated_nodes": 2,
            },
            "job": {"id": "TestJob"},
            "tasks": {
                "foreach": {"container": "inputs", "pattern": "*.txt"},
                "id": "task-{{ input.stem }}",
                "command": command,
                **(tasks or {}),
            },
            "monitor": {"poll_interval": "1s"},
            **(extra or {}),
        }
        path = tmp_path / "workflow.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
        return path

    return write
