"""Errors a person can act on. Anything else is a bug and gets a traceback in a log file."""

from __future__ import annotations

from pathlib import Path

from batchflow.records import record


def first_line(text: str) -> str:
    """The first non-empty line of a message, stripped ("" for none): services and tools append
    request ids, times and tracebacks below the line that says what happened."""
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


class BatchflowError(Exception):
    """A known failure: printed as one short message, exit code 1."""

    exit_code = 1


@record
class Problem:
    """One problem in a workflow file, reported as `file:line:col: where: message`."""

    file: Path | None
    line: int | None
    column: int | None
    where: str  # dotted document path, e.g. "pool.vm_size" or "tasks[3].id"; "" for the whole file
    message: str

    def __str__(self) -> str:
        loc = str(self.file) if self.file is not None else "<workflow>"
        if self.line is not None:
            loc += f":{self.line}"
            if self.column is not None:
                loc += f":{self.column}"
        return f"{loc}: {self.where}: {self.message}" if self.where else f"{loc}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": str(self.file) if self.file is not None else None,
            "line": self.line,
            "column": self.column,
            "path": self.where,
            "message": self.message,
        }


class InvalidWorkflow(BatchflowError):
    """The workflow cannot run as written. Exit code 2; nothing was created."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class MissingRequirement(BatchflowError):
    """An executable the workflow requires is not installed. Exit code 2; nothing was created."""

    exit_code = 2


class ConfigurationError(BatchflowError):
    """A setting outside the workflow file is missing or wrong (an environment variable, a credential).
    Exit code 2; nothing was created."""

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """A signal that stops a run the way Ctrl-C does (SIGTERM, SIGHUP). Its argument names it."""

    @property
    def signal_name(self) -> str:
        return str(self.args[0]) if self.args else "SIGTERM"


class JobExists(ConfigurationError):
    """The job id is taken in the account: by batchflow run `owner` (its metadata says so), or by
    something else (None). A run of this workspace that died while its job ran can be attached to."""

    def __init__(self, message: str, owner: str | None) -> None:
        super().__init__(message)
        self.owner = owner
