"""One node of the local backend: a task's attempt, or the start task, run per base.py's task contract.

A node is a folder laid out like a Batch node, so a task sees the same world as on Batch:

    <workspace>/pools/<pool>/nodes/node-<i>/            AZ_BATCH_NODE_ROOT_DIR
        shared/                                          AZ_BATCH_NODE_SHARED_DIR
        startup/{wd/,stdout.txt,stderr.txt}              AZ_BATCH_NODE_STARTUP_DIR (start task)
        workitems/<job>/job-1/<task>/{wd/,stdout.txt,stderr.txt}

For one attempt, a node gives the command a fresh wd/ holding every input, each fetched through its
URL with blob_urls.fetch_url, as a Batch node fetches a ResourceFile (a file:// URL gives the task a
file of its own: a reflink where possible, else a copy). Then it runs `/bin/sh -c <command>` in wd/,
in a session and process group of its own, with the node's environment (BASE_ENV and
local.pass_env, the task's own variables, AZ_BATCH_*), stdout.txt and stderr.txt beside wd/, and a
line in the run's process ledger (local/processes.py) while the group lives. A ProcessHandle kills
the whole group from any thread. After a task's last attempt the node uploads its outputs, per
condition, and its stdout.txt / stderr.txt, through the container URLs the Storage gave.

What a node does not own (local/scheduler.py does, with local/deadlines.py): queues and slots, when
an attempt runs or is retried, deadlines (a node kills when told to), task states, counts and results.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from batchflow.backends.blob_urls import fetch_url, file_url_path, put_to_container_url
from batchflow.backends.files import replace_with_link
from batchflow.backends.local.processes import ProcessLedger
from batchflow.errors import BatchflowError
from batchflow.globs import glob_literal, has_magic, iter_files
from batchflow.model import (
    OutputCondition,
    RenderedTask,
    ResolvedFile,
    StartTaskSpec,
    TaskLogs,
    TaskOutput,
)
from batchflow.names import blob_name_problem
from batchflow.records import record

log = logging.getLogger("batchflow")

USER_IDENTITY = "PoolNonAdmin"  # locally every command runs as you, never as an admin
STDERR_TAIL_LINES = 20  # of a failed start task, in the error

# What a task on a Batch node has besides AZ_BATCH_* and its own environment: who and where it runs
# (a user with a home), the machine's locale and time zone, and a PATH. Nothing else of yours, so no
# credential exported in your shell reaches a task unless local.pass_env names it (README "The task
# contract").
BASE_ENV = ("HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR")
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC  # stdout.txt, stderr.txt


def node_environment(environ: Mapping[str, str], pass_env: Iterable[str] = ()) -> dict[str, str]:
    """The base every local task and start task starts from: BASE_ENV and LC_* as set in `environ`,
    the variables `pass_env` names (those that are set), and PATH with batchflow's own tools first."""
    wanted = set(BASE_ENV) | set(pass_env)
    env = {k: v for k, v in environ.items() if k in wanted or k.startswith("LC_")}
    # Tools installed beside batchflow (python3, pip-installed executables) come first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", os.defpath)])
    return env


class ProcessHandle:
    """The command a task (or start task) runs, which any thread may kill: a deadline, a job's end,
    stop(). A kill reaches the whole process group; the first reason given is the one kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reason: str | None = None

    @property
    def killed(self) -> str | None:
        """Why it was killed, if it was (set by other threads at any time)."""
        return self._reason

    def kill(self, reason: str) -> None:
        with self._lock:
            if self._reason is None:
                self._reason = reason
            if self._proc is not None:
                _killpg(self._proc.pid)

    def attach(self, proc: subprocess.Popen[bytes]) -> None:
        """The command just started (NodeTask.run)."""
        with self._lock:
            self._proc = proc  # first: whatever happens next, kill() reaches it
            if self._reason is not None:  # killed between the caller's check and Popen
                _killpg(proc.pid)

    def detach(self, kill_group: bool) -> None:
        """The command exited (NodeTask.run); `kill_group` kills what it left in its group."""
        with self._lock:
            if kill_group and self._proc is not None:
                _killpg(self._proc.pid)
            self._proc = None


@dataclass(frozen=True)
class Collected:
    """What uploading a task's outputs and logs gave."""

    outputs: tuple[str, ...]  # "container/blob" of each uploaded file
    unmatched: tuple[str, ...]  # glob patterns that matched nothing
    failure: str | None  # why the task fails for them, if it does
    stored_logs: tuple[Path, Path] | None = None  # stdout.txt, stderr.txt in a folder storage


@record
class StartResult:
    """How the start task ended on one node."""

    node: Node
    exit_code: int | None
    failure: str | None  # why it did not run or was killed
    logs: Path  # folder holding stdout.txt and stderr.txt

    @property
    def ok(self) -> bool:
        return self.failure is None and self.exit_code == 0

    def message(self) -> str:
        """Why it failed, with the last lines of its stderr."""
        name = self.node.name
        if self.failure is not None:
            return f"start task failed on {name}: {self.failure}"
        tail = _tail(self.logs / "stderr.txt", STDERR_TAIL_LINES)
        if not tail:
            head = f"start task failed on {name} (exit {self.exit_code}); stderr is empty"
            return f"{head}\nfull log: {self.logs / 'stdout.txt'}"
        body = "\n".join(tail)
        return (
            f"start task failed on {name} (exit {self.exit_code}); last lines of stderr:\n"
            f"{body}\nfull log: {self.logs / 'stderr.txt'}"
        )


class SpareFolders:
    """A node's emptied task folders, each `<task>/wd/` and nothing more, for the next tasks: one is
    renamed into place where a new task would make two folders (and the job's deletion remove them).
    On this project's ext4 disk a mkdir costs several times a file's creation, 30 us to 1 ms by the
    hour, an rmdir about half that, a rename a tenth (BENCHMARKS.md, issue 12).

    Only a succeeded task's folder is given, once its outputs and logs are stored (a failed task's
    stays as it is, to be looked at), and only if both folders are as new ones would be: real
    folders (no symlink), with the mode, owner, group, inode flags (chattr) and extended attributes
    (none: no ACL) of the node's workitems/ folder as batchflow made it before any task ran
    (`expect`), nothing beside wd/ but the logs, and wd/ emptied whole. A spare is taken only if its
    wd/ is still empty: a new task's wd/ holds its inputs and nothing else.
    (A process a task started in a session of its own escapes the kill of the task's group; one that
    kept its working folder and writes there later, rare for a daemon, which moves to /, would write
    into the next task's wd/, as it would into a shared folder on a node.)"""

    def __init__(self) -> None:
        self._free: dict[Path, list[Path]] = {}  # by job folder: a spare serves its own job only
        self._lock = threading.Lock()
        self._fresh: _FolderLook | None = None  # what a folder batchflow makes looks like

    def expect(self, made: Path) -> None:
        """`made`: a folder batchflow made, no task having run: how a fresh folder looks."""
        with contextlib.suppress(OSError):
            self._fresh = _look(made)

    def give(self, task_dir: Path) -> None:
        """Empty a succeeded task's folder and keep it; anything unusual, and it stays for the job's
        deletion to remove."""
        wd = task_dir / "wd"
        try:
            names = {p.name for p in task_dir.iterdir()}
            if self._fresh is None or "wd" not in names or not names <= _TASK_DIR_NAMES:
                return
            if _look(task_dir) != self._fresh or _look(wd) != self._fresh:
                return
            with os.scandir(wd) as entries:  # wd/ first: a part it cannot remove leaves the logs there
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        Path(entry.path).unlink()
            for name in names - {"wd"}:
                (task_dir / name).unlink()  # the logs: storage keeps its own link or copy
        except OSError:
            return
        with self._lock:
            self._free.setdefault(task_dir.parent, []).append(task_dir)

    def take(self, task_dir: Path) -> bool:
        """Rename a spare to `task_dir`, which does not exist. False when there is none."""
        while True:
            with self._lock:
                free = self._free.get(task_dir.parent)
                if not free:
                    return False
                spare = free.pop()
            try:
                if next((spare / "wd").iterdir(), None) is not None:  # a process that left its group wrote
                    continue
                spare.rename(task_dir)
            except OSError:  # gone meanwhile, say: the next one, or a new folder
                continue
            return True


@dataclass(frozen=True)
class _FolderLook:
    """What a task may change of a folder besides its content."""

    mode: int  # type and permission bits
    uid: int
    gid: int
    flags: int  # inode flags (chattr: sync, casefold...), 0 where the filesystem has none
    xattrs: tuple[tuple[str, bytes], ...]  # extended attributes: an ACL is one (system.posix_acl_*)


_FS_IOC_GETFLAGS = 0x80086601  # Linux's ioctl to read a file's inode flags (lsattr)


def _look(folder: Path) -> _FolderLook:
    """A folder's _FolderLook, read through one descriptor (a symlink fails: O_NOFOLLOW)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        flags = 0
        with contextlib.suppress(OSError):  # no inode flags here (tmpfs, another system)
            flags = int.from_bytes(fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))[:4], sys.byteorder)
        xattrs: tuple[tuple[str, bytes], ...] = ()
        if hasattr(os, "listxattr"):  # Linux only
            with contextlib.suppress(OSError):  # a filesystem without extended attributes
                xattrs = tuple((name, os.getxattr(fd, name)) for name in sorted(os.listxattr(fd)))
        return _FolderLook(st.st_mode, st.st_uid, st.st_gid, flags, xattrs)
    finally:
        os.close(fd)


_TASK_DIR_NAMES = frozenset({"wd", "stdout.txt", "stderr.txt"})


@dataclass(frozen=True, eq=False)
class NodeTask:
    """A task, or a pool's start task, placed on a node: everything its attempts need."""

    name: str  # the task id, or "start task on node-<i>"
    command: str
    inputs: tuple[ResolvedFile, ...]
    dir: Path  # AZ_BATCH_TASK_DIR
    env: Mapping[str, str]
    ledger: ProcessLedger
    kill_leftovers: bool  # a task's group dies with its command; a start task's may live on
    outputs: tuple[TaskOutput, ...] = ()
    logs: TaskLogs | None = None
    container_urls: Mapping[str, str] = field(default_factory=dict)  # output and log containers
    spares: SpareFolders | None = None  # where a finished task's emptied folder may come from

    @property
    def wd(self) -> Path:
        return self.dir / "wd"

    def prepare(self) -> str | None:
        """A fresh wd/ holding every input. Returns why the attempt cannot start, or None."""
        wd = self.wd
        if self.spares is None or self.dir.exists() or not self.spares.take(self.dir):
            try:
                self.dir.mkdir()
            except FileNotFoundError:  # the job's first task on this node
                self.dir.mkdir(parents=True)
            except FileExistsError:  # another attempt, or the start task: what the last one left goes
                if wd.exists():
                    shutil.rmtree(wd)
            wd.mkdir()
        placed: set[str] = set()
        for item in self.inputs:
            problem = blob_name_problem(item.file_path, drive=False)  # wd/ is on Linux: a:b.mp4 is a name
            if problem is not None:
                return f"unsafe input file path {item.file_path!r}: {problem}"
            if item.file_path in placed:
                return f"two inputs have the same file path {item.file_path!r}"
            placed.add(item.file_path)
            dest = wd.joinpath(*item.file_path.split("/"))
            try:
                if "/" in item.file_path:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                fetch_url(item.http_url, dest, in_place=True)  # wd/ is new: nobody reads it yet
            except BatchflowError as e:
                return f"input {item.file_path!r}: {e}"
            except OSError as e:  # no space, or a stored file written while it was copied
                return f"input {item.file_path!r}: {e.strerror or e}"
        return None

    def run(self, handle: ProcessHandle) -> int:
        """Run the command once, in wd/ as it is, until it exits or `handle` kills it. Its exit code."""
        out = os.open(self.dir / "stdout.txt", _LOG_FLAGS, 0o666)
        try:
            err = os.open(self.dir / "stderr.txt", _LOG_FLAGS, 0o666)
            try:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", self.command],
                    cwd=self.wd,
                    env=self.env,
                    stdin=_devnull(),
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            finally:
                os.close(err)
        finally:
            os.close(out)
        handle.attach(proc)
        self._record(self.ledger.started, proc.pid, self.name)  # `batchflow cleanup` stops it if we die
        code = proc.wait()
        handle.detach(kill_group=self.kill_leftovers)
        self._record(self.ledger.ended, proc.pid)
        return 128 - code if code < 0 else code  # killed by signal N -> 128 + N, as sh reports it

    def collect(self, succeeded: bool) -> Collected:
        """Upload the outputs whose condition applies, then stdout.txt and stderr.txt to the log
        location (on completion, as on Batch). A single-file output missing fails a success."""
        outputs: list[str] = []
        unmatched: list[str] = []
        failure: str | None = None
        for out in self.outputs:
            if not _applies(out.condition, succeeded):
                continue
            try:
                files = _output_files(self.wd, out)
                if files is None:
                    if succeeded:
                        failure = f"output file {out.pattern!r} not found"
                    continue
                if not files:
                    unmatched.append(out.pattern)
                url = self.container_urls[out.container]
                for src, blob in files:
                    outputs.append(put_to_container_url(url, blob, src))
            except (BatchflowError, OSError) as e:
                log.warning("task %s: could not upload output %r: %s", self.name, out.pattern, e)
                failure = failure or f"could not upload output {out.pattern!r}: {e}"
        logs_failure, stored = self._upload_logs()
        return Collected(tuple(outputs), tuple(unmatched), failure or logs_failure, stored)

    def keep_logs(self, dest: Path) -> bool:
        """Hard-link the last attempt's stdout.txt/stderr.txt into `dest`. False if the command never ran."""
        if not (self.dir / "stdout.txt").exists():
            return False
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("stdout.txt", "stderr.txt"):
            replace_with_link(self.dir / name, dest / name)
        return True

    def _upload_logs(self) -> tuple[str | None, tuple[Path, Path] | None]:
        """(why the upload failed, or None; where stdout.txt and stderr.txt are stored on this
        machine, if they are: a file:// container)."""
        if self.logs is None or not (self.dir / "stdout.txt").exists():
            return None, None
        url = self.container_urls[self.logs.container]
        failure: str | None = None
        for name in ("stdout.txt", "stderr.txt"):
            try:
                put_to_container_url(url, self.logs.blob(self.name, name), self.dir / name, growing=True)
            except BatchflowError as e:
                log.warning("task %s: could not upload %s: %s", self.name, name, e)
                failure = failure or f"could not upload {name}: {e}"
        if failure is not None or urlsplit(url).scheme.lower() != "file":
            return failure, None
        folder = file_url_path(url).joinpath(*self.logs.blob(self.name, "").split("/"))
        return None, (folder / "stdout.txt", folder / "stderr.txt")

    def _record(self, write: Callable[..., None], *args: object) -> None:
        """A ledger line; a full disk costs only `batchflow cleanup`'s knowledge of this process."""
        try:
            write(*args)
        except OSError as e:
            log.warning("cannot record process %s in %s: %s", args[0], self.ledger.path, e)


@dataclass(frozen=True, eq=False)
class Node:
    """One node folder of a pool, and the environment every command on it starts from."""

    pool_id: str
    name: str
    root: Path
    account: str
    environment: Mapping[str, str]  # node_environment(): what a node has besides AZ_BATCH_*
    ledger: ProcessLedger
    spares: SpareFolders | None = None  # succeeded tasks' folders, for the next tasks

    def lay_out(self) -> None:
        for sub in ("shared", "startup/wd", "workitems"):
            (self.root / sub).mkdir(parents=True)
        if self.spares is not None:
            self.spares.expect(self.root / "workitems")

    def job_folder(self, job_id: str) -> Path:
        return self.root / "workitems" / job_id

    def start_task(self, spec: StartTaskSpec, inputs: tuple[ResolvedFile, ...]) -> NodeTask:
        task_dir = self.root / "startup"
        env = {**self.environment, **spec.environment, **self._batch_env(task_dir)}
        name = f"start task on {self.name}"
        return NodeTask(name, spec.command, inputs, task_dir, env, self.ledger, kill_leftovers=False)

    def task(
        self, job_id: str, spec: RenderedTask, inputs: tuple[ResolvedFile, ...], urls: Mapping[str, str]
    ) -> NodeTask:
        task_dir = self.job_folder(job_id) / "job-1" / spec.id
        env = {
            **self.environment,
            **spec.environment,
            **self._batch_env(task_dir),
            "AZ_BATCH_JOB_ID": job_id,
            "AZ_BATCH_TASK_ID": spec.id,
        }
        return NodeTask(
            spec.id,
            spec.command,
            inputs,
            task_dir,
            env,
            self.ledger,
            kill_leftovers=True,
            outputs=spec.outputs,
            logs=spec.logs,
            container_urls=urls,
            spares=self.spares,
        )

    def _batch_env(self, task_dir: Path) -> dict[str, str]:
        task = str(task_dir)
        return {**self._node_env, "AZ_BATCH_TASK_DIR": task, "AZ_BATCH_TASK_WORKING_DIR": task + "/wd"}

    @functools.cached_property
    def _node_env(self) -> dict[str, str]:
        """The AZ_BATCH_* variables every command on this node has, whatever its task."""
        return {
            "AZ_BATCH_NODE_ROOT_DIR": str(self.root),
            "AZ_BATCH_NODE_SHARED_DIR": str(self.root / "shared"),
            "AZ_BATCH_NODE_STARTUP_DIR": str(self.root / "startup"),
            "AZ_BATCH_POOL_ID": self.pool_id,
            "AZ_BATCH_NODE_ID": self.name,
            "AZ_BATCH_ACCOUNT_NAME": self.account,
            "AZ_BATCH_TASK_USER_IDENTITY": USER_IDENTITY,
        }


@functools.cache
def _devnull() -> int:
    """Every command's stdin: /dev/null, opened once (Popen's DEVNULL opens it again for each one)."""
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group has exited already
        return


def _applies(condition: OutputCondition, ok: bool) -> bool:
    return condition is OutputCondition.COMPLETION or (condition is OutputCondition.SUCCESS) == ok


def _output_files(wd: Path, out: TaskOutput) -> list[tuple[Path, str]] | None:
    """(file, blob name) pairs for an output; None if a single-file pattern names a missing file.

    A single file lands at `destination` (or destination + its name when destination ends in
    '/'); a glob's files land at destination + their path below the pattern's literal folders,
    as Batch does (`out/**/*.mp3` puts wd/out/a/b.mp3 at <destination>a/b.mp3).
    """
    literal = glob_literal(out.pattern)
    if literal is not None:
        src = wd / literal
        if not src.is_file():
            return None
        dest = out.destination
        return [(src, dest + src.name if not dest or dest.endswith("/") else dest)]
    segments = out.pattern.split("/")
    split = next(i for i, s in enumerate(segments) if has_magic(s))
    base = wd.joinpath(*segments[:split])
    if not base.is_dir():
        return []
    prefix = (
        out.destination if not out.destination or out.destination.endswith("/") else out.destination + "/"
    )
    return [(path, prefix + rel) for rel, path in iter_files(base, ["/".join(segments[split:])])]


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            data = f.read()
    except FileNotFoundError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]
