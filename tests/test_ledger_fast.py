"""The ledger's fast paths say what the plain code says: keys written out directly, the ledger read a
chunk at a time, lines scanned without json.loads, Parts as a dict, and plan_run without replace."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import pytest

import batchflow.ledger as ledger_module
from batchflow.digests import DigestCache, FileChanged, FileStat, FileVersion
from batchflow.errors import BatchflowError
from batchflow.ledger import (
    KEY_VERSION,
    PARTS,
    Entry,
    KeyMaker,
    Ledger,
    Parts,
    StoredOutput,
    TaskKey,
    _canonical,
    _file_lines,
    _lines,
    _loads,
    _sha,
    entries_text,
    parse_entries,
    read_entries,
    task_keys,
)
from batchflow.model import (
    ForeachSpec,
    ImageReference,
    JobSpec,
    OutputCondition,
    Plan,
    PoolSpec,
    RenderedTask,
    TaskInput,
    TaskLogs,
    TaskOutput,
    TaskTemplate,
    UploadItem,
    Workflow,
)
from batchflow.runplan import _as_submitted


def _task(
    tid: str, inputs: tuple[TaskInput, ...], env: dict[str, str], outputs: tuple[TaskOutput, ...]
) -> RenderedTask:
    return RenderedTask(
        id=tid,
        index=0,
        command='ffmpeg -i "a b".mp4 \\ \u00e9\u2028 ./x.mp3',
        inputs=inputs,
        outputs=outputs,
        environment=env,
        max_retries=0,
        max_wall_clock=None,
    )


def _plan(tmp_path: Path, tasks: list[RenderedTask], uploads: list[UploadItem]) -> Plan:
    pool = PoolSpec("p", "Standard_A1", ImageReference("pub", "off", "sku"), "agent")
    foreach = ForeachSpec("in", "*")
    workflow = Workflow(
        1, "wf", tmp_path / "wf.yaml", tmp_path, pool, JobSpec("j"), TaskTemplate(foreach, "x")
    )
    return Plan(workflow, tuple(uploads), tuple(tasks), None)


def _plain_key(maker: KeyMaker, task: RenderedTask) -> TaskKey:
    """The key as the plain code made it: _sha of each part's structure."""
    files = sorted([i.file_path, *maker._identity(i)] for i in task.inputs)
    env = task.environment
    parts = {
        "inputs": _sha(files),
        "command": _sha([task.command, sorted(env.items()) if env else []]),
        "outputs": _sha([[o.pattern, o.container, o.destination, o.condition.value] for o in task.outputs]),
        "pool": maker._pool,
    }
    return TaskKey(_sha([KEY_VERSION, [parts[p] for p in PARTS]]), parts)


def test_keys_written_out_directly_are_those_of_the_canonical_json(tmp_path: Path) -> None:
    names = ['clip "1".mp4', "caf\u00e9\\x.mp4", "tab\t.mp4"]
    uploads = []
    for name in names:
        path = tmp_path / name
        path.write_bytes(name.encode())
        uploads.append(UploadItem(path, "in", name, path.stat().st_size))
    out = TaskOutput('"o".mp3', "out", "runs/<run id>/\u00e9.mp3", OutputCondition.COMPLETION)
    tasks = [
        _task("one", (TaskInput("in", names[0], names[0]),), {}, (out,)),
        _task("env", (TaskInput("in", names[1], "x/" + names[1]),), {"B": "2", "A": '"1"'}, (out, out)),
        _task("two", (TaskInput("in", names[2], "t"), TaskInput("in", names[0], "s")), {}, ()),
        _task("blob", (TaskInput("in", "not uploaded", "n"),), {}, (out,)),
    ]
    plan = _plan(tmp_path, tasks, uploads)
    digests = DigestCache(tmp_path / "digests.json")
    maker = KeyMaker(plan, "local", digests.md5)
    for t in tasks:
        assert maker.key(t) == _plain_key(maker, t)
    assert _canonical({"b": [1, None, True, 1.5], "a": "\u00e9"}) == json.dumps(
        {"b": [1, None, True, 1.5], "a": "\u00e9"}, separators=(",", ":"), sort_keys=True, ensure_ascii=False
    )


def test_keys_share_the_texts_of_the_ledger_s_latest_entry_and_are_the_same(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"a")
    task = _task("t", (TaskInput("in", "a.mp4", "a.mp4"),), {}, ())
    plan = _plan(tmp_path, [task], [UploadItem(path, "in", "a.mp4", 1)])
    digest = DigestCache(tmp_path / "d.json").md5
    alone = task_keys(plan, "local", digest)["t"]
    entry = Entry(alone.key, "t", "r1", True, Parts(*(str(alone.parts[p]) for p in PARTS)))
    shared = task_keys(plan, "local", digest, Ledger([entry]))["t"]
    assert shared == alone
    assert shared.key is entry.key and shared.parts is entry.parts
    other = Entry("0" * 64, "t", "r1", True, entry.parts)
    assert task_keys(plan, "local", digest, Ledger([other]))["t"].key is not other.key


def test_parts_are_a_read_only_dict_of_the_four_digests() -> None:
    parts = Parts("i", "c", "o", "p")
    as_dict = {"inputs": "i", "command": "c", "outputs": "o", "pool": "p"}
    assert parts == as_dict and as_dict == parts and parts == Parts("i", "c", "o", "p")
    assert parts != {**as_dict, "pool": "q"} and parts != Parts("i", "c", "o", "q")
    assert dict(parts) == as_dict and list(parts) == list(PARTS) and len(parts) == 4
    assert parts.get("pool") == "p" and parts.get("nope") is None and "inputs" in parts
    with pytest.raises(KeyError):
        parts["nope"]
    assert repr(parts) == repr(as_dict)
    with pytest.raises(TypeError):
        hash(parts)


TEXTS = [
    "",
    "\n",
    "a",
    "a\n",
    "a\n\n",
    "a\nb",
    "a\x1c\nb\n",
    "a\x0bb\n\nc",
    "\u2028x\n\u2029\n\x85",
    "caf\u00e9\n\x1d\x1e\x0c",
    "x" * 50 + "\n" + "y" * 3,
]


@pytest.mark.parametrize("chunk", [1, 2, 5, 1 << 20])
@pytest.mark.parametrize("text", TEXTS)
def test_a_file_read_a_chunk_at_a_time_gives_the_lines_of_its_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, chunk: int
) -> None:
    monkeypatch.setattr(ledger_module, "_READ_CHUNK", chunk)
    path = tmp_path / "ledger.jsonl"
    path.write_bytes((text + "\r\nz\r").encode("utf-8"))
    with path.open(encoding="utf-8") as f:
        got = list(_file_lines(f))
    assert got == list(_lines(path.read_text(encoding="utf-8")))
    assert list(_lines(text)) == text.splitlines()


@pytest.mark.parametrize(
    "line", ['{"a": 1}', '{"a": 1}  ', '{"a": 1} x', '{"a": 1}{"b": 2}', '{"a": ', "[1]", " {}", "{]", "{}"]
)
def test_a_line_is_read_as_json_loads_reads_it(line: str) -> None:
    try:
        want: object = json.loads(line)
    except ValueError as e:
        with pytest.raises(type(e)) as got:
            _loads(line)
        assert str(got.value) == str(e)
    else:
        assert _loads(line) == want


def test_a_ledger_read_from_its_file_is_the_ledger_parsed_from_its_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parts = Parts("i" * 64, "c" * 64, "o" * 64, "p" * 64)
    entries = [
        Entry("k1", "t1", "r1", True, parts, (StoredOutput("out", "runs/r1/a", 3, "m" * 32),), 1.5),
        Entry("k2", "t2", "r1", False, parts, (), 2.0, "r0"),
        Entry("k3", "t3", "r1", True, parts, (StoredOutput("out", "a", None, None),) * 2, 3.0),
    ]
    damaged = ['{"key": 1}', '{"outputs": {"x": 1}}', "[1]", '{"outputs": [], "parts": {}}', "{cut"]
    text = entries_text(entries[:1]) + "\n".join(damaged) + "\n\n" + entries_text(entries[1:])
    path = tmp_path / "ledger.jsonl"
    path.write_text(text, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="batchflow"):
        parsed = list(parse_entries(text, "x"))
        first = [r.getMessage() for r in caplog.records]
        caplog.clear()
        read = list(read_entries(path, "x"))
        second = [r.getMessage() for r in caplog.records]
    assert parsed == read == entries
    assert first == second and len(first) == len(damaged)
    assert all(isinstance(e.parts, Parts) for e in read)


def test_the_succeeded_entries_of_a_key_are_the_latest_first() -> None:
    a, b, c = (Entry("k", "t", run, True, {}, at=at) for run, at in (("r2", 1.0), ("r1", 1.0), ("r3", 0.5)))
    ledger = Ledger([a, Entry("k", "t", "r9", False, {}, at=9.0)])
    assert ledger.succeeded("k") == [a] and ledger.succeeded("none") == []
    ledger.add(b)
    ledger.add(c)
    assert ledger.succeeded("k") == [a, b, c]


def test_a_task_as_submitted_is_the_task_replaced() -> None:
    out = TaskOutput("p", "c", "d", OutputCondition.FAILURE)
    task = RenderedTask("t", 3, "cmd", (TaskInput("c", "b", "f"),), (out,), {"A": "1"}, 2, 60.0, "b", None)
    logs = TaskLogs("logs", "batchflow-logs/r/")
    for prefix in ("runs/r/", ""):
        want = dataclasses.replace(
            task,
            outputs=tuple(dataclasses.replace(o, destination=prefix + o.destination) for o in task.outputs),
            logs=logs,
        )
        assert _as_submitted(task, prefix, logs) == want
    assert {f.name for f in dataclasses.fields(RenderedTask)} == {
        "id",
        "index",
        "command",
        "inputs",
        "outputs",
        "environment",
        "max_retries",
        "max_wall_clock",
        "source_blob",
        "logs",
    }, "a new field of RenderedTask: runplan._as_submitted must copy it"


def test_a_digest_cache_drops_its_damaged_entries_and_keeps_the_order_of_the_rest(tmp_path: Path) -> None:
    file = tmp_path / "d.json"
    good = [8, 1, 2, "0" * 32, True]
    entries = {
        "/a": good,
        "/b": [8, 1, 2, "x", True],
        "/c": [True, 1, 2, "0" * 32, True],
        "/d": good,
        "/e": 5,
    }
    file.write_text(json.dumps({"format": "batchflow-digests", "version": 1, "entries": entries}), "utf-8")
    cache = DigestCache(file)
    assert len(cache) == 2
    assert list(cache._load()) == ["/a", "/d"]


def _seen(path: Path) -> UploadItem:
    """An input as discovery lists it: with the version its stat saw."""
    st = path.stat()
    return UploadItem(path, "in", path.name, st.st_size, st.st_mtime_ns, st.st_ino)


def test_a_key_hashes_the_version_discovery_saw_without_a_stat_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"a")
    task = _task("t", (TaskInput("in", "a.mp4", "a.mp4"),), {}, ())
    given: list[object] = []

    def digest(p: Path, st: FileStat) -> str:
        given.append(st)
        return DigestCache(tmp_path / "d.json").md5(p, st)

    seen = task_keys(_plan(tmp_path, [task], [_seen(path)]), "local", digest)["t"]
    st = path.stat()
    assert given == [FileVersion(st.st_size, st.st_mtime_ns, st.st_ino)]
    unseen = task_keys(_plan(tmp_path, [task], [UploadItem(path, "in", "a.mp4", 1)]), "local", digest)["t"]
    assert isinstance(given[1], os.stat_result)
    assert seen == unseen


def test_an_input_rewritten_after_discovery_is_refused_as_its_upload_would_be(tmp_path: Path) -> None:
    """The key would describe a version the upload refuses to send (the storage contract's test):
    refused here too, naming the file, and the version seen is still hashed where it is read."""
    path = tmp_path / "a b.mp4"
    path.write_bytes(b"old")
    item = _seen(path)
    task = _task("t", (TaskInput("in", item.blob_name, "a.mp4"),), {}, ())
    path.write_bytes(b"new, and longer")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # (a write within the clock's tick)
    with pytest.raises(
        BatchflowError, match=r"cannot read input .*a b\.mp4: it changed after this run listed it"
    ):
        task_keys(_plan(tmp_path, [task], [item]), "local", DigestCache(tmp_path / "d.json").md5)
    fresh = task_keys(_plan(tmp_path, [task], [_seen(path)]), "local", DigestCache(tmp_path / "e.json").md5)
    new = b"new, and longer"
    assert fresh["t"].parts["inputs"] == _sha(
        [["a.mp4", len(new), hashlib.md5(new, usedforsecurity=False).hexdigest()]]
    )


def test_an_input_gone_or_changing_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a b.mp4"
    path.write_bytes(b"a")
    item = _seen(path)
    task = _task("t", (TaskInput("in", "a b.mp4", "a.mp4"),), {}, ())
    path.unlink()
    with pytest.raises(BatchflowError, match=r"cannot read input .*a b\.mp4: No such file or directory"):
        task_keys(_plan(tmp_path, [task], [item]), "local", DigestCache(tmp_path / "d.json").md5)
    path.write_bytes(b"a")
    calls: list[FileStat] = []

    def changing(p: Path, st: FileStat) -> str:
        calls.append(st)
        raise FileChanged(f"{p} changed while it was read")

    # Not stat'ed by discovery: stat'ed and read again, three times in all.
    unseen = UploadItem(path, "in", "a b.mp4", 1)
    with pytest.raises(BatchflowError, match=r"cannot read input .*a b\.mp4: it keeps changing"):
        task_keys(_plan(tmp_path, [task], [unseen]), "local", changing)
    assert len(calls) == 3


def test_unknown_inputs_are_hashed_first_on_threads_and_the_keys_are_the_same(tmp_path: Path) -> None:
    """A first run: the inputs no digest is known for are read in parallel, each once however many
    tasks read it; those the cache knows are not read; the keys are those made one at a time."""
    paths = [tmp_path / f"clip {n}.mp4" for n in range(4)]
    for n, path in enumerate(paths):
        path.write_bytes(bytes([n]) * 100_000)
    tasks = [_task(f"t{n}", (TaskInput("in", p.name, "a.mp4"),), {}, ()) for n, p in enumerate(paths)]
    tasks.append(
        _task("both", (TaskInput("in", paths[0].name, "a"), TaskInput("in", paths[1].name, "b")), {}, ())
    )
    plan = _plan(tmp_path, tasks, [_seen(p) for p in paths])
    cache = DigestCache(tmp_path / "d.json")
    one_at_a_time = task_keys(plan, "local", cache.md5)
    cache.forget(tmp_path)
    st = paths[3].stat()
    cache.record(paths[3], st, cache_md5 := one_at_a_time["t3"].parts["inputs"][:32], trusted=True)
    read: list[tuple[str, str]] = []

    def digest(p: Path, st: FileStat) -> str:
        read.append((p.name, threading.current_thread().name))
        return DigestCache(tmp_path / "other.json").md5(p, st)

    keys = task_keys(plan, "local", digest, known=cache.known)
    assert sorted(name for name, _ in read) == ["clip 0.mp4", "clip 1.mp4", "clip 2.mp4"]
    if ledger_module._HASHERS > 1:
        assert all(thread.startswith("batchflow-md5") for _, thread in read)
    assert {t: k for t, k in keys.items() if t != "t3"} == {
        t: k for t, k in one_at_a_time.items() if t != "t3"
    }
    # t3 took the (made-up) digest the cache gave, without reading the file.
    assert keys["t3"].parts["inputs"] == _sha([["a.mp4", st.st_size, cache_md5]])


def test_an_input_refused_on_a_hashing_thread_is_named(tmp_path: Path) -> None:
    paths = [tmp_path / f"{n}.mp4" for n in range(3)]
    for path in paths:
        path.write_bytes(b"x")
    items = [_seen(p) for p in paths]
    paths[1].write_bytes(b"changed")
    tasks = [_task(f"t{n}", (TaskInput("in", p.name, "a.mp4"),), {}, ()) for n, p in enumerate(paths)]
    cache = DigestCache(tmp_path / "d.json")
    with pytest.raises(
        BatchflowError, match=r"cannot read input .*1\.mp4: it changed after this run listed it"
    ):
        task_keys(_plan(tmp_path, tasks, items), "local", cache.md5, known=cache.known)


def test_an_output_version_is_written_only_where_there_is_one_and_read_back() -> None:
    parts = Parts("i" * 64, "c" * 64, "o" * 64, "p" * 64)
    with_version = StoredOutput("out", "runs/r1/a", 3, None, "1796424407429688126:2737766")
    azure = StoredOutput("out", "runs/r1/b", 3, "m" * 32)
    entries = [Entry("k1", "t1", "r1", True, parts, (with_version, azure), 1.5)]
    text = entries_text(entries)
    assert json.loads(text)["outputs"] == [
        ["out", "runs/r1/a", 3, None, "1796424407429688126:2737766"],
        ["out", "runs/r1/b", 3, "m" * 32],  # as every batchflow before versions wrote it
    ]
    assert list(parse_entries(text, "x")) == entries
    six = text.replace('2737766"]', '2737766", 1]')
    assert list(parse_entries(six, "x")) == []  # damaged: skipped, never half-read
