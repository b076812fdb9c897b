"""The local compute's deadlines: run an action at a time on its clock, on one thread of their own.

LocalCompute keeps a task's and a job's max_wall_clock here. Each action runs with the compute's lock
held, as any other change to its state does; what the actions do (kill a process group, end a job)
is the compute's business, not this module's. Nothing polls: the thread sleeps until the earliest
deadline or a new one.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable


class Deadlines:
    """Every method is called with `lock` held."""

    def __init__(self, lock: threading.Lock, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._timer = threading.Condition(lock)  # a new deadline, or stop
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def after(self, seconds: float, action: Callable[[], None]) -> None:
        """Run `action` (lock held) `seconds` from now, unless stopped before."""
        entry = (self._clock() + seconds, next(self._seq), action)
        heapq.heappush(self._heap, entry)
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._watch, name="batchflow-deadlines", daemon=True)
            self._thread.start()
        if self._heap[0] is entry:  # the thread sleeps until an earlier one otherwise: let it sleep
            self._timer.notify()

    def stop(self) -> threading.Thread | None:
        """Run no more actions. Returns the thread to join once the lock is released."""
        self._stopped = True
        self._timer.notify_all()
        thread, self._thread = self._thread, None
        return thread

    def _watch(self) -> None:
        with self._timer:
            while not self._stopped:
                if not self._heap:
                    self._timer.wait()
                    continue
                remaining = self._heap[0][0] - self._clock()
                if remaining > 0:
                    self._timer.wait(remaining)
                    continue
                _, _, action = heapq.heappop(self._heap)
                action()
