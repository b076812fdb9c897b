"""Stand-ins for time, shared by the tests of batchflow's Azure Batch code."""

from __future__ import annotations

import threading
from collections.abc import Callable


class FakeClock:
    """A monotonic clock that moves only when someone sleeps on it (`sleep` records and advances it).

    `on_sleep` runs after each sleep: the Batch tests let the emulator's control loop make a couple of
    passes there, so the next poll sees what the service did meanwhile. Thread-safe.
    """

    def __init__(self, start: float = 0.0, on_sleep: Callable[[], None] | None = None) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._on_sleep = on_sleep
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds
        if self._on_sleep is not None:
            self._on_sleep()
