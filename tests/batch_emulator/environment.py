"""The environment a command gets on a node: Batch's variables, never the host's.

As on a Linux node: AZ_BATCH_* (the list in Microsoft's compute node environment variables page),
HOME = the working directory, and PATH extended with the node's shared directory and wd/. Of this
machine's environment only PATH (so host tools such as ffmpeg stand in for what a start task would
install) and the locale pass: a node's task sees none of the variables of the shell that started the
emulator, credentials above all (the locale is an assumption: no Microsoft page lists a node's).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .resources import Node


def user_identity(identity: Mapping[str, Any] | None) -> str:
    """AZ_BATCH_TASK_USER_IDENTITY: PoolNonAdmin, PoolAdmin, TaskNonAdmin, TaskAdmin or a user name."""
    if identity and identity.get("username"):
        return str(identity["username"])
    auto = (identity or {}).get("autoUser") or {}
    scope = "Task" if auto.get("scope") == "task" else "Pool"
    return scope + ("Admin" if auto.get("elevationLevel") == "admin" else "NonAdmin")


def node_env(
    *,
    account: str,
    endpoint: str,
    node: Node,
    task_dir: Path,
    identity: Mapping[str, Any] | None,
    settings: Sequence[Sequence[Mapping[str, Any]]] = (),
    ids: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`settings`: lists of {name, value} (job common settings, then the task's own), later ones winning."""
    wd = task_dir / "wd"
    env = {k: v for k, v in os.environ.items() if k in ("LANG", "LANGUAGE", "TZ") or k.startswith("LC_")}
    for group in settings:
        for item in group:
            env[str(item["name"])] = str(item.get("value", ""))
    env.update(
        {
            "AZ_BATCH_ACCOUNT_NAME": account,
            "AZ_BATCH_ACCOUNT_URL": endpoint.rstrip("/") + "/",
            "AZ_BATCH_POOL_ID": node.pool_id,
            "AZ_BATCH_NODE_ID": node.id,
            "AZ_BATCH_NODE_IS_DEDICATED": "true" if node.dedicated else "false",
            "AZ_BATCH_NODE_ROOT_DIR": str(node.root),
            "AZ_BATCH_NODE_SHARED_DIR": str(node.root / "shared"),
            "AZ_BATCH_NODE_STARTUP_DIR": str(node.root / "startup"),
            "AZ_BATCH_NODE_MOUNTS_DIR": str(node.root / "fsmounts"),
            "AZ_BATCH_TASK_DIR": str(task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(wd),
            "AZ_BATCH_TASK_USER": "_azbatch",
            "AZ_BATCH_TASK_USER_IDENTITY": user_identity(identity),
            "HOME": str(wd),
            "PATH": os.pathsep.join(
                p for p in (os.environ.get("PATH", ""), str(node.root / "shared"), str(wd)) if p
            ),
            **(ids or {}),
        }
    )
    return env
