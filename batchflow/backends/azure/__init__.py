"""The Azure backend: Blob Storage (azure-storage-blob) and Azure Batch (azure-batch).

`BACKEND` is what the registry holds. Importing this package imports no Azure SDK: the storage and
the Batch compute are imported when a run builds them (and `pip install 'batchflow[azure]'` is
named if the SDK is missing).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from batchflow.backends.base import Cleanup, Compute, Context, Leftover, SettingsBlock, Storage
from batchflow.errors import ConfigurationError, MissingRequirement
from batchflow.model import CleanupAction, DocPath, Workflow
from batchflow.records import record

if TYPE_CHECKING:
    from batchflow.state import RunState

# SAS URLs given to tasks outlive the monitor timeout by this much: tasks added at the end of the
# task stage still upload their outputs at the very end of the monitor stage.
SAS_MARGIN = 3600.0


PoolLifetime = Literal["job", "run"]


@record
class AzureSettings:
    """The workflow's `azure:` block."""

    submit_concurrency: int = 8
    pool_timeout: float = 1800.0  # seconds for the first usable node
    # Who deletes a pool batchflow creates: Batch, with the job (an auto pool), or batchflow at the
    # end of the run (a named pool). README.md, "When the client dies", weighs the two.
    pool_lifetime: PoolLifetime = "job"


def settings_of(workflow: Workflow) -> AzureSettings:
    found = workflow.settings.get("azure")
    return found if isinstance(found, AzureSettings) else AzureSettings()


def sas_lifetime(workflow: Workflow) -> float:
    """How long the SAS URLs of a run stay valid: the monitor timeout plus a margin."""
    return workflow.monitor.timeout + SAS_MARGIN


class AzureBackend:
    name = "azure"
    description = "tasks run on an Azure Batch pool; files live in Azure Blob Storage"
    default_storage = "azure"
    settings_schema: Mapping[str, Any] = json.loads(
        Path(__file__).with_name("settings.schema.json").read_text(encoding="utf-8")
    )
    start_task_key = None  # pool.start_task is the Batch pool's own
    attachable = True

    def read_settings(self, block: SettingsBlock) -> AzureSettings:
        lifetime: PoolLifetime = "run" if block.data.get("pool_lifetime") == "run" else "job"
        return AzureSettings(
            submit_concurrency=int(block.data.get("submit_concurrency", 8)),
            pool_timeout=block.seconds("pool_timeout", 1800.0),
            pool_lifetime=lifetime,
        )

    def problems(self, workflow: Workflow) -> list[tuple[DocPath, str]]:
        """A pool with no dedicated node, no Spot node and no autoscale formula: tasks wait for nodes
        that never come (tried as a new user would: 658 s of waiting before a Ctrl-C). The service
        itself accepts such a pool (a recorded 201 for targetDedicatedNodes 0), so batchflow refuses
        it, before anything is created. And cleanup.pool: keep with an auto pool, which Batch
        deletes with its job whatever batchflow keeps."""
        found: list[tuple[DocPath, str]] = []
        pool = workflow.pool
        if pool.autoscale is None and pool.dedicated_nodes == 0 and pool.spot_nodes == 0:
            message = (
                "the pool would never get a node: set dedicated_nodes or spot_nodes to 1 or more, "
                "or give an autoscale formula"
            )
            found.append((_where(workflow, ("pool", "dedicated_nodes"), ("pool",)), message))
        if workflow.cleanup.pool is CleanupAction.KEEP and settings_of(workflow).pool_lifetime == "job":
            message = (
                "a pool Batch deletes with its job cannot be kept (azure.pool_lifetime: job, the "
                "default): set azure.pool_lifetime: run to keep the pool for the next run"
            )
            found.append((_where(workflow, ("cleanup", "pool"), ("cleanup",)), message))
        return found

    def storage(self, ctx: Context) -> Storage:
        """Azure Blob Storage, credentials from the environment (azure/auth.py)."""
        _need_sdk("azure.storage.blob")
        from batchflow.backends.azure.storage import AzureBlobStorage

        return AzureBlobStorage.from_environment(sas_ttl=sas_lifetime(ctx.workflow))

    def compute(self, ctx: Context, storage: Storage) -> Compute:
        """Azure Batch, credentials from the environment (AZURE_BATCH_ENDPOINT, ...)."""
        _need_sdk("azure.batch")
        from batchflow.backends.azure.storage import AzureBlobStorage

        if not isinstance(storage, AzureBlobStorage):
            raise ConfigurationError(
                "the azure backend needs Azure Blob Storage: Batch nodes cannot read this machine's "
                "folders (drop --storage local; --storage azure is this backend's default)"
            )
        from batchflow.backends.azure.auth import batch_auth
        from batchflow.backends.azure.batch import AzureBatchCompute, Timeouts, default_job_wall_clock
        from batchflow.backends.azure.batch_client import batch_client

        wf = ctx.workflow
        settings = settings_of(wf)
        poll = wf.monitor.poll_interval
        timeouts = Timeouts(
            pool_ready=settings.pool_timeout,
            pool_poll=poll,
            delete_poll=min(poll, 5.0),
            health_interval=12 * poll,
        )
        auth = batch_auth()
        return AzureBatchCompute(
            batch_client(auth, connections=max(16, settings.submit_concurrency + 4)),
            storage,
            ctx.run_dir,
            ctx.run_dir.name,
            submit_concurrency=settings.submit_concurrency,
            endpoint=auth.endpoint,
            timeouts=timeouts,
            notify=ctx.notify,
            auto_pool=settings.pool_lifetime == "job",
            job_wall_clock=default_job_wall_clock(timeouts, wf.monitor.timeout),
        )

    def clean_up(self, run: RunState, workflow: Workflow | None, cleanup: Cleanup) -> None:
        """The pools and jobs whose metadata names the run (account-wide: the run folder may be all
        that is left of it, or less)."""
        _need_sdk("azure.batch")
        import logging  # (here: `validate` reads this package for its settings schema)

        from batchflow.backends.azure.batch import AzureBatchCompute
        from batchflow.backends.azure.batch_client import batch_client
        from batchflow.backends.azure.existing import find_run_resources

        log = logging.getLogger("batchflow")
        client = batch_client()
        compute = AzureBatchCompute(client, None, run.folder, run.run_id, notify=cleanup.say)
        try:
            pools, jobs = find_run_resources(client, run.run_id)
            if run.job_id is not None and run.job_id.casefold() not in {j.casefold() for j in jobs}:
                log.info("job %s of run %s is gone or belongs to another run", run.job_id, run.run_id)
            for job_id in jobs:
                cleanup.attempt(f"job {job_id}", functools.partial(compute.delete_job, job_id))
            policy = workflow.cleanup.pool if workflow is not None else CleanupAction.DELETE_IF_CREATED
            for pool_id in pools:
                if policy is CleanupAction.KEEP:
                    cleanup.kept.append(f"pool {pool_id} (cleanup.pool: keep)")
                    continue
                cleanup.attempt(f"pool {pool_id}", functools.partial(compute.delete_pool, pool_id))
            if run.pool_id is not None and run.pool_id.casefold() not in {p.casefold() for p in pools}:
                if run.pool_created:
                    log.info("pool %s of run %s is gone", run.pool_id, run.run_id)
                else:
                    cleanup.kept.append(f"pool {run.pool_id} (not created by this run)")
        finally:
            compute.close()

    def leftovers(self, workspace: Path) -> list[Leftover]:
        """Every pool and job of the account whose metadata names a batchflow run (whichever machine
        ran it: the run folders may be gone). Each is removed as its own run's cleanup would."""
        _need_sdk("azure.batch")
        from batchflow.backends.azure.auth import batch_auth
        from batchflow.backends.azure.batch import AzureBatchCompute
        from batchflow.backends.azure.batch_client import batch_client
        from batchflow.backends.azure.existing import batchflow_resources

        client = batch_client(batch_auth())
        found = []
        for kind, name, run, created in batchflow_resources(client):
            compute = AzureBatchCompute(client, None, workspace / "runs" / run, run)
            remove = compute.delete_pool if kind == "pool" else compute.delete_job
            found.append(Leftover(kind, name, run, created, None, functools.partial(remove, name)))
        return found


BACKEND = AzureBackend()


def _where(workflow: Workflow, path: DocPath, fallback: DocPath) -> DocPath:
    """`path` if the workflow file has it (for its line:column), else `fallback`."""
    if workflow.source is None or path not in workflow.source.positions:
        return fallback
    return path


def _need_sdk(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        raise MissingRequirement(
            f"the Azure backends need the Azure SDK ({module} is not installed): "
            "pip install 'batchflow[azure]'"
        )
