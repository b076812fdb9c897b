"""The reporters of a run's events (batchflow.events): what a person sees, stage lines, live progress
and the final summary, all on stderr (Reporter); what a program reads, one JSON object per event on
stdout (JsonLinesReporter, `--output jsonl`).

stdout is kept for machine-useful output (`--output json`, `--output jsonl`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from batchflow.events import (
    Event,
    EventSink,
    Info,
    RunResult,
    RunStarted,
    Stage,
    TaskProgress,
    TransferProgress,
    Warn,
    event_json,
)
from batchflow.model import TaskCounts
from batchflow.redact import redact, redact_json
from batchflow.state import RecordState, RunState, RunStatus

if TYPE_CHECKING:  # rich is imported where a terminal needs it: a run in a pipe or a log prints plain lines
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Column


_RICH_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE")
# What rich's Console.print strips from text (rich.control.strip_control_codes): bell, backspace,
# vertical tab, form feed, carriage return.
_CURSOR_CONTROLS = dict.fromkeys((7, 8, 11, 12, 13))


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (ValueError, OSError):  # closed
        return False


def _fixed(width: int) -> Column:
    from rich.table import Column

    return Column(min_width=width, no_wrap=True)


PLAIN_PROGRESS_EVERY = 5.0  # seconds between plain progress lines when nothing finished


class Reporter:
    """The text reporter: stage lines and progress, then the summary. Live rich bar on a terminal,
    plain lines otherwise. With `quiet`, only warnings and the summary."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        quiet: bool = False,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.live = (not quiet) and (_isatty(self.stream) if live is None else live)
        self.clock = clock
        # On a terminal (or with FORCE_COLOR / TTY_COMPATIBLE, which rich honours), rich: colour and
        # the live bar. Elsewhere the same lines, plain, without importing rich (25 ms of start-up).
        self._rich = self.live or _isatty(self.stream) or any(map(os.environ.get, _RICH_ENV))
        self._plain_lock = threading.Lock()  # rich's console serialises writes; backends' threads print
        self._console_made: Console | None = None
        self._progress: Progress | None = None
        self._bar: TaskID | None = None
        self._last_plain: tuple[TaskCounts, float] | None = None
        self._started = clock()
        self._gone = False  # the stream can no longer be written (a closed terminal)

    def _print(self, text: str, **options: Any) -> None:
        """Print to the console; once the terminal is gone (SIGHUP: writes fail with EIO) or the
        pipe is closed, go quiet instead of failing: the run must still stop its tasks and clean up."""
        if self._gone:
            return
        try:
            if self._rich:
                self._console.print(text, **options)
            else:
                with self._plain_lock:  # as rich prints: tabs expanded, no controls that move the cursor
                    self.stream.write(text.translate(_CURSOR_CONTROLS).expandtabs(8) + "\n")
                    self.stream.flush()
        except OSError:
            self._gone = True
            self.live = False

    @property
    def _console(self) -> Console:
        if self._console_made is None:
            from rich.console import Console

            # emoji=False: a file named a:thumbs_up:b.mp4 is printed as it is named
            self._console_made = Console(file=self.stream, highlight=False, soft_wrap=True, emoji=False)
        return self._console_made

    def emit(self, event: Event) -> None:
        if isinstance(event, Info):
            self._line(event.message)
        elif isinstance(event, Warn):
            self._print(redact(event.message), markup=False, style="yellow")  # even with --quiet
        elif isinstance(event, TaskProgress):
            self._progress_event(event.counts, event.total)
        elif isinstance(event, TransferProgress):
            self._transfer(event)
        elif isinstance(event, RunStarted):
            self._line(
                f"Run {event.run_id}: {event.tasks} tasks, backend {event.backend}, storage {event.storage}"
            )
        elif isinstance(event, RunResult):
            self._summary(event)
        elif isinstance(event, Stage):
            pass  # the stage's own lines say what it does
        else:  # pragma: no cover - every Event is handled above
            raise AssertionError(f"unknown event {event!r}")

    def _line(self, message: str) -> None:
        if not self.quiet:
            self._print(redact(message), markup=False)

    def _progress_event(self, counts: TaskCounts, total: int) -> None:
        if self.quiet or self._gone:
            return
        try:
            self._show_progress(counts, total)
        except OSError:
            self._gone = True
            self.live = False

    def _show_progress(self, counts: TaskCounts, total: int) -> None:
        if self.live:
            if self._progress is None:
                from rich.progress import (
                    BarColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                    TimeRemainingColumn,
                )
                from rich.table import Column

                # Done/total, elapsed and ETA first and never squeezed; then the bar, the counts
                # (succeeded is done minus failed) and the rate, cut, not wrapped, on a narrow
                # terminal: at 80 columns only the rate at the end may go.
                self._progress = Progress(
                    TextColumn("[bold]Tasks", table_column=_fixed(5)),
                    TextColumn("{task.completed}/{task.total}", table_column=_fixed(9)),
                    TimeElapsedColumn(table_column=_fixed(7)),
                    TextColumn("ETA", table_column=_fixed(3)),
                    TimeRemainingColumn(table_column=_fixed(7)),
                    BarColumn(bar_width=10, table_column=_fixed(10)),
                    TextColumn(
                        "{task.fields[counts]}", table_column=Column(no_wrap=True, overflow="ellipsis")
                    ),
                    console=self._console,
                    transient=False,
                )
                self._progress.start()
                self._bar = self._progress.add_task("tasks", total=total, counts="")
            live_text = f"running {counts.running}  queued {counts.active}  failed {counts.failed}"
            if self._bar is None:  # pragma: no cover - set together with _progress
                return
            elapsed = max(self.clock() - self._started, 1e-9)
            if counts.completed:  # last, so that a narrow terminal cuts it first
                live_text += f"  {counts.completed / elapsed:.1f} tasks/s"
            self._progress.update(self._bar, completed=counts.completed, total=total, counts=live_text)
            return
        text = (
            f"queued {counts.active}  running {counts.running}  "
            f"succeeded {counts.succeeded}  failed {counts.failed}"
        )
        now = self.clock()
        last = self._last_plain
        changed = last is None or last[0].completed != counts.completed or last[0].failed != counts.failed
        due = last is None or now - last[1] >= PLAIN_PROGRESS_EVERY
        finished = counts.completed == total
        # Plain mode: a line when something finished (at most every few seconds), and the last one.
        if (changed and due) or (finished and (last is None or last[0] != counts)):
            times = f"elapsed {clock_text(now - self._started)}"
            if counts.completed and not finished:
                eta = (now - self._started) / counts.completed * (total - counts.completed)
                times += f", ETA {clock_text(eta)}"
            self._print(f"Tasks {counts.completed}/{total}: {text} ({times})", markup=False)
            self._last_plain = (counts, now)

    def _transfer(self, event: TransferProgress) -> None:
        if self.quiet or self._gone or not self.live or event.total_files <= 1:
            return
        verb = event.direction.verb
        if self._progress is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn(f"[bold]{verb}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} files"),
                TextColumn("{task.fields[sent]}"),
                TimeElapsedColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
            self._bar = self._progress.add_task(verb, total=event.total_files, sent="")
        if self._bar is not None:
            sent = f"{event.bytes_sent / 1e6:.1f} MB sent"
            self._progress.update(self._bar, completed=event.files, sent=sent)

    def close_progress(self) -> None:
        if self._progress is not None:
            progress, self._progress, self._bar = self._progress, None, None
            try:
                progress.stop()
            except OSError:
                self._gone = True
                self.live = False

    def _summary(self, result: RunResult, *, tail_lines: int = 10) -> None:
        """The final report: counts, time per stage, where outputs went, and why tasks failed."""
        self.close_progress()
        counts = result.counts
        not_started = f", {counts['not_started']} not started" if counts["not_started"] else ""
        lines = [
            f"Run {result.run_id}: {result.status.value}. {counts['succeeded']} succeeded, "
            f"{counts['failed']} failed{not_started} of {result.task_count} tasks."
        ]
        if result.stage_seconds:
            lines.append("Time: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_seconds.items()))
        lines.extend(f"Outputs: {o}" for o in result.outputs)
        unmatched = sorted(
            (tid, pattern) for tid, t in result.tasks.items() for pattern in t.unmatched_outputs
        )
        for tid, pattern in unmatched[:20]:
            lines.append(f"Task {tid}: output pattern {pattern!r} matched no file")
        if len(unmatched) > 20:
            lines.append(f"... and {len(unmatched) - 20} more output patterns that matched nothing")
        failed = [(tid, t) for tid, t in sorted(result.tasks.items()) if t.state is RecordState.FAILED]
        for tid, t in failed[:20]:
            why = t.failure or f"exit code {t.exit_code}"
            lines.append(f"Task {tid} failed ({why}, {t.attempts} attempt(s))")
            if t.stderr:
                path = result.run_folder / t.stderr
                for line in tail(path, tail_lines):
                    lines.append(f"    | {line}")
                lines.append(f"    full logs: {path.parent}")
        if len(failed) > 20:
            lines.append(f"... and {len(failed) - 20} more failed tasks: batchflow status {result.run_id}")
        lines.append(f"Run folder: {result.run_folder}")
        for line in lines:
            self._print(redact(line), markup=False)


class JsonLinesReporter:
    """`--output jsonl`: one JSON object per event on `stream` (stdout), flushed per line, redacted.
    A task count equal to the last one is not repeated. Once the reader has gone (a closed pipe), it
    stays silent and the run goes on: it must still stop its tasks and clean up."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()  # backends may notify from their own threads
        self._last_progress: TaskProgress | None = None
        self._gone = False

    def emit(self, event: Event) -> None:
        line = redact_json(event_json(event)) + "\n"
        with self._lock:
            if self._gone:
                return
            if isinstance(event, TaskProgress):
                if event == self._last_progress:
                    return
                self._last_progress = event
            try:
                self.stream.write(line)
                self.stream.flush()
            except OSError:
                self._gone = True
                _point_at_devnull(self.stream)

    def close_progress(self) -> None:
        pass


class FanOut:
    """Every event to each of `sinks`, in order (`--output jsonl`: the text on stderr as well)."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = sinks

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            sink.emit(event)

    def close_progress(self) -> None:
        for sink in self.sinks:
            sink.close_progress()


def _point_at_devnull(stream: IO[str]) -> None:
    """The reader went away: what is still buffered, and the interpreter's last flush, go nowhere
    instead of failing again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)


def clock_text(seconds: float) -> str:
    """H:MM:SS, as rich's progress columns show times."""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def tail(path: Path, n: int) -> list[str]:
    """The last `n` lines of a text file (reads at most the last 64 KB)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 65536))
            data = f.read()
    except OSError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-n:]


def as_json(state: RunState) -> dict[str, Any]:
    """The run as `--output json` prints it (and `--output jsonl`'s last line, with "event")."""
    return RunResult.of(state).to_json()


RUNNING_SHOWN = 5  # `batchflow status` of a running run: the tasks running longest


def status_lines(state: RunState, status: RunStatus, now: float) -> list[str]:
    """`batchflow status`: where the run is, what runs now (the longest first), why tasks failed."""
    counts = state.counts()
    # A dead run's running tasks (their processes may live on): no "Running:" lines below say them.
    shown = counts["running"] and status is not RunStatus.RUNNING
    not_started = f", {counts['running']} running" if shown else ""
    not_started += f", {counts['not_started']} not started" if counts["not_started"] else ""
    not_started += f", {counts['active']} queued" if counts["active"] else ""
    lines: list[str] = [
        f"Run {state.run_id} ({state.backend}): {status.value}, stage {state.stage}",
        f"Workflow: {state.workflow}",
        f"Tasks: {state.task_count} total, {counts['succeeded']} succeeded, {counts['failed']} failed"
        + not_started,
    ]
    if status is RunStatus.RUNNING and (running := state.running_tasks()):
        lines.append(f"Running: {len(running)} task{'s' if len(running) != 1 else ''}, the longest first")
        for tid, t in running[:RUNNING_SHOWN]:
            since = f"for {clock_text(now - t.started_at)}" if t.started_at is not None else "(start unknown)"
            again = f", attempt {t.attempts}" if t.attempts > 1 else ""
            lines.append(f"  {tid}: running {since}{again}")
        if len(running) > RUNNING_SHOWN:
            lines.append(f"  ... and {len(running) - RUNNING_SHOWN} more")
    if status is RunStatus.DEAD:
        lines.append(
            f"Its batchflow process ({state.pid}) is gone without ending the run: "
            f"`batchflow cleanup {state.run_id}` stops what it left running and removes its job and pool"
        )
    if state.message:
        lines.append(f"Message: {state.message}")
    for tid, t in sorted(state.tasks.items()):
        if t.state is RecordState.FAILED:
            lines.append(f"  {tid}: {t.failure or f'exit code {t.exit_code}'}")
            if t.stderr:
                lines.extend(f"    | {line}" for line in tail(state.folder / t.stderr, 5))
    lines.append(f"Run folder: {state.folder}")
    return lines
