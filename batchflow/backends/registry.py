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
from batchflow.errors import ConfigurationError, MissingRequirement
from batchflow.model import Plan


@dataclass(frozen=True)
class Context:
    """What a backend factory may use to build itself."""

    plan: Plan
    workspace: Path  # <workflow folder>/.batchflow unless overridden
    run_dir: Path  # its name is the run id
    concurrency: int | None = None
    notify: Callable[[str], None] | None = None  # stage lines (what a backend is waiting for)


StorageFactory = Callable[[Context], Storage]
ComputeFactory = Callable[[Context, Storage], Compute]


def _local_storage(ctx: Context) -> Storage:
    from batchflow.backends.local.storage import LocalStorage

    return LocalStorage(ctx.workspace / "storage")


def _azure_storage(ctx: Context) -> Storage:
    """Azure Blob Storage, credentials from the environment (backends/azure_auth.py)."""
    _need_azure_sdk("azure.storage.blob")
    from batchflow.backends.azure.storage import AzureBlobStorage

    return AzureBlobStorage.from_environment(sas_ttl=sas_lifetime(ctx.plan))


def _local_compute(ctx: Context, storage: Storage) -> Compute:
    from batchflow.backends.local.scheduler import LocalCompute

    check_requirements(ctx.plan.workflow.local.requires, local_task_path())
    concurrency = ctx.concurrency or ctx.plan.workflow.local.concurrency
    return LocalCompute(
        ctx.workspace, storage, ctx.run_dir, concurrency, pass_env=ctx.plan.workflow.local.pass_env
    )


def _azure_compute(ctx: Context, storage: Storage) -> Compute:
    """Azure Batch, credentials from the environment (AZURE_BATCH_ENDPOINT, ...)."""
    _need_azure_sdk("azure.batch")
    from batchflow.backends.azure.storage import AzureBlobStorage

    if not isinstance(storage, AzureBlobStorage):
        raise ConfigurationError(
            "the azure backend needs Azure Blob Storage: Batch nodes cannot read this machine's folders "
            "(drop --storage local; --storage azure is this backend's default)"
        )
    from batchflow.backends.azure.auth import batch_auth
    from batchflow.backends.azure.batch import AzureBatchCompute, Timeouts
    from batchflow.backends.azure.batch_client import batch_client

    wf = ctx.plan.workflow
    poll = wf.monitor.poll_interval
    timeouts = Timeouts(
        pool_ready=wf.azure.pool_timeout,
        pool_poll=poll,
        delete_poll=min(poll, 5.0),
        health_interval=12 * poll,
    )
    auth = batch_auth()
    return AzureBatchCompute(
        batch_client(auth, connections=max(16, wf.azure.submit_concurrency + 4)),
        storage,
        ctx.run_dir,
        ctx.run_dir.name,
        submit_concurrency=wf.azure.submit_concurrency,
        endpoint=auth.endpoint,
        timeouts=timeouts,
        notify=ctx.notify,
    )


STORAGE: dict[str, StorageFactory] = {"local": _local_storage, "azure": _azure_storage}
COMPUTE: dict[str, ComputeFactory] = {"local": _local_compute, "azure": _azure_compute}
# The storage each compute backend uses unless --storage says otherwise.
DEFAULT_STORAGE: dict[str, str] = {"local": "local", "azure": "azure"}

# SAS URLs given to tasks outlive the monitor timeout by this much: tasks added at the end of the
# task stage still upload their outputs at the very end of the monitor stage.
SAS_MARGIN = 3600.0


def sas_lifetime(plan: Plan) -> float:
    """How long the SAS URLs of a run stay valid: the monitor timeout plus a margin."""
    return plan.workflow.monitor.timeout + SAS_MARGIN


def _need_azure_sdk(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        raise MissingRequirement(
            f"the Azure backends need the Azure SDK ({module} is not installed): "
            "pip install 'batchflow[azure]'"
        )


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
