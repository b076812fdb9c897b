"""What a compute node does for one run of a task or start task, for real, in the calling thread:

1. download its resource files into wd/ (httpUrl: a plain HTTP GET, as the node agent does;
   storageContainerUrl: every blob under blobPrefix, keeping the folder structure);
2. run the command line in wd/, NOT under a shell (Batch splits the command line into words and
   executes it: a client wanting shell features runs `/bin/sh -c '...'`), in its own process group,
   stdout.txt / stderr.txt beside wd/; past maxWallClockTime the whole group is killed;
3. upload its output files whose uploadCondition matches the exit code, to their container SAS URL.

Failures are reported as the service reports them in executionInfo.failureInfo (category, code,
message, details): resource file errors (BlobNotFound, BlobAccessDenied, BlobDownloadMiscError) and
upload errors (FileUploadMiscError) are not retried; a nonzero exit (FailureExitCode) is.
"""

from __future__ import annotations

import datetime
import glob
import os
import posixpath
import shlex
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError
from azure.storage.blob import ContainerClient

from .resources import RunHandle
from .wire import now

DOWNLOAD_TIMEOUT = 60.0
STORAGE_RETRIES = 2


@dataclass(frozen=True)
class Launch:
    command_line: str
    task_dir: Path  # stdout.txt and stderr.txt go here; the command runs in task_dir / "wd"
    env: Mapping[str, str]
    resource_files: Sequence[Mapping[str, Any]] = ()
    output_files: Sequence[Mapping[str, Any]] = ()
    max_wall: datetime.timedelta | None = None


@dataclass(frozen=True)
class Outcome:
    start: datetime.datetime
    end: datetime.datetime
    exit_code: int | None
    failure: dict[str, Any] | None  # executionInfo.failureInfo, None on success
    retryable: bool  # a nonzero exit: the service may run it again
    killed: str | None = None  # killed from outside (preemption, termination): the caller decides


class StepFailed(Exception):
    def __init__(self, code: str, message: str, **details: str) -> None:
        super().__init__(message)
        self.failure = {
            "category": "usererror",
            "code": code,
            "message": message,
            "details": [{"name": k, "value": v} for k, v in details.items()],
        }


def failure_info(code: str, message: str, **details: str) -> dict[str, Any]:
    return StepFailed(code, message, **details).failure


def exit_failure() -> dict[str, Any]:
    """failureInfo of a task whose process exited nonzero."""
    return failure_info("FailureExitCode", "The task exited with an exit code representing a failure")


def kill(handle: RunHandle, reason: str) -> None:
    """Kill the process group of a run (now, or as soon as it starts)."""
    with handle.lock:
        if handle.killed is None:
            handle.killed = reason
        if handle.pgid is not None:
            _killpg(handle.pgid)


def run(launch: Launch, handle: RunHandle) -> Outcome:
    start = now()
    wd = launch.task_dir / "wd"
    wd.mkdir(parents=True, exist_ok=True)
    try:
        for resource in launch.resource_files:
            download(resource, wd)
    except StepFailed as e:  # the command never runs: no stdout.txt / stderr.txt, as on a real node
        return Outcome(start, now(), None, e.failure, retryable=False, killed=handle.killed)
    exit_code, failure = _execute(launch, wd, handle)
    if handle.killed is not None:
        return Outcome(start, now(), exit_code, failure, retryable=False, killed=handle.killed)
    if failure is None and exit_code is not None:
        try:
            upload_outputs(launch.output_files, wd, succeeded=exit_code == 0)
        except StepFailed as e:
            return Outcome(start, now(), exit_code, e.failure, retryable=False)
        if exit_code != 0:
            return Outcome(start, now(), exit_code, exit_failure(), retryable=True)
    return Outcome(start, now(), exit_code, failure, retryable=False)


def _execute(launch: Launch, wd: Path, handle: RunHandle) -> tuple[int | None, dict[str, Any] | None]:
    try:
        argv = shlex.split(launch.command_line)
    except ValueError as e:
        return None, failure_info("CommandLaunchFailed", f"The command line could not be parsed: {e}")
    if not argv:
        return None, failure_info("CommandLaunchFailed", "The command line is empty.")
    with (
        (launch.task_dir / "stdout.txt").open("wb") as stdout,
        (launch.task_dir / "stderr.txt").open("wb") as stderr,
    ):
        with handle.lock:
            if handle.killed is not None:
                return None, None
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=wd,
                    env=dict(launch.env),
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    start_new_session=True,
                )
            except FileNotFoundError:
                message = f"The program specified in the task's command line was not found: {argv[0]}"
                return None, failure_info("CommandProgramNotFound", message)
            except OSError as e:
                return None, failure_info("CommandLaunchFailed", f"The command could not be started: {e}")
            handle.pgid = proc.pid
        limit = launch.max_wall.total_seconds() if launch.max_wall is not None else None
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            code = proc.wait()
            _killpg(proc.pid)
            message = "The task exceeded its maximum wall clock time and was terminated by the Batch service."
            assert launch.max_wall is not None
            return _exit(code), failure_info("TaskEnded", message, MaxWallClockTime=str(launch.max_wall))
        _killpg(proc.pid)  # what the task left running in its group ends with it
    return _exit(code), None


def _exit(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N -> 128 + N, as a shell reports it


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # the group has exited already
        return


# ---- resource files -----------------------------------------------------------------------------


def download(resource: Mapping[str, Any], wd: Path) -> None:
    if resource.get("httpUrl"):
        url = resource["httpUrl"]
        _fetch(url, wd / resource["filePath"])
        return
    url = resource["storageContainerUrl"]
    prefix = resource.get("blobPrefix") or ""
    folder = wd / resource["filePath"] if resource.get("filePath") else wd
    try:
        with ContainerClient.from_container_url(url, retry_total=STORAGE_RETRIES) as container:
            for blob in container.list_blobs(name_starts_with=prefix or None):
                _fetch(_blob_url(url, blob.name), folder / blob.name)
    except HttpResponseError as e:
        raise _download_error(e.status_code, url, str(e.reason)) from None
    except AzureError as e:
        raise StepFailed(
            "BlobDownloadMiscError", f"Listing the container failed: {e}", ResourceUrl=_bare(url)
        ) from None


def _fetch(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:  # noqa: S310 (test code)
            target.write_bytes(response.read())
    except urllib.error.HTTPError as e:
        raise _download_error(e.code, url, str(e.reason)) from None
    except (urllib.error.URLError, OSError) as e:
        raise StepFailed(
            "BlobDownloadMiscError", f"Downloading a resource file failed: {e}", ResourceUrl=_bare(url)
        ) from None


def _download_error(status: int | None, url: str, reason: str) -> StepFailed:
    code = {403: "BlobAccessDenied", 404: "BlobNotFound"}.get(status or 0, "BlobDownloadMiscError")
    return StepFailed(code, f"Downloading a resource file failed: {status} {reason}", ResourceUrl=_bare(url))


# ---- output files -------------------------------------------------------------------------------


def upload_outputs(outputs: Sequence[Mapping[str, Any]], wd: Path, *, succeeded: bool) -> None:
    for out in outputs:
        condition = out["uploadOptions"]["uploadCondition"].casefold()
        if (condition == "tasksuccess" and not succeeded) or (condition == "taskfailure" and succeeded):
            continue
        container = out["destination"]["container"]
        for source, blob in output_matches(out["filePattern"], container.get("path"), wd):
            _put(container["containerUrl"], blob, source)


def output_matches(pattern: str, path: str | None, wd: Path) -> list[tuple[Path, str]]:
    """(file, blob name) pairs for an output pattern; a missing plain file is a failure."""
    if not glob.has_magic(pattern):
        source = wd / pattern
        if not source.is_file():
            raise StepFailed(
                "FileUploadMiscError", f"The output file {pattern!r} does not exist.", FilePattern=pattern
            )
        return [(source, path or posixpath.basename(pattern))]
    parts = pattern.split("/")
    fixed = 0
    while fixed < len(parts) - 1 and not glob.has_magic(parts[fixed]):
        fixed += 1
    base = wd.joinpath(*parts[:fixed]) if fixed else wd
    matches = glob.glob(str(wd / pattern), recursive=True)  # noqa: PTH207 (Path.glob takes no '..')
    found = sorted(Path(p) for p in matches if Path(p).is_file())
    prefix = f"{path.rstrip('/')}/" if path else ""
    return [(f, prefix + os.path.relpath(f, base).replace(os.sep, "/")) for f in found]


def _put(container_url: str, blob: str, source: Path) -> None:
    try:
        with (
            ContainerClient.from_container_url(container_url, retry_total=STORAGE_RETRIES) as container,
            source.open("rb") as data,
        ):
            container.upload_blob(blob, data, overwrite=True)
    except AzureError as e:
        message = f"Uploading {source.name} to {blob!r} failed: {e}"
        raise StepFailed("FileUploadMiscError", message, ContainerUrl=_bare(container_url)) from None


def _blob_url(container_url: str, blob: str) -> str:
    base, _, query = container_url.partition("?")
    quoted = urllib.parse.quote(blob)
    return f"{base.rstrip('/')}/{quoted}" + (f"?{query}" if query else "")


def _bare(url: str) -> str:
    """A URL without its query: never repeat a SAS signature in an error message."""
    return url.partition("?")[0]
