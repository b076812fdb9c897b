"""One run at a time per job and per local pool of a workspace: a second run refuses at once.

Two runs of one workflow at once share what the workflow names: on Batch the job id (unique in the
account: the second run's job is refused, and its cleanup must not touch the first run's), locally the
pool's folders (the second run's layout would wipe the first's task folders). Running both would lose
work, so the second run stops before it creates anything (exit 2), naming the run that holds the lock.

The locks are `flock`s on files under <workspace>/locks/: the kernel drops them when the process
ends, however it ends (SIGKILL included), so a dead run never leaves a stale lock behind. Each lock
file names its holder (run id, pid, host) for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from batchflow.errors import ConfigurationError
from batchflow.procinfo import host_name

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class RunInProgress(ConfigurationError):
    """Another run holds what this run needs. Exit code 2; nothing was created."""


@contextlib.contextmanager
def exclusive(workspace: Path, names: Sequence[str], run_id: str) -> Iterator[None]:
    """Hold a lock for each of `names` (e.g. "job LinuxFFmpegJob") while the block runs."""
    folder = workspace / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    held: list[IO[str]] = []
    try:
        for name in sorted(set(names)):
            held.append(_take(folder / (_UNSAFE.sub("_", name.casefold()) + ".lock"), name, run_id))
        yield
    finally:
        for f in held:
            f.close()  # closing the file releases its flock


def _take(path: Path, name: str, run_id: str) -> IO[str]:
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open for the lock's lifetime)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = _holder(f.read())
        f.close()
        raise RunInProgress(
            f"{name} is in use by run {holder} of this workspace: wait for it to end, or stop it "
            "(Ctrl-C in its terminal, or kill its process; `batchflow status` shows it)"
        ) from None
    except BaseException:
        f.close()
        raise
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"run": run_id, "pid": os.getpid(), "host": host_name(), "at": time.time()}))
    f.flush()
    return f


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"{info['run']} (pid {info['pid']} on {info['host']})"
    except (ValueError, KeyError, TypeError):
        return "(unknown)"
