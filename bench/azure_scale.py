"""Azure Batch submission and monitoring at scale: batchflow vs Microsoft's Batch Python tutorial.

    python bench/azure_scale.py [--tasks 1000,10000] [--latency-ms 50] [--poll-s 0.2] [--repeat 3]

Everything runs against the Batch service emulator (tests/batch_emulator) with instant tasks (a task
completes, exit 0, on the emulator's next control-loop pass) and --latency-ms added to every request.
The emulator answers over HTTP on 127.0.0.1 (`emu.serve()`, with TCP_NODELAY: see MeteredEmulator),
and both sides use the client batchflow builds in production (`azure_batch_client.batch_client`:
azure-core's requests transport, 16 pooled connections, shared-key signing): real sockets and the
SDK's real serializer, paging and error mapping. That is closer to the service than the in-process
transport (`emu.client()`), which skips HTTP. Each approach and task count gets a fresh emulator.
The emulator runs in this process and shares the machine's cores (and the GIL) with the client, so
its own work (for a listing: rendering every task as JSON) is inside the wall times; the script
prints that share for the polls. Its scheduler is held (`emu.paused()`) from the first Add Task
Collection to the monitor's first poll, on both sides: the monitor then starts with every task
queued and watches them complete, as on a real pool, where tasks outlast their submission (instant
tasks would otherwise all finish during it); requests are answered as usual meanwhile.

(a) batchflow: AzureBatchCompute creates the pool and job (no storage: the tasks have no inputs,
    outputs or log container), then `add_tasks` of N RenderedTasks running `echo <i>` (timed,
    building the request bodies included: wall time, Add Task Collection requests), `seal_job`,
    then a monitor loop like the runner's, `task_counts` + `wait(--poll-s)` until every task has completed:
    Get Task Counts requests / polls, and every other request made meanwhile. For reference, the
    one `task_results` listing a run makes after its monitor.
(b) the tutorial (learn.microsoft.com, "Tutorial: Run a parallel workload with Azure Batch using the
    Python API"): all tasks in ONE Add Task Collection call, here
    `client.create_task_collection(job, BatchTaskGroup(task_values=all_tasks))` (the same task
    bodies as batchflow's), then a monitor that lists every task each poll (`list_tasks(job)`, no
    $filter or $select, following the service's pages of 1,000) until all are completed.
    The single call fails past 100 tasks (413 RequestBodyTooLarge); to measure its monitor the tasks
    are then added in sequential chunks of 100 (the smallest fix), timed and reported for reference,
    as is azure-batch 15's own chunking helper `create_tasks(max_concurrency=8)` (on azure-batch
    14.x, the tutorial's `task.add_collection` was such a helper; its 15.x successor is create_tasks).
One poll "at rest" (every task completed, nothing moving) is timed on both sides: median of --repeat.
Targets (issue 4): 10,000 tasks submitted in <= 110 requests and <= 10 s; exactly 1 request per poll.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from batch_emulator import BatchEmulator, message_text  # noqa: E402
from batch_emulator.faults import compile_pattern  # noqa: E402
from batch_emulator.wire import Request, Response  # noqa: E402

from batchflow.backends.azure import AzureSettings  # noqa: E402
from batchflow.backends.azure import batch_build as build  # noqa: E402
from batchflow.backends.azure.auth import BATCH_ACCOUNT, BATCH_ENDPOINT, BATCH_KEY, batch_auth  # noqa: E402
from batchflow.backends.azure.batch import AzureBatchCompute, Timeouts  # noqa: E402
from batchflow.backends.azure.batch_client import batch_client  # noqa: E402
from batchflow.backends.azure.enums import is_  # noqa: E402
from batchflow.model import ImageReference, JobSpec, PoolSpec, RenderedTask  # noqa: E402

COLLECTION = "/jobs/{job}/addtaskcollection"
COUNTS = "/jobs/{job}/taskcounts"
LIST_TASKS = "/jobs/{job}/tasks"
CONCURRENCY = AzureSettings().submit_concurrency  # batchflow's default (azure.submit_concurrency)
CONNECTIONS = max(16, CONCURRENCY + 4)  # what backends/azure/__init__.py gives batch_client
TARGET_REQUESTS = 110  # for 10,000 tasks
TARGET_SUBMIT_S = 10.0


class MeteredEmulator(BatchEmulator):
    """The emulator, adding up the time it spends answering requests (its share of a wall time)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.busy = 0.0
        self._busy_lock = threading.Lock()

    def dispatch(self, request: Request) -> Response:
        start = time.perf_counter()
        try:
            return super().dispatch(request)
        finally:
            with self._busy_lock:
                self.busy += time.perf_counter() - start

    def since(self, mark: int) -> Counter[str]:
        """Requests after the first `mark` ones, by "METHOD /path pattern"."""
        patterns = [(p, compile_pattern(p)) for p in (COLLECTION, COUNTS, LIST_TASKS)]
        counts: Counter[str] = Counter()
        for r in self.requests[mark:]:
            name = next((p for p, rx in patterns if rx.fullmatch(r.path)), r.path)
            counts[f"{r.method} {name}"] += 1
        return counts


@dataclass
class Setup:
    emu: MeteredEmulator
    client: BatchClient
    work: Path


@contextmanager
def service(work: Path, latency: float) -> Iterator[Setup]:
    """A fresh emulator on loopback HTTP and batchflow's production client for it."""
    emu = MeteredEmulator(workdir=work / "service", instant=True, latency=latency)
    with emu:
        auth = batch_auth({BATCH_ENDPOINT: emu.serve(), BATCH_ACCOUNT: emu.account, BATCH_KEY: emu.key})
        with batch_client(auth, connections=CONNECTIONS) as client:
            yield Setup(emu, client, work)
        if emu.internal_errors:
            raise SystemExit("the Batch emulator failed:\n" + "\n".join(emu.internal_errors))


def pool_spec(nodes: int, slots: int) -> PoolSpec:
    return PoolSpec(
        id="ScalePool",
        vm_size="Standard_D2s_v3",
        image=ImageReference("canonical", "ubuntu-24_04-lts", "server"),
        node_agent_sku_id="batch.node.ubuntu 24.04",
        dedicated_nodes=nodes,
        task_slots_per_node=slots,
    )


def rendered_tasks(n: int) -> list[RenderedTask]:
    return [
        RenderedTask(
            id=f"task-{i:05d}",
            index=i,
            command=f"echo {i}",
            inputs=(),
            outputs=(),
            environment={},
            max_retries=0,
            max_wall_clock=None,
        )
        for i in range(n)
    ]


def timed_median(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---- (a) batchflow --------------------------------------------------------------------------------


@dataclass
class BatchflowFigures:
    submit_s: float
    submit_requests: int
    progress: list[int]  # tasks completed, at each poll
    poll_requests: int
    other_monitor: Counter[str]
    poll_s: float
    poll_emulator_s: float
    results_s: float
    results_requests: Counter[str]


def run_batchflow(s: Setup, n: int, args: argparse.Namespace) -> BatchflowFigures:
    poll = args.poll_s
    compute = AzureBatchCompute(
        s.client,
        None,  # tasks with no inputs, outputs or log container need no SAS URLs
        s.work / "run",
        "bench-run",
        submit_concurrency=CONCURRENCY,
        timeouts=Timeouts(pool_poll=0.05, delete_poll=min(poll, 5.0), health_interval=12 * poll),
    )
    pool = pool_spec(args.nodes, args.slots)
    job = JobSpec(id="ScaleJob")
    compute.create_pool(pool, None)
    compute.wait_for_pool(pool.id)
    compute.create_job(job, pool.id, "bench-run")
    tasks = rendered_tasks(n)

    with s.emu.paused():  # the scheduler waits for the monitor's first poll (see the docstring)
        before = s.emu.count("POST", COLLECTION)
        start = time.perf_counter()
        compute.add_tasks(job.id, tasks)
        submit_s = time.perf_counter() - start
        submit_requests = s.emu.count("POST", COLLECTION) - before
        compute.seal_job(job.id)
        mark = len(s.emu.requests)
        counts = compute.task_counts(job.id)
    progress = [counts.completed]
    while counts.completed < n:
        compute.wait(poll)
        counts = compute.task_counts(job.id)
        progress.append(counts.completed)
    monitor = s.emu.since(mark)
    poll_requests = monitor.pop(f"GET {COUNTS}", 0)
    if counts.succeeded != n:
        raise SystemExit(f"benchmark run went wrong: {counts}")

    busy = s.emu.busy
    poll_s = timed_median(lambda: compute.task_counts(job.id), args.repeat)
    poll_emulator_s = (s.emu.busy - busy) / args.repeat

    mark = len(s.emu.requests)
    start = time.perf_counter()
    results = compute.task_results(job.id)
    results_s = time.perf_counter() - start
    if len(results) != n:
        raise SystemExit(f"benchmark run went wrong: {len(results)} task results")
    return BatchflowFigures(
        submit_s,
        submit_requests,
        progress,
        poll_requests,
        monitor,
        poll_s,
        poll_emulator_s,
        results_s,
        s.emu.since(mark),
    )


# ---- (b) the tutorial -----------------------------------------------------------------------------


@dataclass
class TutorialFigures:
    body_bytes: int
    failure: str
    fail_s: float
    fail_requests: int
    added_after_failure: int
    chunked_s: float
    chunked_requests: int
    progress: list[int]
    poll_requests: int
    other_monitor: Counter[str]
    poll_s: float
    poll_emulator_s: float
    pages_at_rest: int


def tutorial_setup(s: Setup, args: argparse.Namespace, job_id: str) -> None:
    """The tutorial's pool and job, with plain SDK calls (the bodies batchflow would send)."""
    s.client.create_pool(build.pool_request(pool_spec(args.nodes, args.slots), None, [], "tutorial"))
    s.client.create_job(build.job_request(JobSpec(id=job_id), "ScalePool", "tutorial"))


def task_bodies(tasks: list[RenderedTask]) -> list[bm.BatchTaskCreateOptions]:
    """The Add Task bodies batchflow sends for `tasks` (the same on both sides)."""
    return [build.task_request(t, [], {}, None, "") for t in tasks]


def list_every_task(client: BatchClient, job_id: str) -> list[bm.BatchTask]:
    """The tutorial's wait_for_tasks_to_complete: every task, all its properties, every page."""
    return list(client.list_tasks(job_id))


def completed(tasks: list[bm.BatchTask]) -> int:
    return sum(t.state == bm.BatchTaskState.COMPLETED for t in tasks)


def run_tutorial(s: Setup, n: int, args: argparse.Namespace) -> TutorialFigures:
    job_id = "TutorialJob"
    tutorial_setup(s, args, job_id)
    rendered = rendered_tasks(n)
    tasks = task_bodies(rendered)
    body = len(json.dumps({"value": [build.wire(t) for t in tasks]}).encode())

    with s.emu.paused():  # as for batchflow: the scheduler waits for the monitor's first poll
        before = s.emu.count("POST", COLLECTION)
        start = time.perf_counter()
        try:
            s.client.create_task_collection(job_id, bm.BatchTaskGroup(task_values=tasks))
        except HttpResponseError as e:
            code = e.error.code if e.error is not None else None
            message = ""
            if isinstance(e.model, bm.BatchError) and e.model.message is not None:
                message = message_text(e.model.message.value or "")
            failure = f"HTTP {e.status_code} {code} ({message})"
        else:
            failure = "accepted (no error)"
        fail_s = time.perf_counter() - start
        fail_requests = s.emu.count("POST", COLLECTION) - before
        added = s.client.get_job_task_counts(job_id).task_counts
        added_after_failure = added.active + added.running + added.completed

        # The smallest fix, so that there are tasks to monitor: the same call, 100 tasks at a time.
        before = s.emu.count("POST", COLLECTION)
        start = time.perf_counter()
        tasks = task_bodies(rendered)  # timed, as add_tasks builds its bodies
        for i in range(0, n, 100):
            chunk = bm.BatchTaskGroup(task_values=tasks[i : i + 100])
            result = s.client.create_task_collection(job_id, chunk)
            # Compared without case: the live service answers "Success" (tests/recordings), which the
            # tutorial's own == check (and the SDK enum's) would read as a failure.
            if not all(is_(r.status, bm.BatchTaskAddStatus.SUCCESS) for r in result.result_values or []):
                raise SystemExit(f"benchmark run went wrong: {result}")
        chunked_s = time.perf_counter() - start
        chunked_requests = s.emu.count("POST", COLLECTION) - before
        mark = len(s.emu.requests)
        listed = list_every_task(s.client, job_id)
    progress = [completed(listed)]
    while progress[-1] < n:
        time.sleep(args.poll_s)
        listed = list_every_task(s.client, job_id)
        progress.append(completed(listed))
    monitor = s.emu.since(mark)
    poll_requests = monitor.pop(f"GET {LIST_TASKS}", 0)

    busy = s.emu.busy
    pages = s.emu.count("GET", LIST_TASKS)
    poll_s = timed_median(lambda: list_every_task(s.client, job_id), args.repeat)
    return TutorialFigures(
        body,
        failure,
        fail_s,
        fail_requests,
        added_after_failure,
        chunked_s,
        chunked_requests,
        progress,
        poll_requests,
        monitor,
        poll_s,
        (s.emu.busy - busy) / args.repeat,
        (s.emu.count("GET", LIST_TASKS) - pages) // args.repeat,
    )


def run_sdk_helper(s: Setup, n: int, args: argparse.Namespace) -> tuple[float, int]:
    """azure-batch's create_tasks: chunks of 100 in parallel (the 14.x add_collection's successor)."""
    tutorial_setup(s, args, "HelperJob")
    rendered = rendered_tasks(n)
    with s.emu.paused():
        start = time.perf_counter()
        tasks = task_bodies(rendered)  # timed, as add_tasks builds its bodies
        result = s.client.create_tasks("HelperJob", tasks, max_concurrency=CONCURRENCY)
        elapsed = time.perf_counter() - start
    ok = sum(is_(r.status, bm.BatchTaskAddStatus.SUCCESS) for r in result.result_values or [])
    if ok != n:
        raise SystemExit(f"benchmark run went wrong: create_tasks added {ok} of {n}")
    return elapsed, s.emu.count("POST", COLLECTION)


# ---- report ---------------------------------------------------------------------------------------


def others(counter: Counter[str]) -> str:
    total = sum(counter.values())
    return f"{total}" + (f" ({', '.join(f'{k} x{v}' for k, v in sorted(counter.items()))})" if total else "")


def trail(progress: list[int]) -> str:
    """Tasks completed at each poll, e.g. "0 -> 3,712 -> 10,000"."""
    shown = progress if len(progress) <= 8 else [*progress[:4], -1, *progress[-3:]]
    return " -> ".join("..." if c < 0 else f"{c:,}" for c in shown)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="1000,10000", help="comma-separated task counts")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="added by the emulator to every request")
    ap.add_argument("--poll-s", type=float, default=0.2, help="wait between two polls of either monitor")
    ap.add_argument("--nodes", type=int, default=4, help="dedicated nodes in the pool")
    ap.add_argument("--slots", type=int, default=8, help="task slots per node")
    ap.add_argument("--repeat", type=int, default=3, help="polls at rest timed (median)")
    args = ap.parse_args(argv)
    counts = [int(n) for n in args.tasks.split(",")]
    latency = args.latency_ms / 1000

    print(
        f"CPUs: {os.cpu_count()}; Batch emulator (tests/batch_emulator, in this process) over HTTP on "
        f"127.0.0.1, instant tasks, {args.latency_ms:g} ms added per request; client: batchflow's "
        f"batch_client ({CONNECTIONS} connections); pool {args.nodes} nodes x {args.slots} slots; "
        f"polls every {args.poll_s:g} s"
    )
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-azure-scale-") as tmp:
        work = Path(tmp)
        for n in counts:
            tag = f"[{n:,} tasks]"
            with service(work / f"bf-{n}", latency) as s:
                bf = run_batchflow(s, n, args)
            bf_per_poll = bf.poll_requests / len(bf.progress)
            print(
                f"\n{tag} batchflow add_tasks: {bf.submit_s:.2f} s, {bf.submit_requests} Add Task "
                f"Collection requests ({CONCURRENCY} in parallel), {n / bf.submit_s:,.0f} tasks/s"
            )
            print(
                f"{tag} batchflow monitor: {len(bf.progress)} polls (completed: {trail(bf.progress)}), "
                f"{bf.poll_requests} Get Task Counts requests -> {bf_per_poll:.2f} requests per poll; "
                f"other requests: {others(bf.other_monitor)}"
            )
            print(
                f"{tag} batchflow one poll at rest: {bf.poll_s * 1000:.0f} ms "
                f"(of which the emulator's own work {bf.poll_emulator_s * 1000:.1f} ms)"
            )
            print(
                f"{tag} (reference) batchflow task_results, once after the monitor: {bf.results_s:.2f} s, "
                f"requests: {others(bf.results_requests)}"
            )

            with service(work / f"tut-{n}", latency) as s:
                tut = run_tutorial(s, n, args)
            tut_per_poll = tut.poll_requests / len(tut.progress)
            print(
                f"{tag} tutorial: ONE create_task_collection of {n:,} tasks ({tut.body_bytes:,}-byte body) "
                f"FAILS: {tut.failure}, after {tut.fail_s:.2f} s and {tut.fail_requests} request; "
                f"tasks in the job afterwards: {tut.added_after_failure}"
            )
            print(
                f"{tag} (reference) the tutorial's call in sequential chunks of 100: {tut.chunked_s:.2f} s, "
                f"{tut.chunked_requests} requests"
            )
            with service(work / f"sdk-{n}", latency) as s:
                helper_s, helper_requests = run_sdk_helper(s, n, args)
            print(
                f"{tag} (reference) azure-batch create_tasks(max_concurrency={CONCURRENCY}): "
                f"{helper_s:.2f} s, {helper_requests} requests"
            )
            print(
                f"{tag} tutorial monitor: {len(tut.progress)} polls (completed: {trail(tut.progress)}), "
                f"{tut.poll_requests} List Tasks requests -> {tut_per_poll:.2f} requests per poll; "
                f"other requests: {others(tut.other_monitor)}"
            )
            print(
                f"{tag} tutorial one poll at rest: {tut.poll_s * 1000:.0f} ms, {tut.pages_at_rest} "
                f"requests (of which the emulator's own work {tut.poll_emulator_s * 1000:.0f} ms)"
            )
            print(
                f"{tag} ratios tutorial / batchflow: requests per poll {tut_per_poll / bf_per_poll:.1f}x, "
                f"one poll's wall time {tut.poll_s / bf.poll_s:.1f}x; submission: the tutorial's call adds "
                f"0 of {n:,}; its chunked fix takes {tut.chunked_s / bf.submit_s:.1f}x batchflow's time, "
                f"create_tasks {helper_s / bf.submit_s:.1f}x"
            )
            one_per_poll = bf.poll_requests == len(bf.progress) and not bf.other_monitor
            verdicts.append(
                f"{tag} exactly 1 request per poll: {bf_per_poll:.2f}, "
                f"{sum(bf.other_monitor.values())} other -> {'met' if one_per_poll else 'NOT met'}"
            )
            if n == 10_000:
                ok = bf.submit_requests <= TARGET_REQUESTS and bf.submit_s <= TARGET_SUBMIT_S
                verdicts.append(
                    f"{tag} submit in <= {TARGET_REQUESTS} requests and <= {TARGET_SUBMIT_S:g} s: "
                    f"{bf.submit_requests} requests, {bf.submit_s:.2f} s -> {'met' if ok else 'NOT met'}"
                )
    print("\nTargets (issue 4):")
    for line in verdicts:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
