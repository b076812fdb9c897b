"""One storage contract, two storages: the folder storage and Azure Blob Storage on Azurite.

Whatever a compute backend or the runner relies on is checked here against both; what only one
of them does (quick-check by mtime, Content-MD5, SAS permissions) is in its own test file.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from azurite import AzuriteInfo, put_blob_raw

from batchflow.backends.azure import storage as azure_storage
from batchflow.backends.azure.auth import blob_auth
from batchflow.backends.azure.storage import AzureBlobStorage
from batchflow.backends.base import Storage
from batchflow.backends.blob_urls import RetrySettings, fetch_url, put_to_container_url
from batchflow.backends.local.storage import LocalStorage
from batchflow.errors import BatchflowError
from batchflow.model import BlobStat, TransferResult, UploadItem

pytest_plugins = ["azurite"]

AWKWARD = "dir ü/a b#c%d?e:f[g]+h&i=j.txt"  # spaces, unicode, # % ? : [ + & =


@dataclass
class Subject:
    """A storage under test, with a way around it: put a blob by any name, read one back."""

    kind: str
    storage: Storage
    where: str  # what "does not exist in ..." names
    put: Callable[[str, str, bytes], None]  # (container, blob, data), bypassing batchflow
    get: Callable[[str, str], bytes]
    hostile: tuple[tuple[str, str], ...]  # (name, why): names it can hold that must never be downloaded


def _local(tmp_path: Path) -> Subject:
    storage = LocalStorage(tmp_path / "storage")

    def put(container: str, blob: str, data: bytes) -> None:
        path = storage.root.joinpath(container, *blob.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def get(container: str, blob: str) -> bytes:
        return storage.path_of(container, blob).read_bytes()

    hostile = (("C:evil.txt", "starts with a drive letter"), ("a\\b.txt", "contains a backslash"))
    return Subject("local", storage, str(storage.root), put, get, hostile)


def _azure(info: AzuriteInfo) -> Iterator[Subject]:
    retry = RetrySettings(total=2, initial_backoff=0.05, increment_base=0, jitter=0)
    service = BlobServiceClient.from_connection_string(info.connection_string)
    with AzureBlobStorage(blob_auth(info.environ()), sas_ttl=600, retry=retry) as storage, service:

        def put(container: str, blob: str, data: bytes) -> None:
            if blob.startswith("/") or ".." in blob.split("/"):
                put_blob_raw(info, container, blob, data)  # the SDK cannot name these
            else:
                service.get_blob_client(container, blob).upload_blob(data, overwrite=True)

        def get(container: str, blob: str) -> bytes:
            return service.get_blob_client(container, blob).download_blob().readall()

        hostile = (
            ("C:evil.txt", "starts with a drive letter"),
            ("../evil.txt", "contains a '..' segment"),
            ("a/../../evil.txt", "contains a '..' segment"),
            ("/abs.txt", "absolute path"),
            ("a//b.txt", "contains an empty segment"),
        )
        yield Subject("azure", storage, info.blob_endpoint, put, get, hostile)


@pytest.fixture(params=["local", "azure"])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    if request.param == "local":
        yield _local(tmp_path)
    else:
        yield from _azure(request.getfixturevalue("azurite"))


@pytest.fixture
def container() -> str:
    """A fresh name per test, so tests sharing one Azurite never meet."""
    return f"t{uuid.uuid4().hex[:20]}"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _item(path: Path, container: str, blob: str) -> UploadItem:
    return UploadItem(local_path=path, container=container, blob_name=blob, size=path.stat().st_size)


def test_containers_are_created_once_and_deleted_once(subject: Subject, container: str) -> None:
    s = subject.storage
    assert s.ensure_container(container) is True
    assert s.ensure_container(container) is False
    assert s.list_blobs(container) == []
    assert s.delete_container(container) is True
    assert s.delete_container(container) is False


def test_container_names_are_checked_before_any_call(subject: Subject) -> None:
    with pytest.raises(BatchflowError) as e:
        subject.storage.ensure_container("../outside")
    assert str(e.value).startswith("invalid container name '../outside'")


def test_listing_a_missing_container_fails(subject: Subject, container: str) -> None:
    with pytest.raises(BatchflowError) as e:
        subject.storage.list_blobs(container)
    assert str(e.value) == f"container '{container}' does not exist in {subject.where}"


def test_upload_then_skip_unchanged_then_upload_changed(
    subject: Subject, container: str, tmp_path: Path
) -> None:
    s = subject.storage
    s.ensure_container(container)
    a = _write(tmp_path / "src" / "a.txt", b"aaaa")
    b = _write(tmp_path / "src" / "sub" / "b.txt", b"bb")
    items = [_item(a, container, "a.txt"), _item(b, container, "sub/b.txt")]

    assert s.upload(items) == TransferResult(transferred=2, skipped=0, bytes=6, files=("a.txt", "sub/b.txt"))
    assert subject.get(container, "sub/b.txt") == b"bb"
    assert s.upload(items) == TransferResult(transferred=0, skipped=2, bytes=0, files=())

    a.write_bytes(b"AAAA")  # same size, new content, new mtime
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 1_000_000_000))
    assert s.upload(items) == TransferResult(transferred=1, skipped=1, bytes=4, files=("a.txt",))
    assert subject.get(container, "a.txt") == b"AAAA"
    assert s.list_blobs(container) == ["a.txt", "sub/b.txt"]


def test_a_file_changed_since_discovery_is_not_uploaded(
    subject: Subject, container: str, tmp_path: Path
) -> None:
    """The task keys describe the version discovery saw: another one is never sent under them."""
    s = subject.storage
    s.ensure_container(container)
    a = _write(tmp_path / "src" / "a b.txt", b"seen")
    st = a.stat()
    seen = UploadItem(a, container, "a b.txt", st.st_size, st.st_mtime_ns, st.st_ino)
    a.write_bytes(b"SEEN")  # same size, new content
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(BatchflowError, match=r"a b\.txt.*it changed after this run listed it"):
        s.upload([seen])
    assert s.list_blobs(container) == []
    a.write_bytes(b"seen")  # the same content, but not the version seen (mtime): still refused
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    with pytest.raises(BatchflowError, match="it changed after this run listed it"):
        s.upload([seen])
    st = a.stat()
    assert (
        s.upload([UploadItem(a, container, "a b.txt", st.st_size, st.st_mtime_ns, st.st_ino)]).transferred
        == 1
    )
    assert subject.get(container, "a b.txt") == b"seen"


def test_upload_into_a_missing_container_fails(subject: Subject, container: str, tmp_path: Path) -> None:
    a = _write(tmp_path / "a.txt", b"a")
    with pytest.raises(BatchflowError) as e:
        subject.storage.upload([_item(a, container, "a.txt")])
    assert str(e.value) == f"container '{container}' does not exist in {subject.where}"


def test_list_blobs_is_sorted_and_filtered_by_prefix(subject: Subject, container: str) -> None:
    subject.storage.ensure_container(container)
    for name in ["b/2.txt", "a.txt", "b/1.txt", "ba.txt"]:
        subject.put(container, name, name.encode())
    s = subject.storage
    assert s.list_blobs(container) == ["a.txt", "b/1.txt", "b/2.txt", "ba.txt"]
    assert s.list_blobs(container, "b") == ["b/1.txt", "b/2.txt", "ba.txt"]
    assert s.list_blobs(container, "b/") == ["b/1.txt", "b/2.txt"]
    assert s.list_blobs(container, "zzz/") == []


# Appends to the file given, a few bytes at a time, until killed.
APPENDER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
while True:
    os.write(fd, b"more")
"""


def test_a_file_written_while_it_is_uploaded_is_refused(
    subject: Subject, container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process appends to the file while it is uploaded: an upload that saw the file change
    (its size, here) while it read it is refused and stores nothing; one that did not stored the
    file whole as it was when it was opened (a version of it). The writer overlapped at least one
    of the uploads. (Azure: every other upload streams the file, as it does those over 64 MiB.)"""
    s = subject.storage
    s.ensure_container(container)
    src = _write(tmp_path / "src" / "big.bin", os.urandom(4 * 1024 * 1024))
    start = src.stat().st_size
    writer = subprocess.Popen([sys.executable, "-c", APPENDER, str(src)])
    try:
        deadline = time.monotonic() + 30
        while src.stat().st_size == start:  # the writer is at work
            assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.001)
        refused = 0
        for attempt in range(20):
            blob = f"big-{attempt}.bin"
            whole = azure_storage._READ_WHOLE if attempt % 2 == 0 else 1024 * 1024
            monkeypatch.setattr(azure_storage, "_READ_WHOLE", whole)
            try:
                s.upload([_item(src, container, blob)])
            except BatchflowError as e:
                assert "it changed after this run listed it" in str(e)
                assert blob not in s.list_blobs(container)
                refused += 1
                continue
            stored = subject.get(container, blob)
            assert src.read_bytes()[: len(stored)] == stored  # the file as it was, whole
            md5 = hashlib.md5(stored, usedforsecurity=False).hexdigest()
            assert s.stat_blobs(container, blob)[blob] == BlobStat(len(stored), md5)
    finally:
        writer.kill()
        writer.wait()
    assert refused > 0, "the writer never overlapped an upload"


def test_an_output_written_while_it_is_stored_through_the_container_url_is_refused(
    subject: Subject, container: str, tmp_path: Path
) -> None:
    """A task's output still being appended to (a leftover process of the task) while the node
    stores it: refused (the task fails; a blob may be left, which the run does not count), or stored
    whole as one version with that version's MD5. A log (growing=True) is stored as it was when
    opened. (Locally the blob is a hard link to the file itself: nothing to tear.)"""
    s = subject.storage
    s.ensure_container(container)
    src = _write(tmp_path / "out" / "big.bin", os.urandom(4 * 1024 * 1024))
    start = src.stat().st_size
    writer = subprocess.Popen([sys.executable, "-c", APPENDER, str(src)])
    refused = 0
    try:
        deadline = time.monotonic() + 30
        while src.stat().st_size == start:  # the writer is at work
            assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.001)
        for attempt in range(10):
            blob = f"out-{attempt}.bin"
            log = f"log-{attempt}.txt"
            put_to_container_url(s.container_url(container), log, src, growing=True)
            try:
                put_to_container_url(s.container_url(container), blob, src)
            except BatchflowError as e:
                assert "changed while it was uploaded" in str(e)
                refused += 1
                blob = ""
            if subject.kind == "local":
                continue
            for name in (log, blob) if blob else (log,):
                stored = subject.get(container, name)
                assert src.read_bytes()[: len(stored)] == stored
                md5 = hashlib.md5(stored, usedforsecurity=False).hexdigest()
                assert s.stat_blobs(container, name)[name] == BlobStat(len(stored), md5)
    finally:
        writer.kill()
        writer.wait()
    assert refused > 0 if subject.kind == "azure" else refused == 0


def test_download_then_skip_unchanged(subject: Subject, container: str, tmp_path: Path) -> None:
    s = subject.storage
    s.ensure_container(container)
    a = _write(tmp_path / "src" / "a.mp3", b"a")
    b = _write(tmp_path / "src" / "b.mp3", b"bb")
    o = _write(tmp_path / "src" / "other.txt", b"o")
    s.upload([_item(a, container, "mp3/a.mp3"), _item(b, container, "mp3/deep/b.mp3")])
    s.upload([_item(o, container, "other.txt")])
    dest = tmp_path / "dest"

    assert s.download(container, "mp3/", dest) == TransferResult(
        transferred=2, skipped=0, bytes=3, files=(str(dest / "a.mp3"), str(dest / "deep" / "b.mp3"))
    )
    assert (dest / "deep" / "b.mp3").read_bytes() == b"bb"
    assert s.download(container, "mp3/", dest) == TransferResult(transferred=0, skipped=2, bytes=0, files=())
    assert sorted(p.name for p in dest.iterdir()) == ["a.mp3", "deep"]  # no temporary file left behind

    everything = s.download(container, "", tmp_path / "all")
    assert sorted(everything.files) == sorted(
        str(tmp_path / "all" / p) for p in ["mp3/a.mp3", "mp3/deep/b.mp3", "other.txt"]
    )


def test_download_refuses_hostile_names_before_writing_anything(subject: Subject, tmp_path: Path) -> None:
    for i, (name, why) in enumerate(subject.hostile):
        container = f"hostile-{i}-{uuid.uuid4().hex[:12]}"
        subject.storage.ensure_container(container)
        subject.put(container, "fine.txt", b"fine")  # sorts before most hostile names
        subject.put(container, "zzz.txt", b"fine")  # and after the others
        subject.put(container, name, b"evil")
        assert name in subject.storage.list_blobs(container)
        dest = tmp_path / "dest" / "inner"
        with pytest.raises(BatchflowError) as e:
            subject.storage.download(container, "", dest)
        assert str(e.value) == f"unsafe blob name {name!r}: {why}"
        assert not (tmp_path / "dest").exists()
        assert not (tmp_path / "evil.txt").exists()


def test_awkward_names_round_trip_through_urls(subject: Subject, container: str, tmp_path: Path) -> None:
    s = subject.storage
    s.ensure_container(container)
    data = "ünïcödé bytes\n".encode() * 100
    subject.put(container, AWKWARD, data)
    assert s.list_blobs(container) == [AWKWARD]

    url = s.resource_url(container, AWKWARD)
    with urllib.request.urlopen(url) as response:  # noqa: S310 - http://127.0.0.1 or file://
        assert response.read() == data
    assert fetch_url(url, tmp_path / "fetched" / "x.bin") == len(data)
    assert (tmp_path / "fetched" / "x.bin").read_bytes() == data

    src = _write(tmp_path / "out.bin", b"output bytes")
    stored = put_to_container_url(s.container_url(container), f"run-1/{AWKWARD}", src)
    assert stored == f"{container}/run-1/{AWKWARD}"
    assert subject.get(container, f"run-1/{AWKWARD}") == b"output bytes"

    result = s.download(container, "", tmp_path / "dl")
    assert sorted(result.files) == sorted(
        [str(tmp_path / "dl" / AWKWARD), str(tmp_path / "dl" / "run-1" / AWKWARD)]
    )
    assert (tmp_path / "dl" / AWKWARD).read_bytes() == data


def test_outputs_stored_through_the_container_url_can_be_downloaded_and_skipped(
    subject: Subject, container: str, tmp_path: Path
) -> None:
    s = subject.storage
    s.ensure_container(container)
    src = _write(tmp_path / "task" / "out.mp3", b"mp3 data")
    put_to_container_url(s.container_url(container), "mp3/out.mp3", src)
    dest = tmp_path / "dest"
    assert s.download(container, "mp3/", dest).transferred == 1
    assert s.download(container, "mp3/", dest) == TransferResult(transferred=0, skipped=1, bytes=0, files=())


# ---- stat_blobs and copy_blobs (content-keyed resume) -----------------------------------------


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _stored(subject: Subject, container: str, blobs: dict[str, bytes], tmp_path: Path) -> None:
    """Store `blobs` through the storage's own upload, as batchflow stores inputs."""
    items = [
        _item(_write(tmp_path / "src" / f"{i}.bin", data), container, name)
        for i, (name, data) in enumerate(blobs.items())
    ]
    subject.storage.upload(items)


def test_stat_blobs_gives_each_blob_its_size_and_md5_by_prefix(
    subject: Subject, container: str, tmp_path: Path
) -> None:
    s = subject.storage
    s.ensure_container(container)
    blobs = {"a.txt": b"aaaa", "b/1.txt": b"", "b/2.txt": b"two" * 1000, "ba.txt": b"ba", AWKWARD: b"?"}
    _stored(subject, container, blobs, tmp_path)
    subject.put(container, "put-by-another-tool.txt", b"other")  # Azure: Put Blob sets the MD5 itself

    every = {name: BlobStat(len(data), _md5(data)) for name, data in blobs.items()}
    every["put-by-another-tool.txt"] = BlobStat(5, _md5(b"other"))
    assert s.stat_blobs(container) == every
    assert list(s.stat_blobs(container)) == s.list_blobs(container)
    assert s.stat_blobs(container, "b") == {n: every[n] for n in ["b/1.txt", "b/2.txt", "ba.txt"]}
    assert s.stat_blobs(container, "b/") == {n: every[n] for n in ["b/1.txt", "b/2.txt"]}
    assert s.stat_blobs(container, "zzz/") == {}
    assert s.stat_blobs(container) == every  # again (the folder storage: from its digest cache)


def test_stat_blobs_of_a_missing_container_fails(subject: Subject, container: str) -> None:
    with pytest.raises(BatchflowError) as e:
        subject.storage.stat_blobs(container)
    assert str(e.value) == f"container '{container}' does not exist in {subject.where}"


def test_copying_in_a_missing_container_fails(subject: Subject, container: str) -> None:
    with pytest.raises(BatchflowError) as e:
        subject.storage.copy_blobs(container, [("a.txt", "b.txt"), ("c.txt", "d.txt")])
    assert str(e.value) == f"container '{container}' does not exist in {subject.where}"


def test_copies_have_the_content_and_md5_of_their_sources(
    subject: Subject, container: str, tmp_path: Path
) -> None:
    s = subject.storage
    s.ensure_container(container)
    blobs = {"runs/r1/a.mp3": b"a" * 3000, "runs/r1/deep/b.mp3": b"bb", f"runs/r1/{AWKWARD}": b"odd"}
    _stored(subject, container, blobs, tmp_path)
    pairs = [(name, name.replace("runs/r1/", "runs/r2/")) for name in blobs]

    assert s.copy_blobs(container, pairs) == TransferResult(transferred=3, files=tuple(d for _, d in pairs))
    old, new = s.stat_blobs(container, "runs/r1/"), s.stat_blobs(container, "runs/r2/")
    assert {n.replace("runs/r1/", "runs/r2/"): st for n, st in old.items()} == new
    for src, dst in pairs:
        assert subject.get(container, dst) == blobs[src]
    assert s.stat_blobs(container, "runs/r1/") == old  # the sources are untouched


def test_a_copy_replaces_an_existing_destination(subject: Subject, container: str, tmp_path: Path) -> None:
    s = subject.storage
    s.ensure_container(container)
    _stored(
        subject,
        container,
        {"new/out.txt": b"new content", "old/out.txt": b"an older, longer content"},
        tmp_path,
    )
    assert s.copy_blobs(container, [("new/out.txt", "old/out.txt")]).files == ("old/out.txt",)
    assert subject.get(container, "old/out.txt") == b"new content"
    assert s.stat_blobs(container)["old/out.txt"] == BlobStat(11, _md5(b"new content"))


def test_a_missing_source_fails_by_name_and_the_other_copies_are_made(
    subject: Subject, container: str, tmp_path: Path
) -> None:
    s = subject.storage
    s.ensure_container(container)
    _stored(subject, container, {"a.txt": b"a", "sub/b.txt": b"b"}, tmp_path)
    pairs = [("a.txt", "copy/a.txt"), ("gone.txt", "copy/gone.txt"), ("sub", "copy/sub")]  # sub: a folder
    with pytest.raises(BatchflowError) as e:
        s.copy_blobs(container, pairs)
    assert "'gone.txt'" in str(e.value) or f"{container}/gone.txt" in str(e.value)
    assert "source blob not found" in str(e.value)
    assert s.list_blobs(container, "copy/") == ["copy/a.txt"]


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (("../evil.txt", "ok.txt"), "unsafe blob name '../evil.txt': contains a '..' segment"),
        (("ok.txt", "../evil.txt"), "unsafe blob name '../evil.txt': contains a '..' segment"),
        (("ok.txt", "a/../../evil.txt"), "unsafe blob name 'a/../../evil.txt': contains a '..' segment"),
        (("ok.txt", "/abs.txt"), "unsafe blob name '/abs.txt': absolute path"),
        (("ok.txt", "a//b.txt"), "unsafe blob name 'a//b.txt': contains an empty segment"),
        (("ok.txt", "C:evil.txt"), "unsafe blob name 'C:evil.txt': starts with a drive letter"),
        (("ok.txt", "a\\b.txt"), "unsafe blob name 'a\\\\b.txt': contains a backslash"),
        (("ok.txt", ""), "unsafe blob name '': empty name"),
        (("ok.txt", "ok.txt"), "cannot copy blob 'ok.txt' onto itself"),
    ],
)
def test_copies_with_hostile_names_are_refused_before_any_copy(
    subject: Subject, container: str, tmp_path: Path, pair: tuple[str, str], message: str
) -> None:
    s = subject.storage
    s.ensure_container(container)
    _stored(subject, container, {"ok.txt": b"ok"}, tmp_path)
    with pytest.raises(BatchflowError) as e:
        s.copy_blobs(container, [("ok.txt", "first.txt"), pair])
    assert str(e.value) == message
    assert s.list_blobs(container) == ["ok.txt"]


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("a.txt", "x.txt"), ("b.txt", "x.txt")], "blob 'x.txt' is the destination of more than one copy"),
        (
            [("a.txt", "b.txt"), ("b.txt", "c.txt")],
            "blob 'b.txt' is both the source and the destination of copies",
        ),
    ],
)
def test_copies_that_depend_on_their_order_are_refused(
    subject: Subject, container: str, tmp_path: Path, pairs: list[tuple[str, str]], message: str
) -> None:
    s = subject.storage
    s.ensure_container(container)
    _stored(subject, container, {"a.txt": b"a", "b.txt": b"b"}, tmp_path)
    with pytest.raises(BatchflowError) as e:
        s.copy_blobs(container, pairs)
    assert str(e.value) == message
    assert s.list_blobs(container) == ["a.txt", "b.txt"]


def test_five_hundred_copies_in_one_call(subject: Subject, container: str, tmp_path: Path) -> None:
    s = subject.storage
    s.ensure_container(container)
    blobs = {f"runs/r1/{i:03d}.out": f"output {i}".encode() for i in range(500)}
    _stored(subject, container, blobs, tmp_path)
    pairs = [(name, name.replace("/r1/", "/r2/")) for name in blobs]
    result = s.copy_blobs(container, pairs)
    assert (result.transferred, result.files) == (500, tuple(d for _, d in pairs))
    copied = s.stat_blobs(container, "runs/r2/")
    assert copied == {d: BlobStat(len(blobs[src]), _md5(blobs[src])) for src, d in pairs}
    assert s.copy_blobs(container, []) == TransferResult()


def test_delete_blobs_removes_only_those_named_and_skips_the_gone(subject: Subject, container: str) -> None:
    s = subject.storage
    s.ensure_container(container)
    for name in ("runs/r1/a.out", "runs/r1/sub/b.out", "runs/r2/a.out", AWKWARD):
        subject.put(container, name, b"x")
    result = s.delete_blobs(container, ["runs/r1/a.out", "runs/r1/sub/b.out", AWKWARD, "runs/r1/gone.out"])
    assert (result.transferred, result.skipped) == (3, 1)
    assert s.list_blobs(container) == ["runs/r2/a.out"]
    with pytest.raises(BatchflowError):
        s.delete_blobs(container, ["../escape.txt"])
