"""A Python that runs batchflow as `pip install batchflow` would, for the benchmarks.

The development venv has batchflow as an editable install: a .pth file in its site-packages
loads setuptools' editable finder, an import hook, at every start of that Python, whatever runs.
That costs 15-20 ms per process here (`python -c pass`: 29 ms in the venv, 11 ms without the hook,
2026-12-03), which a user's regular install never pays. `regular_python()` makes, once per bench
run, a venv without pip whose site-packages names the development venv's site-packages in a .pth
file: a folder named by a .pth line is put on sys.path, but its own .pth files are not run, so
every dependency imports as installed and the editable hook is not loaded. batchflow itself
comes from PYTHONPATH, as each bench script sets it (the checkout under test).
"""

from __future__ import annotations

import functools
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path


@functools.cache
def regular_python() -> str:
    """The interpreter of that venv (made in the temporary folder, removed at exit)."""
    folder = Path(tempfile.mkdtemp(prefix="batchflow-bench-python-"))
    import atexit
    import shutil

    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    base = Path(sys._base_executable)  # type: ignore[attr-defined]  # the interpreter the venv was made from
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(folder)], check=True)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    made = Path(
        subprocess.run(
            [str(folder / "bin" / "python"), "-c", where], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    (made / "batchflow-bench-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return str(folder / "bin" / "python")


def python(editable: bool) -> str:
    """The interpreter a bench runs batchflow with: this one (the editable install's) or a regular one."""
    return sys.executable if editable else regular_python()
