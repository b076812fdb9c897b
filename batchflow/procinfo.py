"""What the kernel says of a process: its start time, so that a pid the system reused is not taken
for the process that was recorded (run states, the local task ledger)."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def host_name() -> str:
    """This machine's name, as socket.gethostname() says it (both are uname's node name on Linux and
    macOS), without importing socket: 5 ms of every `batchflow run`."""
    return os.uname().nodename


def process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), or None (no such
    process, a zombie, or no /proc)."""
    try:  # os-level: the local backend asks once per task it starts
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat = os.read(fd, 4096).decode("ascii", errors="replace")  # one line, well under 1 KB
        finally:
            os.close(fd)
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    if not fields or fields[0] == "Z":  # exited, not yet reaped: not running
        return None
    try:
        return int(fields[19])  # field 22 of proc(5), the 20th after comm
    except (IndexError, ValueError):
        return None


def boot_time() -> float | None:
    """When this machine booted (epoch seconds, /proc/stat's btime), or None (no /proc)."""
    try:
        with open("/proc/stat", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def is_running(pid: int, start: int | None) -> bool:
    """Process `pid`, known to exist, is the one that started at `start` and has not exited. Where
    the kernel says nothing (no /proc), the pid is trusted."""
    now = process_start(pid)
    if now is None:
        return not (PROC / "self" / "stat").exists()  # Linux: a zombie or gone; elsewhere: unknown
    return start is None or now == start
