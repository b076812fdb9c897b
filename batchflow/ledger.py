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
import contextlib
import json
import json.encoder
import json.scanner
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from batchflow.digests import FileChanged, FileStat, FileVersion
from batchflow.errors import BatchflowError
from batchflow.globs import compile_glob, glob_literal, has_magic
from batchflow.model import (
    CHANGED_SINCE_PLAN,
    BlobStat,
    OutputCondition,
    Plan,
    RenderedTask,
    StartTaskSpec,
    TaskInput,
    UploadItem,
)
from batchflow.redact import one_shot
from batchflow.sha import sha256

log = logging.getLogger("batchflow")

KEY_VERSION = 1  # bump when what goes into a key changes: every task then runs once more
KEYS_FILE = "keys.json"
LEDGER_FILE = "ledger.jsonl"
LEDGER_PREFIX = "batchflow-ledger/"  # in the logs container, then <workflow name>/<run id>.jsonl
PARTS = ("inputs", "command", "outputs", "pool")
_PART_NAMES = frozenset(PARTS)
# What a changed part means, in `batchflow plan` and the run's first lines.
PART_REASON = {
    "inputs": "input changed",
    "command": "command changed",
    "outputs": "outputs changed",
    "pool": "pool or image changed",
}

Digest = Callable[[Path, FileStat], str]  # a file's MD5 (hex), cached by its stat: raises FileChanged
Known = Callable[[Path, FileStat], "str | None"]  # a file's MD5 if known without reading it, else None
_HASHERS = min(8, os.cpu_count() or 1)  # threads hashing inputs whose digests are not known
_READ_ATTEMPTS = 3  # reads of an input that changes while it is hashed, before giving up


class Parts(Mapping[str, str]):
    """A key's part digests by part name (PARTS, in that order): a read-only dict, in a third of
    a dict's memory (a ledger of 100,000 entries holds as many). Equal to any mapping with the
    same items."""

    __slots__ = ("command", "inputs", "outputs", "pool")

    def __init__(self, inputs: str, command: str, outputs: str, pool: str) -> None:
        self.inputs = inputs
        self.command = command
        self.outputs = outputs
        self.pool = pool

    def __getitem__(self, name: str) -> str:
        if name not in _PART_NAMES:
            raise KeyError(name)
        value: str = getattr(self, name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(PARTS)

    def __len__(self) -> int:
        return len(PARTS)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Parts):
            return (self.inputs, self.command, self.outputs, self.pool) == (
                other.inputs,
                other.command,
                other.outputs,
                other.pool,
            )
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # (as a dict's)

    def __repr__(self) -> str:
        return repr(dict(self))


@dataclass(frozen=True, slots=True)  # (slots: 100,000 of each are held at once)
class TaskKey:
    """A task's key (SHA-256 of its parts) and each part's digest: the same task run again has the same."""

    key: str
    parts: Mapping[str, str]  # part name -> digest


@dataclass(frozen=True, slots=True)
class StoredOutput:
    """One output of a ledger entry: where it is stored, and its size, MD5 and version (BlobStat)
    when the task ended (None: not found, or not known). In folder storage the MD5 is known only
    if the file was hashed before (a reused output, linked); the version tells a later run that
    the file is the one recorded, without reading it."""

    container: str
    blob: str
    size: int | None = None
    md5: str | None = None
    version: str | None = None

    @classmethod
    def of(cls, container: str, blob: str, stat: BlobStat | None) -> StoredOutput:
        """The output `blob` as `stat` describes it (None: not found)."""
        if stat is None:
            return cls(container, blob)
        return cls(container, blob, stat.size, stat.md5, stat.version)


@dataclass(frozen=True, slots=True)
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
            "outputs": [_output_json(o) for o in self.outputs],
            "at": self.at,
            "reused_from": self.reused_from,
        }

    @classmethod
    def from_json(cls, data: Any, same: dict[str, str] | None = None) -> Entry:
        """Raises (KeyError, TypeError, ValueError) on anything malformed: the caller skips it.
        `same`: texts met before, to keep one copy of those that repeat from entry to entry (the run,
        the containers, the pool's digest): a third of a ledger's memory."""
        one = (same if same is not None else {}).setdefault  # one(text, text): its first copy
        listed = data["outputs"]
        if type(listed) is list and len(listed) == 1:  # (most tasks: one output; no generator)
            outputs: tuple[StoredOutput, ...] = (_stored(*listed[0], one=one),)
        else:
            outputs = tuple(_stored(*o, one=one) for o in listed)
        parts = data["parts"]
        if not isinstance(parts, dict) or parts.keys() != _PART_NAMES:
            raise ValueError("parts")
        reused = data.get("reused_from")
        # Each checked as it is read, in this order (a damaged entry is logged with the first
        # error's type): _text(data["key"]), and so on, without a call each.
        key = data["key"]
        if not isinstance(key, str):
            raise TypeError(key)
        task = data["task"]
        if not isinstance(task, str):
            raise TypeError(task)
        run = data["run"]
        if not isinstance(run, str):
            raise TypeError(run)
        succeeded = bool(data["succeeded"])
        for v in parts.values():
            if not isinstance(v, str):
                raise TypeError(v)
        pool = parts["pool"]
        return cls(
            key,
            task,
            one(run, run),
            succeeded,
            Parts(parts["inputs"], parts["command"], parts["outputs"], one(pool, pool)),
            outputs,
            float(data["at"]),
            None if reused is None else one(_text(reused), reused),
        )


def _output_json(o: StoredOutput) -> list[Any]:
    """[container, blob, size, md5], and the version where there is one. (A batchflow from before
    versions skips an entry of five: it redoes the task rather than trust a size alone.)"""
    if o.version is None:
        return [o.container, o.blob, o.size, o.md5]
    return [o.container, o.blob, o.size, o.md5, o.version]


def _stored(c: Any, b: Any, s: Any, m: Any, v: Any = None, *, one: Callable[[str, str], str]) -> StoredOutput:
    container = str(c)
    return StoredOutput(
        one(container, container),
        str(b),
        None if s is None else int(s),
        None if m is None else str(m),
        None if v is None else str(v),
    )


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


# ---- keys ---------------------------------------------------------------------------------------


# One encoder for every key: json.dumps builds a new one per call (most of a key's cost at 100k tasks).
_CANONICAL = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)
# And the C encoder inside it made once (redact.one_shot): JSONEncoder.encode makes one per call, more
# than half of what a key's digests cost.
_canonical = one_shot(_CANONICAL)


def _sha(value: object) -> str:
    return sha256(_canonical(value).encode("utf-8")).hexdigest()


def _sha_of(text: str) -> str:
    return sha256(text.encode("utf-8")).hexdigest()


# A str as _canonical writes it (ensure_ascii=False).
_string: Callable[[str], str] = json.encoder.encode_basestring


NO_OUTPUTS = _sha([])  # the outputs part of a task with no output spec


class KeyMaker:
    """Task keys for one plan. Each uploaded file is hashed once (through `digest`, which caches by
    stat), however many tasks read it: at the version input discovery stat'ed, with no stat of its
    own. A file changed since is refused (as the upload would refuse it)."""

    def __init__(self, plan: Plan, backend: str, digest: Digest, earlier: Ledger | None = None) -> None:
        """`earlier`: a ledger whose latest entry of a task, when its key is the task's key, lends
        its texts (key and parts) to it: the same digests are not kept twice (80 MB at 100,000)."""
        self._digest = digest
        self._earlier = earlier
        # container -> blob -> its UploadItem, replaced by its content once known (_identity).
        self._files: dict[str, dict[str, UploadItem | tuple[int, str]]] = {}
        for u in plan.uploads:
            self._files.setdefault(u.container, {})[u.blob_name] = u
        self._pool = _sha([KEY_VERSION, backend, self._pool_identity(plan)])

    def _identity(self, item: TaskInput) -> tuple[object, ...]:
        """An input's content: its size and MD5, or the blob's name where no local file backs it."""
        files = self._files.get(item.container, {})
        known = files.get(item.blob_name)
        if known is None:
            return ("blob", item.container, item.blob_name)
        if isinstance(known, tuple):
            return known
        path = known.local_path
        try:
            if known.inode >= 0:
                # The version discovery saw: the one the upload sends (it refuses any other), so a
                # file changed since is refused here too, not hashed at a version never sent.
                seen = FileVersion(known.size, known.mtime_ns, known.inode)
                try:
                    content = (known.size, self._digest(path, seen))
                except FileChanged:
                    raise BatchflowError(f"cannot read input {path}: {CHANGED_SINCE_PLAN}") from None
            else:
                content = self._content(path)
        except OSError as e:  # (deleted since discovery, unreadable)
            raise BatchflowError(f"cannot read input {path}: {e.strerror or e}") from e
        files[item.blob_name] = content
        return content

    def hash_unknown(self, tasks: Sequence[RenderedTask], known: Known) -> None:
        """Hash the inputs of `tasks` whose digest `known` lacks, on up to _HASHERS threads (hashlib
        releases the GIL): a first run over large files reads them on every core, not on one. The
        others take their known digest now. Errors are _identity's, raised here."""
        pending: dict[int, TaskInput] = {}  # by id() of its UploadItem: each file once
        for task in tasks:
            for i in task.inputs:
                files = self._files.get(i.container)
                if files is None:
                    continue
                item = files.get(i.blob_name)
                if not isinstance(item, UploadItem) or id(item) in pending:
                    continue  # no local file, or its content known already
                if item.inode >= 0:
                    md5 = known(item.local_path, FileVersion(item.size, item.mtime_ns, item.inode))
                    if md5 is not None:
                        files[i.blob_name] = (item.size, md5)
                        continue
                pending[id(item)] = i
        if len(pending) < 2 or _HASHERS < 2:
            return  # (the keys hash it as they go)
        from concurrent.futures import ThreadPoolExecutor  # (only a run with files to hash needs it)

        with ThreadPoolExecutor(min(_HASHERS, len(pending)), thread_name_prefix="batchflow-md5") as pool:
            for _ in pool.map(self._identity, pending.values()):
                pass

    def _content(self, path: Path) -> tuple[int, str]:
        """Size and MD5 of a file no discovery stat'ed: stat'ed here, and again if it changes while
        it is read."""
        for attempt in range(_READ_ATTEMPTS):
            st = path.stat()
            try:
                return (st.st_size, self._digest(path, st))
            except FileChanged:
                if attempt == _READ_ATTEMPTS - 1:
                    break
        raise BatchflowError(f"cannot read input {path}: it keeps changing while it is read")

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
        """The texts hashed are those _canonical makes of each part's value, written out directly
        for the usual shapes (one input with a local file, no environment, outputs), which is twice
        as fast (tests/test_ledger.py compares the two)."""
        inputs = task.inputs
        if len(inputs) == 1:  # (sorting one item, fast)
            content = self._identity(inputs[0])
            if len(content) == 2 and type(content[0]) is int and type(content[1]) is str:
                inputs_text = f"[[{_string(inputs[0].file_path)},{content[0]},{_string(content[1])}]]"
            else:
                inputs_text = _canonical([[inputs[0].file_path, *content]])
        else:
            inputs_text = _canonical(sorted([i.file_path, *self._identity(i)] for i in inputs))
        environment = task.environment
        command_text = (
            _canonical([task.command, sorted(environment.items())])
            if environment
            else f"[{_string(task.command)},[]]"
        )
        outputs_text = (
            "["
            + ",".join(
                f"[{_string(o.pattern)},{_string(o.container)},{_string(o.destination)},"
                f"{_string(o.condition.value)}]"
                for o in task.outputs
            )
            + "]"
        )
        parts = Parts(_sha_of(inputs_text), _sha_of(command_text), _sha_of(outputs_text), self._pool)
        # [KEY_VERSION, [the parts' digests in PARTS' order]]: hexadecimal, nothing to escape.
        key = _sha_of(
            f'[{KEY_VERSION},["{parts.inputs}","{parts.command}","{parts.outputs}","{parts.pool}"]]'
        )
        last = None if self._earlier is None else self._earlier.latest(task.id)
        if last is not None and last.key == key and last.parts == parts:
            return TaskKey(last.key, last.parts)
        return TaskKey(key, parts)


def task_keys(
    plan: Plan,
    backend: str,
    digest: Digest,
    earlier: Ledger | None = None,
    *,
    known: Known | None = None,
) -> dict[str, TaskKey]:
    """Each task's key, by task id. The plan's tasks, before the per-run output prefix. `earlier`:
    see KeyMaker (the keys are the same with it or without). `known`: the digests known without
    reading (DigestCache.known); the inputs it does not know are hashed first, in parallel."""
    maker = KeyMaker(plan, backend, digest, earlier)
    if known is not None:
        maker.hash_unknown(plan.tasks, known)
    return {t.id: maker.key(t) for t in plan.tasks}


def write_keys(folder: Path, keys: Mapping[str, TaskKey]) -> None:
    data = {tid: {"key": k.key, "parts": dict(k.parts)} for tid, k in keys.items()}
    _replace_text(folder / KEYS_FILE, json.dumps(data, separators=(",", ":")))


def read_keys(folder: Path) -> dict[str, TaskKey]:
    try:
        data = json.loads((folder / KEYS_FILE).read_text(encoding="utf-8"))
        return {
            str(t): TaskKey(str(v["key"]), Parts(*(str(v["parts"][p]) for p in PARTS)))
            for t, v in data.items()
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
                out.append(StoredOutput.of(o.container, blob, stats.get(blob)))
                continue
            segments = o.pattern.split("/")
            split = next(i for i, s in enumerate(segments) if has_magic(s))
            tail = compile_glob("/".join(segments[split:]))
            prefix = (
                o.destination if not o.destination or o.destination.endswith("/") else o.destination + "/"
            )
            for blob in self._under(o.container, prefix):
                if tail.fullmatch(blob[len(prefix) :]) is not None:
                    out.append(StoredOutput.of(o.container, blob, stats[blob]))
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
    return _parse(_lines(text), where)


def read_entries(path: Path, where: str) -> Iterator[Entry]:
    """parse_entries(path.read_text(encoding="utf-8"), where), reading the file a line at a time:
    the text of a 100,000-entry ledger is 60 MB (and as much again while it is decoded). Raises
    OSError, or UnicodeDecodeError, as read_text would, but while the entries are iterated."""
    with path.open(encoding="utf-8") as f:  # (universal newlines, as read_text)
        yield from _parse(_file_lines(f), where)


# What json.loads scans with (typeshed types make_scanner's argument as the scanner class itself).
_scan_once = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _loads(line: str) -> Any:
    """json.loads(line), with less around the scanner for a line that is one object (every line
    entries_text writes); json.loads itself for any other, and for its errors."""
    if line[:1] == "{":
        try:
            value, end = _scan_once(line, 0)
        except (StopIteration, ValueError):
            return json.loads(line)
        if end == len(line):
            return value
    return json.loads(line)


def _parse(lines: Iterable[str], where: str) -> Iterator[Entry]:
    same: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield Entry.from_json(_loads(line), same)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ledger %s line %d is damaged (%s): skipped", where, n, type(e).__name__)


_READ_CHUNK = 1 << 20
# What str.splitlines splits at, besides "\n" (entries_text writes none of them: JSON escapes them).
_OTHER_LINE_ENDS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_ASCII_LINE_ENDS = "\r\x0b\x0c\x1c\x1d\x1e"


def _has_other_line_end(text: str) -> bool:
    """_OTHER_LINE_ENDS.search(text) is not None, in a hundredth of the time for ASCII text (what
    entries_text writes): six substring searches, and the others cannot be in it."""
    if any(c in text for c in _ASCII_LINE_ENDS):
        return True
    return not text.isascii() and _OTHER_LINE_ENDS.search(text) is not None


def _lines(text: str) -> Iterator[str]:
    """text.splitlines(), one line at a time: the list of a 100,000-entry ledger's lines is 70 MB."""
    if _has_other_line_end(text):
        yield from text.splitlines()
        return
    start, end = 0, len(text)
    while start < end:
        stop = text.find("\n", start)
        if stop == -1:
            stop = end
        yield text[start:stop]
        start = stop + 1


def _file_lines(f: TextIO) -> Iterator[str]:
    r"""What _lines gives for the file's text, read a megabyte at a time. The file's text has its
    newlines translated, as read_text's; a line that holds another line end is split where
    str.splitlines splits the whole text: "a\x1c\n".splitlines() is ["a", ""], as in the text."""
    search = _has_other_line_end
    pending: list[str] = []  # the text after the last "\n" read
    while chunk := f.read(_READ_CHUNK):
        cut = chunk.rfind("\n")
        if cut == -1:  # (a line longer than a chunk)
            pending.append(chunk)
            continue
        pending.append(chunk[:cut])
        text = "".join(pending)
        pending = [chunk[cut + 1 :]]
        if not search(text):
            yield from text.split("\n")
        else:
            for line in text.split("\n"):
                yield from (line + "\n").splitlines() if search(line) else (line,)
    last = "".join(pending)
    if last:
        yield from last.splitlines() if search(last) else (last,)


def write_ledger(folder: Path, entries: Iterable[Entry]) -> Path:
    path = folder / LEDGER_FILE
    _replace_text(path, entries_text(entries))
    return path


def _replace_text(path: Path, text: str) -> None:
    """`text` written beside `path` and renamed over it: a reader sees the old file or the new.
    What fails (a full disk) leaves no half-written temporary file in the run folder."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def ledger_blob(workflow_name: str, run_id: str) -> str:
    return f"{LEDGER_PREFIX}{workflow_name}/{run_id}.jsonl"


class Ledger:
    """Every entry known, indexed by key (the succeeded ones) and by task id (the latest)."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        # A key's one entry, or its entries once there are more (a list each is 10 MB at 100,000).
        self._by_key: dict[str, Entry | list[Entry]] = {}
        self._latest: dict[str, Entry] = {}
        self.count = 0
        for e in entries:
            self.add(e)

    def add(self, e: Entry) -> None:
        self.count += 1
        if e.succeeded:
            known = self._by_key.get(e.key)
            if known is None:
                self._by_key[e.key] = e
            elif isinstance(known, list):
                known.append(e)
            else:
                self._by_key[e.key] = [known, e]
        last = self._latest.get(e.task)
        if last is None or (e.at, e.run) >= (last.at, last.run):
            self._latest[e.task] = e

    def succeeded(self, key: str) -> list[Entry]:
        """The succeeded entries with this key, the latest first."""
        known = self._by_key.get(key)
        if known is None:
            return []
        if not isinstance(known, list):
            return [known]
        return sorted(known, key=lambda e: (e.at, e.run), reverse=True)

    def latest(self, task_id: str) -> Entry | None:
        return self._latest.get(task_id)
