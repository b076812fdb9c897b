"""LocalCompute with real subprocesses: the task contract, retries, deadlines, concurrency, stop."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from batchflow.backends.base import TaskObserver
from batchflow.backends.local.scheduler import LocalCompute
from batchflow.backends.local.storage import LocalStorage
from batchflow.errors import BatchflowError
from batchflow.model import (
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
    UploadItem,
)

JOB = "job1"
POOL = "pool1"
SAFETY_NET = 60.0  # seconds; only so a broken backend fails instead of hanging the suite


def make_task(
    task_id: str,
    command: str,
    *,
    inputs: Sequence[TaskInput] = (),
    outputs: Sequence[TaskOutput] = (),
    environment: Mapping[str, str] | None = None,
    max_retries: int = 0,
    max_wall_clock: float | None = None,
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
    )


def make_pool(nodes: int = 1, slots: int = 1, start_task: StartTaskSpec | None = None) -> PoolSpec:
    return PoolSpec(
        id=POOL,
        vm_size="Standard_A1_v2",
        image=ImageReference("canonical", "ubuntu-24_04-lts", "server"),
        node_agent_sku_id="batch.node.ubuntu 24.04",
        dedicated_nodes=nodes,
        task_slots_per_node=slots,
        start_task=start_task,
    )


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    s = LocalStorage(tmp_path / "storage")
    s.ensure_container("in")
    s.ensure_container("out")
    return s


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def start(
    workspace: Path,
    storage: LocalStorage,
    run_dir: Path,
    *,
    concurrency: int | None = 1,
    pool: PoolSpec | None = None,
    job: JobSpec | None = None,
    observer: TaskObserver | None = None,
    keep_task_folders: bool = False,
) -> LocalCompute:
    compute = LocalCompute(
        workspace,
        storage,
        run_dir,
        concurrency,
        account_name="acct",
        observer=observer,
        keep_task_folders=keep_task_folders,
    )
    pool = pool or make_pool()
    assert compute.create_pool(pool, pool.start_task) is True
    compute.wait_for_pool(pool.id)
    compute.create_job(job or JobSpec(JOB), pool.id, "run-1")
    return compute


@pytest.fixture
def compute(workspace: Path, storage: LocalStorage, run_dir: Path) -> Iterator[LocalCompute]:
    c = start(workspace, storage, run_dir)
    yield c
    c.stop()


def until_done(compute: LocalCompute, total: int) -> TaskCounts:
    deadline = time.monotonic() + SAFETY_NET
    while True:
        counts = compute.task_counts(JOB)
        if counts.completed >= total:
            return counts
        if time.monotonic() > deadline:
            pytest.fail(f"tasks did not finish: {counts}")
        compute.wait(1.0)


def run(compute: LocalCompute, tasks: Sequence[RenderedTask]) -> dict[str, TaskResult]:
    compute.add_tasks(JOB, tasks)
    until_done(compute, len(tasks))
    return {r.id: r for r in compute.task_results(JOB)}


def node_dir(workspace: Path, i: int) -> Path:
    return workspace / "pools" / POOL / "nodes" / f"node-{i}"


def task_dir(workspace: Path, task_id: str, node: int = 0) -> Path:
    return node_dir(workspace, node) / "workitems" / JOB / "job-1" / task_id


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines() if "=" in line)
    return dict(pairs)


def alive(pid: int) -> bool:
    """True if `pid` runs (a zombie waiting for its parent to reap it does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def all_dead(pids: list[int]) -> bool:
    # SIGKILL is delivered at once but a process takes a moment to die: allow it that moment.
    deadline = time.monotonic() + SAFETY_NET
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ---- layout and the task contract ------------------------------------------------------------


def test_task_sees_batch_layout_and_environment(
    workspace: Path, storage: LocalStorage, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHFLOW_TEST_INHERITED", "from-user")
    pool = make_pool(nodes=2)
    compute = start(workspace, storage, run_dir, concurrency=2, pool=pool, keep_task_folders=True)
    try:
        t = make_task("t1", "echo hello; echo oops >&2; env > env.txt", environment={"MY_VAR": "x y"})
        result = run(compute, [t])["t1"]
    finally:
        compute.stop()

    for i in (0, 1):
        for sub in ("shared", "startup", "startup/wd", "workitems"):
            assert (node_dir(workspace, i) / sub).is_dir()
    assert not node_dir(workspace, 2).exists()

    node = next(i for i in (0, 1) if task_dir(workspace, "t1", i).exists())
    tdir = task_dir(workspace, "t1", node)
    env = read_env(tdir / "wd" / "env.txt")
    root = node_dir(workspace, node)
    assert {k: v for k, v in env.items() if k.startswith("AZ_BATCH_")} == {
        "AZ_BATCH_NODE_ROOT_DIR": str(root),
        "AZ_BATCH_NODE_SHARED_DIR": str(root / "shared"),
        "AZ_BATCH_NODE_STARTUP_DIR": str(root / "startup"),
        "AZ_BATCH_TASK_DIR": str(tdir),
        "AZ_BATCH_TASK_WORKING_DIR": str(tdir / "wd"),
        "AZ_BATCH_JOB_ID": JOB,
        "AZ_BATCH_TASK_ID": "t1",
        "AZ_BATCH_POOL_ID": POOL,
        "AZ_BATCH_NODE_ID": f"node-{node}",
        "AZ_BATCH_ACCOUNT_NAME": "acct",
        "AZ_BATCH_TASK_USER_IDENTITY": "PoolNonAdmin",
    }
    assert env["MY_VAR"] == "x y"
    assert "BATCHFLOW_TEST_INHERITED" not in env  # a node's environment, not yours (tests/test_secrets.py)
    assert env["PATH"] == os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    assert env["PWD"] == str(tdir / "wd")

    assert (tdir / "stdout.txt").read_text(encoding="utf-8") == "hello\n"
    assert (tdir / "stderr.txt").read_text(encoding="utf-8") == "oops\n"
    assert result.state is TaskState.SUCCEEDED
    assert (result.exit_code, result.attempts, result.failure) == (0, 1, None)
    assert result.stdout_path == run_dir / "tasks" / "t1" / "stdout.txt"
    assert result.stderr_path == run_dir / "tasks" / "t1" / "stderr.txt"
    assert result.stdout_path.read_text(encoding="utf-8") == "hello\n"
    assert result.stderr_path.read_text(encoding="utf-8") == "oops\n"
    assert result.started_at is not None and result.ended_at is not None
    assert result.started_at <= result.ended_at


@pytest.mark.parametrize(
    ("nodes", "slots", "concurrency", "laid_out"),
    [(5, 2, 3, 2), (5, 1, 1, 1), (1, 4, 4, 1), (0, 1, 2, 2)],
)
def test_only_the_nodes_concurrency_needs_are_laid_out(
    workspace: Path,
    storage: LocalStorage,
    run_dir: Path,
    nodes: int,
    slots: int,
    concurrency: int,
    laid_out: int,
) -> None:
    compute = LocalCompute(workspace, storage, run_dir, concurrency)
    compute.create_pool(make_pool(nodes, slots), None)
    assert sorted(p.name for p in (workspace / "pools" / POOL / "nodes").iterdir()) == [
        f"node-{i}" for i in range(laid_out)
    ]


def test_default_concurrency_is_capped_by_cpu_count(
    workspace: Path, storage: LocalStorage, run_dir: Path
) -> None:
    compute = LocalCompute(workspace, storage, run_dir)
    compute.create_pool(make_pool(nodes=64, slots=2), None)
    expected = math.ceil(min(128, os.cpu_count() or 1) / 2)
    assert len(list((workspace / "pools" / POOL / "nodes").iterdir())) == expected


def test_inputs_are_files_of_their_own(
    storage: LocalStorage, workspace: Path, run_dir: Path, tmp_path: Path
) -> None:
    compute = start(workspace, storage, run_dir, keep_task_folders=True)  # to look into wd/ afterwards
    src = tmp_path / "a.txt"
    src.write_text("input data", encoding="utf-8")
    storage.upload([UploadItem(src, "in", "dir/a.txt", src.stat().st_size)])
    t = make_task("t1", "cat sub/a.txt > copy.txt", inputs=[TaskInput("in", "dir/a.txt", "sub/a.txt")])
    try:
        assert run(compute, [t])["t1"].state is TaskState.SUCCEEDED
    finally:
        compute.stop()
    wd = task_dir(workspace, "t1") / "wd"
    assert (wd / "copy.txt").read_text(encoding="utf-8") == "input data"
    assert not (wd / "sub" / "a.txt").samefile(storage.path_of("in", "dir/a.txt"))  # a copy, as on a node


# What a task's folder holds, from inside: its inode (the same folder, renamed, or a new one) and wd/.
SHOW_FOLDER = (
    'stat -c %i "$AZ_BATCH_TASK_DIR"; ls -A "$AZ_BATCH_TASK_DIR" | tr "\\n" " "; echo; ls -AR | tr "\\n" " "'
)


def shown(result: TaskResult) -> tuple[str, str, str]:
    assert result.stdout_path is not None
    inode, task_folder, wd = result.stdout_path.read_text(encoding="utf-8").splitlines()[:3]
    return inode, task_folder.strip(), wd.strip()


def upload_input(storage: LocalStorage, tmp_path: Path, name: str) -> TaskInput:
    src = tmp_path / name
    src.write_text(name, encoding="utf-8")
    storage.upload([UploadItem(src, "in", name, src.stat().st_size)])
    return TaskInput("in", name, name)


def test_a_succeeded_tasks_folder_serves_the_next_task_as_a_fresh_one(
    compute: LocalCompute, storage: LocalStorage, workspace: Path, tmp_path: Path
) -> None:
    """One node, one slot: t2 gets t1's folder renamed (the same inode), emptied of everything t1 left
    in wd/ (files, a folder tree, a symlink), with only its own input and its own fresh logs."""
    mess = "echo x > junk.txt; mkdir -p deep/er; echo y > deep/er/f; ln -s /etc/passwd link"
    t1 = make_task("t1", f"{SHOW_FOLDER}; {mess}", inputs=[upload_input(storage, tmp_path, "a.txt")])
    t2 = make_task("t2", SHOW_FOLDER, inputs=[upload_input(storage, tmp_path, "b.txt")])
    results = run(compute, [t1, t2])
    assert {r.state for r in results.values()} == {TaskState.SUCCEEDED}
    inode1, folder1, wd1 = shown(results["t1"])
    inode2, folder2, wd2 = shown(results["t2"])
    assert inode2 == inode1  # renamed, not made
    assert (folder1, wd1) == ("stderr.txt stdout.txt wd", ".: a.txt")
    assert (folder2, wd2) == ("stderr.txt stdout.txt wd", ".: b.txt")
    assert not task_dir(workspace, "t1").exists()
    assert task_dir(workspace, "t2").is_dir()  # the last one's, until the job is deleted
    assert results["t1"].stdout_path is not None and results["t1"].stdout_path.read_text(encoding="utf-8")


# A task that sets, on its wd/, what a new folder has not (python3: batchflow's, first on a task's PATH).
SET_XATTR = "python3 -c \"import os; os.setxattr('.', 'user.batchflow-test', b'1')\""
SET_SYNC_FLAG = (
    "python3 -c \"import fcntl, os; fd = os.open('.', os.O_RDONLY); "
    "fcntl.ioctl(fd, 0x40086602, (8).to_bytes(8, 'little'))\""  # FS_IOC_SETFLAGS, FS_SYNC_FL
)


@pytest.mark.parametrize(
    ("first", "why"),
    [
        ("exit 3", "a failed task's folder stays, to be looked at"),
        ("chmod 701 .", "a folder whose mode a task changed is not as a new one"),
        ('echo x > "$AZ_BATCH_TASK_DIR/extra"', "something beside wd/ and the logs"),
        ("chmod 777 .. .", "the mode of both, checked against a folder batchflow made, not the parent"),
        ("rm -r ../wd/* ; mv ../wd ../w2 && ln -s w2 ../wd", "wd/ a symlink"),
        (SET_XATTR, "an extended attribute (an ACL is one)"),
        (SET_SYNC_FLAG, "an inode flag (chattr +S)"),
    ],
)
def test_a_folder_not_as_a_new_one_would_be_serves_no_other_task(
    compute: LocalCompute, storage: LocalStorage, workspace: Path, tmp_path: Path, first: str, why: str
) -> None:
    if first in (SET_XATTR, SET_SYNC_FLAG):
        probe = tmp_path / "probe"
        probe.mkdir()
        done = subprocess.run(["/bin/sh", "-c", first.replace("exit 0", "true")], cwd=probe, check=False)
        if done.returncode != 0:
            pytest.skip(f"this file system takes no {why}")
    t1 = make_task("t1", f"{SHOW_FOLDER}; {first}")
    t2 = make_task("t2", SHOW_FOLDER, inputs=[upload_input(storage, tmp_path, "b.txt")])
    results = run(compute, [t1, t2])
    assert results["t2"].state is TaskState.SUCCEEDED
    assert shown(results["t2"])[0] != shown(results["t1"])[0], why
    assert shown(results["t2"])[1:] == ("stderr.txt stdout.txt wd", ".: b.txt")
    assert task_dir(workspace, "t1").is_dir(), why
    mode = (task_dir(workspace, "t2") / "wd").stat().st_mode & 0o777
    assert mode == task_dir(workspace, "t2").parent.stat().st_mode & 0o777


def test_a_spare_folder_serves_its_own_job_only(compute: LocalCompute, workspace: Path) -> None:
    """t1's folder, emptied, stays a spare of job1: job2's tasks pass job2's folders on, never it."""
    first = run(compute, [make_task("t1", SHOW_FOLDER)])["t1"]
    compute.create_job(JobSpec("job2"), POOL, "run-1")
    compute.add_tasks("job2", [make_task("a", SHOW_FOLDER), make_task("b", SHOW_FOLDER)])
    deadline = time.monotonic() + SAFETY_NET
    while compute.task_counts("job2").completed < 2 and time.monotonic() < deadline:
        compute.wait(1.0)
    results = {r.id: r for r in compute.task_results("job2")}
    assert {r.state for r in results.values()} == {TaskState.SUCCEEDED}
    assert shown(results["b"])[0] == shown(results["a"])[0] != shown(first)[0]
    assert sorted(p.name for p in task_dir(workspace, "t1").iterdir()) == ["wd"]  # job1's spare, emptied


def test_two_slots_of_a_node_pass_folders_between_them_each_fresh(
    workspace: Path, storage: LocalStorage, run_dir: Path, tmp_path: Path
) -> None:
    """One node, two slots, 30 tasks giving and taking folders at once: every task's wd/ holds its
    own input and nothing else, and folders did serve again."""
    compute = start(workspace, storage, run_dir, concurrency=2, pool=make_pool(nodes=1, slots=2))
    mess = "mkdir -p d/e; echo x > d/e/f; echo y > junk"
    tasks = [
        make_task(
            f"t{i:02d}", f"{SHOW_FOLDER}; {mess}", inputs=[upload_input(storage, tmp_path, f"in{i:02d}")]
        )
        for i in range(30)
    ]
    try:
        results = run(compute, tasks)
    finally:
        compute.stop()
    assert {r.state for r in results.values()} == {TaskState.SUCCEEDED}
    for i in range(30):
        assert shown(results[f"t{i:02d}"])[1:] == ("stderr.txt stdout.txt wd", f".: in{i:02d}")
    assert len({shown(r)[0] for r in results.values()}) < 30  # some folders served twice


def test_a_retried_task_runs_again_in_its_own_folder(compute: LocalCompute, workspace: Path) -> None:
    """t2's first attempt gets t1's folder; its retry runs in the same folder, wd/ made anew."""
    first = 'touch "$AZ_BATCH_TASK_DIR/tried" x; exit 1'
    flaky = f'test -e "$AZ_BATCH_TASK_DIR/tried" || {{ {first}; }}; ls -A'
    results = run(compute, [make_task("t1", "true"), make_task("t2", flaky, max_retries=1)])
    assert (results["t2"].attempts, results["t2"].state) == (2, TaskState.SUCCEEDED)
    assert results["t2"].stdout_path is not None
    assert results["t2"].stdout_path.read_text(encoding="utf-8") == ""  # x went with the first wd/
    assert (task_dir(workspace, "t2") / "tried").exists()
    assert not task_dir(workspace, "t1").exists()


def test_a_kept_job_keeps_every_tasks_folder(storage: LocalStorage, workspace: Path, run_dir: Path) -> None:
    """With the job kept (cleanup.job: keep, LocalBackend.compute) every task's folder stays as the
    task left it, to be looked at, as on Batch."""
    compute = start(workspace, storage, run_dir, keep_task_folders=True)
    try:
        run(compute, [make_task(f"t{i}", f"echo {i} > out.txt") for i in range(3)])
    finally:
        compute.stop()
    for i in range(3):
        assert (task_dir(workspace, f"t{i}") / "wd" / "out.txt").read_text(encoding="utf-8") == f"{i}\n"


def test_each_log_is_kept_once_in_storage_and_a_failed_tasks_also_in_the_run_folder(
    compute: LocalCompute, storage: LocalStorage, run_dir: Path
) -> None:
    """Every task's logs used to be linked into two folder trees (10,000 tasks: 20,000 folders).
    Now a task's logs are where storage keeps them; only a failed task's are linked into the run
    folder too (task contract, clause 4), as one file under two names."""
    logs = TaskLogs("out", "logs/run-1/")
    tasks = [
        dataclasses.replace(make_task("fine", "echo fine"), logs=logs),
        dataclasses.replace(make_task("broken", "echo broken >&2; exit 3"), logs=logs),
    ]
    results = run(compute, tasks)

    fine, broken = results["fine"], results["broken"]
    assert fine.stdout_path == storage.path_of("out", "logs/run-1/fine/stdout.txt")
    assert fine.stderr_path == storage.path_of("out", "logs/run-1/fine/stderr.txt")
    assert fine.stdout_path.read_text(encoding="utf-8") == "fine\n"
    assert sorted(p.name for p in (run_dir / "tasks").iterdir()) == ["broken"]
    assert broken.stderr_path == run_dir / "tasks" / "broken" / "stderr.txt"
    assert broken.stderr_path.read_text(encoding="utf-8") == "broken\n"
    assert broken.stderr_path.samefile(storage.path_of("out", "logs/run-1/broken/stderr.txt"))


def test_missing_input_fails_the_task_without_running_it(compute: LocalCompute, workspace: Path) -> None:
    t = make_task("t1", "touch ran", inputs=[TaskInput("in", "nope.txt", "nope.txt")], max_retries=3)
    result = run(compute, [t])["t1"]
    assert result.state is TaskState.FAILED
    assert result.failure is not None
    assert result.failure.startswith("input 'nope.txt': cannot fetch ")
    assert result.failure.endswith("/storage/in/nope.txt: file not found")
    assert (result.exit_code, result.attempts, result.stdout_path) == (None, 1, None)
    assert not (task_dir(workspace, "t1") / "wd" / "ran").exists()


# ---- outputs ------------------------------------------------------------------------------------


def _outputs(task_id: str) -> list[TaskOutput]:
    return [
        TaskOutput("r.txt", "out", f"success/{task_id}.txt", OutputCondition.SUCCESS),
        TaskOutput("r.txt", "out", f"failure/{task_id}.txt", OutputCondition.FAILURE),
        TaskOutput("r.txt", "out", f"completion/{task_id}.txt", OutputCondition.COMPLETION),
        TaskOutput("o/**/*.dat", "out", f"glob/{task_id}/", OutputCondition.COMPLETION),
        TaskOutput("../stdout.txt", "out", "logs/", OutputCondition.FAILURE),
    ]


def test_outputs_are_uploaded_per_condition(compute: LocalCompute, storage: LocalStorage) -> None:
    make = "echo {0} > r.txt; mkdir -p o/a; echo 1 > o/a/b.dat; echo 2 > o/c.dat; echo 3 > o/c.txt"
    results = run(
        compute,
        [
            make_task("good", make.format("good"), outputs=_outputs("good")),
            make_task("bad", make.format("bad") + "; exit 4", outputs=_outputs("bad")),
        ],
    )
    assert storage.list_blobs("out") == [
        "completion/bad.txt",
        "completion/good.txt",
        "failure/bad.txt",
        "glob/bad/a/b.dat",
        "glob/bad/c.dat",
        "glob/good/a/b.dat",
        "glob/good/c.dat",
        "logs/stdout.txt",
        "success/good.txt",
    ]
    assert storage.path_of("out", "failure/bad.txt").read_text(encoding="utf-8") == "bad\n"
    assert results["good"].outputs == (
        "out/success/good.txt",
        "out/completion/good.txt",
        "out/glob/good/a/b.dat",
        "out/glob/good/c.dat",
    )
    assert (results["bad"].state, results["bad"].exit_code, results["bad"].failure) == (
        TaskState.FAILED,
        4,
        None,
    )


def test_a_missing_single_file_output_fails_a_successful_task(compute: LocalCompute) -> None:
    t = make_task(
        "t1", "true", outputs=[TaskOutput("result.mp3", "out", "result.mp3", OutputCondition.SUCCESS)]
    )
    result = run(compute, [t])["t1"]
    assert (result.state, result.exit_code) == (TaskState.FAILED, 0)
    assert result.failure == "output file 'result.mp3' not found"


# ---- retries and deadlines ------------------------------------------------------------------------


def test_a_failing_attempt_is_retried(compute: LocalCompute) -> None:
    once = 'm="$AZ_BATCH_NODE_SHARED_DIR/$AZ_BATCH_TASK_ID"; [ -e "$m" ] && exit 0; touch "$m"; exit 1'
    three = 'c="$AZ_BATCH_NODE_SHARED_DIR/count"; echo x >> "$c"; [ "$(wc -l < "$c")" -ge 4 ]'
    results = run(
        compute,
        [
            make_task("flaky", once, max_retries=2),
            make_task("broken", "exit 5", max_retries=2),
            make_task("unlimited", three, max_retries=-1),
        ],
    )
    assert (results["flaky"].state, results["flaky"].attempts, results["flaky"].exit_code) == (
        TaskState.SUCCEEDED,
        2,
        0,
    )
    assert (results["broken"].state, results["broken"].attempts, results["broken"].exit_code) == (
        TaskState.FAILED,
        3,
        5,
    )
    assert (results["unlimited"].state, results["unlimited"].attempts) == (TaskState.SUCCEEDED, 4)


def test_max_wall_clock_kills_the_whole_process_group(compute: LocalCompute, workspace: Path) -> None:
    command = "sleep 100 & echo $! > pids; sleep 100 & echo $! >> pids; echo $$ >> pids; wait"
    result = run(compute, [make_task("t1", command, max_wall_clock=0.5, max_retries=3)])["t1"]
    assert result.state is TaskState.FAILED
    assert (result.failure, result.attempts, result.exit_code) == ("max wall clock time exceeded", 1, 137)
    pids = [int(p) for p in (task_dir(workspace, "t1") / "wd" / "pids").read_text().split()]
    assert len(pids) == 3
    assert all_dead(pids)


def test_job_max_wall_clock_ends_running_and_queued_tasks(
    workspace: Path, storage: LocalStorage, run_dir: Path
) -> None:
    compute = start(workspace, storage, run_dir, job=JobSpec(JOB, max_wall_clock=0.5))
    try:
        results = run(compute, [make_task("slow", "sleep 100"), make_task("queued", "true")])
        late = make_task("late", "true")
        compute.add_tasks(JOB, [late])
        results["late"] = compute.task_results(JOB, ["late"])[0]
    finally:
        compute.stop()
    for name in ("slow", "queued", "late"):
        assert (results[name].state, results[name].failure) == (
            TaskState.FAILED,
            "job max wall clock time exceeded",
        )
    assert (results["slow"].attempts, results["queued"].attempts) == (1, 0)


# ---- scheduling -------------------------------------------------------------------------------------


def test_concurrency_is_respected_and_used(workspace: Path, storage: LocalStorage, run_dir: Path) -> None:
    compute = start(workspace, storage, run_dir, concurrency=2, pool=make_pool(nodes=4))
    log = workspace / "overlap.log"
    command = f'echo start >> "{log}"; sleep 0.3; echo end >> "{log}"'
    try:
        results = run(compute, [make_task(f"t{i}", command) for i in range(6)])
    finally:
        compute.stop()
    assert all(r.state is TaskState.SUCCEEDED for r in results.values())
    running = peak = 0
    for line in log.read_text(encoding="utf-8").split():
        running += 1 if line == "start" else -1
        peak = max(peak, running)
    assert peak == 2
    assert sorted(p.name for p in (workspace / "pools" / POOL / "nodes").iterdir()) == ["node-0", "node-1"]


def test_tasks_run_in_submission_order(compute: LocalCompute, workspace: Path) -> None:
    log = workspace / "order.log"
    run(compute, [make_task(f"t{i}", f'echo {i} >> "{log}"') for i in range(10)])
    assert log.read_text(encoding="utf-8").split() == [str(i) for i in range(10)]


def test_add_tasks_is_idempotent(compute: LocalCompute, workspace: Path) -> None:
    log = workspace / "ids.log"
    tasks = [make_task(f"t{i}", f'echo t{i} >> "{log}"') for i in range(3)]
    compute.add_tasks(JOB, tasks)
    compute.add_tasks(JOB, tasks)
    until_done(compute, 3)
    compute.add_tasks(JOB, tasks[:1])
    assert compute.task_counts(JOB) == TaskCounts(succeeded=3)
    assert sorted(log.read_text(encoding="utf-8").split()) == ["t0", "t1", "t2"]


def test_invalid_task_ids_are_refused(compute: LocalCompute) -> None:
    with pytest.raises(BatchflowError) as e:
        compute.add_tasks(JOB, [make_task("../escape", "true")])
    assert str(e.value) == "invalid task id '../escape': use 1 to 64 letters, digits, hyphens or underscores"


def test_stop_kills_running_tasks_and_cancels_queued_ones(compute: LocalCompute, workspace: Path) -> None:
    pid_file = node_dir(workspace, 0) / "shared" / "pid"
    compute.add_tasks(
        JOB,
        [
            make_task(
                "running", f'sleep 100 & echo $! > "{pid_file}.tmp"; mv "{pid_file}.tmp" "{pid_file}"; wait'
            ),
            make_task("queued", "true"),
        ],
    )
    deadline = time.monotonic() + SAFETY_NET
    while not pid_file.exists():
        assert time.monotonic() < deadline, "the task never started"
        compute.wait(0.05)
    compute.stop()
    compute.stop()  # idempotent
    results = {r.id: r for r in compute.task_results(JOB)}
    assert (results["running"].state, results["running"].failure) == (TaskState.FAILED, "cancelled")
    assert (results["queued"].state, results["queued"].failure, results["queued"].attempts) == (
        TaskState.FAILED,
        "cancelled",
        0,
    )
    assert all_dead([int(pid_file.read_text())])
    with pytest.raises(BatchflowError) as e:
        compute.add_tasks(JOB, [make_task("after", "true")])
    assert str(e.value) == "local compute was stopped; no more tasks can be added"


def test_delete_job_and_pool_remove_their_folders(compute: LocalCompute, workspace: Path) -> None:
    run(compute, [make_task("t1", "true")])
    assert (node_dir(workspace, 0) / "workitems" / JOB).is_dir()
    compute.delete_job(JOB)
    assert not (node_dir(workspace, 0) / "workitems" / JOB).exists()
    compute.delete_pool(POOL)
    assert not (workspace / "pools" / POOL).exists()


# ---- start task -------------------------------------------------------------------------------------


def test_start_task_runs_on_every_node_with_its_inputs_and_environment(
    workspace: Path, storage: LocalStorage, run_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "tool.sh"
    src.write_text("echo tool", encoding="utf-8")
    storage.upload([UploadItem(src, "in", "tools/tool.sh", src.stat().st_size)])
    spec = StartTaskSpec(
        command='cd "$AZ_BATCH_NODE_SHARED_DIR" && env > start-env.txt && sh "$OLDPWD/bin/tool.sh" > out',
        elevated=True,
        environment={"GREETING": "hi"},
    )
    compute = LocalCompute(workspace, storage, run_dir, 2, account_name="acct")
    compute.create_pool(
        make_pool(nodes=2, start_task=spec), spec, [TaskInput("in", "tools/tool.sh", "bin/tool.sh")]
    )
    compute.wait_for_pool(POOL)
    for i in (0, 1):
        root = node_dir(workspace, i)
        env = read_env(root / "shared" / "start-env.txt")
        assert {k: v for k, v in env.items() if k.startswith("AZ_BATCH_")} == {
            "AZ_BATCH_NODE_ROOT_DIR": str(root),
            "AZ_BATCH_NODE_SHARED_DIR": str(root / "shared"),
            "AZ_BATCH_NODE_STARTUP_DIR": str(root / "startup"),
            "AZ_BATCH_TASK_DIR": str(root / "startup"),
            "AZ_BATCH_TASK_WORKING_DIR": str(root / "startup" / "wd"),
            "AZ_BATCH_POOL_ID": POOL,
            "AZ_BATCH_NODE_ID": f"node-{i}",
            "AZ_BATCH_ACCOUNT_NAME": "acct",
            "AZ_BATCH_TASK_USER_IDENTITY": "PoolNonAdmin",
        }
        assert env["GREETING"] == "hi"
        assert (root / "shared" / "out").read_text(encoding="utf-8") == "tool\n"
        assert (root / "startup" / "stdout.txt").is_file()
        assert (run_dir / "start-task" / f"node-{i}" / "stderr.txt").is_file()
    compute.stop()


def test_start_task_failure_raises_with_the_tail_of_stderr(
    workspace: Path, storage: LocalStorage, run_dir: Path
) -> None:
    spec = StartTaskSpec(
        command='echo x >> "$AZ_BATCH_NODE_SHARED_DIR/tries"; '
        'i=1; while [ $i -le 30 ]; do echo "line $i" >&2; i=$((i+1)); done; exit 3',
        max_retries=1,
    )
    compute = LocalCompute(workspace, storage, run_dir, 1)
    compute.create_pool(make_pool(start_task=spec), spec)
    with pytest.raises(BatchflowError) as e:
        compute.wait_for_pool(POOL)
    tail = "\n".join(f"line {i}" for i in range(11, 31))
    assert str(e.value) == (
        f"start task failed on node-0 (exit 3); last lines of stderr:\n{tail}\n"
        f"full log: {run_dir / 'start-task' / 'node-0' / 'stderr.txt'}"
    )
    assert (node_dir(workspace, 0) / "shared" / "tries").read_text(encoding="utf-8") == "x\nx\n"
    compute.stop()


def test_start_task_failure_with_empty_stderr_or_a_missing_input(
    workspace: Path, storage: LocalStorage, run_dir: Path
) -> None:
    quiet = StartTaskSpec(command="exit 2")
    compute = LocalCompute(workspace, storage, run_dir, 1)
    compute.create_pool(make_pool(start_task=quiet), quiet)
    with pytest.raises(BatchflowError) as e:
        compute.wait_for_pool(POOL)
    assert str(e.value) == (
        "start task failed on node-0 (exit 2); stderr is empty\n"
        f"full log: {run_dir / 'start-task' / 'node-0' / 'stdout.txt'}"
    )
    compute.delete_pool(POOL)

    compute = LocalCompute(workspace, storage, run_dir, 1)
    needs = StartTaskSpec(command="true")
    compute.create_pool(make_pool(start_task=needs), needs, [TaskInput("in", "missing.sh", "missing.sh")])
    with pytest.raises(BatchflowError) as e:
        compute.wait_for_pool(POOL)
    assert str(e.value) == (
        "start task failed on node-0: input 'missing.sh': "
        f"cannot fetch {storage.container_path('in') / 'missing.sh'}: file not found"
    )
    compute.stop()


def test_start_task_failure_is_tolerated_without_wait_for_success(
    workspace: Path, storage: LocalStorage, run_dir: Path
) -> None:
    spec = StartTaskSpec(command="exit 1", wait_for_success=False)
    compute = start(workspace, storage, run_dir, pool=make_pool(start_task=spec))
    try:
        assert run(compute, [make_task("t1", "true")])["t1"].state is TaskState.SUCCEEDED
    finally:
        compute.stop()


# ---- the task observer ------------------------------------------------------------------------------


class Recorder:
    """A TaskObserver that keeps every call in the order made, from whichever thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, int, float] | TaskResult] = []

    def task_started(self, task_id: str, attempt: int, at: float) -> None:
        with self._lock:
            self.calls.append((task_id, attempt, at))

    def task_ended(self, result: TaskResult) -> None:
        with self._lock:
            self.calls.append(result)

    def of(self, task_id: str) -> list[tuple[str, int, float] | TaskResult]:
        with self._lock:
            return [c for c in self.calls if (c.id if isinstance(c, TaskResult) else c[0]) == task_id]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def observed(
    workspace: Path, storage: LocalStorage, run_dir: Path, recorder: Recorder
) -> Iterator[LocalCompute]:
    c = start(workspace, storage, run_dir, observer=recorder)
    yield c
    c.stop()


def test_the_observer_hears_every_attempt_start_and_each_end(
    observed: LocalCompute, recorder: Recorder
) -> None:
    results = run(
        observed,
        [
            make_task("ok", "true"),
            make_task("broken", "exit 5", max_retries=2),
            make_task("no-input", "true", inputs=[TaskInput("in", "nope.txt", "nope.txt")]),
        ],
    )
    # Told before task_counts said done, with the very results task_results gives.
    ok, broken = results["ok"], results["broken"]
    assert ok.started_at is not None and broken.started_at is not None
    assert recorder.of("ok") == [("ok", 1, ok.started_at), ok]
    assert recorder.of("broken") == [*(("broken", n, broken.started_at) for n in (1, 2, 3)), broken]
    assert (broken.state, broken.attempts, broken.exit_code) == (TaskState.FAILED, 3, 5)
    assert recorder.of("no-input") == [results["no-input"]]  # failed before its command started


def test_the_observer_hears_a_timeout(observed: LocalCompute, recorder: Recorder) -> None:
    result = run(observed, [make_task("t1", "sleep 100", max_wall_clock=0.5, max_retries=3)])["t1"]
    assert (result.failure, result.attempts) == ("max wall clock time exceeded", 1)
    assert result.started_at is not None
    assert recorder.of("t1") == [("t1", 1, result.started_at), result]


def test_the_observer_hears_of_a_running_task_stop_ended(
    observed: LocalCompute, recorder: Recorder, workspace: Path
) -> None:
    marker = node_dir(workspace, 0) / "shared" / "running"
    observed.add_tasks(
        JOB, [make_task("running", f'touch "{marker}"; sleep 100'), make_task("queued", "true")]
    )
    deadline = time.monotonic() + SAFETY_NET
    while not marker.exists():
        assert time.monotonic() < deadline, "the task never started"
        observed.wait(0.05)
    observed.stop()
    results = {r.id: r for r in observed.task_results(JOB)}
    assert (results["running"].failure, results["queued"].failure) == ("cancelled", "cancelled")
    started_at = results["running"].started_at
    assert started_at is not None
    assert recorder.of("running") == [("running", 1, started_at), results["running"]]
    assert recorder.of("queued") == []  # it never started: the run's results say so, not the observer


def test_stop_tells_the_observer_nothing_of_the_queue_it_drops(
    observed: LocalCompute, recorder: Recorder, workspace: Path
) -> None:
    """One journal line per queued task, written under the compute's lock, held stop() ~5 s with
    100,000 tasks queued; the run marks them "not started" from task_results anyway."""
    marker = node_dir(workspace, 0) / "shared" / "running"
    queued = [make_task(f"q{i:04d}", "true") for i in range(2000)]
    observed.add_tasks(JOB, [make_task("running", f'touch "{marker}"; sleep 100'), *queued])
    deadline = time.monotonic() + SAFETY_NET
    while not marker.exists():
        assert time.monotonic() < deadline, "the task never started"
        observed.wait(0.05)
    observed.stop()

    results = {r.id: r for r in observed.task_results(JOB)}
    dropped = {tid for tid, r in results.items() if r.started_at is None}
    assert dropped == {t.id for t in queued}  # one slot: the first task held it
    assert {results[t].failure for t in dropped} == {"cancelled"}
    assert not [c for c in recorder.calls if (c.id if isinstance(c, TaskResult) else c[0]) in dropped]


class Broken:
    def task_started(self, task_id: str, attempt: int, at: float) -> None:
        raise RuntimeError("observer broke")

    def task_ended(self, result: TaskResult) -> None:
        raise OSError(28, "No space left on device")


def test_an_observer_that_raises_is_logged_and_breaks_no_task(
    workspace: Path, storage: LocalStorage, run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    compute = start(workspace, storage, run_dir, observer=Broken())
    try:
        with caplog.at_level(logging.WARNING, logger="batchflow"):
            result = run(compute, [make_task("t1", "true")])["t1"]
    finally:
        compute.stop()
    assert (result.state, result.exit_code, result.failure) == (TaskState.SUCCEEDED, 0, None)
    failed = [r for r in caplog.records if r.getMessage() == "task t1: the task observer failed"]
    assert [type(r.exc_info[1]) if r.exc_info else None for r in failed] == [RuntimeError, OSError]
