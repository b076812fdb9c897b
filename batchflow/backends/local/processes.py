"""The process groups a local run started, on disk, so they can be stopped after batchflow dies.

Each local task (and start task) runs in a session of its own, so a SIGKILL of batchflow leaves it
running. The local compute appends one line to <run folder>/processes.jsonl when a command starts
(its process group id and the kernel's start time of its leader) and one when it ends.
`batchflow cleanup` stops the groups that started and never ended, but only where the leader is
still the process that was recorded: a pid the system has since reused for something else is
left alone (its start time differs).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from batchflow.linelog import LineLog
from batchflow.procinfo import process_start

LEDGER = "processes.jsonl"


class ProcessLedger:
    """Appends start and end records of process groups to a run's ledger file (thread-safe). The
    file stays open until close() (a record after that opens it again)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LEDGER
        self._log = LineLog(self.path)

    def started(self, pgid: int, task: str) -> None:
        self._append({"pgid": pgid, "task": task, "start": process_start(pgid)})

    def ended(self, pgid: int) -> None:
        self._append({"pgid": pgid, "ended": True})

    def close(self) -> None:
        self._log.close()

    def _append(self, record: dict[str, object]) -> None:
        line = json.dumps(record) + "\n"
        try:
            self._log.append(line)
        except FileNotFoundError:  # no run folder yet
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._log.append(line)


def leftovers(run_dir: Path) -> dict[int, str]:
    """The process groups of a run that started, never ended, and still run: {pgid: task id}."""
    started: dict[int, tuple[str, int | None]] = {}
    try:
        lines = (run_dir / LEDGER).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short when batchflow was killed mid-write
            continue
        pgid = record.get("pgid")
        if not isinstance(pgid, int):
            continue
        if record.get("ended"):
            started.pop(pgid, None)
        else:
            started[pgid] = (str(record.get("task", "")), record.get("start"))
    return {pgid: task for pgid, (task, start) in started.items() if _alive(pgid) and _same(pgid, start)}


def _same(pgid: int, start: int | None) -> bool:
    """The live group `pgid` is the one recorded: its leader has the recorded start time, or the
    leader is gone (the kernel reuses no pid while a process group of that id lives on). Without a
    recorded start time (no /proc, as on macOS) it cannot be told apart from a stranger: left alone."""
    if start is None:
        return False
    now = process_start(pgid)
    return now is None or now == start


def stop(groups: dict[int, str], grace: float = 5.0) -> list[str]:
    """SIGTERM each group, then SIGKILL what is left after `grace` seconds. Returns the task ids."""
    for pgid in groups:
        _signal(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in groups) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pgid in groups:
        _signal(pgid, signal.SIGKILL)
    return sorted(groups.values())


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return
