"""Command line: parsing and exit codes only.

Exit codes (as pre-commit): 0 ok; 1 a known failure (a task failed, a backend error);
2 invalid input (usage, workflow file, missing requirement); 3 unexpected error (traceback
in a log file); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import os
import signal
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from batchflow import __version__
from batchflow.errors import BatchflowError, InvalidWorkflow, JobExists, Problem, Terminated, first_line
from batchflow.redact import RedactingFilter, redact, redact_json, write_json_rows

if TYPE_CHECKING:  # imported where used, so that `--version` and `validate` start fast
    import logging

    from batchflow.gc import Survey
    from batchflow.model import Plan, Workflow
    from batchflow.resume import Decision
    from batchflow.state import RunState

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_UNEXPECTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a command whose reader went away


def _backend_choices() -> list[str]:
    from batchflow.backends import registry

    return registry.names()


def _backend_option(sp: argparse.ArgumentParser, flag: str, **kw: Any) -> None:
    """An option naming a backend (--backend, --storage). Its choices are set once it exists: argparse
    lists an option's choices as it adds it (to check its metavar), which would import the registry,
    and through it the model, for every command, --version too."""
    sp.add_argument(flag, **kw).choices = _BackendNames()


class _BackendNames:
    """argparse `choices` of --backend and --storage: the registry's names, read only when argparse
    looks at them (to check a value given, or to show help), so `batchflow --version` imports no
    registry (and, through it, no model)."""

    def __contains__(self, name: object) -> bool:
        return name in _backend_choices()

    def __iter__(self) -> Iterator[str]:
        return iter(_backend_choices())


class _HelpFormatter(argparse.HelpFormatter):
    """`--backend`'s help lists each backend with its description, read from the registry only when
    help is shown: `batchflow --version` and every command still import no backend.

    Its width is the terminal's, found as shutil.get_terminal_size finds it ($COLUMNS, else the
    terminal of stdout, else 80): argparse makes a formatter for every option it adds, and its own
    asks shutil, whose import loads bz2 and lzma (2 ms of every start)."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, _terminal_columns() - 2 if width is None else width
        )

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if action.dest == "backend" and text is not None:
            from batchflow.backends import registry

            listed = "; ".join(f"{b.name}: {b.description}" for b in registry.all_backends())
            text = f"{text} ({listed.replace('%', '%%')})"  # argparse %-formats help
        return text


def _terminal_columns() -> int:
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        stdout = sys.__stdout__
        try:
            columns = os.get_terminal_size(stdout.fileno()).columns if stdout is not None else 0
        except (AttributeError, ValueError, OSError):  # a closed stdout, or not a terminal
            columns = 0
    return columns or 80


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="batchflow",
        description="Run embarrassingly parallel command-line work on Azure Batch or locally, "
        "from one YAML file.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"batchflow {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, formatter_class=_HelpFormatter)

    def workflow_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("workflow", type=Path, help="the workflow YAML file")
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="override a variable declared under vars (repeatable)",
        )

    def output_arg(sp: argparse.ArgumentParser, *, stream: bool = False) -> None:
        choices = ["text", "json", "jsonl"] if stream else ["text", "json"]
        more = "; jsonl: every event as it happens, one JSON object a line" if stream else ""
        sp.add_argument("--output", choices=choices, default="text", help="output format on stdout" + more)

    sp = command("validate", "check a workflow file and report every problem")
    workflow_args(sp)
    output_arg(sp)
    _backend_option(sp, "--backend", default="local", help="check it for this backend")

    sp = command("plan", "show what a run would do, creating nothing")
    workflow_args(sp)
    output_arg(sp)
    _backend_option(sp, "--backend", default="local", help="plan it for this backend")
    sp.add_argument("--all", action="store_true", help="list every task, not only the first 20")

    sp = command("run", "run a workflow")
    workflow_args(sp)
    output_arg(sp, stream=True)
    _backend_option(sp, "--backend", default="local", help="where tasks run")
    _backend_option(sp, "--storage", help="where files live (default: the backend's)")
    sp.add_argument(
        "--workspace", type=Path, help="local state folder (default: .batchflow beside the workflow)"
    )
    sp.add_argument("--concurrency", type=_positive_int, help="local backend: tasks at once")
    sp.add_argument("--quiet", "-q", action="store_true", help="only warnings and the summary")
    sp.add_argument(
        "--force", action="store_true", help="run every task, even those an earlier run already did"
    )

    sp = command("attach", "take over a run whose batchflow process died while its job ran")
    sp.add_argument("run", nargs="?", help="run id (a unique prefix is enough; default: the latest)")
    sp.add_argument("--workflow", type=Path, help="find runs in this workflow's workspace")
    sp.add_argument("--workspace", type=Path, help="find runs in this workspace (default: ./.batchflow)")
    sp.add_argument("--quiet", "-q", action="store_true", help="only warnings and the summary")
    sp.add_argument("--concurrency", type=_positive_int, help=argparse.SUPPRESS)
    output_arg(sp, stream=True)

    sp = command("retry", "run again only the tasks that failed in a run (default: the latest)")
    sp.add_argument("run", nargs="?", help="run id (a unique prefix is enough; default: the latest)")
    sp.add_argument("--workflow", type=Path, help="find runs in this workflow's workspace")
    sp.add_argument("--workspace", type=Path, help="find runs in this workspace (default: ./.batchflow)")
    _backend_option(sp, "--backend", help="where tasks run (default: the run's)")
    _backend_option(sp, "--storage", help="where files live (default: the run's)")
    sp.add_argument("--concurrency", type=_positive_int, help="local backend: tasks at once")
    sp.add_argument("--quiet", "-q", action="store_true", help="only warnings and the summary")
    output_arg(sp, stream=True)

    sp = command("status", "show the state of a run (default: the latest)")
    sp.add_argument("run", nargs="?", help="run id (a unique prefix is enough)")
    sp.add_argument("--workflow", type=Path, help="find runs in this workflow's workspace")
    sp.add_argument("--workspace", type=Path, help="find runs in this workspace (default: ./.batchflow)")
    output_arg(sp)

    sp = command("cleanup", "remove what a run left behind (job, pool, containers per policy)")
    sp.add_argument("run", nargs="?", help="run id (a unique prefix is enough; default: the latest)")
    sp.add_argument("--workflow", type=Path, help="find runs in this workflow's workspace")
    sp.add_argument("--workspace", type=Path, help="find runs in this workspace (default: ./.batchflow)")
    sp.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation on a terminal")
    output_arg(sp)

    sp = command("gc", "remove what batchflow made for runs that are over (pools, jobs, folders)")
    sp.add_argument("--workflow", type=Path, help="the workspace of this workflow")
    sp.add_argument("--workspace", type=Path, help="this workspace (default: ./.batchflow)")
    sp.add_argument(
        "--older-than",
        type=_duration,
        metavar="AGE",
        help="also prune run folders, and what runs unknown here left, older than AGE (7d, 12h, 30m)",
    )
    sp.add_argument("--yes", "-y", action="store_true", help="remove without asking")
    output_arg(sp)

    sp = command("download", "fetch the outputs of a run (finished, failed or interrupted)")
    sp.add_argument("run", nargs="?", help="run id (a unique prefix is enough; default: the latest)")
    sp.add_argument("--workflow", type=Path, help="find runs in this workflow's workspace")
    sp.add_argument("--workspace", type=Path, help="find runs in this workspace (default: ./.batchflow)")
    output_arg(sp)

    command("schema", "print the workflow JSON Schema")
    return p


def _duration(text: str) -> float:
    from batchflow.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parse_overrides(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidWorkflow([Problem(None, None, None, "--set", f"expected NAME=VALUE, got {item!r}")])
        out[name.strip()] = value
    return out


def entry() -> NoReturn:
    """The `batchflow` command (and `python -m batchflow`): main(), then the exit.

    Once the interpreter has waited for every non-daemon thread and run the atexit handlers
    registered since entry() began (logging's, which closes the log files), stdout and stderr are
    flushed and the process exits without the interpreter's teardown, which frees every object of
    every module one by one: 15-30 ms after a run here, about a fifth of `batchflow validate`'s
    start-up, and more the bigger the run. (Handlers registered before entry(), by site or a
    sitecustomize, are skipped; batchflow's own modules register none when imported.) Instagram's
    servers exit the same way for the same reason. main() itself returns as any function does."""
    atexit.register(_exit_now)  # registered first, so it runs after every handler registered later
    global _exit_code
    _exit_code = main()
    sys.exit(_exit_code)


_exit_code: int | None = None  # set once main() returned


def _exit_now() -> None:
    if _exit_code is None:  # main() raised: the interpreter reports it and tears down as usual
        return
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # (None: the descriptor was closed when Python started)
                stream.flush()
    except (OSError, ValueError):  # a reader gone, a closed stream: the interpreter's exit reports it
        return
    os._exit(_exit_code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help/--version exit 0, usage errors exit 2
        return int(e.code) if isinstance(e.code, int) else EXIT_INVALID
    output = getattr(args, "output", "text")
    try:
        with _sigterm_as_interrupt():
            return int(COMMANDS[args.command](args))
    except BrokenPipeError:
        # The reader went away (`batchflow plan ... | head`): no traceback, no "unexpected error".
        # Point stdout at /dev/null so the interpreter's last flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except InvalidWorkflow as e:
        n = len(e.problems)
        summary = f"{n} problem{'s' if n != 1 else ''}; nothing was created."
        problems = [p.as_dict() for p in e.problems]
        _json_error(
            output, {"valid": False, "problems": problems, "error": summary, "exit_code": EXIT_INVALID}
        )
        for problem in e.problems:
            print(redact(str(problem)), file=sys.stderr)
        print(summary, file=sys.stderr)
        return EXIT_INVALID
    except BatchflowError as e:  # machine-readable on stdout, as the success output would have been
        _json_error(output, {"error": redact(str(e)), "exit_code": e.exit_code})
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # before a run began (a run that began ends with its "result")
        _json_error(output, {"error": "interrupted", "exit_code": EXIT_INTERRUPTED})
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:  # the world said no (disk full, permission denied, read-only): not a bug
        from batchflow.runner import describe_os_error

        message = redact(describe_os_error(e))
        _json_error(output, {"error": message, "exit_code": EXIT_FAILED})
        print(f"error: {message}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:
        log_file = _crash_log(e)
        _json_error(
            output, {"error": f"unexpected error, see {log_file}", "exit_code": EXIT_UNEXPECTED}, None
        )
        print(f"batchflow: unexpected error: {redact(type(e).__name__ + ': ' + str(e))}", file=sys.stderr)
        print(f"The traceback is in {log_file}. Please report it.", file=sys.stderr)
        return EXIT_UNEXPECTED


def _json_error(output: str, error: dict[str, Any], indent: int | None = 2) -> None:
    """An error on stdout too, for `--output json` (an object) or `--output jsonl` (a last line,
    {"event": "error", ...}); nothing for text."""
    if output == "json":
        print(redact_json(error, indent=indent))
    elif output == "jsonl":
        print(redact_json({"event": "error", **error}), flush=True)


def _crash_log(exc: BaseException) -> Path:
    import traceback  # (as logging, imported only where needed: both are milliseconds of every start)

    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "batchflow"
    root.mkdir(parents=True, exist_ok=True)
    path = root / "batchflow.log"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} batchflow {__version__}\n{redact(text)}\n")
    return path


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a killed CI job, a shutdown) and SIGHUP (the terminal closed, the SSH session
    dropped) stop a run the way Ctrl-C does: tasks stopped, state recorded, job and pool cleaned up.
    Ignoring SIGHUP left the pool and job billing and the state saying `running`."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            _drop_terminal_output()
        raise Terminated(signal.Signals(signum).name)

    caught = (signal.SIGTERM, signal.SIGHUP)
    try:
        previous = {s: signal.signal(s, handler) for s in caught}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


# ---- commands ----------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from batchflow.render import check_plan, gc_paused
    from batchflow.spec import load_workflow

    with gc_paused():  # (render.gc_paused: a short-lived process that makes millions of objects)
        wf = load_workflow(args.workflow, _parse_overrides(args.overrides))
        tasks, warnings = check_plan(wf, args.backend)
    _warn(warnings)
    if args.output == "json":
        result = {"valid": True, "problems": [], "warnings": list(warnings), "tasks": tasks}
        print(redact_json(result, indent=2))
    else:
        print(f"{args.workflow}: valid ({tasks} tasks)", file=sys.stderr)
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from batchflow.plan_view import print_plan, write_plan_json
    from batchflow.render import build_plan, gc_paused
    from batchflow.runplan import RUN_ID_PLACEHOLDER, plan_run
    from batchflow.spec import load_workflow

    with gc_paused():  # (render.gc_paused: a short-lived process that makes millions of objects)
        wf = load_workflow(args.workflow, _parse_overrides(args.overrides))
        plan = build_plan(wf, args.backend)
        _warn(plan.warnings)
        decisions = _resume_view(wf, plan, args.backend)
        run = plan_run(plan, RUN_ID_PLACEHOLDER)
        if args.output == "json":
            write_plan_json(sys.stdout, run, decisions, plan.warnings)
        else:
            print_plan(run, limit=None if args.all else 20, decisions=decisions)
    return EXIT_OK


def _resume_view(wf: Workflow, plan: Plan, backend_name: str) -> list[Decision] | None:
    """What a run would take from earlier ones: the workspace's runs and the storage's ledger, read
    only. Without a reachable storage (no credentials here), `plan` says so and shows every task."""
    from batchflow.backends import registry
    from batchflow.backends.base import Context
    from batchflow.digests import DigestCache
    from batchflow.ledger import TaskKey, task_keys
    from batchflow.resume import decide, load_ledger

    workspace = (wf.workspace or wf.base_dir / ".batchflow").resolve()
    backend = registry.get(backend_name)
    try:
        ctx = Context(workflow=wf, workspace=workspace, run_dir=workspace / "runs" / "plan")
        storage = registry.get(backend.default_storage).storage(ctx)
    except BatchflowError as e:
        print(f"note: not checking earlier runs' outputs ({first_line(str(e))})", file=sys.stderr)
        return None
    try:
        ledger = load_ledger(workspace, wf, storage)
        if ledger.count:
            # The inputs' digests (not saved: `plan` writes nothing) are gone before decide() lists
            # the outputs; the keys share their texts with the ledger's entries (ledger.KeyMaker).
            digests = DigestCache(workspace / "cache" / "digests.json")
            keys = task_keys(plan, backend.name, digests.md5, ledger, known=digests.known)
            del digests
        else:  # no earlier run: every task is new, whatever its key, and no input need be read
            keys = dict.fromkeys((t.id for t in plan.tasks), TaskKey("", {}))
        return decide(keys, ledger, storage)
    except BatchflowError as e:
        print(f"note: not checking earlier runs' outputs ({first_line(str(e))})", file=sys.stderr)
        return None
    finally:
        storage.close()


def _warn(warnings: Sequence[str]) -> None:
    """What input discovery skipped, and why: warnings on stderr, never a failure."""
    for warning in warnings:
        print(redact(f"warning: {warning}"), file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        return _run(args, args.workflow, _parse_overrides(args.overrides))
    except _AttachInstead as e:
        return _attach(args, e.state)


def cmd_attach(args: argparse.Namespace) -> int:
    """Take over a run whose batchflow process died while its job ran on: monitor it to the end,
    collect its results and logs, download and clean up, as the run itself would have."""
    from batchflow.state import RunState, find_run

    state = RunState.load(find_run(_workspace_of(args), args.run, args.workflow))
    if state.still_running():
        raise _still_running(state, "nothing to attach")
    args.backend, args.storage, args.force = state.backend, state.storage, False
    return _attach(args, state)


class _AttachInstead(Exception):
    def __init__(self, state: RunState) -> None:
        self.state = state


def _attach(args: argparse.Namespace, state: RunState) -> int:
    from batchflow.backends import registry
    from batchflow.state import RunStatus

    if not registry.get(state.backend).attachable:
        raise BatchflowError(
            f"run {state.run_id} ran on the {state.backend} backend, whose tasks do not outlive "
            "batchflow: `batchflow run` runs what it left undone "
            f"(and `batchflow cleanup {state.run_id}` stops leftovers)"
        )
    if state.effective_status is not RunStatus.DEAD and state.status is not RunStatus.DEAD:
        raise BatchflowError(f"run {state.run_id} ended ({state.status.value}): nothing to attach to")
    print(f"Attaching to run {state.run_id}, whose batchflow process is gone...", file=sys.stderr)
    return _run(args, Path(state.workflow), dict(state.overrides), attach_to=state)


def cmd_retry(args: argparse.Namespace) -> int:
    """A new run of a run's workflow (with its --set values) that executes only the tasks that failed
    in it, and takes the others from the ledger where it can."""
    from batchflow.state import RecordState, RunState, find_run

    state = RunState.load(find_run(_workspace_of(args), args.run, args.workflow))
    if state.still_running():
        raise _still_running(state, "let it end first")
    failed = sorted(tid for tid, t in state.tasks.items() if t.state is RecordState.FAILED)
    if not failed:
        print(f"Run {state.run_id} has no failed task: nothing to retry.", file=sys.stderr)
        return EXIT_OK
    args.backend = args.backend or state.backend
    args.storage = args.storage or state.storage
    args.force = False
    print(f"Retrying {len(failed)} failed task(s) of run {state.run_id}...", file=sys.stderr)
    return _run(args, Path(state.workflow), dict(state.overrides), only=failed)


def _run(
    args: argparse.Namespace,
    workflow: Path,
    overrides: dict[str, str],
    *,
    only: Sequence[str] | None = None,
    attach_to: RunState | None = None,
) -> int:
    from batchflow import runlock
    from batchflow.backends import registry
    from batchflow.backends.base import Context
    from batchflow.digests import DigestCache
    from batchflow.events import EventSink, RunResult, RunStarted, Warn, info_lines
    from batchflow.ledger import read_keys, task_keys
    from batchflow.render import build_plan
    from batchflow.report import FanOut, JsonLinesReporter, Reporter, as_json
    from batchflow.runner import Runner, check_destinations
    from batchflow.runplan import plan_run
    from batchflow.spec import load_workflow
    from batchflow.state import RunState, TaskJournal, new_run_id

    wf = load_workflow(workflow, overrides)
    workspace = (args.workspace or wf.workspace or wf.base_dir / ".batchflow").resolve()
    backend = registry.get(args.backend)
    plan = build_plan(wf, backend, exclude=[workspace])  # the workspace is never an input
    storage_name = args.storage or backend.default_storage
    reporter: EventSink = Reporter(quiet=args.quiet)  # text on stderr, whatever the --output
    if args.output == "jsonl":
        reporter = FanOut(reporter, JsonLinesReporter(sys.stdout))
    for warning in plan.warnings:  # what input discovery skipped: stderr, and the stream's "warning"
        reporter.emit(Warn(f"warning: {warning}"))
    if only is not None and (lost := sorted(set(only) - {t.id for t in plan.tasks})):
        reporter.emit(
            Warn(
                f"warning: {len(lost)} of the {len(only)} failed task(s) are no longer in the plan"
                f" ({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''}; an input deleted, renamed"
                " or no longer matched): not retried"
            )
        )

    # Backends are built (and requirements checked) before the run folder exists: a run that
    # cannot start creates nothing. Backend constructors never touch the disk or the network.
    run_id = attach_to.run_id if attach_to is not None else new_run_id()
    journal = TaskJournal(workspace / "runs" / run_id)  # written once the run folder exists
    ctx = Context(
        workflow=wf,
        workspace=workspace,
        run_dir=workspace / "runs" / run_id,
        concurrency=args.concurrency,
        observer=journal,
        notify=info_lines(reporter),
    )
    with contextlib.ExitStack() as stack:  # unwinds in reverse: log, lock, compute, storage, journal
        stack.callback(journal.close)  # after the compute: its workers write to it until they stop
        storage = registry.get(storage_name).storage(ctx)
        stack.callback(storage.close)
        compute = backend.compute(ctx, storage)
        stack.callback(compute.close)
        # Cheap requests before the run folder, the containers or any upload: a wrong key or
        # endpoint, or the job of another run, ends the run in seconds with exit 2, having created
        # nothing. Then the workspace's locks: a second run of the workflow refuses at once.
        try:
            compute.check_access(wf.job.id)
        except JobExists as e:
            dead = _dead_run(workspace, e.owner, wf)
            if attach_to is None and dead is not None and backend.attachable:
                raise _AttachInstead(dead) from None
            raise
        check_destinations(wf)  # (before the lock, whose folder is in the workspace: nothing made)
        stack.enter_context(runlock.exclusive(workspace, [f"job {wf.job.id}", f"pool {wf.pool.id}"], run_id))
        if attach_to is not None:
            state = attach_to
            state.reopen()
        else:
            state = RunState.create(workspace, wf.path, args.backend, run_id, storage=storage_name)
            state.overrides = overrides  # `batchflow download` loads the workflow as this run did
            state.save()
        stack.callback(_detach_run_log, _attach_run_log(state.log_file))
        total = state.task_count if attach_to is not None else len(plan.tasks)
        reporter.emit(RunStarted(state.run_id, total, args.backend, storage_name, state.folder))
        taken = read_keys(state.folder) if attach_to is not None and state.inputs_uploaded else {}
        if taken:
            # `batchflow attach`: the dead run's tasks, keyed as it keyed them (the inputs it
            # uploaded, which its job's tasks read), whatever changed since; new inputs wait for
            # the next run, which also redoes the tasks whose inputs changed. Those it took from
            # earlier runs are done: they are not in its job.
            keys = {t.id: taken[t.id] for t in plan.tasks if t.id in taken}
            reused = {tid for tid, r in state.tasks.items() if r.reused_from is not None}
            gone = sorted(set(taken) - set(keys) - reused)
            if gone:
                reporter.emit(
                    Warn(
                        f"warning: {len(gone)} task(s) of the run are no longer in the plan"
                        f" ({', '.join(gone[:3])}{', ...' if len(gone) > 3 else ''}; an input deleted,"
                        " renamed or no longer matched): those in the run's job already are waited for"
                        " and their outputs downloaded (they read the copy uploaded before), none is"
                        " added to it, and a later run does not reuse them"
                    )
                )
            plan = dataclasses.replace(
                plan, tasks=tuple(t for t in plan.tasks if t.id in keys and t.id not in reused)
            )
        else:
            digests = DigestCache(workspace / "cache" / "digests.json")
            keys = task_keys(plan, backend.name, digests.md5, known=digests.known)
            digests.save()
        run_plan = plan_run(plan, state.run_id, keys)
        runner = Runner(
            run_plan,
            storage,
            compute,
            state,
            reporter,
            workspace=workspace,
            force=args.force,
            only=only,
            attach=attach_to is not None,
        )
        try:
            outcome = runner.run()
        except BatchflowError:
            reporter.emit(RunResult.of(state, runner.outputs))
            raise
        except Exception:
            reporter.emit(Warn(f"Run folder: {state.folder}"))
            raise
        reporter.emit(RunResult.of(outcome.state, outcome.outputs))
        if args.output == "json":
            write_json_rows(sys.stdout, as_json(outcome.state), rows=("tasks",))
            sys.stdout.flush()
        return outcome.exit_code


def _still_running(state: RunState, what: str) -> BatchflowError:
    """The refusal of a command that needs the run to have ended: exit 2, as for a second `run`."""
    from batchflow.runlock import RunInProgress

    return RunInProgress(f"run {state.run_id} is still running (process {state.pid}): {what}")


def _dead_run(workspace: Path, run_id: str | None, wf: Workflow) -> RunState | None:
    """Run `run_id` of this workspace and workflow, if its batchflow process died without ending it."""
    from batchflow.state import RunState, RunStatus

    folder = workspace / "runs" / run_id if run_id else None
    if folder is None or not folder.is_dir():
        return None
    try:
        state = RunState.load(folder)
    except BatchflowError:
        return None
    if Path(state.workflow).resolve() != wf.path.resolve():
        return None
    return state if state.effective_status is RunStatus.DEAD else None


def _drop_terminal_output() -> None:
    """The terminal hung up: every write to it now fails (EIO). Send stdout and stderr to /dev/null
    where they are that terminal (a character device), so the run stops its tasks and cleans up in
    peace; pipes and files (nohup, CI logs) keep what follows."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        null = os.fstat(devnull)
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                st = os.fstat(fd)
                if stat.S_ISCHR(st.st_mode) and (st.st_dev, st.st_ino) != (null.st_dev, null.st_ino):
                    os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _detach_run_log(handler: logging.Handler) -> None:
    import logging

    logging.getLogger("batchflow").removeHandler(handler)
    handler.close()


def _attach_run_log(path: Path) -> logging.Handler:
    import logging

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("batchflow")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return handler


def cmd_status(args: argparse.Namespace) -> int:
    from batchflow.report import as_json, status_lines
    from batchflow.state import RunState, RunStatus, find_run

    state = RunState.load(find_run(_workspace_of(args), args.run, args.workflow))
    status = state.effective_status
    # A run that succeeded or still runs 0; failed, error or dead 1; interrupted 130.
    codes = {
        RunStatus.SUCCEEDED: EXIT_OK,
        RunStatus.RUNNING: EXIT_OK,
        RunStatus.INTERRUPTED: EXIT_INTERRUPTED,
    }
    exit_code = codes.get(status, EXIT_FAILED)
    if args.output == "json":
        data = {**as_json(state), "status": status.value, "exit_code": exit_code}
        write_json_rows(sys.stdout, data, rows=("tasks",))
        sys.stdout.flush()
        return exit_code
    print(redact("\n".join(status_lines(state, status, time.time()))))
    return exit_code


def _workspace_of(args: argparse.Namespace) -> Path:
    if args.workspace is not None:
        return Path(args.workspace)
    if args.workflow is not None:
        from batchflow.spec import load_workflow

        wf = load_workflow(args.workflow)
        return wf.workspace or wf.base_dir / ".batchflow"
    return Path(".batchflow")


def cmd_cleanup(args: argparse.Namespace) -> int:
    from batchflow import runlock
    from batchflow.spec import load_workflow
    from batchflow.state import RunState, find_run

    workspace = _workspace_of(args)
    state = RunState.load(find_run(workspace, args.run, args.workflow), journal=False)
    if state.still_running():
        raise _still_running(state, "stop it first (Ctrl-C cleans up)")
    workflow = None
    try:
        workflow = load_workflow(Path(state.workflow))
    except (InvalidWorkflow, BatchflowError) as e:
        print(
            f"note: cannot read the run's workflow ({first_line(str(e))}); containers are kept",
            file=sys.stderr,
        )
    what = f"run {state.run_id} ({state.backend}): job {state.job_id}, pool {state.pool_id}"
    # The dead run's job and pool ids may be in use by a live run of the same workflow by now (the
    # dead run's locks went with its process): hold them, or refuse, as a run would.
    names = [f"job {state.job_id}", f"pool {state.pool_id}"] if state.job_id and state.pool_id else []
    with runlock.exclusive(workspace, names, state.run_id):
        return _cleanup(args, state, workflow, workspace, what)


def _cleanup(
    args: argparse.Namespace, state: RunState, workflow: Workflow | None, workspace: Path, what: str
) -> int:
    from batchflow.cleanup import cleanup_run
    from batchflow.ledger import read_keys
    from batchflow.state import RunStatus

    if sys.stdin.isatty() and not args.yes:
        answer = input(f"Remove what {what} left behind? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing removed.", file=sys.stderr)
            return EXIT_OK
    report = cleanup_run(state, workflow, workspace, lambda m: print(redact(m), file=sys.stderr))
    state.cleaned_up.extend(report.deleted)
    if state.effective_status is RunStatus.DEAD:
        state.status, state.message = (
            RunStatus.DEAD,
            "the batchflow process died; `batchflow cleanup` cleaned up",
        )
        # Its task processes are stopped now: none of its tasks runs, whatever the journal said.
        state.end_dead_tasks("its batchflow process died; stopped by batchflow cleanup", time.time())
        if not _outlives_its_process(state.backend):
            # Its queued tasks died with it (the journal names each task as it starts): of those it
            # meant to run (keys.json), the ones with no record never started.
            state.mark_not_started(read_keys(state.folder))
    state.save()
    if args.output == "json":
        result = {"run_id": state.run_id, "deleted": report.deleted, "kept": report.kept}
        print(redact_json({**result, "failed": report.failed}, indent=2))
    for line in report.kept:
        print(redact(f"  kept {line}"), file=sys.stderr)
    for line in report.failed:
        print(redact(f"  failed: {line}"), file=sys.stderr)
    done = ", ".join(report.deleted) if report.deleted else "nothing left to remove"
    print(redact(f"Cleanup of run {state.run_id}: {done}."), file=sys.stderr)
    return EXIT_FAILED if report.failed else EXIT_OK


def _outlives_its_process(backend: str) -> bool:
    """Whether a run's tasks may go on after its batchflow process died (an attachable backend: a
    Batch job runs on), so that a task it has no record of may have run."""
    from batchflow.backends import registry

    try:
        return registry.get(backend).attachable
    except BatchflowError:  # a backend no longer installed: assume the worst
        return True


def cmd_gc(args: argparse.Namespace) -> int:
    from batchflow import gc

    workspace = _workspace_of(args).resolve()
    survey = gc.survey(workspace, args.older_than)
    try:
        return _gc(args, survey, workspace)
    finally:
        survey.close()


def _gc(args: argparse.Namespace, survey: Survey, workspace: Path) -> int:
    from batchflow import gc

    def say(message: str) -> None:
        print(redact(message), file=sys.stderr)

    for note in survey.notes:
        say(f"note: {note}")
    for item in survey.keep:
        say(f"  keep {item.line()}")
    for item in survey.remove:
        say(f"  remove {item.line()}")
    removed: list[str] = []
    failed: list[str] = []
    if not survey.remove:
        say("Nothing to remove.")
    elif args.yes or _confirmed(f"Remove these {len(survey.remove)}?"):
        report = gc.remove(survey.remove, say, workspace)
        removed, failed = report.deleted, report.failed
        for line in failed:
            say(f"  failed: {line}")
        say(f"Removed {len(removed)} of {len(survey.remove)}.")
    else:
        say(
            "Nothing removed"
            + ("" if sys.stdin.isatty() else " (no terminal to ask on: --yes removes them)")
            + "."
        )
    if args.output == "json":
        result = {
            "remove": [i.line() for i in survey.remove],
            "keep": [i.line() for i in survey.keep],
            "removed": removed,
            "failed": failed,
            "notes": survey.notes,
        }
        print(redact_json(result, indent=2))
    return EXIT_FAILED if failed else EXIT_OK


def _confirmed(question: str) -> bool:
    """Asked on a terminal only: without one (a script, CI) nothing is removed without --yes."""
    if not sys.stdin.isatty():
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def cmd_download(args: argparse.Namespace) -> int:
    """The outputs a run's tasks stored, into the workflow's download destinations: for a run that
    failed, was interrupted, or whose download stage could not finish (a full disk)."""
    from batchflow.backends import registry
    from batchflow.backends.base import Context
    from batchflow.runner import check_destinations, download_outputs
    from batchflow.runplan import downloads
    from batchflow.spec import load_workflow
    from batchflow.state import RunState, find_run

    workspace = _workspace_of(args)
    state = RunState.load(find_run(workspace, args.run, args.workflow), journal=False)
    if state.still_running():
        raise _still_running(state, "it downloads itself")
    wf = load_workflow(Path(state.workflow), state.overrides)
    check_destinations(wf)
    ctx = Context(workflow=wf, workspace=workspace, run_dir=state.folder)
    storage = registry.get(state.storage).storage(ctx)
    try:
        say = lambda m: print(redact(m), file=sys.stderr)  # noqa: E731
        lines = download_outputs(downloads(wf, state.run_id), storage, say)
    finally:
        storage.close()
    if args.output == "json":
        print(redact_json({"run_id": state.run_id, "outputs": lines}, indent=2))
    for line in lines:
        print(redact(f"Outputs: {line}"), file=sys.stderr)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from batchflow.spec import schema_text

    sys.stdout.write(schema_text())
    return EXIT_OK


COMMANDS: dict[str, Any] = {
    "validate": cmd_validate,
    "plan": cmd_plan,
    "run": cmd_run,
    "status": cmd_status,
    "retry": cmd_retry,
    "attach": cmd_attach,
    "cleanup": cmd_cleanup,
    "download": cmd_download,
    "gc": cmd_gc,
    "schema": cmd_schema,
}


if __name__ == "__main__":
    entry()
