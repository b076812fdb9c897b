"""How much a folder holds on disk, for `batchflow gc` and the backends' leftovers."""

from __future__ import annotations

import os
from pathlib import Path


def folder_size(folder: Path) -> int:
    """Bytes of the files under `folder` (links not followed; what vanishes meanwhile counts 0)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return total
