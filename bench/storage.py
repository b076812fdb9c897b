"""AzureBlobStorage vs a plain sequential azure-storage-blob loop, against an Azurite this script starts.

    python bench/storage.py [--small 500] [--small-kb 100] [--large 4] [--large-mb 64] [--workers 8]
                            [--repeat 3]

Data sets: --small files of --small-kb KB, and --large files of --large-mb MiB (random bytes). For each:
upload and download with batchflow (parallel, MD5 recorded / checked) and with a sequential loop
(`upload_blob` / `download_blob().readinto`, one file after the other), each into a fresh container,
plus batchflow re-uploading the unchanged files. Times are medians of --repeat runs.
Targets (issue 3): small-file upload and download >= 2x the sequential loop; unchanged re-upload
<= 10% of the first upload. `--workers 1,2,4,8,16` compares pool sizes (the default comes from this).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from azure.storage.blob import BlobServiceClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from azurite import AzuriteInfo, azurite_blob  # noqa: E402

from batchflow.backends.azure.auth import blob_auth  # noqa: E402
from batchflow.backends.azure.storage import DEFAULT_MAX_WORKERS, AzureBlobStorage  # noqa: E402
from batchflow.model import UploadItem  # noqa: E402


@contextmanager
def endpoint(azurite: AzuriteInfo, latency_ms: float) -> Iterator[AzuriteInfo]:
    """Azurite itself, or a delaying proxy in front of it (its own process: no GIL shared)."""
    if not latency_ms:
        yield azurite
        return
    proxy = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "faultproxy.py"), str(azurite.port), str(latency_ms)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proxy.stdout is not None
        yield AzuriteInfo(port=int(proxy.stdout.readline()))
    finally:
        assert proxy.stdin is not None
        proxy.stdin.close()
        proxy.wait(timeout=30)


def make_files(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"file-{i:04d}.bin"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fresh(service: BlobServiceClient) -> str:
    name = f"bench-{uuid.uuid4().hex[:16]}"
    service.create_container(name)
    return name


def sequential(info: AzuriteInfo, paths: list[Path], work: Path) -> tuple[float, float]:
    """A plain loop over azure-storage-blob, one file at a time: (upload s, download s)."""
    with BlobServiceClient.from_connection_string(info.connection_string) as service:
        container = service.get_container_client(fresh(service))

        def upload() -> None:
            for p in paths:
                with p.open("rb") as f:
                    container.upload_blob(p.name, f, overwrite=True)

        def download() -> None:
            dest = work / f"seq-{uuid.uuid4().hex[:8]}"
            dest.mkdir()
            for p in paths:
                with (dest / p.name).open("wb") as f:
                    container.download_blob(p.name).readinto(f)

        up, down = timed(upload), timed(download)
        container.delete_container()
        return up, down


def with_batchflow(
    info: AzuriteInfo, paths: list[Path], work: Path, workers: int
) -> tuple[float, float, float]:
    """AzureBlobStorage: (upload s, download s, unchanged re-upload s)."""
    with (
        AzureBlobStorage(blob_auth(info.environ()), sas_ttl=3600, max_workers=workers) as storage,
        BlobServiceClient.from_connection_string(info.connection_string) as service,
    ):
        container = fresh(service)
        items = [UploadItem(p, container, p.name, p.stat().st_size) for p in paths]
        up = timed(lambda: check(storage.upload(items).transferred, len(paths)))
        again = timed(lambda: check(storage.upload(items).skipped, len(paths)))
        down = timed(
            lambda: check(
                storage.download(container, "", work / f"bf-{uuid.uuid4().hex[:8]}").transferred, len(paths)
            )
        )
        service.delete_container(container)
        return up, down, again


def check(actual: int, expected: int) -> None:
    if actual != expected:
        raise SystemExit(f"benchmark run went wrong: {actual} files, expected {expected}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--small-kb", type=int, default=100)
    ap.add_argument("--large", type=int, default=4)
    ap.add_argument("--large-mb", type=int, default=64)
    ap.add_argument("--workers", default=str(DEFAULT_MAX_WORKERS), help="comma-separated pool sizes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="put tests/faultproxy.py (another process) in front of Azurite, delaying every request",
    )
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]

    where = "Azurite in memory on 127.0.0.1"
    if args.latency_ms:
        where += f", behind a proxy adding {args.latency_ms:g} ms per request"
    print(f"CPUs: {os.cpu_count()}; {where}; medians of {args.repeat} runs")
    with (
        tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp,
        azurite_blob() as server,
        endpoint(server.info, args.latency_ms) as info,
    ):
        work = Path(tmp)
        sets = [
            (
                f"{args.small} x {args.small_kb} KB",
                make_files(work / "small", args.small, args.small_kb * 1000),
            ),
            (
                f"{args.large} x {args.large_mb} MiB",
                make_files(work / "large", args.large, args.large_mb << 20),
            ),
        ]
        # Warm-up (untimed): Azurite's JIT and the client's connections, so no side pays for them.
        sequential(info, sets[0][1][:100], work)
        with_batchflow(info, sets[0][1][:100], work, workers[0])
        for label, paths in sets:
            runs = [sequential(info, paths, work) for _ in range(args.repeat)]
            seq_up = statistics.median(r[0] for r in runs)
            seq_down = statistics.median(r[1] for r in runs)
            print(f"\n{label}: sequential loop  upload {seq_up:7.2f} s   download {seq_down:7.2f} s")
            for w in workers:
                bf = [with_batchflow(info, paths, work, w) for _ in range(args.repeat)]
                up = statistics.median(r[0] for r in bf)
                down = statistics.median(r[1] for r in bf)
                again = statistics.median(r[2] for r in bf)
                print(
                    f"{label}: batchflow {w:2d} workers  upload {up:7.2f} s ({seq_up / up:4.1f}x)   "
                    f"download {down:7.2f} s ({seq_down / down:4.1f}x)   "
                    f"unchanged re-upload {again:6.2f} s ({100 * again / up:4.1f}% of upload)"
                )
            for d in [*work.glob("seq-*"), *work.glob("bf-*")]:
                shutil.rmtree(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
