"""A file that lines are appended to as things happen: a run's task journal, the local process ledger.

The file stays open between lines (O_APPEND), so a line costs one write, not an open, a write and a
close: these files take a line or two per task. Thread-safe. A write that fails (a full disk) raises
OSError; the file is opened again for the next line, and the line the failed write may have cut
short is ended first, so only that line is lost (readers skip a line they cannot parse).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class LineLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._cut = False  # a write failed: its line may be cut short

    def append(self, text: str) -> None:
        """Append `text`: whole lines, each ending in a newline. Opens the file (creating it) on the
        first call, or the first after close()."""
        data = text.encode("utf-8")
        with self._lock:
            if self._cut:
                data = b"\n" + data
            try:
                if self._fd is None:
                    self._fd = os.open(self.path, _FLAGS, 0o644)
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:
                if self._fd is not None:  # opened the next time: the file may have been replaced
                    self._cut = True
                    fd, self._fd = self._fd, None
                    os.close(fd)
                raise
            self._cut = False

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:  # one nobody closed (a run's task observer): its file goes with it
        with contextlib.suppress(Exception):
            self.close()
