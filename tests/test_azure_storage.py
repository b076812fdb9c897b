"""AzureBlobStorage on Azurite: credentials, SAS URLs and what they allow, Content-MD5 skips, faults
(Azurite stopped mid-upload, a proxy answering 503 or dropping connections) and redaction.

The behaviour it shares with the folder storage is in test_storage_contract.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline import PipelineResponse
from azure.storage.blob import (
    AccountSasPermissions,
    BlobBlock,
    BlobServiceClient,
    ContainerClient,
    ContentSettings,
    ResourceTypes,
    generate_account_sas,
)
from azurite import (
    ACCOUNT_KEY,
    AzuriteInfo,
    AzuriteServer,
    AzuriteUnavailable,
    StaticTokenCredential,
    azurite_blob,
    azurite_executable,
)
from faultproxy import FaultProxy

from batchflow.backends.azure.auth import BlobAuth, blob_auth
from batchflow.backends.azure.storage import AzureBlobStorage, TransferFailed
from batchflow.backends.blob_urls import RetrySettings, fetch_url, put_to_container_url
from batchflow.errors import BatchflowError
from batchflow.model import TransferResult, UploadItem

pytest_plugins = ["azurite"]

FAST_RETRY = RetrySettings(total=2, initial_backoff=0.05, increment_base=0, jitter=0)
ROOT = Path(__file__).resolve().parent.parent


def _key_auth(endpoint: str) -> BlobAuth:
    return blob_auth(
        {
            "AZURE_STORAGE_ACCOUNT": "devstoreaccount1",
            "AZURE_STORAGE_KEY": ACCOUNT_KEY,
            "AZURE_STORAGE_ACCOUNT_URL": endpoint,
        }
    )


@pytest.fixture
def storage(azurite: AzuriteInfo) -> Iterator[AzureBlobStorage]:
    with AzureBlobStorage(blob_auth(azurite.environ()), sas_ttl=600, retry=FAST_RETRY) as s:
        yield s


@pytest.fixture
def service(azurite: AzuriteInfo) -> Iterator[BlobServiceClient]:
    with BlobServiceClient.from_connection_string(azurite.connection_string) as s:
        yield s


@pytest.fixture
def container(storage: AzureBlobStorage) -> str:
    name = f"t{uuid.uuid4().hex[:20]}"
    storage.ensure_container(name)
    return name


def _files(folder: Path, count: int, size: int = 100) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"f{i:03d}.bin"
        path.write_bytes(bytes([i % 256]) * size)
        paths.append(path)
    return paths


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _items(paths: list[Path], container: str) -> list[UploadItem]:
    return [UploadItem(p, container, p.name, p.stat().st_size) for p in paths]


# ---- the Azurite fixture itself ------------------------------------------------------------


def test_missing_azurite_without_npm_is_a_clear_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm here
    with pytest.raises(AzuriteUnavailable) as e:
        azurite_executable(tmp_path)
    assert str(e.value) == (
        "Azurite is not installed and npm is not on PATH: install Node.js 20 or later (with npm), "
        f"then run `npm ci` in {tmp_path}"
    )


def test_a_failing_npm_ci_is_a_clear_failure(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text('{"name": "x", "private": true}', encoding="utf-8")
    with pytest.raises(AzuriteUnavailable) as e:
        azurite_executable(tmp_path)  # no package-lock.json: npm ci refuses at once, offline
    lines = str(e.value).splitlines()
    assert lines[:4] == [
        f"`npm ci` in {tmp_path} failed (exit 1):",
        "npm error code EUSAGE",
        "npm error The `npm ci` command can only install with an existing package-lock.json or",
        "npm error npm-shrinkwrap.json with lockfileVersion >= 1. Run an install with npm@5 or",
    ]


def test_azurite_that_cannot_start_is_a_clear_failure() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        server = AzuriteServer()
        server.port = busy.getsockname()[1]
        with pytest.raises(AzuriteUnavailable) as e:
            server.start()
    assert str(e.value).startswith("Azurite did not start (")
    assert f"EADDRINUSE: address already in use 127.0.0.1:{server.port}" in str(e.value)
    assert not server.running


# ---- credentials from the environment ------------------------------------------------------


def test_no_credentials_names_the_variables() -> None:
    with pytest.raises(BatchflowError) as e:
        blob_auth({})
    assert str(e.value) == (
        "no Azure Storage credentials: set AZURE_STORAGE_ACCOUNT_URL (Entra ID sign-in), "
        "or AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY"
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"AZURE_STORAGE_KEY": "k"},
            "AZURE_STORAGE_KEY is set but AZURE_STORAGE_ACCOUNT is not: set AZURE_STORAGE_ACCOUNT to the "
            "storage account name",
        ),
        (
            {"AZURE_STORAGE_ACCOUNT": "acct"},
            "AZURE_STORAGE_ACCOUNT is set but neither AZURE_STORAGE_KEY (account key) nor "
            "AZURE_STORAGE_ACCOUNT_URL (Entra ID sign-in) is",
        ),
        (
            {"AZURE_STORAGE_CONNECTION_STRING": "AccountName=acct"},
            "AZURE_STORAGE_CONNECTION_STRING has neither AccountKey nor SharedAccessSignature",
        ),
        (
            {"AZURE_STORAGE_CONNECTION_STRING": "not a connection string"},
            "AZURE_STORAGE_CONNECTION_STRING is not a connection string (Key=value;Key=value;...)",
        ),
        (
            {"AZURE_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net/?sv=1&sig=SECRETSIG"},
            "AZURE_STORAGE_ACCOUNT_URL='https://acct.blob.core.windows.net/?sv=1&sig=REDACTED' is not an "
            "account URL like https://myaccount.blob.core.windows.net (no query string: credentials never "
            "go in it)",
        ),
    ],
)
def test_incomplete_credentials_say_what_to_set(environ: dict[str, str], message: str) -> None:
    with pytest.raises(BatchflowError) as e:
        blob_auth(environ)
    assert str(e.value) == message


def test_the_three_ways_to_sign_in_in_order_of_preference() -> None:
    key_env = {"AZURE_STORAGE_ACCOUNT": "acct", "AZURE_STORAGE_KEY": "S2V5"}
    cs = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=S2V5==;EndpointSuffix=core.windows.net"

    entra = blob_auth({"AZURE_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net/", **{"X": ""}})
    assert (entra.method, entra.account_url, entra.account_key) == (
        "Entra ID (DefaultAzureCredential)",
        "https://acct.blob.core.windows.net",
        None,
    )
    assert type(entra.token_credential).__name__ == "DefaultAzureCredential"
    # Entra ID wins over a connection string; an account key in the environment means key auth.
    both = blob_auth(
        {
            "AZURE_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net",
            "AZURE_STORAGE_CONNECTION_STRING": cs,
        }
    )
    assert both.method == "Entra ID (DefaultAzureCredential)"
    for auth in (entra, both):
        with AzureBlobStorage(auth, sas_ttl=60):  # no I/O: nothing to sign in to yet
            pass

    from_cs = blob_auth({"AZURE_STORAGE_CONNECTION_STRING": cs, **key_env})
    assert (from_cs.method, from_cs.account_url, from_cs.account_name, from_cs.account_key) == (
        "connection string",
        "https://acct.blob.core.windows.net",
        "acct",
        "S2V5==",
    )
    from_key = blob_auth(key_env)
    assert (from_key.method, from_key.account_url, from_key.account_key) == (
        "account key",
        "https://acct.blob.core.windows.net",
        "S2V5",
    )
    custom = blob_auth({**key_env, "AZURE_STORAGE_ACCOUNT_URL": "http://127.0.0.1:10000/acct"})
    assert (custom.method, custom.account_url) == ("account key", "http://127.0.0.1:10000/acct")
    dev = blob_auth({"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"})
    assert (dev.account_url, dev.account_name) == (
        "http://127.0.0.1:10000/devstoreaccount1",
        "devstoreaccount1",
    )
    assert "S2V5" not in repr(from_cs) + repr(from_key)


def test_entra_id_sign_in_signs_user_delegation_sas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Path (1) end to end: bearer tokens, a user delegation key, and SAS URLs signed with it
    (Azurite over HTTPS with --oauth basic; its certificate trusted through REQUESTS_CA_BUNDLE)."""
    with azurite_blob(tls_dir=tmp_path / "tls") as server:
        info = server.info
        assert info.ca_file is not None
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(info.ca_file))
        auth = BlobAuth(
            method="Entra ID (test token)",
            account_url=info.blob_endpoint,
            account_name=None,
            token_credential=StaticTokenCredential(),
        )
        copy_sources: list[str] = []

        def note_copy_source(response: PipelineResponse[Any, Any]) -> None:
            if "x-ms-copy-source" in response.http_request.headers:
                copy_sources.append(response.http_request.headers["x-ms-copy-source"])

        options = {"raw_response_hook": note_copy_source}
        with AzureBlobStorage(auth, sas_ttl=600, client_options=options) as s:
            assert s.ensure_container("entra") is True
            paths = _files(tmp_path / "src", 2)
            assert s.upload(_items(paths, "entra")).transferred == 2
            assert s.upload(_items(paths, "entra")).skipped == 2  # listed through a user delegation SAS
            url = s.resource_url("entra", "f000.bin")
            q = parse_qs(urlsplit(url).query)
            assert (q["sp"], q["spr"], q["skoid"], q["sktid"]) == (
                ["r"],
                ["https"],
                ["00000000-0000-4000-8000-000000000002"],
                [StaticTokenCredential.TENANT],
            )
            context = ssl.create_default_context(cafile=str(info.ca_file))
            with urllib.request.urlopen(url, context=context) as r:  # noqa: S310 - Azurite on 127.0.0.1
                assert r.read() == paths[0].read_bytes()
            tampered = url.replace("sp=r", "sp=rw")
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(tampered, context=context)  # noqa: S310
            assert e.value.code == 403
            e.value.close()
            assert put_to_container_url(s.container_url("entra"), "out/x.bin", paths[1]) == "entra/out/x.bin"
            assert s.download("entra", "out/", tmp_path / "dl").files == (str(tmp_path / "dl" / "x.bin"),)
            # Copies read their source through a read-only user delegation SAS, valid a little longer
            # than the longest wait for the copy.
            assert s.copy_blobs("entra", [("f000.bin", "copy/f000.bin")]).files == ("copy/f000.bin",)
            assert s.stat_blobs("entra", "copy/") == {"copy/f000.bin": s.stat_blobs("entra")["f000.bin"]}
            (source,) = copy_sources
            q = parse_qs(urlsplit(source).query)
            assert (q["sp"], q["skoid"], urlsplit(source).path) == (
                ["r"],
                ["00000000-0000-4000-8000-000000000002"],
                f"/{info.account_name}/entra/f000.bin",
            )
            window = datetime.fromisoformat(q["se"][0]) - datetime.fromisoformat(q["st"][0])
            assert window == timedelta(seconds=s.copy_timeout, minutes=15 + 5)


def test_a_connection_string_with_only_a_sas_cannot_sign_urls(azurite: AzuriteInfo) -> None:
    cs = f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature=sv=2025-01-05&sig=SECRETSIG"
    auth = blob_auth({"AZURE_STORAGE_CONNECTION_STRING": cs})
    with AzureBlobStorage(auth, sas_ttl=60) as s, pytest.raises(BatchflowError) as e:
        s.resource_url("input", "a.txt")
    assert str(e.value) == (
        f"cannot make SAS URLs for {azurite.blob_endpoint}: signed in with a SAS (connection string), which "
        "cannot sign new ones; use Entra ID sign-in or an account key (see README, Credentials)"
    )


def test_container_names_follow_azure_rules(storage: AzureBlobStorage) -> None:
    for bad in ["ab", "Upper", "a--b", "-ab", "ab-", "a_b", "a" * 64]:
        with pytest.raises(BatchflowError) as e:
            storage.ensure_container(bad)
        assert str(e.value) == (
            f"invalid container name {bad!r}: Azure container names are 3 to 63 lowercase letters, digits "
            "and single hyphens, starting and ending with a letter or digit"
        )


# ---- SAS URLs ------------------------------------------------------------------------------


def test_sas_urls_are_least_privilege_and_short_lived() -> None:
    clock = datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=timezone.utc)
    auth = _key_auth("https://acct.blob.core.windows.net")
    with AzureBlobStorage(auth, sas_ttl=7200, clock=lambda: clock) as s:
        blob = s.resource_url("input", "dir ü/a b#c%d?e.mp4")
        out = s.container_url("output")
    base, _, query = blob.partition("?")
    assert base == "https://acct.blob.core.windows.net/input/dir%20%C3%BC/a%20b%23c%25d%3Fe.mp4"
    q = parse_qs(query)
    assert (q["sp"], q["st"], q["se"], q["spr"], q["sr"]) == (
        ["r"],
        ["2030-01-02T02:59:05Z"],
        ["2030-01-02T05:04:05Z"],
        ["https"],
        ["b"],
    )
    base, _, query = out.partition("?")
    assert base == "https://acct.blob.core.windows.net/output"
    q = parse_qs(query)
    assert (q["sp"], q["se"], q["sr"]) == (["cw"], ["2030-01-02T05:04:05Z"], ["c"])


def test_resource_url_reads_but_cannot_write(
    storage: AzureBlobStorage, container: str, service: BlobServiceClient
) -> None:
    service.get_blob_client(container, "in.txt").upload_blob(b"input")
    url = storage.resource_url(container, "in.txt")
    with urllib.request.urlopen(url) as r:  # noqa: S310 - Azurite on 127.0.0.1
        assert r.read() == b"input"
    put = urllib.request.Request(url, data=b"x", method="PUT", headers={"x-ms-blob-type": "BlockBlob"})  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(put)  # noqa: S310
    assert e.value.code == 403
    e.value.close()


def test_container_url_writes_but_cannot_read_list_or_delete(
    storage: AzureBlobStorage, container: str, tmp_path: Path
) -> None:
    src = tmp_path / "out.txt"
    src.write_bytes(b"output")
    url = storage.container_url(container)
    assert put_to_container_url(url, "logs/out.txt", src) == f"{container}/logs/out.txt"
    assert put_to_container_url(url, "logs/out.txt", src) == f"{container}/logs/out.txt"  # overwrite: write
    with ContainerClient.from_container_url(url, retry_total=0) as client:
        for attempt in (
            lambda: client.get_blob_client("logs/out.txt").download_blob().readall(),
            lambda: list(client.list_blobs()),
            lambda: client.delete_blob("logs/out.txt"),
        ):
            with pytest.raises(HttpResponseError) as e:
                attempt()
            assert e.value.status_code == 403
    assert storage.list_blobs(container) == ["logs/out.txt"]


def test_an_expired_sas_is_refused(azurite: AzuriteInfo, container: str, service: BlobServiceClient) -> None:
    service.get_blob_client(container, "in.txt").upload_blob(b"input")
    two_hours_ago = datetime.now(timezone.utc) - timedelta(hours=2)
    with AzureBlobStorage(blob_auth(azurite.environ()), sas_ttl=60, clock=lambda: two_hours_ago) as s:
        url = s.resource_url(container, "in.txt")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url)  # noqa: S310
    assert e.value.code == 403
    e.value.close()


def test_fetch_of_a_missing_blob_says_which_without_the_signature(
    storage: AzureBlobStorage, container: str, tmp_path: Path
) -> None:
    url = storage.resource_url(container, "nope.txt")
    with pytest.raises(BatchflowError) as e:
        fetch_url(url, tmp_path / "x")
    assert str(e.value) == (
        f"cannot download {storage.where}/{container}/nope.txt: HTTP 404 BlobNotFound: "
        "The specified blob does not exist."
    )
    assert not (tmp_path / "x").exists()


def test_file_urls_never_import_azure(tmp_path: Path) -> None:
    src = tmp_path / "store" / "in" / "a b.txt"
    src.parent.mkdir(parents=True)
    src.write_text("data", encoding="utf-8")
    (tmp_path / "store" / "out").mkdir()
    code = (
        "import sys; from pathlib import Path; from batchflow.backends import blob_urls as b; "
        f"print(b.fetch_url({src.as_uri()!r}, Path({str(tmp_path / 'wd' / 'a.txt')!r})), "
        f"b.put_to_container_url({(tmp_path / 'store' / 'out').as_uri()!r}, 'x/a b.txt', "
        f"Path({str(src)!r})), "
        "sorted(m for m in sys.modules if m.split('.')[0] == 'azure'))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "4 out/x/a b.txt []\n", "")
    assert (tmp_path / "store" / "out" / "x" / "a b.txt").read_text(encoding="utf-8") == "data"


# ---- Content-MD5: what is unchanged --------------------------------------------------------


def test_unchanged_means_same_content_not_same_mtime(
    storage: AzureBlobStorage, container: str, tmp_path: Path
) -> None:
    (a,) = _files(tmp_path / "src", 1)
    items = _items([a], container)
    assert storage.upload(items).transferred == 1
    a.touch()
    assert storage.upload(items) == TransferResult(transferred=0, skipped=1, bytes=0, files=())


def test_quick_check_same_size_and_recorded_mtime_skip_without_reading(
    storage: AzureBlobStorage, container: str, tmp_path: Path, service: BlobServiceClient
) -> None:
    (a,) = _files(tmp_path / "src", 1)
    items = _items([a], container)
    storage.upload(items)
    mtime = a.stat().st_mtime_ns
    assert service.get_blob_client(container, a.name).get_blob_properties().metadata == {
        "batchflow_mtime_ns": str(mtime)
    }
    # rsync's quick check: an edit that keeps size and mtime goes unseen, like `rsync` and LocalStorage.
    a.write_bytes(b"X" * 100)
    os.utime(a, ns=(mtime, mtime))
    assert storage.upload(items).skipped == 1
    # Any other mtime: the content decides (here it changed).
    os.utime(a, ns=(mtime, mtime + 1))
    assert storage.upload(items).transferred == 1
    assert service.get_blob_client(container, a.name).download_blob().readall() == b"X" * 100


def test_blobs_uploaded_in_blocks_get_a_whole_file_md5(
    azurite: AzuriteInfo, container: str, tmp_path: Path, service: BlobServiceClient
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 40)  # 10240 bytes: 20 blocks of 512
    options = {"max_single_put_size": 1024, "max_block_size": 512}
    with AzureBlobStorage(blob_auth(azurite.environ()), sas_ttl=60, client_options=options) as s:
        assert s.upload(_items([big], container)).transferred == 1
        assert len(service.get_blob_client(container, "big.bin").get_block_list()[0]) == 20
        props = service.get_blob_client(container, "big.bin").get_blob_properties()
        assert props.content_settings.content_md5 == bytearray(_md5(big.read_bytes()))
        assert props.content_settings.content_type == "application/octet-stream"
        assert s.upload(_items([big], container)).skipped == 1
        assert s.download(container, "", tmp_path / "dl").bytes == 10240
    assert (tmp_path / "dl" / "big.bin").read_bytes() == big.read_bytes()


def test_blobs_without_md5_are_always_downloaded(
    storage: AzureBlobStorage, container: str, tmp_path: Path, service: BlobServiceClient
) -> None:
    blob = service.get_blob_client(container, "nomd5.txt")
    blob.stage_block("b1", b"no md5 here")
    blob.commit_block_list([BlobBlock("b1")])
    assert blob.get_blob_properties().content_settings.content_md5 is None
    for _ in range(2):
        assert storage.download(container, "", tmp_path / "dl").transferred == 1
    assert (tmp_path / "dl" / "nomd5.txt").read_bytes() == b"no md5 here"


def test_a_download_that_does_not_match_its_md5_is_not_kept(
    storage: AzureBlobStorage, container: str, tmp_path: Path, service: BlobServiceClient
) -> None:
    blob = service.get_blob_client(container, "bad.txt")
    blob.upload_blob(b"content")
    blob.set_http_headers(ContentSettings(content_md5=bytearray(_md5(b"other"))))
    with pytest.raises(TransferFailed) as e:
        storage.download(container, "", tmp_path / "dl")
    assert str(e.value) == (
        f"cannot download 1 of 1 files ({storage.where}):\n"
        f"  {container}/bad.txt: the data received does not match its Content-MD5\n"
        "0 downloaded and 0 unchanged; running again transfers only what is missing or changed"
    )
    assert list((tmp_path / "dl").iterdir()) == []


def test_a_vanished_file_fails_alone(storage: AzureBlobStorage, container: str, tmp_path: Path) -> None:
    paths = _files(tmp_path / "src", 3)
    items = _items(paths, container)
    paths[1].unlink()
    with pytest.raises(TransferFailed) as e:
        storage.upload(items)
    assert str(e.value) == (
        f"cannot upload 1 of 3 files ({storage.where}):\n"
        f"  {container}/f001.bin: {paths[1]}: file not found\n"
        "2 uploaded and 0 unchanged; running again transfers only what is missing or changed"
    )
    assert e.value.result == TransferResult(
        transferred=2, skipped=0, bytes=200, files=("f000.bin", "f002.bin")
    )
    assert storage.list_blobs(container) == ["f000.bin", "f002.bin"]


# ---- faults ----------------------------------------------------------------------------------


@pytest.fixture
def proxy(azurite: AzuriteInfo) -> Iterator[FaultProxy]:
    with FaultProxy(azurite.port) as p:
        yield p


@pytest.fixture
def proxied(proxy: FaultProxy) -> Iterator[AzureBlobStorage]:
    with AzureBlobStorage(
        _key_auth(proxy.url("devstoreaccount1")), sas_ttl=600, retry=FAST_RETRY, max_workers=1
    ) as s:
        yield s


@pytest.mark.parametrize("fault", ["503", "drop"])
def test_transient_faults_are_retried(
    proxied: AzureBlobStorage, proxy: FaultProxy, tmp_path: Path, fault: str
) -> None:
    container = f"t{uuid.uuid4().hex[:20]}"
    (proxy.answer_503 if fault == "503" else proxy.drop)(2)  # the container creation, then its retry
    assert proxied.ensure_container(container) is True
    (proxy.answer_503 if fault == "503" else proxy.drop)(2, after=1)  # after the listing: the first PUT
    paths = _files(tmp_path / "src", 3)
    assert proxied.upload(_items(paths, container)).transferred == 3
    assert proxy.faults == 4
    assert proxied.list_blobs(container) == ["f000.bin", "f001.bin", "f002.bin"]
    (proxy.answer_503 if fault == "503" else proxy.drop)(2)
    assert proxied.download(container, "", tmp_path / "dl").transferred == 3
    assert proxy.faults == 6


def test_a_permanent_503_ends_in_a_clear_error(
    proxied: AzureBlobStorage, proxy: FaultProxy, tmp_path: Path
) -> None:
    container = f"t{uuid.uuid4().hex[:20]}"
    proxied.ensure_container(container)
    proxy.answer_503(None)
    before = proxy.requests
    with pytest.raises(BatchflowError) as e:
        proxied.ensure_container(f"t{uuid.uuid4().hex[:20]}x")
    assert proxy.requests - before == 3  # the request and 2 retries, then give up
    assert str(e.value).endswith(
        f"in {proxied.where}: HTTP 503 ServerBusy: The server is busy. (fault injected by the test proxy) "
        "(gave up after 2 retries)"
    )

    proxy.answer_503(None, after=1)  # the listing passes, every PUT fails
    before = proxy.requests
    with pytest.raises(TransferFailed) as t:
        proxied.upload(_items(_files(tmp_path / "src", 3), container))
    assert proxy.requests - before == 4  # listing, then the first file 3 times; the others never start
    assert str(t.value) == (
        f"cannot upload 3 of 3 files ({proxied.where}):\n"
        f"  {container}/f000.bin: HTTP 503 ServerBusy: The server is busy. "
        "(fault injected by the test proxy) (gave up after 2 retries)\n"
        f"  {container}/f001.bin: not attempted after the failures above\n"
        f"  {container}/f002.bin: not attempted after the failures above\n"
        "0 uploaded and 0 unchanged; running again transfers only what is missing or changed"
    )
    assert t.value.result == TransferResult()


def test_azurite_stopped_mid_upload_then_restarted(tmp_path: Path) -> None:
    paths = _files(tmp_path / "src", 30, size=1000)
    with azurite_blob(location=tmp_path / "azurite") as server:
        stopped = threading.Event()
        created = []
        lock = threading.Lock()

        def stop_after_five_blobs(response: PipelineResponse[Any, Any]) -> None:
            if response.http_request.method == "PUT" and response.http_response.status_code == 201:
                with lock:
                    created.append(response.http_request.url)
                    if len(created) == 6 and not stopped.is_set():  # the container, then 5 blobs
                        server.stop()
                        stopped.set()

        auth = _key_auth(server.info.blob_endpoint)
        options = {"raw_response_hook": stop_after_five_blobs}
        with AzureBlobStorage(
            auth, sas_ttl=600, retry=FAST_RETRY, max_workers=2, client_options=options
        ) as s:
            s.ensure_container("media")
            items = _items(paths, "media")
            with pytest.raises(TransferFailed) as e:
                s.upload(items)
            assert stopped.is_set()
            message = str(e.value)
            lines = message.splitlines()
            failed = e.value.failures
            result = e.value.result
            assert result.transferred >= 5
            assert result.transferred + len(failed) == 30
            assert lines[0] == f"cannot upload {len(failed)} of 30 files ({s.where}):"
            assert lines[-1] == (
                f"{result.transferred} uploaded and 0 unchanged; "
                "running again transfers only what is missing or changed"
            )
            refused = (
                f"cannot connect: HTTPConnection(host='127.0.0.1', port={server.port}): Failed to "
                "establish a new connection: [Errno 111] Connection refused (gave up after 2 retries)"
            )
            for line in failed:
                _, _, why = line.partition(": ")
                assert why in {refused, "not attempted after the failures above"} or why.startswith(
                    "connection lost: "
                ), line
            assert "Traceback" not in message and ACCOUNT_KEY not in message and "sig=" not in message

            server.start()  # same port, same data folder: what was uploaded is still there
            stored = set(s.list_blobs("media"))
            assert set(result.files) <= stored  # nothing reported as uploaded that is not
            rerun = s.upload(items)
            assert (rerun.transferred, rerun.skipped) == (30 - len(stored), len(stored))
            assert s.list_blobs("media") == [p.name for p in paths]


# ---- server-side copies ----------------------------------------------------------------------


def test_a_copy_keeps_content_settings_md5_and_metadata(
    storage: AzureBlobStorage, container: str, tmp_path: Path, service: BlobServiceClient
) -> None:
    song = tmp_path / "song.mp3"
    song.write_bytes(b"ID3" * 1000)
    storage.upload([UploadItem(song, container, "r1/song.mp3", song.stat().st_size)])
    source = service.get_blob_client(container, "r1/song.mp3")
    settings = source.get_blob_properties().content_settings
    settings.cache_control = "max-age=60"
    settings.content_disposition = "attachment"
    source.set_http_headers(settings)

    storage.copy_blobs(container, [("r1/song.mp3", "r2/song.mp3")])
    before = source.get_blob_properties()
    after = service.get_blob_client(container, "r2/song.mp3").get_blob_properties()
    assert after.content_settings == before.content_settings
    assert (after.content_settings.content_type, after.content_settings.content_md5) == (
        "audio/mpeg",
        bytearray(_md5(song.read_bytes())),
    )
    assert (after.size, after.metadata) == (3000, {"batchflow_mtime_ns": str(song.stat().st_mtime_ns)})
    # So the copy passes the upload's quick check as its source does.
    assert storage.upload([UploadItem(song, container, "r2/song.mp3", 3000)]).skipped == 1


class CopyStatus:
    """A raw_response_hook that makes the service's answers to Copy Blob and to each later Get Blob
    Properties say `statuses`, one per answer (the last one repeats): Azurite copies at once."""

    def __init__(self, *statuses: str, description: str = "") -> None:
        self.statuses = list(statuses)
        self.description = description
        self.answers: list[str] = []  # "PUT success", "HEAD pending", ...

    def __call__(self, response: PipelineResponse[Any, Any]) -> None:
        request = response.http_request
        if "x-ms-copy-source" in request.headers or request.method == "HEAD":
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            response.http_response.headers["x-ms-copy-status"] = status
            if self.description:
                response.http_response.headers["x-ms-copy-status-description"] = self.description
            self.answers.append(f"{request.method} {status}")


def _copying(azurite: AzuriteInfo, hook: CopyStatus | None, sleeps: list[float]) -> AzureBlobStorage:
    options = {"raw_response_hook": hook} if hook else {}
    return AzureBlobStorage(
        blob_auth(azurite.environ()),
        sas_ttl=600,
        retry=FAST_RETRY,
        client_options=options,
        copy_timeout=1.0,
        sleep=sleeps.append,
    )


def test_azurite_copies_at_once_so_a_copy_is_one_request(
    azurite: AzuriteInfo, container: str, service: BlobServiceClient
) -> None:
    service.get_blob_client(container, "a.bin").upload_blob(b"a")
    hook = CopyStatus("success")  # changes nothing: records what Azurite answered
    sleeps: list[float] = []
    with _copying(azurite, hook, sleeps) as s:
        s.copy_blobs(container, [("a.bin", f"copy/{i}.bin") for i in range(3)])
    assert (hook.answers, sleeps) == (["PUT success"] * 3, [])


def test_a_pending_copy_is_polled_until_it_succeeds(
    azurite: AzuriteInfo, container: str, service: BlobServiceClient
) -> None:
    service.get_blob_client(container, "a.bin").upload_blob(b"a")
    hook = CopyStatus("pending", "pending", "pending", "success")
    sleeps: list[float] = []
    with _copying(azurite, hook, sleeps) as s:
        assert s.copy_blobs(container, [("a.bin", "b.bin")]) == TransferResult(
            transferred=1, files=("b.bin",)
        )
    assert hook.answers == ["PUT pending", "HEAD pending", "HEAD pending", "HEAD success"]
    assert sleeps == [0.05, 0.1, 0.2]


def test_a_copy_pending_too_long_is_aborted_and_fails_by_name(
    azurite: AzuriteInfo, container: str, service: BlobServiceClient
) -> None:
    service.get_blob_client(container, "a.bin").upload_blob(b"a")
    service.get_blob_client(container, "ok.bin").upload_blob(b"ok")
    sleeps: list[float] = []
    with _copying(azurite, CopyStatus("pending"), sleeps) as s, pytest.raises(TransferFailed) as e:
        s.copy_blobs(container, [("a.bin", "b.bin")])
    assert str(e.value) == (
        f"cannot copy 1 of 1 files ({s.where}):\n"
        f"  {container}/a.bin: copy to 'b.bin' was still pending after 1.55 s, and was aborted\n"
        "0 copied"
    )
    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.8]  # 1.55 s >= copy_timeout


def test_a_failed_copy_says_why(azurite: AzuriteInfo, container: str, service: BlobServiceClient) -> None:
    service.get_blob_client(container, "a.bin").upload_blob(b"a")
    service.get_blob_client(container, "ok.bin").upload_blob(b"ok")
    hook = CopyStatus("pending", "failed", description="500 InternalError Copy failed.")
    with _copying(azurite, hook, []) as s, pytest.raises(TransferFailed) as e:
        s.copy_blobs(container, [("a.bin", "b.bin")])
    assert e.value.failures == (f"{container}/a.bin: copy to 'b.bin' failed: 500 InternalError Copy failed.",)


def test_copies_under_a_connection_string_sas_use_that_sas(
    azurite: AzuriteInfo, container: str, service: BlobServiceClient
) -> None:
    service.get_blob_client(container, "a.bin").upload_blob(b"a")
    sas = generate_account_sas(
        azurite.account_name,
        azurite.account_key,
        ResourceTypes(container=True, object=True),
        AccountSasPermissions(read=True, write=True, create=True, list=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    cs = f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={sas}"
    with AzureBlobStorage(blob_auth({"AZURE_STORAGE_CONNECTION_STRING": cs}), sas_ttl=60) as s:
        assert s.copy_blobs(container, [("a.bin", "b.bin")]).files == ("b.bin",)
        assert s.stat_blobs(container)["b.bin"].md5 == _md5(b"a").hex()


# ---- redaction -------------------------------------------------------------------------------


def test_no_signature_or_key_in_errors_or_logs(
    proxied: AzureBlobStorage, proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    container = f"t{uuid.uuid4().hex[:20]}"
    proxied.ensure_container(container)
    src = _files(tmp_path / "src", 2)
    proxied.upload(_items(src, container))
    urls = [proxied.resource_url(container, "f000.bin"), proxied.container_url(container)]
    signatures = [parse_qs(urlsplit(u).query)["sig"][0] for u in urls]
    assert fetch_url(urls[0], tmp_path / "ok.bin") == 100

    messages = []
    proxy.answer_503(None)
    for attempt in (
        lambda: fetch_url(urls[0], tmp_path / "x.bin", retry=FAST_RETRY),
        lambda: put_to_container_url(urls[1], "out.bin", src[0], retry=FAST_RETRY),
        lambda: proxied.upload(_items(src, container)),
        lambda: proxied.download(container, "", tmp_path / "dl"),
    ):
        with pytest.raises(BatchflowError) as e:
            attempt()
        messages.append(str(e.value))
    proxy.drop(None)
    with pytest.raises(BatchflowError) as e:
        fetch_url(urls[0], tmp_path / "x.bin", retry=FAST_RETRY)
    messages.append(str(e.value))

    assert messages[0] == (
        f"cannot download {proxied.where}/{container}/f000.bin: HTTP 503 ServerBusy: The server is busy. "
        "(fault injected by the test proxy) (gave up after 2 retries)"
    )
    text = "\n".join(messages) + "\n" + caplog.text
    assert caplog.records  # the SDK and batchflow did log
    for secret in [ACCOUNT_KEY, *signatures]:
        assert secret not in text
