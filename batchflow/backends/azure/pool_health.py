"""What a pool's nodes say about whether it can run tasks, and, when it cannot, why, in words a
person can act on.

- `PoolHealth.read`: the pool's node counts (one List Pool Node Counts request) as a `Health`:
  how many nodes are usable (idle or running), broken (start task failed, unusable), preempted.
- `PoolHealth.broken_message`: why no node can run tasks: the start task's exit code and the last
  lines of its stderr (its stdout and stderr saved into the run folder), else the nodes' errors.
- `resize_failure`: why a pool with no node will get none (its last resize ended with errors:
  quota, allocation).

The compute decides when to look (`wait_for_pool`, and a stalled monitor); this module only reads
and words what it finds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from batchflow.backends.azure.enums import is_
from batchflow.backends.azure.errors import NO_ANSWER, batch_error, describe
from batchflow.errors import first_line
from batchflow.redact import redact

log = logging.getLogger("batchflow")

STDERR_TAIL_LINES = 20
# Node states, as the keys of a pool's node counts (BatchNodeCounts in the 2025-06-01 REST spec:
# creating, idle, offline, preempted, rebooting, reimaging, running, starting, startTaskFailed,
# leavingPool, unknown, unusable, waitingForStartTask, deallocated, deallocating, upgradingOS, total)
# and of BatchNodeState, casefolded. Only these two sets matter: a node in any other state (including
# states added after 2025-06-01) counts in the total, so it neither makes a healthy pool look broken
# (broken == total) nor hides a broken one (usable stays 0).
_USABLE = frozenset({"idle", "running"})
_BROKEN = frozenset({"starttaskfailed", "unusable"})
_STATE_WORDS = {
    "starttaskfailed": "start task failed",
    "waitingforstarttask": "waiting for start task",
    "leavingpool": "leaving pool",
    "upgradingos": "upgrading OS",
}


@dataclass(frozen=True)
class Health:
    """A pool's nodes, dedicated and Spot together: counts by casefolded state, and what they mean."""

    usable: int
    broken: int
    preempted: int
    total: int
    by_state: dict[str, int]


class PoolHealth:
    """Reads a pool's nodes over `client`; `count` is told the operation of every request sent, and
    a broken pool's start-task logs are saved under `run_dir`/start-task/<node id>."""

    def __init__(self, client: BatchClient, run_dir: Path, count: Callable[[str], None]) -> None:
        self._client = client
        self._run_dir = run_dir
        self._count = count

    def read(self, pool_id: str) -> Health:
        self._count("list_pool_node_counts")
        try:
            found = list(self._client.list_pool_node_counts(filter=f"poolId eq '{pool_id}'"))
        except (HttpResponseError, *NO_ANSWER) as e:
            raise batch_error(f"cannot read the node counts of pool {pool_id!r}", e) from None
        by_state: dict[str, int] = {}
        reported_total = 0
        for entry in found:
            if not is_(entry.pool_id, pool_id):  # the $filter narrows the list; this makes sure
                continue
            for counts in (entry.dedicated, entry.low_priority):
                if counts is None:
                    continue
                # Dict-backed model: read every wire key, so no state the service reports is dropped.
                for key, n in counts.items():
                    if isinstance(n, int) and key.casefold() != "total":
                        by_state[key.casefold()] = by_state.get(key.casefold(), 0) + n
                reported_total += counts.get("total") or 0
        return Health(
            usable=sum(n for s, n in by_state.items() if s in _USABLE),
            broken=sum(n for s, n in by_state.items() if s in _BROKEN),
            preempted=by_state.get("preempted", 0),
            total=max(reported_total, sum(by_state.values())),
            by_state=by_state,
        )

    def broken_message(self, pool_id: str, health: Health) -> str:
        """Why no node of the pool can run tasks: the start task's exit code and stderr, or node errors."""
        self._count("list_nodes")
        try:
            nodes = list(
                self._client.list_nodes(
                    pool_id, select=["id", "state", "startTaskInfo", "errors"], max_results=50
                )
            )
        except (HttpResponseError, *NO_ANSWER) as e:
            raise batch_error(f"cannot list the nodes of pool {pool_id!r}", e) from None
        failed = [n for n in nodes if is_(n.state, bm.BatchNodeState.START_TASK_FAILED)]
        if failed:
            node = failed[0]
            info = node.start_task_info
            exit_code = info.exit_code if info is not None else None
            failure = info.failure_info if info is not None else None
            why = f"exit code {exit_code}" if exit_code is not None else "did not run"
            if failure is not None and failure.code and not is_(failure.code, "FailureExitCode"):
                why += f", {failure.code}: {first_line(failure.message or '')}"
            tail = self._node_file_tail(pool_id, node.id or "", "startup/stderr.txt")
            saved = self._save_start_task_logs(pool_id, node.id or "")
            start_failed = health.by_state.get("starttaskfailed", 0)
            scope = (
                f"all {health.total} node(s)"
                if start_failed == health.total
                else f"{start_failed} of {health.total} node(s) (the others are unusable)"
            )
            lines = [
                f"the start task failed on {scope} of pool {pool_id!r} (node {node.id}: {why})"
                + ("; last lines of its stderr:" if tail else "; its stderr is empty"),
                *tail,
            ]
            if saved is not None:
                lines.append(f"full logs: {saved}")
            return "\n".join(lines)
        errors = [f"{n.id}: " + _errors_text(n.errors) for n in nodes if n.errors]
        return f"no node of pool {pool_id!r} can run tasks ({describe_nodes(health)})" + (
            ": " + " | ".join(errors[:5]) if errors else ""
        )

    def _node_file_tail(self, pool_id: str, node_id: str, path: str) -> list[str]:
        try:
            self._count("download_node_file")
            data = b"".join(self._client.download_node_file(pool_id, node_id, path))
        except ResourceNotFoundError:
            return []
        except (HttpResponseError, *NO_ANSWER) as e:
            log.warning("cannot read %s of node %s: %s", path, node_id, describe(e))
            return []
        return data.decode("utf-8", errors="replace").splitlines()[-STDERR_TAIL_LINES:]

    def _save_start_task_logs(self, pool_id: str, node_id: str) -> Path | None:
        folder = self._run_dir / "start-task" / node_id
        saved = False
        for name in ("stdout.txt", "stderr.txt"):
            try:
                self._count("download_node_file")
                data = b"".join(self._client.download_node_file(pool_id, node_id, f"startup/{name}"))
            except (HttpResponseError, *NO_ANSWER):  # 404 included: the file was never written
                continue
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
            saved = True
        return folder if saved else None


def resize_failure(pool: bm.BatchPool, health: Health) -> str | None:
    """Why a pool with no node will get none: its last resize ended with errors (quota, allocation).
    Batch sets resizeErrors "only if one or more errors occurred during the last Pool resize, and
    only when the Pool allocationState is Steady" (BatchPool.resizeErrors, REST spec 2025-06-01)."""
    if health.total or not pool.resize_errors or not is_(pool.allocation_state, bm.AllocationState.STEADY):
        return None
    errors = _errors_text(pool.resize_errors)
    quota = any("quota" in (e.code or "").casefold() for e in pool.resize_errors)
    return redact(f"pool {pool.id!r} could not get any node: {errors}") + (
        " (the Batch account's core quota: Azure portal > Batch account > Quotas; ask for more, "
        "or use a smaller vm_size or fewer nodes)"
        if quota
        else ""
    )


def describe_nodes(health: Health) -> str:
    """'2 idle, 1 start task failed', or 'no nodes yet'."""
    parts = [f"{n} {_STATE_WORDS.get(state, state)}" for state, n in health.by_state.items() if n]
    return ", ".join(parts) if parts else "no nodes yet"


def _errors_text(errors: Iterable[bm.ResizeError | bm.BatchNodeError]) -> str:
    """Batch's errors as "Code: first line of the message; ..."."""
    return "; ".join(f"{e.code}: {first_line(e.message or '')}" for e in errors)
