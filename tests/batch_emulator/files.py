"""Files on compute nodes, as the List/Get File operations show them.

Task files are relative to the task directory on the node where the task last ran (stdout.txt,
stderr.txt, wd/...); node files are relative to the node's root (startup/stderr.txt, shared/...,
workitems/...). Files go when their node goes (pool deleted or shrunk) or their job is deleted.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .wire import Response, ServiceError, fmt_time, rfc1123


def resolve(root: Path, relative: str) -> Path:
    """`relative` under `root`; never outside it."""
    target = (root / relative).resolve()
    base = root.resolve()
    if target != base and base not in target.parents:
        raise ServiceError(404, "FileNotFound")
    return target


def listing(root: Path, url: str, *, recursive: bool) -> list[dict[str, Any]]:
    """Entries under `root` (files, and folders with isDirectory), names relative with '/'."""
    if not root.is_dir():
        return []
    paths = sorted(root.rglob("*") if recursive else root.iterdir())
    return [_entry(p, p.relative_to(root).as_posix(), url) for p in paths]


def _entry(path: Path, name: str, url: str) -> dict[str, Any]:
    stat = path.stat()
    entry: dict[str, Any] = {"name": name, "url": f"{url}/{quote(name)}", "isDirectory": path.is_dir()}
    props: dict[str, Any] = {
        "creationTime": fmt_time(_time(stat.st_ctime)),
        "lastModified": fmt_time(_time(stat.st_mtime)),
        "contentLength": 0 if path.is_dir() else stat.st_size,
        "fileMode": oct(stat.st_mode),
    }
    if not path.is_dir():
        props["contentType"] = "application/octet-stream"
    entry["properties"] = props
    return entry


def file_response(path: Path, url: str, *, head: bool, byte_range: str | None) -> Response:
    if not path.is_file():
        raise ServiceError(404, "FileNotFound")
    data = b"" if head else path.read_bytes()
    status = 200
    if byte_range and not head:
        data = _slice(data, byte_range)
    stat = path.stat()
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(stat.st_size if head else len(data)),
        "Last-Modified": rfc1123(_time(stat.st_mtime)),
        "ocp-creation-time": rfc1123(_time(stat.st_ctime)),
        "ocp-batch-file-isdirectory": "false",
        "ocp-batch-file-url": url,
        "ocp-batch-file-mode": oct(stat.st_mode),
    }
    return Response(status, headers, data)


def _slice(data: bytes, byte_range: str) -> bytes:
    unit, _, spec = byte_range.partition("=")
    start_text, _, end_text = spec.partition("-")
    if unit.strip() != "bytes" or not start_text.isdigit() or (end_text and not end_text.isdigit()):
        raise ServiceError(400, "InvalidHeaderValue", f"The range {byte_range!r} is not bytes=start-end.")
    start = int(start_text)
    end = int(end_text) if end_text else len(data) - 1
    return data[start : end + 1]


def _time(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)


def split_recursive(value: str | None) -> bool:
    return (value or "").lower() == "true"


def relative(path: str) -> str:
    return path.replace(os.sep, "/").lstrip("/")
