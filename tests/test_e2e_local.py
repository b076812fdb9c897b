"""Whole runs on the local backend: real workflows, real ffmpeg, real subprocesses and signals.

Runs use copies in tmp_path (fixtures in conftest.py), so nothing is ever written into the repo.
Runs are in-process `main([...])` calls, except where a signal must reach a batchflow process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, RealNetworkBlocked, WriteWorkflow
from media import audio_duration, probe

import batchflow.runner
from batchflow.backends.local import local_task_path
from batchflow.cli import main
from batchflow.state import RunState

Copy = Callable[[str], Path]
SAMPLE_NAMES = ["café", "it's $(touch INJECTED)", "plain", "sample 1", "semi;colon & amp"]
# Seconds. MP3 frames and encoder padding round a little; a wrong clip is off by seconds.
DURATION_TOLERANCE = 0.1
SAFETY_NET = 60.0  # seconds; only so a broken run fails instead of hanging the suite


def run_folders(workspace: Path) -> list[Path]:
    return sorted(p for p in (workspace / "runs").iterdir() if p.is_dir())


def load_state(folder: Path) -> dict[str, Any]:
    """The run's record as JSON: state.json, and under "tasks" each task's (from the journal)."""
    return RunState.load(folder).to_json()


def injected(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.name == "INJECTED"]


def check_mp3s_match_inputs(mp3_dir: Path, mp4_dir: Path) -> None:
    for mp4 in sorted(mp4_dir.glob("*.mp4")):
        mp3 = mp3_dir / f"{mp4.stem}.mp3"
        assert audio_duration(mp3) == pytest.approx(probe(mp4).duration, abs=DURATION_TOLERANCE), mp3.name


# ---- mp4_to_mp3, the reference workflow ---------------------------------------------------


@pytest.mark.e2e
def test_mp4_to_mp3_end_to_end(
    copy_workflow: Copy, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    start_cwd = Path.cwd()
    wf = copy_workflow("mp4_to_mp3")
    monkeypatch.chdir(wf.parent)
    mp4_dir = wf.parent / "samples" / "mp4"
    assert sorted(p.stem for p in mp4_dir.glob("*.mp4")) == sorted(SAMPLE_NAMES)

    assert main(["run", str(wf)]) == 0

    out, err = capsys.readouterr()
    assert out == ""
    (first,) = run_folders(wf.parent / ".batchflow")
    assert err.splitlines()[-1] == f"Run folder: {first}"
    mp3_dir = wf.parent / "out" / "mp3"
    assert f"Outputs: {mp3_dir} (5 downloaded, 0 unchanged)" in err.splitlines()
    assert sorted(p.name for p in mp3_dir.iterdir()) == sorted(f"{n}.mp3" for n in SAMPLE_NAMES)
    check_mp3s_match_inputs(mp3_dir, mp4_dir)
    assert injected(wf.parent) == []
    assert not (start_cwd / "INJECTED").exists()

    state = load_state(first)
    assert (state["status"], state["stage"], state["task_count"]) == ("succeeded", "cleanup", 5)
    assert len(state["tasks"]) == 5
    for task_id, task in state["tasks"].items():
        assert (task["state"], task["exit_code"], task["attempts"], task["failure"]) == (
            "succeeded",
            0,
            1,
            None,
        ), task_id
        assert (first / task["stdout"]).is_file(), task_id
        assert (first / task["stderr"]).is_file(), task_id
    assert (first / "batchflow.log").is_file()

    # Second run: every input is already in storage, nothing is uploaded again.
    assert main(["run", str(wf), "--output", "json"]) == 0

    out, err = capsys.readouterr()
    summary = json.loads(out)
    second = run_folders(wf.parent / ".batchflow")[-1]
    assert second != first
    assert "  0 uploaded (0 B), 5 unchanged" in err.splitlines()
    assert summary["run_id"] == second.name
    assert summary["run_folder"] == str(second)
    assert (summary["status"], summary["workflow"], summary["backend"]) == ("succeeded", str(wf), "local")
    assert summary["counts"] == {"active": 0, "running": 0, "succeeded": 5, "failed": 0, "not_started": 0}
    assert set(summary["tasks"]) == set(state["tasks"])
    check_mp3s_match_inputs(mp3_dir, mp4_dir)

    assert main(["status", "--workflow", str(wf)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"Run {second.name} (local): succeeded, stage cleanup",
        f"Workflow: {wf}",
        "Tasks: 5 total, 5 succeeded, 0 failed",
        f"Run folder: {second}",
    ]
    assert main(["status", first.name[:-2], "--workflow", str(wf), "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == first.name


@pytest.mark.e2e
def test_hostile_file_names_never_reach_a_shell(
    copy_workflow: Copy, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the pool and job kept, every task working dir is still there to prove nothing ran."""
    wf = copy_workflow("mp4_to_mp3")
    text = wf.read_text(encoding="utf-8")
    assert "  job: delete\n  pool: delete-if-created\n" in text
    wf.write_text(text.replace("  job: delete\n  pool: delete-if-created\n", "  job: keep\n  pool: keep\n"))
    monkeypatch.chdir(wf.parent)

    exit_code = main(["run", str(wf)])

    capsys.readouterr()
    kept = wf.parent / ".batchflow" / "pools"
    assert [p.name for p in kept.rglob("it's $(touch INJECTED).mp4") if p.parent.name == "wd"] == [
        "it's $(touch INJECTED).mp4"
    ]
    assert injected(wf.parent) == []
    assert exit_code == 0


@pytest.mark.e2e
def test_mp4_to_mp3_without_ffmpeg_on_path_uses_imageio_ffmpeg(
    copy_workflow: Copy, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Quickstart on a machine without ffmpeg: the start task links imageio-ffmpeg's static binary."""
    import imageio_ffmpeg

    wf = copy_workflow("mp4_to_mp3")
    bin_dir = tmp_path / "bin"  # only what the start task needs besides python3
    bin_dir.mkdir()
    for tool in ("sh", "mkdir", "ln"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    with monkeypatch.context() as m:
        m.setenv("PATH", str(bin_dir))
        m.delenv("IMAGEIO_FFMPEG_EXE", raising=False)
        # Tasks see the interpreter's folder first: it must hold python3 but no ffmpeg.
        interpreter_dir = str(Path(sys.executable).parent)
        if shutil.which("ffmpeg", path=interpreter_dir) is not None:
            pytest.skip(f"{interpreter_dir} holds an ffmpeg: this test cannot hide it")
        assert shutil.which("ffmpeg", path=local_task_path()) is None
        assert shutil.which("python3", path=local_task_path()) is not None

        assert main(["run", str(wf)]) == 0

    capsys.readouterr()
    (run,) = run_folders(wf.parent / ".batchflow")
    start_logs = sorted((run / "start-task").glob("*/stdout.txt"))
    assert start_logs
    for log in start_logs:
        first_line = log.read_text(encoding="utf-8").splitlines()[0]
        assert first_line.startswith(f"ffmpeg version {imageio_ffmpeg.get_ffmpeg_version()} "), first_line
    mp3_dir = wf.parent / "out" / "mp3"
    assert sorted(p.name for p in mp3_dir.iterdir()) == sorted(f"{n}.mp3" for n in SAMPLE_NAMES)
    check_mp3s_match_inputs(mp3_dir, wf.parent / "samples" / "mp4")


# ---- word_count -------------------------------------------------------------------------------


@pytest.mark.e2e
def test_word_count_end_to_end(copy_workflow: Copy, capsys: pytest.CaptureFixture[str]) -> None:
    wf = copy_workflow("word_count")

    assert main(["run", str(wf), "--set", "top=3"]) == 0

    capsys.readouterr()
    counts = wf.parent / "out" / "counts"
    texts = sorted((wf.parent / "wordcount" / "texts").glob("*.txt"))
    assert sorted(p.name for p in counts.iterdir()) == sorted(f"{t.stem}.counts.json" for t in texts)
    for text in texts:
        result = json.loads((counts / f"{text.stem}.counts.json").read_text(encoding="utf-8"))
        words = re.findall(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*", text.read_text(encoding="utf-8"))
        assert result["file"] == text.name
        assert result["words"] == len(words)
        assert result["distinct"] == len({w.lower().replace("\u2019", "'") for w in words})
        assert len(result["top"]) == 3
    river = json.loads((counts / "river.counts.json").read_text(encoding="utf-8"))
    assert river["top"][0] == {"word": "river", "count": 6}


# ---- failures -----------------------------------------------------------------------------------

FAILING = (
    "if [ {{ input.path }} = ./item-02.txt ]; then "
    'for i in $(seq 1 12); do echo "stderr line $i" >&2; done; exit 3; fi; cat {{ input.path }}'
)


@pytest.mark.e2e
def test_a_failing_task(write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]) -> None:
    wf = write_workflow(FAILING, tasks={"max_retries": 2})

    assert main(["run", str(wf)]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    (run,) = run_folders(wf.parent / ".batchflow")
    lines = err.splitlines()
    assert f"Run {run.name}: failed. 1 succeeded, 1 failed of 2 tasks." in lines
    task_line = lines.index("Task task-item-02 failed (exit code 3, 3 attempt(s))")
    assert lines[task_line:] == [
        "Task task-item-02 failed (exit code 3, 3 attempt(s))",
        *(f"    | stderr line {i}" for i in range(3, 13)),
        f"    full logs: {run / 'tasks' / 'task-item-02'}",
        f"Run folder: {run}",
    ]
    assert "Traceback" not in err

    state = load_state(run)
    assert state["status"] == "failed"
    tasks = state["tasks"]
    assert (tasks["task-item-01"]["state"], tasks["task-item-01"]["attempts"]) == ("succeeded", 1)
    assert (tasks["task-item-02"]["state"], tasks["task-item-02"]["exit_code"]) == ("failed", 3)
    assert tasks["task-item-02"]["attempts"] == 3  # 1 + max_retries
    assert (run / tasks["task-item-01"]["stdout"]).read_text(encoding="utf-8") == "item 1\n"

    assert main(["status", "--workflow", str(wf)]) == 1  # status of a failed run exits 1
    assert capsys.readouterr().out.splitlines() == [
        f"Run {run.name} (local): failed, stage cleanup",
        f"Workflow: {wf}",
        "Tasks: 2 total, 1 succeeded, 1 failed",
        "  task-item-02: exit code 3",
        *(f"    | stderr line {i}" for i in range(8, 13)),
        f"Run folder: {run}",
    ]


@pytest.mark.e2e
def test_secrets_are_redacted_from_what_batchflow_writes(
    write_workflow: WriteWorkflow, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = write_workflow(
        "echo fetching {{ vars.source_url }} >&2; exit 1",
        inputs=1,
        extra={"vars": {"source_url": "https://example.invalid/data"}},
    )
    url = "https://acct.blob.core.windows.net/data?sv=2024-01-01&sig=abc123secret"

    assert main(["run", str(wf), "--set", f"source_url={url}", "--output", "json"]) == 1

    out, err = capsys.readouterr()
    assert "    | fetching https://acct.blob.core.windows.net/data?sv=2024-01-01&sig=REDACTED" in err
    assert "abc123secret" not in err
    assert "abc123secret" not in out
    (run,) = run_folders(wf.parent / ".batchflow")
    assert "abc123secret" not in (run / "batchflow.log").read_text(encoding="utf-8")
    assert "abc123secret" not in (run / "state.json").read_text(encoding="utf-8")
    # The task's own logs are the user's output, kept as the command wrote them (not redacted).
    stderr = run / load_state(run)["tasks"]["task-item-01"]["stderr"]
    assert stderr.read_text(encoding="utf-8") == f"fetching {url}\n"


@pytest.mark.e2e
def test_an_unexpected_error_exits_3_with_the_traceback_in_a_log_file(
    copy_workflow: Copy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_download(self: batchflow.runner.Runner) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(batchflow.runner.Runner, "_download", broken_download)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    wf = copy_workflow("word_count")

    assert main(["run", str(wf)]) == 3

    out, err = capsys.readouterr()
    log_file = tmp_path / "cache" / "batchflow" / "batchflow.log"
    assert out == ""
    assert err.splitlines()[-2:] == [
        "batchflow: unexpected error: RuntimeError: disk on fire",
        f"The traceback is in {log_file}. Please report it.",
    ]
    assert "Traceback" not in err
    log = log_file.read_text(encoding="utf-8")
    assert "Traceback (most recent call last):" in log
    assert "in broken_download" in log
    assert log.rstrip().endswith("RuntimeError: disk on fire")
    (run,) = run_folders(wf.parent / ".batchflow")
    state = load_state(run)
    assert (state["status"], state["message"]) == ("error", "RuntimeError: disk on fire")
    assert not (wf.parent / ".batchflow" / "pools" / "WordCountPool").exists()  # cleanup still ran


# ---- Ctrl-C and SIGTERM ------------------------------------------------------------------------

# Far longer than SAFETY_NET: a run that waits for its tasks instead of killing them fails the test.
# Pids go to a folder of the test's, not $AZ_BATCH_TASK_DIR: cleanup deletes the pool's task folders.
SLEEPER = "echo $$ > {{ vars.pids }}/{{ input.stem }}.pid; exec sleep 300"


def alive(pid: int) -> bool:
    """True while `pid` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_batchflow(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """`python -m batchflow ARGS` in its own session, so a signal reaches it alone."""
    # A child inherits an ignored SIGINT (the suite running as a script's background job) and Python
    # keeps ignoring it. Ctrl-C in a terminal is never ignored: give the child that disposition.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "batchflow", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


class Reaper:
    """What a test started: at the end, whatever still runs is killed, only these, by id."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.pids: list[int] = []

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        for pid in self.pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    r = Reaper()
    yield r
    r.close()


def communicate(proc: subprocess.Popen[str], what: str) -> tuple[str, str]:
    """stdout and stderr once `proc` exits; the test fails if it is still running after SAFETY_NET."""
    try:
        return proc.communicate(timeout=SAFETY_NET)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"batchflow still running {SAFETY_NET:.0f}s after {what}; its stderr:\n{err}")


@pytest.mark.e2e
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_a_signal_stops_the_run_and_its_tasks(
    signum: signal.Signals, write_workflow: WriteWorkflow, tmp_path: Path, reaper: Reaper
) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    wf = write_workflow(SLEEPER, inputs=3, extra={"vars": {"pids": "unset"}})
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    proc = start_batchflow(["run", str(wf), "--concurrency", "2", "--set", f"pids={pid_dir}"], env)
    reaper.procs.append(proc)

    def running() -> list[int]:
        """The pids of running tasks once state.json says monitor and both slots have a task."""
        states = list((wf.parent / ".batchflow" / "runs").glob("*/state.json"))
        if not states or json.loads(states[0].read_text(encoding="utf-8"))["stage"] != "monitor":
            return []
        texts = [p.read_text(encoding="utf-8") for p in pid_dir.glob("*.pid")]
        complete = [int(t) for t in texts if t.endswith("\n")]
        return complete if len(complete) == 2 else []

    deadline = time.monotonic() + SAFETY_NET
    while not (pids := running()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"tasks never ran (exit {proc.returncode}):\n{err}")
        time.sleep(0.02)
    reaper.pids.extend(pids)
    assert all(alive(pid) for pid in pids)

    os.kill(proc.pid, signum)
    _, err = communicate(proc, signum.name)

    assert proc.returncode == 130, err
    (run,) = run_folders(wf.parent / ".batchflow")
    lines = err.splitlines()
    assert "Interrupted: stopping running tasks..." in lines
    # Two tasks ran and were stopped; the third never started (counted so on both backends).
    assert f"Run {run.name}: interrupted. 0 succeeded, 2 failed, 1 not started of 3 tasks." in lines
    assert lines[-1] == f"Run folder: {run}"
    assert "Traceback" not in err
    state = load_state(run)
    expected = "interrupted (Ctrl-C)" if signum == signal.SIGINT else f"interrupted ({signum.name})"
    assert (state["status"], state["message"]) == ("interrupted", expected)
    assert sorted((t["state"], t["failure"]) for t in state["tasks"].values()) == [
        ("failed", "cancelled"),
        ("failed", "cancelled"),
        ("not_started", None),
    ]
    assert [pid for pid in pids if alive(pid)] == []


# ---- the guard against real networks (conftest.py) ------------------------------------------------


def test_network_guard_blocks_non_loopback_addresses() -> None:
    with pytest.raises(RealNetworkBlocked) as blocked:
        socket.create_connection(("myaccount.blob.core.windows.net", 443), timeout=1)
    assert str(blocked.value) == (
        "test tried to connect to ('myaccount.blob.core.windows.net', 443): tests never reach a real "
        "network or Azure endpoint (only 127.0.0.1, ::1 and localhost are allowed)"
    )
    with socket.socket() as s, pytest.raises(RealNetworkBlocked):
        s.connect(("10.255.255.1", 443))
    with socket.socket(socket.AF_INET6) as s, pytest.raises(RealNetworkBlocked):
        s.connect_ex(("2001:db8::1", 80, 0, 0))


def test_network_guard_allows_loopback() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        with socket.socket() as s:
            s.connect(("localhost", port))


@pytest.mark.e2e
def test_status_is_live_while_a_run_goes_on(
    write_workflow: WriteWorkflow, tmp_path: Path, reaper: Reaper
) -> None:
    """The local backend records each task as it starts and ends (tasks.jsonl): `batchflow status`
    of a running run shows the tasks that run now and those already done, not only the last stage."""
    gate = tmp_path / "gate"
    gate.mkdir()
    # item-01 ends at once; the others wait for the test to open the gate.
    command = '[ "{{ input.stem }}" = item-01 ] || while [ ! -e {{ vars.gate }}/open ]; do sleep 0.05; done'
    wf = write_workflow(command, inputs=3, extra={"vars": {"gate": "unset"}})
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    proc = start_batchflow(["run", str(wf), "--concurrency", "2", "--set", f"gate={gate}"], env)
    reaper.procs.append(proc)

    def status() -> dict[str, Any]:
        r = subprocess.run(
            [sys.executable, "-m", "batchflow", "status", "--workflow", str(wf), "--output", "json"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        return json.loads(r.stdout) if r.stdout.strip() else {}

    deadline = time.monotonic() + SAFETY_NET
    while True:
        seen = status()
        tasks = seen.get("tasks", {})
        states = sorted((tid, t["state"]) for tid, t in tasks.items())
        if states == [
            ("task-item-01", "succeeded"),
            ("task-item-02", "running"),
            ("task-item-03", "running"),
        ]:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"status never showed the live tasks; last: {seen}")
        time.sleep(0.05)
    assert seen["status"] == "running" and seen["exit_code"] == 0
    assert tasks["task-item-01"]["exit_code"] == 0 and tasks["task-item-02"]["started_at"] is not None

    (gate / "open").touch()
    _, err = communicate(proc, "the gate opened")
    assert proc.returncode == 0, err
    final = status()
    assert final["status"] == "succeeded"
    assert {t["state"] for t in final["tasks"].values()} == {"succeeded"}
