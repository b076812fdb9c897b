"""Azurite, Microsoft's Azure Storage emulator, for the tests and benchmarks: start, stop, restart.

The version is pinned in package.json / package-lock.json at the repository root. On a fresh clone
`npm ci` runs once to install it. Azurite that cannot be installed or started fails the run, with the
reason: these tests are never skipped silently.

    with azurite_blob() as server:          # in-memory, a free port on 127.0.0.1
        server.info.connection_string

The `azurite` fixture is one server for the whole session; tests use fresh container names.
Test modules import helpers from here and also load it as a plugin, so pytest must not rewrite
its asserts (it would warn that the module is already imported): PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken

ROOT = Path(__file__).resolve().parent.parent
# Azurite's account, published in Microsoft's Azurite documentation.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
START_TIMEOUT = 60.0
NPM_TIMEOUT = 600.0
_LISTENING = re.compile(r"Azurite Blob service successfully listens on https?://127\.0\.0\.1:(\d+)")
_install_lock = threading.Lock()
# Runs Azurite ("$@") until its stdin closes, which happens when stop() closes it or when the test
# process dies (even by SIGKILL): no Azurite outlives the tests. Exits with Azurite's status.
_WATCHDOG = """
exec 3<&0
"$@" </dev/null &
child=$!
{ cat <&3; kill -TERM "$child"; } >/dev/null 2>&1 &
exec 3<&-
wait "$child"
"""


class AzuriteUnavailable(RuntimeError):
    """Azurite could not be installed or started; the message says why and what to do."""


@dataclass(frozen=True)
class AzuriteInfo:
    port: int
    account_name: str = ACCOUNT
    account_key: str = ACCOUNT_KEY
    ca_file: Path | None = None  # the self-signed certificate of an HTTPS (OAuth) Azurite

    @property
    def scheme(self) -> str:
        return "https" if self.ca_file else "http"

    @property
    def blob_endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName={self.account_name};"
            f"AccountKey={self.account_key};BlobEndpoint={self.blob_endpoint};"
        )

    def environ(self) -> dict[str, str]:
        """The environment batchflow reads: a connection string."""
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}


def put_blob_raw(info: AzuriteInfo, container: str, name: str, data: bytes) -> None:
    """PUT a blob whose name the SDK cannot send as is ("../x", "/x"): every '.' percent-encoded,
    so no HTTP client folds the dot segments; Azurite decodes and stores the name verbatim."""
    import http.client
    from datetime import datetime, timedelta, timezone
    from urllib.parse import quote

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        info.account_name,
        container,
        account_key=info.account_key,
        permission=ContainerSasPermissions(create=True, write=True),
        expiry=datetime.now(timezone.utc) + timedelta(minutes=10),
    )
    path = f"/{info.account_name}/{container}/{quote(name, safe='/').replace('.', '%2E')}?{sas}"
    connection = http.client.HTTPConnection("127.0.0.1", info.port, timeout=30)
    try:
        connection.request("PUT", path, body=data, headers={"x-ms-blob-type": "BlockBlob"})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 201:
        raise AssertionError(f"PUT {name!r} into Azurite: HTTP {response.status}: {body[:300]!r}")


def azurite_executable(root: Path = ROOT) -> Path:
    """`root`/node_modules/.bin/azurite-blob, running `npm ci` in `root` first if it is missing."""
    exe = root / "node_modules" / ".bin" / "azurite-blob"
    with _install_lock:
        if exe.exists():
            return exe
        npm = shutil.which("npm")
        if npm is None:
            raise AzuriteUnavailable(
                "Azurite is not installed and npm is not on PATH: install Node.js 20 or later "
                f"(with npm), then run `npm ci` in {root}"
            )
        try:
            r = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise AzuriteUnavailable(f"`npm ci` in {root} took more than {NPM_TIMEOUT:.0f} s") from None
        if r.returncode != 0 or not exe.exists():
            # npm says what went wrong first, may print its usage, and ends with where its log is.
            output = (r.stderr + r.stdout).splitlines()
            lines = [ln for ln in output if ln.strip() not in ("", "npm error") and "npm warn" not in ln]
            shown = lines if len(lines) <= 12 else [*lines[:8], "...", lines[-1]]
            raise AzuriteUnavailable(f"`npm ci` in {root} failed (exit {r.returncode}):\n" + "\n".join(shown))
        return exe


class AzuriteServer:
    """One azurite-blob process on 127.0.0.1. In memory unless `location` (a folder) is given,
    in which case data survives stop() + start(), which reuses the same port.

    `tls_dir`: serve HTTPS with a self-signed certificate written there, and accept OAuth bearer
    tokens (`--oauth basic`: Azurite checks audience, issuer and expiry, not the signature)."""

    def __init__(self, location: Path | None = None, *, tls_dir: Path | None = None) -> None:
        self.location = location
        self.tls_dir = tls_dir
        self.port = 0  # 0 until the first start: Azurite picks a free port and prints it
        self._process: subprocess.Popen[str] | None = None
        self._output: list[str] = []

    @property
    def info(self) -> AzuriteInfo:
        if self.port == 0:
            raise RuntimeError("Azurite has not been started")
        return AzuriteInfo(self.port, ca_file=self.tls_dir / "cert.pem" if self.tls_dir else None)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        exe = azurite_executable()
        if self.location is not None:
            self.location.mkdir(parents=True, exist_ok=True)
        args = [str(exe), "--blobHost", "127.0.0.1", "--blobPort", str(self.port)]
        args += ["--location", str(self.location)] if self.location else ["--inMemoryPersistence"]
        args += ["--silent", "--disableTelemetry", "--skipApiVersionCheck"]
        env = dict(os.environ)
        if self.tls_dir is not None:
            cert, key = _self_signed_certificate(self.tls_dir)
            args += ["--oauth", "basic", "--cert", str(cert), "--key", str(key)]
            # Azurite checks a copy source's SAS by requesting the source URL (from itself, over HTTPS).
            env["NODE_EXTRA_CA_CERTS"] = str(cert)
        self._output = []
        process = subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG, "azurite-watchdog", *args],
            cwd=self.location or ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl-C reaches only pytest, which then stops Azurite itself
        )
        self._process = process
        listening = threading.Event()
        threading.Thread(target=self._read_output, args=(process, listening), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not listening.wait(0.05):
            if process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                output = "\n".join(self._output[-15:])
                raise AzuriteUnavailable(f"Azurite did not start ({' '.join(args)}):\n{output}")
        _wait_for_port(self.port, deadline)

    def _read_output(self, process: subprocess.Popen[str], listening: threading.Event) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._output.append(line.rstrip())
            m = _LISTENING.search(line)
            if m is not None:
                self.port = int(m.group(1))
                listening.set()
        process.stdout.close()

    def stop(self) -> None:
        """Close the watchdog's stdin: it sends Azurite SIGTERM (Azurite saves its data and exits).
        SIGKILL for the whole group after 10 s."""
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for_port(port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AzuriteUnavailable(f"Azurite said it listens on port {port}, but it does not") from None
            time.sleep(0.05)


def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """cert.pem and key.pem for 127.0.0.1, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    loopback = ipaddress.ip_address("127.0.0.1")
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(loopback)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class StaticTokenCredential:
    """A TokenCredential whose token Azurite's basic OAuth accepts (it does not check signatures).
    Real sign-in (DefaultAzureCredential) needs Microsoft Entra ID, which tests never reach."""

    TENANT = "00000000-0000-4000-8000-000000000001"

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        now = int(time.time())
        claims = {
            "aud": "https://storage.azure.com",
            "iss": f"https://sts.windows.net/{self.TENANT}/",
            "tid": self.TENANT,
            "oid": "00000000-0000-4000-8000-000000000002",
            "iat": now - 60,
            "nbf": now - 60,
            "exp": now + 3600,
        }
        token = ".".join([_b64({"alg": "none", "typ": "JWT"}), _b64(claims), "c2lnbmF0dXJl"])
        return AccessToken(token, now + 3600)


def _b64(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@contextmanager
def azurite_blob(location: Path | None = None, *, tls_dir: Path | None = None) -> Iterator[AzuriteServer]:
    """A started Azurite blob service, stopped on exit."""
    server = AzuriteServer(location, tls_dir=tls_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteInfo]:
    """One in-memory Azurite for the session. Missing Azurite fails (never skips), under CI or not."""
    try:
        with azurite_blob() as server:
            yield server.info
    except AzuriteUnavailable as e:
        pytest.fail(str(e), pytrace=False)
