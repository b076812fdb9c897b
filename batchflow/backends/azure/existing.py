"""Pools and jobs already in the Batch account, as batchflow reads them: which batchflow run made
one (the run id batch_build writes into its metadata), whether an existing pool fits the workflow,
and what a run left behind (for `batchflow cleanup`).
"""

from __future__ import annotations

import datetime

from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError

from batchflow.backends.azure.batch_build import RUN_ID_KEY
from batchflow.backends.azure.enums import is_
from batchflow.backends.azure.errors import NO_ANSWER, describe
from batchflow.errors import BatchflowError
from batchflow.model import PoolSpec


def run_of(item: bm.BatchPool | bm.BatchJob | None) -> str | None:
    """The batchflow run id in a pool's or job's metadata, if batchflow made it."""
    for m in (item.metadata if item is not None else None) or []:
        if m.name == RUN_ID_KEY:
            return m.value
    return None


def check_pool_fits(pool: PoolSpec, found: bm.BatchPool) -> None:
    """An existing pool runs the tasks if its VM size and image are the workflow's; else this raises."""
    problems = []
    if not is_(found.vm_size, pool.vm_size):  # the service answers it lowercased (recordings)
        problems.append(f"vm_size is {found.vm_size!r}, the workflow asks for {pool.vm_size!r}")
    vmc = found.virtual_machine_configuration
    image = vmc.image_reference if vmc is not None else None
    want = pool.image
    have = (
        (image.publisher or "", image.offer or "", image.sku or "", image.version or "latest")
        if image is not None
        else ("", "", "", "")
    )
    # Any version fits "latest" (the service answers "latest" when the request named none).
    wanted = (want.publisher, want.offer, want.sku, None if want.version == "latest" else want.version)
    if not all(w is None or is_(h, w) for h, w in zip(have, wanted, strict=True)):
        problems.append(
            f"image is {'/'.join(have)}, the workflow asks for "
            f"{want.publisher}/{want.offer}/{want.sku}/{want.version}"
        )
    if problems:
        raise BatchflowError(
            f"pool {pool.id!r} already exists and does not fit this workflow: {'; '.join(problems)}. "
            "Change pool.id, or delete the pool"
        )


def find_run_resources(client: BatchClient, run_id: str) -> tuple[list[str], list[str]]:
    """The pools and jobs (not already being deleted) whose metadata names batchflow run `run_id`."""
    try:
        pools = [
            p.id or ""
            for p in client.list_pools(select=["id", "state", "metadata"])
            if run_of(p) == run_id and not is_(p.state, bm.BatchPoolState.DELETING)
        ]
        jobs = [
            j.id or ""
            for j in client.list_jobs(select=["id", "state", "metadata"])
            if run_of(j) == run_id and not is_(j.state, bm.BatchJobState.DELETING)
        ]
    except (HttpResponseError, *NO_ANSWER) as e:
        raise BatchflowError(f"cannot list the account's pools and jobs: {describe(e)}") from None
    return pools, jobs


def batchflow_resources(client: BatchClient) -> list[tuple[str, str, str, float | None]]:
    """Every pool and job (not being deleted) that batchflow made, account-wide: (kind, id, run id,
    creation time as epoch seconds)."""
    found: list[tuple[str, str, str, float | None]] = []
    try:
        for p in client.list_pools(select=["id", "state", "metadata", "creationTime"]):
            run = run_of(p)
            if run is not None and not is_(p.state, bm.BatchPoolState.DELETING):
                found.append(
                    ("pool", p.id or "", run, p.creation_time.timestamp() if p.creation_time else None)
                )
        for j in client.list_jobs(select=["id", "state", "metadata", "creationTime"]):
            run = run_of(j)
            if run is not None and not is_(j.state, bm.BatchJobState.DELETING):
                found.append(
                    ("job", j.id or "", run, j.creation_time.timestamp() if j.creation_time else None)
                )
    except (HttpResponseError, *NO_ANSWER) as e:
        raise BatchflowError(f"cannot list the account's pools and jobs: {describe(e)}") from None
    return found


def _epoch(when: datetime.datetime | None) -> float | None:
    return when.timestamp() if when is not None else None
