"""How the `batchflow` command exits (cli.entry): with main()'s exit code, once every thread has
ended and every atexit handler has run, what was printed flushed, and without the interpreter's
teardown. Each case is a real `python` process; main() is replaced by a stand-in in that process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from batchflow import __version__

ROOT = Path(__file__).resolve().parent.parent


def entry_with(body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run cli.entry() in a new interpreter, with main() replaced by `body` (a function body)."""
    script = "import atexit, sys, threading, time\nfrom batchflow import cli\n\n"
    script += "def main(argv=None):\n" + textwrap.indent(textwrap.dedent(body), "    ") + "\n"
    script += "cli.main = main\ncli.entry()\n"
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


def test_exit_code_and_unflushed_output_survive(tmp_path: Path) -> None:
    done = entry_with(
        """
        print("to stdout, unflushed", end="")
        print("to stderr", end="", file=sys.stderr)
        return 3
        """,
        tmp_path,
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "to stdout, unflushed", "to stderr")


def test_atexit_handlers_registered_during_the_command_run_first(tmp_path: Path) -> None:
    done = entry_with(
        """
        atexit.register(lambda: open("handler-ran", "w").write("yes"))
        atexit.register(print, "printed by a handler", end="")
        return 0
        """,
        tmp_path,
    )
    assert (done.returncode, done.stdout) == (0, "printed by a handler")
    assert (tmp_path / "handler-ran").read_text() == "yes"


def test_a_thread_still_running_is_waited_for(tmp_path: Path) -> None:
    done = entry_with(
        """
        def late():
            time.sleep(0.3)
            with open("thread-wrote", "w") as f:
                f.write("done")
        threading.Thread(target=late).start()
        return 0
        """,
        tmp_path,
    )
    assert done.returncode == 0
    assert (tmp_path / "thread-wrote").read_text() == "done"


def test_main_raising_exits_as_python_does(tmp_path: Path) -> None:
    done = entry_with('raise RuntimeError("boom")', tmp_path)
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith("RuntimeError: boom")


def test_a_reader_gone_before_the_last_flush_exits_as_python_does(tmp_path: Path) -> None:
    """stdout's last flush fails (EPIPE): the interpreter reports it with exit status 120, as it
    would for any program; entry() does not hide it."""
    script = textwrap.dedent(
        """
        import os, sys
        from batchflow import cli
        r, w = os.pipe()
        os.close(r)
        os.dup2(w, 1)
        def main(argv=None):
            print("lost", end="")
            return 0
        cli.main = main
        cli.entry()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 120
    assert "BrokenPipeError" in done.stderr


def test_the_interpreter_teardown_is_skipped(tmp_path: Path) -> None:
    """What the teardown would do (clear the modules, calling their objects' __del__) is not done:
    that is the time entry() saves. Without entry(), the same object's __del__ runs."""
    witness = (
        "import os, sys\n"
        "class Witness:\n"
        "    def __del__(self, write=os.write):  # (the builtins are gone by then)\n"
        "        write(2, b'torn down')\n"
        "sys.modules['__main__'].witness = Witness()\n"
    )
    body = f"exec({witness!r}, {{}})\nreturn 0"
    done = entry_with(body, tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    plain = subprocess.run(
        [sys.executable, "-c", witness], capture_output=True, text=True, timeout=60, check=True
    )
    assert plain.stderr == "torn down"


def test_a_stdout_closed_from_the_start_is_no_error(tmp_path: Path) -> None:
    """`batchflow --version >&-`: Python starts with sys.stdout None (argparse prints the version
    on stderr then); the exit adds nothing to it."""
    done = subprocess.run(
        ["sh", "-c", 'exec "$0" -m batchflow --version >&-', sys.executable],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, f"batchflow {__version__}\n")
