"""A job's completed tasks as batchflow's TaskResults, and the logs of the failed ones.

- The completed tasks are listed with `$filter` and `$select` (1,000 per page), read as the
  service's JSON (batch_rest): decoding 10,000 tasks into SDK models and reading their attributes
  cost about 1.1 s of client CPU, for the few keys batchflow reads of each.
- A job with more tasks than a page is listed in ranges of task ids, in parallel (`id_ranges`):
  one listing's pages come one after the other (each names the next), so 10,000 tasks in one
  listing cost 10 round trips at the end of every run. List Tasks filters on `id` with ge and lt
  (Microsoft, "OData filters in Azure Batch", List tasks:
  https://learn.microsoft.com/rest/api/batchservice/odata-filters-in-batch#list-tasks). The ranges
  are open at both ends, so together they hold every task of the job, known or not, whatever order
  the service compares ids in; a task listed twice is kept once.
- For a failed task, its stderr.txt / stdout.txt are fetched into the run folder while the job
  still exists: from the node, else from the log container where the node uploaded them on
  completion (the node may be gone). Each task's logs are fetched once, for at most
  `MAX_LOG_FETCHES` tasks, in parallel.
- A failure other than a plain nonzero exit (Batch's FailureExitCode, told by the exit code) is
  told by Batch's failure code and message.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from batchflow.backends.azure import batch_rest
from batchflow.backends.azure.enums import is_
from batchflow.backends.azure.errors import NO_ANSWER, batch_error, describe
from batchflow.backends.base import Storage
from batchflow.errors import BatchflowError, first_line
from batchflow.model import TaskLogs, TaskResult, TaskState

log = logging.getLogger("batchflow")

MAX_LOG_FETCHES = 100  # failed tasks whose logs are fetched into the run folder (the summary shows 20)
PAGE = 1000  # tasks per page of List Tasks: the most maxresults takes (the default)
_TASK_SELECT = ["id", "state", "executionInfo"]
_COMPLETED = "state eq 'completed'"
# A time as the service writes it (ISO 8601, UTC: 2025-06-01T12:00:00.1234567Z), as the SDK reads it.
_TIME = re.compile(r"(\d{4}-\d\d-\d\d)[Tt](\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)?")

ListedTask = dict[str, Any]  # a task of the listing, as the service's JSON


class TaskResults:
    """Reads a job's task results over `client`; `count` is told the operation of every request
    sent, and failed tasks' logs land in `run_dir`/tasks/<task id>. `concurrency`: listings and
    log fetches at once; `per_range`: known task ids per listing."""

    def __init__(
        self,
        client: BatchClient,
        storage: Storage | None,
        run_dir: Path,
        count: Callable[[str], None],
        concurrency: int,
        per_range: int = PAGE,
    ) -> None:
        self._client = client
        self._per_range = per_range
        self._storage = storage
        self._run_dir = run_dir
        self._count = count
        self._concurrency = concurrency
        self._task_logs: dict[str, TaskLogs] = {}  # by casefolded task id: where the node put its logs
        self._logs_fetched: dict[str, tuple[Path | None, Path | None]] = {}  # by casefolded task id
        self._task_ids: dict[str, dict[str, str]] = {}  # by job id: the job's task ids, by casefolded id

    def expect_logs(self, task_id: str, logs: TaskLogs) -> None:
        """The node uploads the task's logs there on completion: fetch them from there if need be."""
        self._task_logs[task_id.casefold()] = logs

    def expect_tasks(self, job_id: str, task_ids: Iterable[str]) -> None:
        """The job has these tasks (added by this run): its listing is split by their ids."""
        known = self._task_ids.setdefault(job_id, {})
        for task_id in task_ids:
            known.setdefault(task_id.casefold(), task_id)

    def completed(self, job_id: str, task_ids: Iterable[str] | None = None) -> list[TaskResult]:
        """Completed tasks, listed ($filter, $select) in ranges of ids at once; failed ones with their
        logs. In the order of the ranges, each in the service's order."""
        wanted = None if task_ids is None else {t.casefold() for t in task_ids}
        ranges = id_ranges(self._task_ids.get(job_id, {}).values(), self._per_range)
        try:
            if len(ranges) == 1:
                listed = [self._listing(job_id, ranges[0])]
            else:
                workers = min(len(ranges), self._concurrency)
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batchflow-list") as ex:
                    listed = list(ex.map(lambda where: self._listing(job_id, where), ranges))
        except (HttpResponseError, *NO_ANSWER) as e:
            raise batch_error(f"cannot list the tasks of job {job_id!r}", e) from None
        tasks: list[ListedTask] = []
        seen: set[str] = set()
        for t in (t for listing in listed for t in listing):
            key = _id(t).casefold()
            if (
                key not in seen  # listed twice (bounds out of the service's order): kept once
                and is_(t.get("state"), bm.BatchTaskState.COMPLETED)  # the $filter asked for these; make sure
                and (wanted is None or key in wanted)
            ):
                seen.add(key)
                tasks.append(t)
        # A task's logs are fetched once: the runner may list again while the counts run ahead.
        logs = self._logs_fetched
        failed = [t for t in tasks if _failed(t) and _id(t).casefold() not in logs]
        room = max(0, MAX_LOG_FETCHES - len(logs))
        if failed and room:
            with ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="batchflow-logs") as ex:
                fetched = ex.map(lambda t: (_id(t), self._fetch_logs(job_id, _id(t))), failed[:room])
                logs.update((tid.casefold(), paths) for tid, paths in fetched)
        return [_result(t, *logs.get(_id(t).casefold(), (None, None))) for t in tasks]

    def _listing(self, job_id: str, where: str | None) -> list[ListedTask]:
        """The completed tasks of one listing (`where`: its range of ids), every page of it."""
        self._count("list_tasks")
        return [t for page in self._pages(job_id, where) for t in page]

    def _pages(self, job_id: str, where: str | None) -> Iterator[list[ListedTask]]:
        """Each page of the listing's tasks, following odata.nextLink (the SDK pager's requests)."""
        condition = _COMPLETED if where is None else f"{_COMPLETED} and {where}"
        request = batch_rest.list_tasks_request(job_id, filter=condition, select=_TASK_SELECT)
        while True:
            page = batch_rest.send(self._client, request)
            if not isinstance(page, dict):
                return
            values = page.get("value")
            yield [t for t in values if isinstance(t, dict)] if isinstance(values, list) else []
            link = page.get("odata.nextLink")
            if not isinstance(link, str) or not link:
                return
            request = batch_rest.next_page_request(link)

    def _fetch_logs(self, job_id: str, task_id: str) -> tuple[Path | None, Path | None]:
        """stdout.txt and stderr.txt of a task's last attempt into the run folder, from the node."""
        folder = self._run_dir / "tasks" / task_id
        paths: list[Path | None] = []
        for name in ("stdout.txt", "stderr.txt"):
            try:
                self._count("download_task_file")
                data = b"".join(self._client.download_task_file(job_id, task_id, name))
            except ResourceNotFoundError:
                paths.append(None)  # never written (a resource file failed) or the node is gone
                continue
            except (HttpResponseError, *NO_ANSWER) as e:
                log.warning("cannot fetch %s of task %s: %s", name, task_id, describe(e))
                paths.append(None)
                continue
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
            paths.append(folder / name)
        if None in paths:  # the node went (the job completed and took its auto pool), maybe mid-way
            stored = self._stored_logs(task_id, folder)
            paths = [mine or theirs for mine, theirs in zip(paths, stored, strict=True)]
        return paths[0], paths[1]

    def _stored_logs(self, task_id: str, folder: Path) -> tuple[Path | None, Path | None]:
        """The copies the node uploaded to the log container on completion (the node may be gone)."""
        logs = self._task_logs.get(task_id.casefold())
        if logs is None or self._storage is None:
            return None, None
        try:
            self._storage.download(logs.container, logs.blob(task_id, ""), folder)
        except BatchflowError as e:
            log.warning("cannot fetch the stored logs of task %s: %s", task_id, e)
            return None, None
        found = [folder / n if (folder / n).is_file() else None for n in ("stdout.txt", "stderr.txt")]
        return found[0], found[1]


def id_ranges(task_ids: Iterable[str], per_range: int = PAGE) -> list[str | None]:
    """$filter conditions that split a job's tasks by id into ranges of `per_range` of `task_ids`
    each: [None] (no split) for one range, else `id lt 'b1'`, `id ge 'b1' and id lt 'b2'`, ...,
    `id ge 'bk'`, the bounds taken from the sorted ids. Every id, known or not, falls in one of
    them in any total order the service compares ids in: it is below b1, or else at or above some
    b_j, the last such j, and so below b_j+1 (or j = k). Bounds out of the service's order can only
    put an id in two ranges (`completed` keeps it once), never in none."""
    ids = sorted(task_ids, key=str.casefold)
    bounds = [_literal(ids[i]) for i in range(per_range, len(ids), per_range)]
    if not bounds:
        return [None]
    return [
        f"id lt {bounds[0]}",
        *(f"id ge {low} and id lt {high}" for low, high in itertools.pairwise(bounds)),
        f"id ge {bounds[-1]}",
    ]


def _literal(text: str) -> str:
    """An OData string literal: in single quotes, a quote doubled (task ids have none)."""
    return "'" + text.replace("'", "''") + "'"


def _id(task: ListedTask) -> str:
    value = task.get("id")
    return value if isinstance(value, str) else ""


def _info(task: ListedTask) -> dict[str, Any] | None:
    info = task.get("executionInfo")
    return info if isinstance(info, dict) else None


def _failed(task: ListedTask) -> bool:
    return _failed_info(_info(task))


def _failed_info(info: dict[str, Any] | None) -> bool:
    return info is None or not is_(info.get("result"), bm.BatchTaskExecutionResult.SUCCESS)


def _epoch(when: object) -> float | None:
    """Seconds since the epoch of a time the service wrote; None if there is none (or none readable).
    Digits past the microsecond are dropped, as the SDK drops them."""
    match = _TIME.fullmatch(when) if isinstance(when, str) else None
    if match is None:
        return None
    date, hms, fraction, zone = match.groups()
    zone = "+00:00" if zone is None or zone in "Zz" else zone
    micro = (fraction or "")[:6].ljust(6, "0")
    try:  # in the one form Python 3.10's fromisoformat reads too
        return datetime.datetime.fromisoformat(f"{date}T{hms}.{micro}{zone}").timestamp()
    except ValueError:  # digits, but no date (month 13, ...)
        return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _result(task: ListedTask, stdout: Path | None, stderr: Path | None) -> TaskResult:
    info = _info(task)
    known = info or {}
    failure = None
    failure_info = known.get("failureInfo")
    if isinstance(failure_info, dict):
        code = failure_info.get("code")
        if not is_(code, "FailureExitCode"):  # a plain nonzero exit is told by its exit code
            failure = f"{code}: {first_line(str(failure_info.get('message') or ''))}"
    return TaskResult(
        id=_id(task),
        state=TaskState.FAILED if _failed_info(info) else TaskState.SUCCEEDED,
        exit_code=_int(known.get("exitCode")),
        attempts=(_int(known.get("retryCount")) or 0) + 1 if info is not None else 0,
        started_at=_epoch(known.get("startTime")),
        ended_at=_epoch(known.get("endTime")),
        failure=failure,
        stdout_path=stdout,
        stderr_path=stderr,
    )
