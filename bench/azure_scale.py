"""Azure Batch submission and monitoring at scale: batchflow vs Microsoft's Batch Python tutorial.

    python bench/azure_scale.py [--tasks 1000,10000] [--latency-ms 50] [--poll-s 0.2] [--repeat 3]
    python bench/azure_scale.py --against DIR [--tasks 10000] [--rounds 5]   # before/after, (a) only
    python bench/azure_scale.py --steps [--tasks 10000]      # the client's steps, before/after, no I/O

Everything runs against the Batch service emulator (tests/batch_emulator) with instant tasks (a task
completes, exit 0, on the emulator's next control-loop pass) and --latency-ms added to every request.
The emulator answers over HTTP on 127.0.0.1 (`emu.serve()`, with TCP_NODELAY: see MeteredEmulator),
and both sides use the client batchflow builds in production (`azure_batch_client.batch_client`:
azure-core's requests transport, 16 pooled connections, shared-key signing): real sockets and the
SDK's real serializer, paging and error mapping. That is closer to the service than the in-process
transport (`emu.client()`), which skips HTTP. Each approach and task count gets a fresh emulator,
in a child process of its own (RemoteEmulator): the client's CPU time (`time.process_time()` in
this process, every thread) is then the client's alone, and the emulator's (its own process time)
is printed beside it. The machine's cores are still shared, so the emulator's work (for a listing:
rendering every task as JSON; since issue 12 only the properties its $select and $filter name, and
only the tasks within its bounds on id) is inside the wall times; the script prints that share for
the polls. Its scheduler is held (`emu.paused()`) from the first Add Task
Collection to the monitor's first poll, on both sides: the monitor then starts with every task
queued and watches them complete, as on a real pool, where tasks outlast their submission (instant
tasks would otherwise all finish during it); requests are answered as usual meanwhile.

(a) batchflow: AzureBatchCompute creates the pool and job (no storage: the tasks have no inputs,
    outputs or log container), then `add_tasks` of N RenderedTasks running `echo <i>` (timed,
    building the request bodies included: wall time, client CPU time, Add Task Collection
    requests), `seal_job`, then a monitor loop like the runner's, `task_counts` + `wait(--poll-s)`
    until every task has completed: Get Task Counts requests / polls, and every other request made
    meanwhile. Then the `task_results` a run makes once its monitor sees every task complete (wall
    and CPU): what the end of a run pays, after the job's tasks are all complete, until the results
    are in hand. Since issue 12 it lists the completed tasks in ranges of task ids, one listing per
    1,000 ids, in parallel (results.id_ranges); before, one listing whose pages came one after the
    other. Nothing is listed during the monitor, before or after, so the figure is the whole of that
    cost both times (and the monitor stays at one request per poll); the requests are counted as
    listings (first pages) and pages.
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
Targets (issue 12): client CPU per task submitted <= 50 us; `task_results` of 10,000 tasks <= 0.7 s.

--against DIR: before/after. DIR holds another batchflow (e.g. `git archive HEAD batchflow | tar -x
-C DIR`); (a) runs --rounds times with each, alternately (AB, BA, AB, ...), each run in a fresh
client process (`--client`, importing batchflow from DIR or from this tree) with a fresh emulator,
and the medians and ratios (this tree / DIR) of the submission's and task_results' wall and client
CPU times are printed. The tutorial is not run.

--steps: each step of the client's work (building, measuring and serializing the bodies, reading
the answers and the task listing), timed in this process without requests, the way batchflow did
it before issue 12 (SDK models throughout) beside the way it does it now.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError

ROOT = Path(__file__).resolve().parent.parent
# The batchflow to measure: this tree's, or another's (--against runs its clients with this set).
TREE_ENV = "BENCH_BATCHFLOW_TREE"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, os.environ.get(TREE_ENV) or str(ROOT))

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
TARGET_CPU_PER_TASK_US = 50.0  # issue 12: client CPU per task submitted
TARGET_RESULTS_S = 0.7  # issue 12: task_results of 10,000 tasks


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

    def listings(self, mark: int) -> int:
        """List Tasks requests after the first `mark` ones that ask for a first page (no $skiptoken)."""
        rx = compile_pattern(LIST_TASKS)
        first_pages = [r for r in self.requests[mark:] if r.method == "GET" and "$skiptoken" not in r.query]
        return sum(1 for r in first_pages if rx.fullmatch(r.path))

    def since(self, mark: int) -> Counter[str]:
        """Requests after the first `mark` ones, by "METHOD /path pattern"."""
        patterns = [(p, compile_pattern(p)) for p in (COLLECTION, COUNTS, LIST_TASKS)]
        counts: Counter[str] = Counter()
        for r in self.requests[mark:]:
            name = next((p for p, rx in patterns if rx.fullmatch(r.path)), r.path)
            counts[f"{r.method} {name}"] += 1
        return counts


def _emulator_process(conn: Connection, workdir: str, latency: float) -> None:
    """The child process: a MeteredEmulator on loopback HTTP, driven by commands on `conn`."""
    emu = MeteredEmulator(workdir=Path(workdir), instant=True, latency=latency)
    with emu:
        conn.send((emu.serve(), emu.account, emu.key))
        pause: Any = None
        while True:
            op, *args = conn.recv()
            if op == "close":
                conn.send(None)
                return
            if op == "count":
                conn.send(emu.count(*args))
            elif op == "mark":
                conn.send(len(emu.requests))
            elif op == "since":
                conn.send(emu.since(*args))
            elif op == "listings":
                conn.send(emu.listings(*args))
            elif op == "busy":
                conn.send(emu.busy)
            elif op == "cpu":
                conn.send(time.process_time())
            elif op == "errors":
                conn.send(list(emu.internal_errors))
            elif op == "pause":
                pause = emu.paused()
                pause.__enter__()
                conn.send(None)
            elif op == "resume":
                pause.__exit__(None, None, None)
                conn.send(None)
            else:
                raise ValueError(f"unknown command {op!r}")


class RemoteEmulator:
    """The emulator (MeteredEmulator) in a child process, answering over HTTP on 127.0.0.1; this
    process holds only a pipe to it, which it asks for request counts, busy and CPU times."""

    def __init__(self, workdir: Path, latency: float) -> None:
        ctx = multiprocessing.get_context("spawn")  # no copy of this process's threads or state
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_emulator_process, args=(child, str(workdir), latency), name="batch-emulator"
        )
        self._process.start()
        child.close()
        self.url, self.account, self.key = self._conn.recv()

    def _ask(self, *command: Any) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    def count(self, method: str, pattern: str) -> int:
        return int(self._ask("count", method, pattern))

    def mark(self) -> int:
        """The number of requests seen so far (for `since`)."""
        return int(self._ask("mark"))

    def since(self, mark: int) -> Counter[str]:
        return Counter(self._ask("since", mark))

    def listings(self, mark: int) -> int:
        return int(self._ask("listings", mark))

    @property
    def busy(self) -> float:
        """Seconds spent answering requests, in all (MeteredEmulator.busy)."""
        return float(self._ask("busy"))

    def cpu(self) -> float:
        """The emulator process's CPU time so far, in seconds."""
        return float(self._ask("cpu"))

    @property
    def internal_errors(self) -> list[str]:
        return list(self._ask("errors"))

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._ask("pause")
        try:
            yield
        finally:
            self._ask("resume")

    def close(self) -> None:
        self._ask("close")
        self._process.join(timeout=30)
        self._conn.close()


@dataclass
class Setup:
    emu: RemoteEmulator
    client: BatchClient
    work: Path


@contextmanager
def service(work: Path, latency: float) -> Iterator[Setup]:
    """A fresh emulator (another process) on loopback HTTP and batchflow's production client for it."""
    emu = RemoteEmulator(work / "service", latency)
    try:
        auth = batch_auth({BATCH_ENDPOINT: emu.url, BATCH_ACCOUNT: emu.account, BATCH_KEY: emu.key})
        with batch_client(auth, connections=CONNECTIONS) as client:
            yield Setup(emu, client, work)
        errors = emu.internal_errors
        if errors:
            raise SystemExit("the Batch emulator failed:\n" + "\n".join(errors))
    finally:
        emu.close()


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
    submit_cpu_s: float  # this process's CPU time (every thread) during add_tasks
    submit_emulator_cpu_s: float
    submit_requests: int
    progress: list[int]  # tasks completed, at each poll
    poll_requests: int
    other_monitor: Counter[str]
    poll_s: float
    poll_emulator_s: float
    results_s: float
    results_cpu_s: float
    results_emulator_cpu_s: float
    results_emulator_s: float  # the emulator's time answering them (MeteredEmulator.busy)
    results_requests: Counter[str]
    results_listings: int  # of those requests, the first pages: listings sent at once


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
        emulator_cpu = s.emu.cpu()
        start, cpu = time.perf_counter(), time.process_time()
        compute.add_tasks(job.id, tasks)
        submit_s, submit_cpu_s = time.perf_counter() - start, time.process_time() - cpu
        submit_emulator_cpu_s = s.emu.cpu() - emulator_cpu
        submit_requests = s.emu.count("POST", COLLECTION) - before
        compute.seal_job(job.id)
        mark = s.emu.mark()
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

    mark = s.emu.mark()
    emulator_cpu, busy = s.emu.cpu(), s.emu.busy
    start, cpu = time.perf_counter(), time.process_time()
    results = compute.task_results(job.id)
    results_s, results_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    results_emulator_cpu_s, results_emulator_s = s.emu.cpu() - emulator_cpu, s.emu.busy - busy
    if len(results) != n or not all(r.exit_code == 0 and r.started_at for r in results):
        raise SystemExit(f"benchmark run went wrong: {len(results)} task results")
    return BatchflowFigures(
        submit_s,
        submit_cpu_s,
        submit_emulator_cpu_s,
        submit_requests,
        progress,
        poll_requests,
        monitor,
        poll_s,
        poll_emulator_s,
        results_s,
        results_cpu_s,
        results_emulator_cpu_s,
        results_emulator_s,
        s.emu.since(mark),
        s.emu.listings(mark),
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
        mark = s.emu.mark()
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


def per_task_us(seconds: float, n: int) -> float:
    return seconds / n * 1e6


def issue_12_verdicts(tag: str, n: int, submit_cpu_s: float, results_s: float) -> list[str]:
    us = per_task_us(submit_cpu_s, n)
    lines = [
        f"{tag} client CPU per task submitted <= {TARGET_CPU_PER_TASK_US:g} us: {us:.1f} us -> "
        + ("met" if us <= TARGET_CPU_PER_TASK_US else "NOT met")
    ]
    if n == 10_000:
        lines.append(
            f"{tag} task_results <= {TARGET_RESULTS_S:g} s: {results_s:.2f} s -> "
            + ("met" if results_s <= TARGET_RESULTS_S else "NOT met")
        )
    return lines


# ---- before/after (--against) ---------------------------------------------------------------------

MEASURES = (
    "submit_s",
    "submit_cpu_s",
    "results_s",
    "results_cpu_s",
    "results_emulator_s",
    "results_emulator_cpu_s",
)


def client_run(counts: list[int], latency: float, args: argparse.Namespace) -> int:
    """--client: (a) once per task count, with the batchflow this process imported; JSON on stdout."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-azure-scale-") as tmp:
        for n in counts:
            with service(Path(tmp) / f"bf-{n}", latency) as s:
                bf = run_batchflow(s, n, args)
            out[str(n)] = {k: v for k, v in dataclasses.asdict(bf).items() if k in MEASURES}
            out[str(n)]["submit_requests"] = bf.submit_requests
            out[str(n)]["results_pages"] = sum(bf.results_requests.values())
            out[str(n)]["results_listings"] = bf.results_listings
    print(json.dumps(out))
    return 0


def compare(against: Path, counts: list[int], args: argparse.Namespace) -> int:
    """(a) with `against`'s batchflow and with this tree's, alternately, each in a fresh process."""
    if not (against / "batchflow" / "__init__.py").is_file():
        raise SystemExit(f"{against} holds no batchflow package")
    trees = {"before": str(against.resolve()), "after": str(ROOT)}
    command = [
        sys.executable,
        __file__,
        "--client",
        f"--tasks={args.tasks}",
        f"--latency-ms={args.latency_ms}",
        f"--poll-s={args.poll_s}",
        f"--nodes={args.nodes}",
        f"--slots={args.slots}",
        "--repeat=1",
    ]
    print(
        f"CPUs: {os.cpu_count()}; before = batchflow from {trees['before']}, after = this tree's; "
        f"{args.rounds} rounds, alternating; each run a fresh client process and emulator process, "
        f"{args.latency_ms:g} ms added per request"
    )
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for r in range(args.rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for name in order:
            env = {**os.environ, TREE_ENV: trees[name]}
            done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            runs[name].append(figures)
            line = ", ".join(
                f"{n}: submit {f['submit_s']:.2f} s / CPU {f['submit_cpu_s']:.2f} s, "
                f"results {f['results_s']:.2f} s / CPU {f['results_cpu_s']:.2f} s"
                for n, f in figures.items()
            )
            print(f"  round {r + 1} {name:6}  {line}")
    verdicts: list[str] = []
    for n in counts:
        tag = f"[{n:,} tasks]"
        med = {
            name: {k: statistics.median(run[str(n)][k] for run in runs[name]) for k in MEASURES}
            for name in runs
        }
        b, a = med["before"], med["after"]
        print(f"\n{tag} medians of {args.rounds}   before -> after   (after / before)")
        for key, label in (
            ("submit_s", "add_tasks wall"),
            ("submit_cpu_s", "add_tasks client CPU"),
            ("results_s", "task_results wall"),
            ("results_cpu_s", "task_results client CPU"),
            ("results_emulator_s", "  the emulator's busy"),  # summed over requests: overlaps when parallel
            ("results_emulator_cpu_s", "  the emulator's CPU"),
        ):
            print(f"  {label:24} {b[key]:6.3f} s -> {a[key]:6.3f} s   ({a[key] / b[key]:.2f})")
        last = {name: runs[name][-1][str(n)] for name in runs}
        shape = {k: f"{f['results_listings']} listings, {f['results_pages']} pages" for k, f in last.items()}
        print(f"  task_results requests   {shape['before']} -> {shape['after']}")
        print(
            f"  client CPU per task submitted: {per_task_us(b['submit_cpu_s'], n):.1f} us -> "
            f"{per_task_us(a['submit_cpu_s'], n):.1f} us"
        )
        verdicts.extend(issue_12_verdicts(tag, n, a["submit_cpu_s"], a["results_s"]))
    print("\nTargets (issue 12), after:")
    for line in verdicts:
        print(f"  {line}")
    return 0


# ---- where the client's time goes (--steps) -------------------------------------------------------


def model_request(task: RenderedTask) -> bm.BatchTaskCreateOptions:
    """The Add Task request as batchflow built it before issue 12, from SDK models (for a task with
    no inputs, outputs or environment, as here)."""
    return bm.BatchTaskCreateOptions(
        id=task.id,
        command_line=build.shell_command_line(task.command),
        constraints=bm.BatchTaskConstraints(
            retention_time=build.TASK_RETENTION, max_task_retry_count=task.max_retries
        ),
        user_identity=bm.UserIdentity(
            auto_user=bm.AutoUserSpecification(
                scope=bm.AutoUserScope.POOL, elevation_level=bm.ElevationLevel.NON_ADMIN
            )
        ),
    )


def model_result(task: bm.BatchTask) -> tuple[object, ...]:
    """A listed task read from its SDK model, as results.py read it before issue 12."""
    info = task.execution_info
    failure = info.failure_info if info is not None else None
    return (
        task.id,
        is_(task.state, bm.BatchTaskState.COMPLETED),
        info is not None and is_(info.result, bm.BatchTaskExecutionResult.SUCCESS),
        info.exit_code if info is not None else None,
        (info.retry_count or 0) + 1 if info is not None else 0,
        info.start_time.timestamp() if info is not None and info.start_time else None,
        info.end_time.timestamp() if info is not None and info.end_time else None,
        (failure.code, failure.message) if failure is not None else None,
    )


def steps(n: int, repeat: int) -> int:
    """--steps: each step of the client's work, in this process (no requests), as batchflow did it
    before issue 12 (SDK models throughout) and as it does now; process time per task, best of
    `repeat`. The HTTP pipeline (azure-core, requests, the sending threads) is not in it."""
    from azure.batch._model_base import SdkJSONEncoder  # how the SDK's operations dump their bodies

    from batchflow.backends.azure import batch_rest, results

    tasks = rendered_tasks(n)
    models = [model_request(t) for t in tasks]
    bodies = [build.task_body(t, [], {}, None, "") for t in tasks]
    texts = [json.dumps(b) for b in bodies]
    if texts != [json.dumps(build.wire(m)) for m in models]:
        raise SystemExit("the two ways of building the bodies do not give the same JSON")
    groups = range(0, n, 100)
    answers = [
        json.dumps(
            {"value": [{"status": "Success", "taskId": t.id, "eTag": "0x8DD"} for t in tasks[i : i + 100]]}
        )
        for i in groups
    ]
    times = ("2025-06-01T12:00:00.1234567Z", "2025-06-01T12:00:01.7654321Z")
    listed = json.dumps(
        {
            "value": [
                {
                    "id": t.id,
                    "state": "completed",
                    "executionInfo": {
                        "startTime": times[0],
                        "endTime": times[1],
                        "exitCode": 0,
                        "result": "success",
                        "retryCount": 0,
                        "requeueCount": 0,
                    },
                }
                for t in tasks
            ]
        }
    )

    def read_answers(decode: Callable[[Any], Any]) -> int:
        ok = 0
        for text in answers:
            result = decode(json.loads(text))
            ok += sum(is_(r.get("status"), bm.BatchTaskAddStatus.SUCCESS) for r in result.get("value"))
        return ok

    compared: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        (
            "build the bodies",
            lambda: [model_request(t) for t in tasks],
            lambda: [build.task_body(t, [], {}, None, "") for t in tasks],
        ),
        (
            "measure each body",
            lambda: [len(json.dumps(build.wire(m)).encode()) for m in models],
            lambda: [json.dumps(b) for b in bodies],  # kept: this JSON is the request's text
        ),
        (
            "serialize the requests",
            lambda: [
                json.dumps(
                    bm.BatchTaskGroup(task_values=models[i : i + 100]),
                    cls=SdkJSONEncoder,
                    exclude_readonly=True,
                )
                for i in groups
            ],
            lambda: [batch_rest.task_group_body(texts[i : i + 100]) for i in groups],
        ),
        (
            "read the answers",
            lambda: read_answers(bm.BatchCreateTaskCollectionResult),
            lambda: read_answers(lambda data: data),
        ),
        (
            "task_results: read the listing",
            lambda: [model_result(bm.BatchTask(t)) for t in json.loads(listed)["value"]],
            lambda: [results._result(t, None, None) for t in json.loads(listed)["value"]],
        ),
    ]
    print(f"{n:,} tasks, per task: process time, best of {repeat} (SDK models = before issue 12)")
    print(f"  {'step':32} {'SDK models':>11} {'now':>9}   now / SDK models")
    totals = [0.0, 0.0]
    for i, (label, before, after) in enumerate(compared):
        us = [best_cpu(before, repeat) / n * 1e6, best_cpu(after, repeat) / n * 1e6]
        if i < 4:  # submission steps
            totals = [totals[0] + us[0], totals[1] + us[1]]
        print(f"  {label:32} {us[0]:8.1f} us {us[1]:6.1f} us   {us[1] / us[0]:.2f}")
    label = "submission steps in all"
    print(f"  {label:32} {totals[0]:8.1f} us {totals[1]:6.1f} us   {totals[1] / totals[0]:.2f}")
    return 0


def best_cpu(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="1000,10000", help="comma-separated task counts")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="added by the emulator to every request")
    ap.add_argument("--poll-s", type=float, default=0.2, help="wait between two polls of either monitor")
    ap.add_argument("--nodes", type=int, default=4, help="dedicated nodes in the pool")
    ap.add_argument("--slots", type=int, default=8, help="task slots per node")
    ap.add_argument("--repeat", type=int, default=3, help="polls at rest timed (median)")
    ap.add_argument("--against", type=Path, help="another batchflow tree: before/after of (a), alternately")
    ap.add_argument("--rounds", type=int, default=5, help="--against: runs with each tree (median)")
    ap.add_argument("--steps", action="store_true", help="each step of the client's work, before and now")
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)  # one (a) run, as JSON
    args = ap.parse_args(argv)
    counts = [int(n) for n in args.tasks.split(",")]
    latency = args.latency_ms / 1000
    if args.steps:
        return steps(max(counts), max(args.repeat, 5))
    if args.client:
        return client_run(counts, latency, args)
    if args.against is not None:
        return compare(args.against, counts, args)

    print(
        f"CPUs: {os.cpu_count()}; Batch emulator (tests/batch_emulator, in a child process) over HTTP on "
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
                f"Collection requests ({CONCURRENCY} in parallel), {n / bf.submit_s:,.0f} tasks/s; "
                f"client CPU {bf.submit_cpu_s:.2f} s = {per_task_us(bf.submit_cpu_s, n):.1f} us per task "
                f"(the emulator's process: {bf.submit_emulator_cpu_s:.2f} s)"
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
            pages = sum(bf.results_requests.values())
            print(
                f"{tag} batchflow task_results, the end of the run (every task complete -> results in "
                f"hand): {bf.results_s:.2f} s, client CPU {bf.results_cpu_s:.2f} s; requests: "
                f"{others(bf.results_requests)}: {bf.results_listings} listings at once (up to "
                f"{CONCURRENCY}), {pages} pages, {args.latency_ms:g} ms added latency each; the "
                f"emulator's own work {bf.results_emulator_s:.2f} s (its process's CPU: "
                f"{bf.results_emulator_cpu_s:.2f} s)"
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
            verdicts.extend(issue_12_verdicts(tag, n, bf.submit_cpu_s, bf.results_s))
    print("\nTargets (issue 4, issue 12):")
    for line in verdicts:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
