"""`batchflow validate` and `batchflow plan` at scale, and batchflow's start-up, each beside a baseline.

    python bench/scale.py                          # --inputs 1000,10000,100000 --repeat 3
    python bench/scale.py --before HEAD~1          # also the batchflow of an earlier commit
    python bench/scale.py --startup-only           # only the start-up figures

For each input count N: a folder of N small files (`clip 000123.mp4`, a space in every name, mtimes an
hour old) and the workflow below (command with `input.path`, a var and `input.stem`; one output).
Every measurement is a fresh process (`python -m batchflow ...`), timed from outside, with its CPU
time (user + sys) and peak RSS from `os.wait4`. Commands are alternated (batchflow, baseline, earlier
batchflow, then again), and each figure is the median of --repeat runs.

- validate: `batchflow validate wf.yaml` (text output on stderr).
- plan, first: `batchflow plan wf.yaml --output json` with no workspace yet (no earlier run).
- plan, after a run: the same once a run has left what it leaves (its state, its ledger of N entries,
  its N outputs in the local storage, the digest caches of inputs and outputs), written here with
  batchflow's own functions as the runner writes them, so every task is "unchanged".
- plan, after a run, cold: the same with the inputs' digest cache deleted (every input is read
  and hashed again).
Baseline: a minimal Python script that does the least the command needs: lists the folder
(os.scandir), stats each file, renders each command and output with str.format + shlex.quote,
and for plan reads and MD5s every input (what a content key needs, no cache) and prints the tasks
as compact JSON.

Start-up: `batchflow validate` of a 5-input workflow, and `batchflow --version`, against
`python -c pass` (the same interpreter), alternated, median of --startup-repeat.
batchflow is byte-compiled first, as an installed package is (this sandbox sets
PYTHONDONTWRITEBYTECODE=1, under which every start would compile it again), and every command,
the baselines too, runs with a Python that sees the development venv's packages as a regular install
does, without its editable-install hook (bench/installed.py; --editable keeps it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from installed import python  # noqa: E402

PYTHON = sys.executable  # main() sets the one every command runs with (bench/installed.py)

WORKFLOW = """\
version: 1
name: scale
vars:
  bitrate: 128k
storage:
  containers: [input, output]
  uploads:
    - source: in
      include: ["*.mp4"]
      container: input
pool:
  id: ScalePool
  vm_size: Standard_A1_v2
  image: {publisher: canonical, offer: ubuntu-24_04-lts, sku: server}
  node_agent_sku_id: batch.node.ubuntu 24.04
  dedicated_nodes: 1
job:
  id: ScaleJob
tasks:
  foreach: {container: input, pattern: "*.mp4"}
  command: >-
    ffmpeg -hide_banner -y -i {{ input.path }} -vn -b:a {{ vars.bitrate }} ./{{ input.stem }}.mp3
  outputs:
    - pattern: "{{ input.stem }}.mp3"
      container: output
"""

BASELINE = r"""
import hashlib, json, os, shlex, sys
folder, plan = sys.argv[1], sys.argv[2] == "plan"
entries = sorted((e for e in os.scandir(folder) if e.name.endswith(".mp4")), key=lambda e: e.name)
command = "ffmpeg -hide_banner -y -i {} -vn -b:a {} ./{}.mp3"
tasks = []
for e in entries:
    size = e.stat().st_size
    stem = e.name[: e.name.rfind(".")]
    task = {
        "id": stem.replace(" ", "-"),
        "command": command.format(shlex.quote("./" + e.name), shlex.quote("128k"), shlex.quote(stem)),
        "inputs": [{"container": "input", "blob": e.name, "file_path": e.name, "size": size}],
        "outputs": [{"pattern": stem + ".mp3", "container": "output", "destination": stem + ".mp3"}],
    }
    if plan:
        with open(e.path, "rb") as f:
            task["md5"] = hashlib.md5(f.read()).hexdigest()
    tasks.append(task)
if plan:
    print(json.dumps({"task_count": len(tasks), "tasks": tasks}))
else:
    print(f"valid ({len(tasks)} tasks)", file=sys.stderr)
"""

HOUR_AGO = time.time() - 3600


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_mb: float


def run(cmd: list[str], env: dict[str, str], stdout: Path | None = None) -> Sample:
    """Wall time (here), CPU time (user + sys, from os.wait4) and peak RSS (from /usr/bin/time, whose
    own small process forks the command: a child forked from this process would count this process's
    memory in its ru_maxrss, which holds whatever was resident before its exec)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        out = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115
        try:
            start = time.perf_counter()
            proc = subprocess.Popen(
                ["/usr/bin/time", "-o", rss.name, "-f", "%M", *cmd],
                stdout=out,
                stderr=subprocess.PIPE,
                env=env,
                cwd=tempfile.gettempdir(),  # `python -m` puts the working folder first on sys.path
            )
            assert proc.stderr is not None
            err = proc.stderr.read()
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if stdout:
                out.close()  # type: ignore[union-attr]
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
        peak_kb = int(rss.read().split()[-1])
    return Sample(wall, usage.ru_utime + usage.ru_stime, peak_kb / 1024)


def make_inputs(base: Path, n: int) -> Path:
    folder = base / "in"
    folder.mkdir(parents=True)
    for i in range(n):
        path = folder / f"clip {i:06d}.mp4"
        path.write_bytes(b"frame %d\n" % i)
        os.utime(path, (HOUR_AGO, HOUR_AGO))  # older than digests.RACY_NS: their digests are trusted
    wf = base / "wf.yaml"
    wf.write_text(WORKFLOW, encoding="utf-8")
    return wf


def leave_a_run(wf: Path) -> Path:
    """What `batchflow run` leaves in the workspace once every task succeeded, written as the runner
    writes it (state, keys, ledger, outputs in the local storage, both digest caches). Returns the
    inputs' digest cache file."""
    sys.path.insert(0, str(ROOT))
    from batchflow.backends.local.storage import LocalStorage
    from batchflow.digests import DigestCache
    from batchflow.ledger import Entry, StoredOutput, task_keys, write_keys, write_ledger
    from batchflow.render import build_plan
    from batchflow.runplan import plan_run
    from batchflow.spec import load_workflow
    from batchflow.state import RunState, RunStatus

    workflow = load_workflow(wf)
    workspace = wf.parent / ".batchflow"
    plan = build_plan(workflow, "local", exclude=[workspace])
    digests = DigestCache(workspace / "cache" / "digests.json")
    keys = task_keys(plan, "local", digests.md5)
    digests.save()
    run_id = "20261203-120000-bench"
    state = RunState.create(workspace, workflow.path, "local", run_id, storage="local")
    state.status = RunStatus.SUCCEEDED
    state.save()
    write_keys(state.folder, keys)
    run_plan = plan_run(plan, run_id, keys)
    storage = LocalStorage(workspace / "storage")
    for task in run_plan.tasks:
        for o in task.outputs:
            path = storage.container_path(o.container).joinpath(*o.destination.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"mp3 of " + task.id.encode())
            os.utime(path, (HOUR_AGO, HOUR_AGO))
    # Hashes them and saves their digests. The entries have MD5s and no version, as a batchflow before
    # versions wrote them, so that the --before tree reads the same ledger (it skips entries of five).
    stats = storage.stat_blobs("output", run_plan.output_prefix)
    entries = [
        Entry(
            keys[t.id].key,
            t.id,
            run_id,
            True,
            keys[t.id].parts,
            tuple(
                StoredOutput(o.container, o.destination, stats[o.destination].size, stats[o.destination].md5)
                for o in t.outputs
            ),
            time.time(),
        )
        for t in run_plan.tasks
    ]
    write_ledger(state.folder, entries)
    return digests.file


def byte_compile(tree: Path) -> None:
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "batchflow")], check=True)


def earlier_batchflow(rev: str, into: Path) -> Path:
    """The batchflow package of commit `rev`, extracted with `git archive` (no worktree, no checkout)."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "batchflow"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        if hasattr(tarfile, "data_filter"):  # (Python 3.10.12+, 3.11.4+)
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)  # noqa: S202 (our own repository's files)
    byte_compile(into)
    return into


def fmt(s: list[Sample]) -> tuple[float, float, float]:
    return (
        statistics.median(x.wall for x in s),
        statistics.median(x.cpu for x in s),
        statistics.median(x.rss_mb for x in s),
    )


class Scale:
    """The scaling table: every command at each input count, every side alternated."""

    def __init__(self, args: argparse.Namespace, trees: dict[str, Path], tmp: Path) -> None:
        self.repeat = args.repeat
        self.trees = trees
        self.tmp = tmp
        self.sides = [*trees, "baseline"]
        self.script = tmp / "baseline.py"
        self.script.write_text(BASELINE, encoding="utf-8")

    def table(self, counts: list[int]) -> None:
        head = ["inputs", "command", *(f"{s}: wall / CPU / peak RSS" for s in self.sides)]
        head += ["batchflow / baseline", *(["before / batchflow"] if "before" in self.trees else [])]
        print("\n| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|", flush=True)
        for n in counts:
            for label, samples in self.rows(n).items():
                cells = [f"{n:,}", label]
                for side in self.sides:
                    wall, cpu, rss = fmt(samples[side])
                    cells.append(f"{wall:.2f} s / {cpu:.2f} s / {rss:.0f} MB")
                ours = fmt(samples["batchflow"])[0]
                cells.append(f"{ours / fmt(samples['baseline'])[0]:.1f}x")
                if "before" in samples:
                    cells.append(f"{fmt(samples['before'])[0] / ours:.1f}x")
                print("| " + " | ".join(cells) + " |", flush=True)

    def rows(self, n: int) -> dict[str, dict[str, list[Sample]]]:
        base = self.tmp / f"n{n}"
        wf = make_inputs(base, n)
        plan = ["plan", str(wf), "--output", "json"]
        rows = {
            "validate": self.measure(base, ["validate", str(wf)], None),
            "plan, no run yet": self.measure(base, plan, ("task_count", str(n))),
        }
        inputs_cache = leave_a_run(wf)
        unchanged = ("resume", f"{n} unchanged")
        rows["plan after a run"] = self.measure(base, plan, unchanged)
        rows["plan after a run, inputs' digests gone"] = self.measure(
            base, plan, unchanged, lambda: inputs_cache.unlink(missing_ok=True)
        )
        shutil.rmtree(base)
        return rows

    def measure(
        self,
        base: Path,
        argv: list[str],
        check: tuple[str, str] | None,
        prepare: Callable[[], None] | None = None,
    ) -> dict[str, list[Sample]]:
        """`check`: (key, start) that the JSON printed must have; `prepare`: run before each sample."""
        samples: dict[str, list[Sample]] = {s: [] for s in self.sides}
        mode = argv[0]
        for _ in range(self.repeat):
            for side in self.sides:  # alternated: each repeat runs every side once
                if prepare is not None:
                    prepare()
                out = self.tmp / "out.json" if mode == "plan" else None
                if side == "baseline":
                    cmd = [PYTHON, str(self.script), str(base / "in"), mode]
                    env = {**os.environ}
                else:
                    cmd = [PYTHON, "-m", "batchflow", *argv]
                    env = {**os.environ, "PYTHONPATH": str(self.trees[side])}
                samples[side].append(run(cmd, env, out))
                if out is not None and check is not None and side != "baseline":
                    said = str(json.loads(out.read_text(encoding="utf-8"))[check[0]])
                    assert said.startswith(check[1]), (side, argv, said)
        return samples


def startup(args: argparse.Namespace, trees: dict[str, Path], tmp: Path) -> None:
    wf = make_inputs(tmp / "n5", 5)
    commands: dict[str, tuple[Path | None, list[str]]] = {"python -c pass": (None, ["-c", "pass"])}
    for side, tree in trees.items():
        commands[f"{side}: validate (5 inputs)"] = (tree, ["-m", "batchflow", "validate", str(wf)])
        commands[f"{side}: --version"] = (tree, ["-m", "batchflow", "--version"])
    samples: dict[str, list[Sample]] = {k: [] for k in commands}
    for _ in range(args.startup_repeat):
        for label, (where, argv) in commands.items():  # alternated
            env = {**os.environ, "PYTHONPATH": str(where)} if where is not None else {**os.environ}
            samples[label].append(run([PYTHON, *argv], env))
    floor = fmt(samples["python -c pass"])[0]
    print(f"\nStart-up, median of {args.startup_repeat} (alternated):")
    print("| command | wall | CPU | peak RSS | minus `python -c pass` |\n|---|---|---|---|---|")
    for label, s in samples.items():
        wall, cpu, rss = fmt(s)
        cells = [label, f"{wall * 1000:.0f} ms", f"{cpu * 1000:.0f} ms", f"{rss:.0f} MB"]
        print("| " + " | ".join([*cells, f"{(wall - floor) * 1000:+.0f} ms"]) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", default="1000,10000,100000", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--startup-repeat", type=int, default=21)
    ap.add_argument("--before", metavar="REV", help="also run the batchflow of this commit")
    ap.add_argument("--startup-only", action="store_true")
    ap.add_argument(
        "--editable", action="store_true", help="run with this venv's Python, editable-install hook and all"
    )
    args = ap.parse_args()
    global PYTHON
    PYTHON = python(args.editable)
    print(
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]} ({PYTHON}); "
        f"load {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as name:
        tmp = Path(name)
        byte_compile(ROOT)
        trees = {"batchflow": ROOT}
        if args.before:
            trees["before"] = earlier_batchflow(args.before, tmp / "before")
        startup(args, trees, tmp)
        if not args.startup_only:
            Scale(args, trees, tmp).table(args.inputs)
    print(f"load at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
