"""A pool's start task on one node: run when the node starts, retried up to maxTaskRetryCount.

While it runs the node is `waitingforstarttask` (waitForSuccess, the default) or already `idle`.
When it fails for good, a node that waits for it turns `starttaskfailed`; its stdout.txt and
stderr.txt stay in startup/ on the node (node files API: startup/stderr.txt). In instant mode, or
when the test injected a failure (BatchEmulator.fail_start_task), no process runs: the result and
the files are written at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import execution
from .environment import node_env
from .resources import Node, Pool, RunHandle
from .state import StartTaskFault, Store
from .wire import fmt_time, now

Spawn = Callable[[Callable[..., None], tuple[Any, ...], str], None]


def begin(store: Store, pool: Pool, node: Node, spec: Mapping[str, Any], spawn: Spawn) -> None:
    """Start the start task on `node` (lock held); `spawn` runs a function on a thread of its own."""
    node.set_state("waitingforstarttask" if spec.get("waitForSuccess", True) else "idle")
    node.start_task_info = {"state": "running", "startTime": fmt_time(now()), "retryCount": 0}
    fault = store.for_pool(store.start_task_faults, pool)
    if fault is not None or store.instant:
        _without_process(node, spec, fault)
        return
    task_dir = node.root / "startup"
    env = node_env(
        account=store.account,
        endpoint=store.endpoint,
        node=node,
        task_dir=task_dir,
        identity=spec.get("userIdentity"),
        settings=[spec.get("environmentSettings", [])],
    )
    command = store.for_pool(store.start_task_commands, pool) or spec["commandLine"]
    launch = execution.Launch(command, task_dir, env, spec.get("resourceFiles", []))
    handle = node.start_handle = RunHandle()
    spawn(_run, (store, node, spec, node.generation, launch, handle), f"start-task-{node.id}")


def _without_process(node: Node, spec: Mapping[str, Any], fault: StartTaskFault | None) -> None:
    startup = node.root / "startup"
    (startup / "wd").mkdir(parents=True, exist_ok=True)
    (startup / "stdout.txt").write_text(fault.stdout if fault else "", encoding="utf-8")
    (startup / "stderr.txt").write_text(fault.stderr if fault else "", encoding="utf-8")
    max_retries = spec.get("maxTaskRetryCount", 0)
    code = fault.exit_code if fault else 0
    if code != 0 and max_retries == -1:
        node.start_task_info = {**(node.start_task_info or {}), "retryCount": 1}  # retried forever
        return
    failure = execution.exit_failure() if code != 0 else None
    start = now()
    outcome = execution.Outcome(start, start, code, failure, retryable=code != 0)
    finish(node, spec, node.generation, outcome, max_retries if code else 0)


def _run(
    store: Store,
    node: Node,
    spec: Mapping[str, Any],
    generation: int,
    launch: execution.Launch,
    handle: RunHandle,
) -> None:
    max_retries = spec.get("maxTaskRetryCount", 0)
    retries = 0
    while True:
        outcome = execution.run(launch, handle)
        if outcome.killed is not None:
            return
        if outcome.retryable and (max_retries == -1 or retries < max_retries):
            retries += 1
            with store.lock:
                if node.generation != generation or node.start_task_info is None:
                    return
                node.start_task_info["retryCount"] = retries
                node.start_task_info["lastRetryTime"] = fmt_time(now())
            continue
        with store.lock:
            finish(node, spec, generation, outcome, retries)
            store.wakeup.notify_all()
        return


def finish(
    node: Node, spec: Mapping[str, Any], generation: int, outcome: execution.Outcome, retries: int
) -> None:
    """Record the start task's result on the node (lock held), unless the node restarted since."""
    if node.generation != generation:
        return
    info: dict[str, Any] = {
        "state": "completed",
        "startTime": fmt_time(outcome.start),
        "endTime": fmt_time(outcome.end),
        "retryCount": retries,
        "result": "success" if outcome.failure is None else "failure",
    }
    if outcome.exit_code is not None:
        info["exitCode"] = outcome.exit_code
    if outcome.failure is not None:
        info["failureInfo"] = outcome.failure
    if retries:
        info["lastRetryTime"] = fmt_time(outcome.start)
    node.start_task_info = info
    node.start_handle = None
    if outcome.failure is None:
        if node.state == "waitingforstarttask":
            node.set_state("idle")
    elif spec.get("waitForSuccess", True):
        node.set_state("starttaskfailed")
