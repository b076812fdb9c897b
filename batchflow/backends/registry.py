"""The one list of backends. CLI choices and docs derive from these dicts.

Each entry is a factory, imported lazily, so `batchflow validate` never imports a backend
(and the Azure SDK is only imported when an Azure backend is chosen).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from batchflow.backends.base import Compute, Storage
from batchflow.errors import MissingRequirement
from batchflow.model import Plan


@dataclass(frozen=True)
class Context:
    """What a backend factory may use to build itself."""

    plan: Plan
    workspace: Path  # <workflow folder>/.batchflow unless overridden
    run_dir: Path
    concurrency: int | None = None


StorageFactory = Callable[[Context], Storage]
ComputeFactory = Callable[[Context, Storage], Compute]


def _local_storage(ctx: Context) -> Storage:
    from batchflow.backends.local_storage import LocalStorage

    return LocalStorage(ctx.workspace / "storage")


def _local_compute(ctx: Context, storage: Storage) -> Compute:
    from batchflow.backends.local_compute import LocalCompute
    from batchflow.backends.local_storage import LocalStorage

    if not isinstance(storage, LocalStorage):
        raise MissingRequirement("the local compute backend needs the local storage backend")
    check_requirements(ctx.plan.workflow.local.requires, local_task_path())
    concurrency = ctx.concurrency or ctx.plan.workflow.local.concurrency
    return LocalCompute(ctx.workspace, storage, ctx.run_dir, concurrency)


STORAGE: dict[str, StorageFactory] = {"local": _local_storage}
COMPUTE: dict[str, ComputeFactory] = {"local": _local_compute}
# The storage each compute backend uses unless --storage says otherwise.
DEFAULT_STORAGE: dict[str, str] = {"local": "local"}


def local_task_path() -> str:
    """PATH for local tasks: batchflow's own environment first, then the inherited PATH."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])


def check_requirements(names: tuple[str, ...], path: str) -> None:
    missing = [n for n in names if shutil.which(n, path=path) is None]
    if missing:
        listed = ", ".join(repr(n) for n in missing)
        raise MissingRequirement(
            f"the workflow requires {listed} (local.requires), not found on PATH. "
            f"Install it first (e.g. `sudo apt-get install {missing[0]}` or `brew install {missing[0]}`), "
            "or pip-install it into batchflow's environment."
        )
