"""The ledger: what each task of each run produced, keyed by the content that determines it.

A task's key is a SHA-256 over everything that decides its outputs: each input's content (size and
MD5 of the file uploaded for it), the rendered command and environment, the output spec, the backend,
and the pool (image, VM size, start task with its files' content). Four part digests (inputs,
command, outputs, pool) say which of those changed when a key no longer matches.

Where the ledger lives:
    <run folder>/keys.json         the run's task keys, written before any task runs
    <run folder>/ledger.jsonl      one entry per finished task, written when the run ends
    <logs container>/batchflow-ledger/<workflow name>/<run id>.jsonl   the same, in storage, so a
                                   second machine sharing the storage account resumes from it
A run killed before it wrote its ledger (SIGKILL, a lost laptop) still counts: its entries are read
from keys.json and its task records (state.json and the live tasks.jsonl).

An entry's outputs are the blobs the compute said the task uploaded (the local node names them), or,
where it names none (Azure Batch: the node uploads them from the task's output files), the blobs of
the run's listing that the task's output spec puts there (StoredListing).

Pure data and files: no storage or compute calls here (resume.py decides, the runner writes).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import json.encoder
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchflow.globs import compile_glob, glob_literal, has_magic
from batchflow.model import (
    BlobStat,
    OutputCondition,
    Plan,
    RenderedTask,
    StartTaskSpec,
    TaskInput,
    UploadItem,
)

log = logging.getLogger("batchflow")

KEY_VERSION = 1  # bump when what goes into a key changes: every task then runs once more
KEYS_FILE = "keys.json"
LEDGER_FILE = "ledger.jsonl"
LEDGER_PREFIX = "batchflow-ledger/"  # in the logs container, then <workflow name>/<run id>.jsonl
PARTS = ("inputs", "command", "outputs", "pool")
# What a changed part means, in `batchflow plan` and the run's first lines.
PART_REASON = {
    "inputs": "input changed",
    "command": "command changed",
    "outputs": "outputs changed",
    "pool": "pool or image changed",
}

Digest = Callable[[Path, os.stat_result], str]  # a file's MD5 (hex), cached by its stat


@dataclass(frozen=True)
class TaskKey:
    key: str
    parts: Mapping[str, str]  # part name -> digest


@dataclass(frozen=True)
class StoredOutput:
    container: str
    blob: str
    size: int | None = None
    md5: str | None = None


@dataclass(frozen=True)
class Entry:
    """One finished task of one run."""

    key: str
    task: str
    run: str
    succeeded: bool
    parts: Mapping[str, str]
    outputs: tuple[StoredOutput, ...] = ()
    at: float = 0.0  # when it ended (epoch seconds): the latest entry of a task id is its story
    reused_from: str | None = None  # the run whose outputs it reused (not run again)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "task": self.task,
            "run": self.run,
            "succeeded": self.succeeded,
            "parts": dict(self.parts),
            "outputs": [[o.container, o.blob, o.size, o.md5] for o in self.outputs],
            "at": self.at,
            "reused_from": self.reused_from,
        }

    @classmethod
    def from_json(cls, data: Any, same: dict[str, str] | None = None) -> Entry:
        """Raises (KeyError, TypeError, ValueError) on anything malformed: the caller skips it.
        `same`: texts met before, to keep one copy of those that repeat from entry to entry (the run,
        the containers, the pool's digest, the parts' names): a third of a ledger's memory."""

        def one(text: str) -> str:
            return text if same is None else same.setdefault(text, text)

        outputs = tuple(
            StoredOutput(one(str(c)), str(b), None if s is None else int(s), None if m is None else str(m))
            for c, b, s, m in data["outputs"]
        )
        parts = data["parts"]
        if not isinstance(parts, dict) or set(parts) != set(PARTS):
            raise ValueError("parts")
        reused = data.get("reused_from")
        return cls(
            key=_text(data["key"]),
            task=_text(data["task"]),
            run=one(_text(data["run"])),
            succeeded=bool(data["succeeded"]),
            parts={one(k): one(_text(v)) if k == "pool" else _text(v) for k, v in parts.items()},
            outputs=outputs,
            at=float(data["at"]),
            reused_from=None if reused is None else one(_text(reused)),
        )


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


# ---- keys ---------------------------------------------------------------------------------------


# One encoder for every key: json.dumps builds a new one per call (most of a key's cost at 100k tasks).
_CANONICAL = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _sha(value: object) -> str:
    return hashlib.sha256(_CANONICAL.encode(value).encode("utf-8")).hexdigest()


NO_OUTPUTS = _sha([])  # the outputs part of a task with no output spec


class KeyMaker:
    """Task keys for one plan. Each uploaded file is stat'ed and hashed once (through `digest`,
    which caches by stat), however many tasks read it."""

    def __init__(self, plan: Plan, backend: str, digest: Digest) -> None:
        self._digest = digest
        # (container, blob) -> its UploadItem, replaced by its content once known (_identity).
        self._files: dict[tuple[str, str], UploadItem | list[object]] = {
            (u.container, u.blob_name): u for u in plan.uploads
        }
        self._pool = _sha([KEY_VERSION, backend, self._pool_identity(plan)])

    def _identity(self, item: TaskInput) -> list[object]:
        """An input's content: its size and MD5, or the blob's name where no local file backs it."""
        where = (item.container, item.blob_name)
        known = self._files.get(where)
        if known is None:
            return ["blob", item.container, item.blob_name]
        if isinstance(known, list):
            return known
        st = known.local_path.stat()
        content: list[object] = [st.st_size, self._digest(known.local_path, st)]
        self._files[where] = content
        return content

    def _pool_identity(self, plan: Plan) -> list[object]:
        pool = plan.workflow.pool
        image = pool.image
        start: StartTaskSpec | None = plan.start_task
        return [
            [image.publisher, image.offer, image.sku, image.version, pool.node_agent_sku_id],
            pool.vm_size.casefold(),
            None
            if start is None
            else [
                start.command,
                sorted(start.environment.items()),
                start.elevated,
                sorted([i.file_path, *self._identity(i)] for i in plan.start_task_inputs),
            ],
        ]

    def key(self, task: RenderedTask) -> TaskKey:
        inputs = task.inputs
        if len(inputs) == 1:  # (sorting one item, fast)
            files: list[list[object]] = [[inputs[0].file_path, *self._identity(inputs[0])]]
        else:
            files = sorted([i.file_path, *self._identity(i)] for i in inputs)
        environment = task.environment
        parts = {
            "inputs": _sha(files),
            "command": _sha([task.command, sorted(environment.items()) if environment else []]),
            "outputs": _sha(
                [[o.pattern, o.container, o.destination, o.condition.value] for o in task.outputs]
            ),
            "pool": self._pool,
        }
        return TaskKey(_sha([KEY_VERSION, [parts[p] for p in PARTS]]), parts)


def task_keys(plan: Plan, backend: str, digest: Digest) -> dict[str, TaskKey]:
    """Each task's key, by task id. The plan's tasks, before the per-run output prefix."""
    maker = KeyMaker(plan, backend, digest)
    return {t.id: maker.key(t) for t in plan.tasks}


def write_keys(folder: Path, keys: Mapping[str, TaskKey]) -> None:
    data = {tid: {"key": k.key, "parts": dict(k.parts)} for tid, k in keys.items()}
    tmp = folder / (KEYS_FILE + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    tmp.replace(folder / KEYS_FILE)


def read_keys(folder: Path) -> dict[str, TaskKey]:
    try:
        data = json.loads((folder / KEYS_FILE).read_text(encoding="utf-8"))
        return {
            str(t): TaskKey(str(v["key"]), {p: str(v["parts"][p]) for p in PARTS}) for t, v in data.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


# ---- outputs the compute did not name -----------------------------------------------------------


class StoredListing:
    """The blobs under a run's output prefix, by container (Storage.stat_blobs), to find the outputs
    of succeeded tasks whose compute did not say which blobs they wrote: on Azure Batch the node
    uploads them, and a task's result names none."""

    def __init__(self, stats: Mapping[str, Mapping[str, BlobStat]]) -> None:
        self._stats = stats
        self._sorted: dict[str, list[str]] = {}

    def outputs_of(
        self, tasks: Iterable[RenderedTask], named: Iterable[tuple[str, str]] = ()
    ) -> dict[str, tuple[StoredOutput, ...] | None]:
        """Each task's outputs, by task id; None where a blob is matched by another of `tasks` as
        well (globs that overlap), or is one of the (container, blob) other tasks `named`: whose it
        is cannot be told, so that task is never reused."""
        found = {t.id: self._outputs(t) for t in tasks}
        claims = dict.fromkeys(named, 1)
        for outputs in found.values():
            for o in set((o.container, o.blob) for o in outputs):
                claims[o] = claims.get(o, 0) + 1
        return {
            tid: None if any(claims[(o.container, o.blob)] > 1 for o in outputs) else outputs
            for tid, outputs in found.items()
        }

    def _outputs(self, task: RenderedTask) -> tuple[StoredOutput, ...]:
        """Where the task's outputs (as submitted) landed, named as Batch and the local node name
        them: a single file at its destination (a missing one with no size: never reused), a glob's
        files at the destination + their path below the pattern's literal folders."""
        out: list[StoredOutput] = []
        for o in task.outputs:
            if o.condition is OutputCondition.FAILURE:
                continue  # not uploaded when the task succeeds
            stats = self._stats.get(o.container, {})
            literal = glob_literal(o.pattern)
            if literal is not None:
                dest = o.destination
                blob = dest + literal.rsplit("/", 1)[-1] if not dest or dest.endswith("/") else dest
                st = stats.get(blob)
                out.append(StoredOutput(o.container, blob, *((st.size, st.md5) if st else (None, None))))
                continue
            segments = o.pattern.split("/")
            split = next(i for i, s in enumerate(segments) if has_magic(s))
            tail = compile_glob("/".join(segments[split:]))
            prefix = (
                o.destination if not o.destination or o.destination.endswith("/") else o.destination + "/"
            )
            for blob in self._under(o.container, prefix):
                if tail.fullmatch(blob[len(prefix) :]) is not None:
                    out.append(StoredOutput(o.container, blob, stats[blob].size, stats[blob].md5))
        return tuple(out)

    def _under(self, container: str, prefix: str) -> list[str]:
        names = self._sorted.get(container)
        if names is None:
            names = self._sorted[container] = sorted(self._stats.get(container, {}))
        start = end = bisect.bisect_left(names, prefix)
        while end < len(names) and names[end].startswith(prefix):
            end += 1
        return names[start:end]


# ---- entries on disk ------------------------------------------------------------------------------


def entries_text(entries: Iterable[Entry]) -> str:
    return "".join(json.dumps(e.to_json(), separators=(",", ":"), sort_keys=True) + "\n" for e in entries)


def parse_entries(text: str, where: str) -> Iterator[Entry]:
    """Every well-formed entry; a damaged line (a write cut short) is skipped and logged."""
    same: dict[str, str] = {}
    for n, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        try:
            yield Entry.from_json(json.loads(line), same)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ledger %s line %d is damaged (%s): skipped", where, n, type(e).__name__)


# What str.splitlines splits at, besides "\n" (entries_text writes none of them: JSON escapes them).
_OTHER_LINE_ENDS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _lines(text: str) -> Iterator[str]:
    """text.splitlines(), one line at a time: the list of a 100,000-entry ledger's lines is 70 MB."""
    if _OTHER_LINE_ENDS.search(text):
        yield from text.splitlines()
        return
    start, end = 0, len(text)
    while start < end:
        stop = text.find("\n", start)
        if stop == -1:
            stop = end
        yield text[start:stop]
        start = stop + 1


def write_ledger(folder: Path, entries: Iterable[Entry]) -> Path:
    path = folder / LEDGER_FILE
    tmp = folder / (LEDGER_FILE + ".tmp")
    tmp.write_text(entries_text(entries), encoding="utf-8")
    tmp.replace(path)
    return path


def ledger_blob(workflow_name: str, run_id: str) -> str:
    return f"{LEDGER_PREFIX}{workflow_name}/{run_id}.jsonl"


class Ledger:
    """Every entry known, indexed by key (the succeeded ones) and by task id (the latest)."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._by_key: dict[str, list[Entry]] = {}
        self._latest: dict[str, Entry] = {}
        self.count = 0
        for e in entries:
            self.add(e)

    def add(self, e: Entry) -> None:
        self.count += 1
        if e.succeeded:
            self._by_key.setdefault(e.key, []).append(e)
        last = self._latest.get(e.task)
        if last is None or (e.at, e.run) >= (last.at, last.run):
            self._latest[e.task] = e

    def succeeded(self, key: str) -> list[Entry]:
        """The succeeded entries with this key, the latest first."""
        return sorted(self._by_key.get(key, ()), key=lambda e: (e.at, e.run), reverse=True)

    def latest(self, task_id: str) -> Entry | None:
        return self._latest.get(task_id)
