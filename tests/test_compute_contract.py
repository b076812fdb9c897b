"""One task contract (TASK_CONTRACT in batchflow/backends/base.py), three computes: LocalCompute on the
folder storage; AzureBatchCompute through the real azure-batch SDK against the Batch emulator, with
AzureBlobStorage on Azurite; and the test-only thread backend (tests/thread_backend), written from base.py
alone, on its in-memory storage. All run tasks for real on this machine; each test drives them through the
Compute protocol only and asserts the same observable result. Test N proves clause N, every part of it
(tests/test_docs.py checks the numbering). A difference between the backends is a finding, marked xfail
(strict) for that backend with the difference named, after everything else the test asserts.

The Azure compute waits on a fake clock (each `wait` lets the emulator's control loop make a couple of
passes); real time bounds every loop here, and only so that a broken backend fails instead of hanging.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from azurite import AzuriteInfo
from batch_emulator import BatchEmulator
from fakes import FakeClock
from thread_backend.compute import ThreadCompute
from thread_backend.storage import MemoryStorage

from batchflow.backends.azure.auth import blob_auth
from batchflow.backends.azure.batch import AzureBatchCompute, Timeouts
from batchflow.backends.azure.storage import AzureBlobStorage
from batchflow.backends.base import Compute, Storage
from batchflow.backends.local.scheduler import LocalCompute
from batchflow.backends.local.storage import LocalStorage
from batchflow.errors import BatchflowError
from batchflow.model import (
    BlobStat,
    ImageReference,
    JobSpec,
    OutputCondition,
    PoolSpec,
    RenderedTask,
    StartTaskSpec,
    TaskCounts,
    TaskInput,
    TaskLogs,
    TaskOutput,
    TaskResult,
    TaskState,
    TransferResult,
    UploadItem,
)

pytest_plugins = ["azurite"]

POOL = "ContractPool"
JOB = "ContractJob"
SHORT_JOB = "ContractShortJob"  # a second job, with a wall clock of its own
RUN = "20250101-120000-000"
SAFETY_NET = 60.0  # seconds of real time
CANARY = "BATCHFLOW_CONTRACT_SECRET"  # set in the test process only
CONTRACT_VARIABLES = (
    "AZ_BATCH_NODE_ROOT_DIR",
    "AZ_BATCH_NODE_SHARED_DIR",
    "AZ_BATCH_NODE_STARTUP_DIR",
    "AZ_BATCH_TASK_WORKING_DIR",
    "AZ_BATCH_TASK_DIR",
    "AZ_BATCH_JOB_ID",
    "AZ_BATCH_TASK_ID",
    "AZ_BATCH_POOL_ID",
    "AZ_BATCH_NODE_ID",
    "AZ_BATCH_ACCOUNT_NAME",
    "AZ_BATCH_TASK_USER_IDENTITY",
)
NODE_DIRS = (
    "AZ_BATCH_NODE_ROOT_DIR",
    "AZ_BATCH_NODE_SHARED_DIR",
    "AZ_BATCH_NODE_STARTUP_DIR",
    "AZ_BATCH_TASK_DIR",
    "AZ_BATCH_TASK_WORKING_DIR",
)
# What a node's task may share with the test process's environment: a node has a user, a locale, a PATH.
NODE_BASICS = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PWD"}
FAST = Timeouts(pool_ready=600.0, pool_poll=1.0, delete=30.0, delete_poll=0.05, health_interval=30.0)


class Redirected:
    """The storage a compute is given: the test's storage, except that it hands out the URL of another
    blob (`blobs`) or container (`containers`) when told to. What a task then reads and writes shows
    whether the compute went through the URLs, and through them only."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.blobs: dict[tuple[str, str], str] = {}  # (container, blob) -> the blob whose URL is handed out
        self.containers: dict[str, str] = {}  # container -> the container whose URL is handed out

    def resource_url(self, container: str, blob: str) -> str:
        return self.inner.resource_url(container, self.blobs.get((container, blob), blob))

    def container_url(self, container: str) -> str:
        return self.inner.container_url(self.containers.get(container, container))

    def ensure_container(self, name: str) -> bool:
        return self.inner.ensure_container(name)

    def upload(self, items: Sequence[UploadItem]) -> TransferResult:
        return self.inner.upload(items)

    def download(
        self, container: str, prefix: str, destination: Path, *, skip: Sequence[str] = ()
    ) -> TransferResult:
        return self.inner.download(container, prefix, destination, skip=skip)

    def list_blobs(self, container: str, prefix: str = "") -> list[str]:
        return self.inner.list_blobs(container, prefix)

    def stat_blobs(self, container: str, prefix: str = "", *, md5: bool = True) -> dict[str, BlobStat]:
        return self.inner.stat_blobs(container, prefix, md5=md5)

    def copy_blobs(self, container: str, pairs: Sequence[tuple[str, str]]) -> TransferResult:
        return self.inner.copy_blobs(container, pairs)

    def delete_container(self, name: str) -> bool:
        return self.inner.delete_container(name)

    def delete_blobs(self, container: str, names: Sequence[str]) -> TransferResult:
        return self.inner.delete_blobs(container, names)

    def close(self) -> None:
        self.inner.close()


@dataclass
class Backend:
    kind: str
    compute: Compute
    storage: Storage
    redirect: Redirected  # the storage the compute was given
    containers: list[str]  # fresh for each backend: inputs, outputs, then any the test adds
    scratch: Path  # a folder of the test's, outside any node
    jobs: list[str] = field(default_factory=lambda: [JOB])
    added: set[str] = field(default_factory=set)  # task ids added to JOB

    @property
    def inputs(self) -> str:
        return self.containers[0]

    @property
    def outputs(self) -> str:
        return self.containers[1]

    def container(self, name: str) -> str:
        """One more fresh container, deleted with the others."""
        fresh = f"{name}{uuid.uuid4().hex[:12]}"
        self.storage.ensure_container(fresh)
        self.containers.append(fresh)
        return fresh


Start = Callable[..., Backend]


def pool_spec(start_task: StartTaskSpec | None) -> PoolSpec:
    return PoolSpec(
        id=POOL,
        vm_size="Standard_D2s_v3",
        image=ImageReference("canonical", "ubuntu-24_04-lts", "server"),
        node_agent_sku_id="batch.node.ubuntu 24.04",
        dedicated_nodes=1,
        task_slots_per_node=2,  # a second job's task runs beside the first (test 6)
        start_task=start_task,
    )


@pytest.fixture(params=["local", "azure", "thread"])
def start(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Start]:
    """`start(start_task=None)`: a compute with a one-node pool of two slots (ready) and job JOB, on its
    storage. Each call makes a compute of its own."""
    monkeypatch.setenv(CANARY, "xyz")  # before any compute exists: no task may see it
    kind: str = request.param
    made: list[Backend] = []
    closers: list[Callable[[], None]] = []

    def make(start_task: StartTaskSpec | None = None) -> Backend:
        tag = uuid.uuid4().hex[:12]
        root = tmp_path / tag
        compute: Compute
        storage: Storage
        if kind == "local":
            storage = LocalStorage(tmp_path / "storage")
            redirect = Redirected(storage)
            compute = LocalCompute(root / "ws", redirect, root / "run", 2, account_name="acct")
        elif kind == "thread":  # the test-only backend (tests/thread_backend), built from base.py alone
            storage = MemoryStorage(f"contract-{tag}")
            redirect = Redirected(storage)
            compute = ThreadCompute(root / "ws", redirect, root / "run", 2, account_name="acct")
        else:
            azurite: AzuriteInfo = request.getfixturevalue("azurite")
            emu = BatchEmulator(workdir=root / "batch")
            blob = AzureBlobStorage(blob_auth(azurite.environ()), sas_ttl=600)
            redirect = Redirected(blob)
            clock = FakeClock(1000.0, emu.settle)
            azure = AzureBatchCompute(
                emu.client(retry_total=0),
                redirect,
                root / "run",
                RUN,
                timeouts=FAST,
                clock=clock,
                sleep=clock.sleep,
            )
            storage, compute = blob, azure

            def close() -> None:
                azure.close()
                blob.close()
                emu.close()
                assert emu.internal_errors == []

            closers.append(close)
        b = Backend(kind, compute, storage, redirect, [f"in{tag}", f"out{tag}"], tmp_path / "scratch")
        b.scratch.mkdir(exist_ok=True)
        made.append(b)  # first: a pool that never becomes ready is deleted too
        for name in b.containers:
            storage.ensure_container(name)
        pool = pool_spec(start_task)
        compute.create_pool(pool, start_task)
        compute.wait_for_pool(POOL)
        compute.create_job(JobSpec(JOB), POOL, RUN)
        return b

    yield make
    for b in made:
        b.compute.stop()
        for job in b.jobs:
            b.compute.delete_job(job)
        b.compute.delete_pool(POOL)
        for name in b.containers:
            b.storage.delete_container(name)
    for close in closers:
        close()


def make_task(
    task_id: str,
    command: str,
    *,
    inputs: Sequence[TaskInput] = (),
    outputs: Sequence[TaskOutput] = (),
    environment: Mapping[str, str] | None = None,
    max_retries: int = 0,
    max_wall_clock: float | None = None,
    logs: TaskLogs | None = None,
) -> RenderedTask:
    return RenderedTask(
        id=task_id,
        index=0,
        command=command,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        environment=environment or {},
        max_retries=max_retries,
        max_wall_clock=max_wall_clock,
        logs=logs,
    )


def until(condition: Callable[[], bool], b: Backend, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + SAFETY_NET
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{b.kind}: {what} did not happen within {SAFETY_NET:g} s")
        b.compute.wait(step)


def add(b: Backend, tasks: Sequence[RenderedTask]) -> None:
    b.compute.add_tasks(JOB, tasks)
    b.added.update(t.id for t in tasks)


def finish(b: Backend, ids: Sequence[str]) -> dict[str, TaskResult]:
    """Poll task_counts until every task added so far completed; the results of `ids`."""
    until(lambda: b.compute.task_counts(JOB).completed >= len(b.added), b, "completion of every task")
    results = {r.id: r for r in b.compute.task_results(JOB, ids)}
    assert sorted(results) == sorted(ids)
    return results


def run(b: Backend, tasks: Sequence[RenderedTask]) -> dict[str, TaskResult]:
    add(b, tasks)
    return finish(b, [t.id for t in tasks])


def upload(b: Backend, blob: str, text: str) -> None:
    src = b.scratch / f"up-{uuid.uuid4().hex}"
    src.write_text(text, encoding="utf-8")
    b.storage.upload([UploadItem(src, b.inputs, blob, src.stat().st_size)])


def read_blob(b: Backend, container: str, blob: str) -> str:
    """A blob's text, downloaded through the storage (the one file under prefix `blob`)."""
    dest = b.scratch / f"down-{uuid.uuid4().hex}"
    b.storage.download(container, blob, dest)
    files = [p for p in dest.rglob("*") if p.is_file()]
    assert len(files) == 1, f"{container}/{blob}: {files}"
    return files[0].read_text(encoding="utf-8")


def out(
    b: Backend, pattern: str, blob: str, when: OutputCondition = OutputCondition.COMPLETION
) -> TaskOutput:
    return TaskOutput(pattern, b.outputs, blob, when)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie waiting to be reaped is gone


def all_gone(b: Backend, pids: Sequence[int]) -> None:
    until(lambda: not any(alive(p) for p in pids), b, f"the end of processes {list(pids)}", step=0.05)


def parse_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def foreign(env: Mapping[str, str], own: Iterable[str] = ()) -> list[str]:
    """The variables of the test process a command saw, beyond the few a node's task has too."""
    inherited = {k for k in env if k in os.environ} - NODE_BASICS - set(CONTRACT_VARIABLES) - set(own)
    return sorted(k for k in inherited if not k.startswith("LC_"))


def hog(pids: Path) -> str:
    """A command that runs until killed, with two children in its process group; writes the three pids."""
    return f'sleep 60 & echo $! > "{pids}"; sleep 60 & echo $! >> "{pids}"; echo $$ >> "{pids}"; wait'


# ---- the clauses --------------------------------------------------------------------------------


def test_1_the_command_runs_under_bin_sh_in_wd(start: Start) -> None:
    b = start()
    command = (
        '[ "$(pwd)" = "$AZ_BATCH_TASK_WORKING_DIR" ] && echo in-wd > r.txt; '
        'readlink "/proc/$$/exe" >> r.txt; for i in 1 2 3; do printf "$i" >> r.txt; done'
    )
    result = run(b, [make_task("t1", command, outputs=[out(b, "r.txt", "t1/r.txt")])])["t1"]
    assert (result.state, result.exit_code, result.attempts) == (TaskState.SUCCEEDED, 0, 1)
    assert read_blob(b, b.outputs, "t1/r.txt") == f"in-wd\n{os.path.realpath('/bin/sh')}\n123"


def test_2_every_input_is_in_wd_before_the_command_starts_and_is_the_tasks_own(start: Start) -> None:
    b = start()
    upload(b, "dir/a.txt", "alpha\n")
    upload(b, "b c.txt", "beta\n")
    inputs = [TaskInput(b.inputs, "dir/a.txt", "sub/deep/a.txt"), TaskInput(b.inputs, "b c.txt", "b c.txt")]
    command = 'cat sub/deep/a.txt "b c.txt" > seen.txt; echo changed >> sub/deep/a.txt; echo x >> "b c.txt"'
    task = make_task("t1", command, inputs=inputs, outputs=[out(b, "seen.txt", "t1/seen.txt")])
    assert run(b, [task])["t1"].state is TaskState.SUCCEEDED
    assert read_blob(b, b.outputs, "t1/seen.txt") == "alpha\nbeta\n"
    assert read_blob(b, b.inputs, "dir/a.txt") == "alpha\n"  # appending to its copy left the blob alone
    assert read_blob(b, b.inputs, "b c.txt") == "beta\n"


def test_3_environment_is_the_tasks_own_plus_az_batch_and_nothing_of_the_callers(start: Start) -> None:
    b = start()
    assert os.environ[CANARY] == "xyz"
    own = {"MY_VAR": "x y", "EMPTY_NOT": "1"}
    folders = "".join(f'[ -d "${v}" ] && echo {v} >> dirs.txt; ' for v in NODE_DIRS)
    command = f"env > env.txt; : > dirs.txt; {folders}true"
    outputs = [out(b, "env.txt", "env.txt"), out(b, "dirs.txt", "dirs.txt")]
    task = make_task("t-env", command, environment=own, outputs=outputs)
    assert run(b, [task])["t-env"].state is TaskState.SUCCEEDED
    env = parse_env(read_blob(b, b.outputs, "env.txt"))
    assert {k: env.get(k) for k in own} == own
    assert [k for k in CONTRACT_VARIABLES if not env.get(k)] == []
    assert read_blob(b, b.outputs, "dirs.txt").split() == list(NODE_DIRS)  # each a folder of the node
    assert (env["AZ_BATCH_TASK_ID"], env["AZ_BATCH_JOB_ID"], env["AZ_BATCH_POOL_ID"]) == ("t-env", JOB, POOL)
    assert CANARY not in env and "xyz" not in env.values()
    assert foreign(env, own) == []
    # Microsoft, "Azure Batch compute node environment variables": the pool non-admin auto user.
    assert env["AZ_BATCH_TASK_USER_IDENTITY"] == "PoolNonAdmin"


def test_4_stdout_and_stderr_are_in_the_task_dir_the_parent_of_wd(start: Start) -> None:
    b = start()
    command = (
        "echo hello; echo oops >&2; "
        '[ "$(dirname "$PWD")" = "$AZ_BATCH_TASK_DIR" ] || exit 10; '
        'cat "$AZ_BATCH_TASK_DIR/stdout.txt" > seen-out.txt; '
        'cat "$AZ_BATCH_TASK_DIR/stderr.txt" > seen-err.txt; '
        "exit 3"  # failed: both backends then hand back local copies of the logs
    )
    outputs = [out(b, "seen-out.txt", "t1/seen-out.txt"), out(b, "seen-err.txt", "t1/seen-err.txt")]
    result = run(b, [make_task("t1", command, outputs=outputs)])["t1"]
    assert (result.state, result.exit_code) == (TaskState.FAILED, 3)
    assert (read_blob(b, b.outputs, "t1/seen-out.txt"), read_blob(b, b.outputs, "t1/seen-err.txt")) == (
        "hello\n",
        "oops\n",
    )
    assert result.stdout_path is not None and result.stderr_path is not None
    assert result.stdout_path.read_text(encoding="utf-8") == "hello\n"
    assert result.stderr_path.read_text(encoding="utf-8") == "oops\n"


def test_5_exit_code_zero_succeeds_others_fail_and_are_retried(start: Start) -> None:
    b = start()
    once = 'm="$AZ_BATCH_NODE_SHARED_DIR/flaky-marker"; [ -e "$m" ] && exit 0; touch "$m"; exit 1'
    count = 'c="$AZ_BATCH_NODE_SHARED_DIR/broken-count"; echo x >> "$c"; wc -l < "$c"; exit 5'
    fourth = 'c="$AZ_BATCH_NODE_SHARED_DIR/patient-count"; echo x >> "$c"; [ "$(wc -l < "$c")" -ge 4 ]'
    results = run(
        b,
        [
            make_task("ok", "exit 0", max_retries=2),
            make_task("flaky", once, max_retries=2),
            make_task("broken", count, max_retries=2),
            make_task("once", "exit 7"),
            make_task("patient", fourth, max_retries=-1),  # no limit
        ],
    )
    seen = {k: (r.state, r.exit_code, r.attempts) for k, r in results.items()}
    assert seen == {
        "ok": (TaskState.SUCCEEDED, 0, 1),
        "flaky": (TaskState.SUCCEEDED, 0, 2),
        "broken": (TaskState.FAILED, 5, 3),
        "once": (TaskState.FAILED, 7, 1),
        "patient": (TaskState.SUCCEEDED, 0, 4),
    }
    stdout = results["broken"].stdout_path
    assert stdout is not None and stdout.read_text(encoding="utf-8").strip() == "3"  # the last attempt's


def test_6_the_tasks_and_the_jobs_max_wall_clock_kill_the_whole_process_group_and_fail_the_task(
    start: Start,
) -> None:
    b = start()
    pids, job_pids = b.scratch / "wall-pids", b.scratch / "job-wall-pids"
    b.compute.create_job(JobSpec(SHORT_JOB, max_wall_clock=1.0), POOL, RUN)
    b.jobs.append(SHORT_JOB)
    b.compute.add_tasks(SHORT_JOB, [make_task("stuck", hog(job_pids), max_retries=2)])  # no limit of its own

    result = run(b, [make_task("slow", hog(pids), max_wall_clock=1.0, max_retries=2)])["slow"]
    until(lambda: b.compute.task_counts(SHORT_JOB).completed == 1, b, "the end of the job's wall clock")
    (stuck,) = b.compute.task_results(SHORT_JOB, ["stuck"])

    for r in (result, stuck):
        assert (r.state, r.attempts) == (TaskState.FAILED, 1), r  # a timeout is not retried
        assert r.failure is not None, r
    for path in (pids, job_pids):
        found = [int(p) for p in path.read_text(encoding="utf-8").split()]
        assert len(found) == 3
        all_gone(b, found)


def test_7_outputs_are_uploaded_per_condition_and_a_missing_file_fails_the_task(start: Start) -> None:
    b = start()

    def outputs(t: str) -> list[TaskOutput]:
        return [
            out(b, "r.txt", f"success/{t}.txt", OutputCondition.SUCCESS),
            out(b, "r.txt", f"failure/{t}.txt", OutputCondition.FAILURE),
            out(b, "r.txt", f"completion/{t}.txt", OutputCondition.COMPLETION),
        ]

    missing = [out(b, "nowhere.txt", "missing/nowhere.txt", OutputCondition.SUCCESS)]
    unmatched = [out(b, "*.nothing", "glob/", OutputCondition.SUCCESS)]
    results = run(
        b,
        [
            make_task("good", "echo good > r.txt", outputs=outputs("good")),
            make_task("bad", "echo bad > r.txt; exit 4", outputs=outputs("bad")),
            make_task("missing", "echo made-nothing", outputs=missing),
            make_task("unmatched", "echo made-nothing", outputs=unmatched),
        ],
    )
    seen = {k: (r.state, r.exit_code) for k, r in results.items()}
    assert seen == {
        "good": (TaskState.SUCCEEDED, 0),
        "bad": (TaskState.FAILED, 4),
        "missing": (TaskState.FAILED, 0),  # exited 0, but its one output file is not there
        "unmatched": (TaskState.SUCCEEDED, 0),  # a glob that matched nothing is not a failure
    }
    assert results["missing"].failure is not None
    assert b.storage.list_blobs(b.outputs) == [
        "completion/bad.txt",
        "completion/good.txt",
        "failure/bad.txt",
        "success/good.txt",
    ]
    assert read_blob(b, b.outputs, "success/good.txt") == "good\n"
    assert read_blob(b, b.outputs, "failure/bad.txt") == "bad\n"
    assert read_blob(b, b.outputs, "completion/bad.txt") == "bad\n"


def test_8_task_logs_are_uploaded_on_completion(start: Start) -> None:
    b = start()
    logs = TaskLogs(b.outputs, f"batchflow-logs/{RUN}/")
    results = run(
        b,
        [
            make_task("fine", "echo out-fine; echo err-fine >&2", logs=logs),
            make_task("fails", "echo out-fails; echo err-fails >&2; exit 2", logs=logs),
        ],
    )
    assert (results["fine"].state, results["fails"].state) == (TaskState.SUCCEEDED, TaskState.FAILED)
    assert b.storage.list_blobs(b.outputs, logs.prefix) == [
        logs.blob(t, name) for t in ("fails", "fine") for name in ("stderr.txt", "stdout.txt")
    ]
    for t in ("fine", "fails"):
        assert read_blob(b, b.outputs, logs.blob(t, "stdout.txt")) == f"out-{t}\n"
        assert read_blob(b, b.outputs, logs.blob(t, "stderr.txt")) == f"err-{t}\n"


def test_9_storage_is_reached_only_through_the_urls_it_hands_out(start: Start) -> None:
    b = start()
    upload(b, "asked.txt", "the blob the task names\n")
    upload(b, "handed.txt", "the blob whose URL was handed out\n")
    elsewhere = b.container("else")
    # The storage answers for asked.txt with handed.txt's URL, and for the outputs with elsewhere's.
    b.redirect.blobs[(b.inputs, "asked.txt")] = "handed.txt"
    b.redirect.containers[b.outputs] = elsewhere
    task = make_task(
        "t1",
        "cat in.txt > copy.txt; echo logged",
        inputs=[TaskInput(b.inputs, "asked.txt", "in.txt")],
        outputs=[out(b, "copy.txt", "t1/copy.txt")],
        logs=TaskLogs(b.outputs, "logs/"),
    )
    assert run(b, [task])["t1"].state is TaskState.SUCCEEDED
    assert b.storage.list_blobs(b.outputs) == []
    assert b.storage.list_blobs(elsewhere) == ["logs/t1/stderr.txt", "logs/t1/stdout.txt", "t1/copy.txt"]
    assert read_blob(b, elsewhere, "t1/copy.txt") == "the blob whose URL was handed out\n"
    assert read_blob(b, elsewhere, "logs/t1/stdout.txt") == "logged\n"


def test_10_the_start_task_runs_once_per_node_before_any_task_and_its_failure_stops_the_run(
    start: Start,
) -> None:
    spec = StartTaskSpec(
        command=(
            's="$AZ_BATCH_NODE_SHARED_DIR"; pwd > "$s/start-pwd"; echo "$GREETING" >> "$s/start-runs"; '
            'env > "$s/start-env"'
        ),
        environment={"GREETING": "hi"},
    )
    b = start(spec)
    check = (
        's="$AZ_BATCH_NODE_SHARED_DIR"; '
        '[ "$(cat "$s/start-pwd")" = "$AZ_BATCH_NODE_STARTUP_DIR/wd" ] || exit 10; '
        'cp "$s/start-runs" seen.txt; cp "$s/start-env" start-env.txt'
    )
    outputs = {t: [out(b, "seen.txt", f"{t}.txt"), out(b, "start-env.txt", f"{t}-env.txt")] for t in "ab"}
    results = run(b, [make_task(t, check, outputs=outputs[t]) for t in "ab"])
    assert [(r.state, r.exit_code) for r in results.values()] == [(TaskState.SUCCEEDED, 0)] * 2
    assert [read_blob(b, b.outputs, f"{t}.txt") for t in ("a", "b")] == ["hi\n", "hi\n"]  # it ran once
    env = parse_env(read_blob(b, b.outputs, "a-env.txt"))
    assert env.get("GREETING") == "hi"
    assert CANARY not in env and "xyz" not in env.values()
    assert foreign(env, ["GREETING"]) == []

    failing = StartTaskSpec(command='echo "cannot install the tools" >&2; exit 3')
    with pytest.raises(BatchflowError, match="cannot install the tools"):
        start(failing)  # wait_for_pool: the run stops before any job or task


def test_11_stop_kills_running_tasks_and_their_processes_and_they_fail(start: Start) -> None:
    b = start()
    pids = b.scratch / "stop-pids"
    command = f'sleep 60 & echo $! > "{pids}.tmp"; echo $$ >> "{pids}.tmp"; mv "{pids}.tmp" "{pids}"; wait'
    add(b, [make_task("long", command)])
    until(pids.exists, b, "the start of the task", step=0.05)

    b.compute.stop()

    found = [int(p) for p in pids.read_text(encoding="utf-8").split()]
    assert len(found) == 2
    all_gone(b, found)
    until(lambda: bool(b.compute.task_results(JOB, ["long"])), b, "a result for the stopped task")
    (result,) = b.compute.task_results(JOB, ["long"])
    assert result.state is TaskState.FAILED
    assert result.failure is not None


def test_12_add_tasks_is_idempotent(start: Start) -> None:
    b = start()
    log = b.scratch / "ids.log"
    tasks = [make_task(f"t{i}", f'echo t{i} >> "{log}"') for i in range(3)]
    add(b, tasks)
    add(b, tasks)
    results = finish(b, ["t0", "t1", "t2"])
    add(b, tasks[:1])  # again, once it is done
    assert b.compute.task_counts(JOB) == TaskCounts(succeeded=3)
    b.compute.seal_job(JOB)
    assert all(r.state is TaskState.SUCCEEDED and r.attempts == 1 for r in results.values())
    assert sorted(log.read_text(encoding="utf-8").split()) == ["t0", "t1", "t2"]
