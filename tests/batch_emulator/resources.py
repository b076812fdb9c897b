"""The service's resources (pools, nodes, jobs, tasks): plain mutable records.

The Service and the control loop change them under the store's lock; `render` turns them into the
JSON the service returns.
"""

from __future__ import annotations

import datetime
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .wire import now

SCHEDULABLE = frozenset({"idle", "running"})


def _etag() -> str:
    return "0x8DD" + format(int(now().timestamp() * 1e7), "X")[-12:]


@dataclass
class RunHandle:
    """A process the emulator runs for a (start) task, so the service can kill it from another thread."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pgid: int | None = None
    killed: str | None = None  # why, once killed


@dataclass(eq=False)
class Node:
    id: str
    pool_id: str
    dedicated: bool
    root: Path
    vm_size: str
    state: str = "creating"
    state_time: datetime.datetime = field(default_factory=now)
    allocation_time: datetime.datetime = field(default_factory=now)
    boot_time: datetime.datetime | None = None
    scheduling: str = "enabled"
    start_task_info: dict[str, Any] | None = None
    running: list[Task] = field(default_factory=list)
    used_slots: int = 0
    total_run: int = 0
    total_succeeded: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    generation: int = 0  # bumped on preemption etc.: a start task result from an older life is ignored
    due: float = 0.0  # monotonic time of the next lifecycle step (creating -> starting -> start task)
    restore_at: float | None = None
    start_handle: RunHandle | None = None
    ip: str = "10.0.0.4"

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state, self.state_time = state, now()


@dataclass(eq=False)
class Pool:
    id: str
    body: dict[str, Any]  # the validated create body (vmSize, virtualMachineConfiguration, startTask, ...)
    target_dedicated: int
    target_low_priority: int
    slots_per_node: int
    fill_type: str
    resize_timeout: datetime.timedelta
    created: datetime.datetime = field(default_factory=now)
    last_modified: datetime.datetime = field(default_factory=now)
    state: str = "active"
    state_time: datetime.datetime = field(default_factory=now)
    allocation_state: str = "resizing"
    allocation_time: datetime.datetime = field(default_factory=now)
    nodes: dict[str, Node] = field(default_factory=dict)
    etag: str = field(default_factory=_etag)
    auto_scale_run: dict[str, Any] | None = None
    resize_errors: list[dict[str, Any]] = field(default_factory=list)  # of the last resize
    delete_due: float | None = None
    node_seq: int = 0
    auto_job: str | None = None  # an auto pool: the id of the job it was created for
    auto_prefix: str | None = None  # an auto pool: the autoPoolIdPrefix it was made with

    def touch(self) -> None:
        self.last_modified, self.etag = now(), _etag()

    def set_allocation(self, state: str) -> None:
        if state != self.allocation_state:
            self.allocation_state, self.allocation_time = state, now()


@dataclass(eq=False)
class Task:
    id: str
    job_id: str
    body: dict[str, Any]
    seq: int
    max_retries: int
    max_wall: datetime.timedelta | None
    required_slots: int = 1
    state: str = "active"
    created: datetime.datetime = field(default_factory=now)
    state_time: datetime.datetime = field(default_factory=now)
    previous: tuple[str, datetime.datetime] | None = None
    last_modified: datetime.datetime = field(default_factory=now)
    etag: str = field(default_factory=_etag)
    execution: dict[str, Any] = field(default_factory=lambda: {"retryCount": 0, "requeueCount": 0})
    node: Node | None = None  # while running
    node_info: dict[str, Any] | None = None  # where it ran last
    node_ref: tuple[str, str] | None = None  # (pool id, node id) where it ran last, for its files
    attempt: int = 0  # bumped whenever a running attempt is abandoned or finished
    instant_due: int | None = None  # instant mode: the tick that completes it
    handle: RunHandle | None = None


@dataclass(eq=False)
class Job:
    id: str
    body: dict[str, Any]
    pool_id: str
    created: datetime.datetime = field(default_factory=now)
    last_modified: datetime.datetime = field(default_factory=now)
    state: str = "active"
    state_time: datetime.datetime = field(default_factory=now)
    previous: tuple[str, datetime.datetime] | None = None
    etag: str = field(default_factory=_etag)
    tasks: dict[str, Task] = field(default_factory=dict)  # by casefolded id, in the order added
    order: list[Task] = field(default_factory=list)  # every task ever added, by id (deleted ones too)
    queue: deque[Task] = field(default_factory=deque)  # active tasks, next first
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("active", "running", "completed"), 0)
    )
    slot_counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("active", "running", "completed"), 0)
    )
    results: dict[str, int] = field(default_factory=lambda: {"succeeded": 0, "failed": 0})
    slot_results: dict[str, int] = field(default_factory=lambda: {"succeeded": 0, "failed": 0})
    end_time: datetime.datetime | None = None
    terminate_reason: str | None = None
    delete_due: float | None = None
    started: float = 0.0  # the store's clock when the job was created
    wall_deadline: float | None = None  # the store's clock
    counts_seen: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (monotonic, answer)
    complete_due: float | None = None  # monotonic: when a job whose tasks are all done completes
    auto_pool_keep_alive: bool | None = None  # a job on an auto pool: its keepAlive (None: a named pool)
    scheduling_error: dict[str, Any] | None = None  # executionInfo.schedulingError

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.previous = (self.state, self.state_time)
            self.state, self.state_time = state, now()
            self.touch()

    def touch(self) -> None:
        self.last_modified, self.etag = now(), _etag()
