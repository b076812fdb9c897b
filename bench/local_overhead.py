"""batchflow's local backend vs `xargs -P` running the same rendered commands at the same concurrency.

    python bench/local_overhead.py [--tasks 3000] [--videos 40] [--concurrency N] [--repeat 5]
                                   [--before DIR] [--hogs N] [--footprint 10000]

Baselines, each running the same rendered commands in folders prepared beforehand (untimed), each
task's input hard-linked in:
- `xargs -P N setsid sh -c CMD`: the like-for-like baseline. batchflow starts every task in a session
  of its own (so that it can kill the task's whole process group), and with the kernel's autogroup
  scheduling each session gets its own share of a busy CPU; tasks started by plain xargs share one.
- `xargs -P N sh -c CMD`, for reference.
batchflow's time is the whole `batchflow run` command (start-up, plan, task keys, upload, reuse
check, pool, tasks, monitor, ledger, cleanup), each repeat a fresh workspace: a user's first run.
`--before DIR` also runs the batchflow found in DIR (another checkout, e.g. the commit before a change),
so before and after are measured side by side. Every repeat runs the contenders one after the other,
the order rotating from repeat to repeat; wall time and CPU time (user + system of the command and
every process it waited for) are medians of --repeat runs. `--hogs N` keeps N busy-looping processes
running meanwhile (a loaded machine). `--footprint N` runs N trivial tasks once and reports the run
folder batchflow leaves; `--state N` times saving (4 times) and loading the run state of N tasks.
batchflow runs as a regular install runs it (bench/installed.py: without the development venv's
editable-install hook, 15-20 ms per process); --editable keeps the hook.
Workspaces are made in the system's temporary folder (TMPDIR): its file system counts, as every
local task makes and removes folders (TMPDIR=/dev/shm: a tmpfs).
(a) --tasks trivial tasks (`true`); (b) --videos ffmpeg MP4 -> MP3 conversions of --video-seconds clips.
Targets (issue 12): (a) <= 1.3x and (b) <= 1.05x xargs + setsid.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from media import ffmpeg_exe, sample_maker  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from installed import python  # noqa: E402

PYTHON = sys.executable  # main() sets the one batchflow runs with (bench/installed.py)

WORKFLOW = """\
version: 1
name: bench
storage:
  containers: [input, output]
  uploads: [{{source: inputs, include: ["*"], container: input}}]
pool:
  id: BenchPool
  vm_size: Standard_D2s_v3
  image: {{publisher: canonical, offer: ubuntu-24_04-lts, sku: server}}
  node_agent_sku_id: batch.node.ubuntu 24.04
  dedicated_nodes: 1
  task_slots_per_node: {slots}
job: {{id: BenchJob}}
vars: {{ffmpeg: "{ffmpeg}"}}
tasks:
  foreach: {{container: input, pattern: "*"}}
  command: {command}
  outputs: {outputs}
monitor: {{timeout: 1h, poll_interval: 5s}}
local: {{concurrency: {slots}}}
"""


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float  # user + system seconds of the command and of every process it waited for


@dataclass
class Contender:
    name: str
    times: list[Timing] = field(default_factory=list)
    monitor: list[float] = field(default_factory=list)  # batchflow's monitor stage

    def wall(self) -> float:
        return statistics.median(t.wall for t in self.times)

    def cpu(self) -> float:
        return statistics.median(t.cpu for t in self.times)


def timed(
    argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[Timing, subprocess.CompletedProcess[bytes]]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    r = subprocess.run(argv, input=data, capture_output=True, cwd=cwd, env=env, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if r.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({r.returncode}):\n{r.stderr.decode()[-3000:]}")
    return Timing(wall, cpu), r


def batchflow_env(src: Path) -> dict[str, str]:
    """The environment that runs the batchflow in `src`: PYTHONPATH names it (each command runs in a
    folder without one of its own: `python -m` puts the working folder first on sys.path)."""
    return {**os.environ, "PYTHONPATH": str(src)}


def batchflow_run(src: Path, wf: Path) -> tuple[Timing, dict[str, Any]]:
    argv = [PYTHON, "-m", "batchflow", "run", str(wf), "--quiet", "--output", "json"]
    timing, r = timed(argv, cwd=wf.parent, env=batchflow_env(src))
    return timing, json.loads(r.stdout)


def xargs_scripts(wf: Path, workdir: Path) -> bytes:
    """The rendered commands, each in a prepared folder holding its input (a hard link), NUL-separated."""
    plan = json.loads(
        subprocess.run(
            [PYTHON, "-m", "batchflow", "plan", str(wf), "--all", "--output", "json"],
            capture_output=True,
            cwd=wf.parent,
            env=batchflow_env(ROOT),
            check=True,
        ).stdout
    )
    scripts = []
    for task in plan["tasks"]:
        wd = workdir / task["id"]
        wd.mkdir(parents=True)
        for inp in task["inputs"]:
            src = wf.parent / "inputs" / inp["blob"]
            (wd / inp["file_path"]).parent.mkdir(parents=True, exist_ok=True)
            os.link(src, wd / inp["file_path"])
        scripts.append(f"cd '{wd}' && {task['command']} >stdout.txt 2>stderr.txt")
    return "\0".join(scripts).encode()


def xargs_argv(concurrency: int, setsid: bool) -> list[str]:
    return ["xargs", "-0", "-n", "1", "-P", str(concurrency), *(["setsid"] if setsid else []), "sh", "-c"]


def measure(
    name: str,
    n: int,
    command: str,
    outputs: str,
    make_inputs: Callable[[Path, int], None],
    concurrency: int,
    repeat: int,
    sources: dict[str, Path],
) -> dict[str, Contender]:
    """Every contender once per repeat, in a fresh folder, the order rotating by one each repeat."""
    names = [*sources, "xargs + setsid", "xargs"]
    found = {c: Contender(c) for c in names}
    for rep in range(repeat):
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            base = Path(tmp)
            make_inputs(base / "inputs", n)
            text = WORKFLOW.format(slots=concurrency, ffmpeg=ffmpeg_exe(), command=command, outputs=outputs)
            runs: dict[str, Callable[[], None]] = {}
            for label, src in sources.items():
                folder = base / label.replace(" ", "-")
                folder.mkdir()
                _link_tree(base / "inputs", folder / "inputs")
                wf = folder / "bench.yaml"
                wf.write_text(text, encoding="utf-8")
                runs[label] = functools.partial(_run_batchflow, found[label], src, wf, n)
            xwf = base / "bench.yaml"
            xwf.write_text(text, encoding="utf-8")
            for label, setsid in (("xargs + setsid", True), ("xargs", False)):
                data = xargs_scripts(xwf, base / label.replace(" ", "-").replace("+", "and"))
                runs[label] = functools.partial(_run_xargs, found[label], concurrency, setsid, data)
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for label in order:
                runs[label]()
    return found


def _link_tree(src: Path, dst: Path) -> None:
    """A folder of hard links to `src`'s files: each contender's own workspace, the same inputs."""
    dst.mkdir()
    for f in src.iterdir():
        os.link(f, dst / f.name)


def _run_batchflow(into: Contender, src: Path, wf: Path, n: int) -> None:
    timing, summary = batchflow_run(src, wf)
    if summary["counts"]["succeeded"] != n:
        raise SystemExit(f"{into.name}: {summary['counts']}")
    into.times.append(timing)
    into.monitor.append(summary["stage_seconds"].get("monitor", 0.0))


def _run_xargs(into: Contender, concurrency: int, setsid: bool, data: bytes) -> None:
    timing, _ = timed(xargs_argv(concurrency, setsid), cwd=Path(tempfile.gettempdir()), data=data)
    into.times.append(timing)


def report(title: str, found: dict[str, Contender], n: int) -> None:
    base = found["xargs + setsid"]
    print(f"{title} (medians of {len(base.times)}):")
    for c in found.values():
        ratio = c.wall() / base.wall()
        extra = f", monitor stage {statistics.median(c.monitor):.2f} s" if c.monitor else ""
        over = (c.wall() - base.wall()) / n * 1000
        print(
            f"  {c.name:16s} wall {c.wall():6.2f} s  cpu {c.cpu():6.2f} s  "
            f"-> {ratio:.3f}x xargs + setsid ({over:+.2f} ms/task){extra}"
        )


def trivial_inputs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"in{i:05d}.txt").write_text(str(i))


def video_inputs(folder: Path, n: int, seconds: float) -> None:
    sample_maker().make_samples(folder, count=n, seconds=seconds)


def footprint(src: Path, n: int, concurrency: int) -> None:
    """One run of n trivial tasks: what it leaves in its run folder, and in the workspace."""
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        base = Path(tmp)
        trivial_inputs(base / "inputs", n)
        wf = base / "bench.yaml"
        text = WORKFLOW.format(slots=concurrency, ffmpeg="", command="'true {{ input.path }}'", outputs="[]")
        wf.write_text(text, encoding="utf-8")
        timing, summary = batchflow_run(src, wf)
        run = Path(summary["run_folder"])
        print(f"footprint of {n} trivial tasks ({src}): wall {timing.wall:.2f} s, cpu {timing.cpu:.2f} s")
        for label, folder in (("run folder", run), ("workspace", run.parent.parent)):
            size, folders, files = _disk_use(folder)
            print(f"  {label}: {size / 1e6:.1f} MB on disk, {folders} folders, {files} files")
        kept = [f"{p.name} {_size(p.stat().st_size)}" for p in sorted(run.iterdir()) if p.is_file()]
        print("    " + ", ".join(kept))


def _size(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def _disk_use(folder: Path) -> tuple[int, int, int]:
    size = folders = files = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _, filenames in os.walk(folder):
        folders += 1
        size += os.lstat(dirpath).st_blocks * 512
        for f in filenames:
            st = (Path(dirpath) / f).lstat()
            files += 1
            if (st.st_dev, st.st_ino) not in seen:  # a hard-linked file counts once
                seen.add((st.st_dev, st.st_ino))
                size += st.st_blocks * 512
    return size, folders, files


STATE_SCRIPT = """
import json, resource, sys, tempfile, time
from pathlib import Path
from batchflow.state import RecordState, RunState, TaskRecord
n = int(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp:
    state = RunState.create(Path(tmp), Path(tmp) / "wf.yaml", "local", "20261201-000000-000-aaaaaa")
    for i in range(n):  # as the run records them when it collects the results
        state.tasks[f"task-{i:06d}"] = TaskRecord(
            RecordState.SUCCEEDED, 0, 1, 1.7e9 + i, 1.7e9 + i + 0.5, None,
            f"tasks/task-{i:06d}/stdout.txt", f"tasks/task-{i:06d}/stderr.txt", (f"output/runs/r/{i}.mp3",),
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for stage in ("collect", "download", "cleanup", "end"):
        state.stage = stage
        start = time.perf_counter()
        state.save()
        times.append(time.perf_counter() - start)
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    start = time.perf_counter()
    loaded = RunState.load(state.folder)
    load = time.perf_counter() - start
    assert len(loaded.tasks) == n
    sizes = {p.name: p.stat().st_size for p in state.folder.iterdir() if p.is_file()}
    print(json.dumps({"saves": times, "load": load, "rss_growth_kb": grew, "sizes": sizes}))
"""


def state_cost(label: str, src: Path, n: int) -> None:
    """The run state of a run with n tasks: four saves, as the runner makes after collecting results
    (collect, download, cleanup, the end), and one load."""
    argv = [PYTHON, "-c", STATE_SCRIPT, str(n)]
    _, r = timed(argv, cwd=Path(tempfile.gettempdir()), env=batchflow_env(src))
    got = json.loads(r.stdout)
    saves = ", ".join(f"{t:.3f}" for t in got["saves"])
    files = ", ".join(f"{name} {_size(size)}" for name, size in sorted(got["sizes"].items()))
    print(
        f"run state of {n} tasks ({label}): saves {saves} s, load {got['load']:.2f} s, "
        f"peak memory +{got['rss_growth_kb'] / 1024:.0f} MB during the saves; {files}"
    )


@contextlib.contextmanager
def hogs(count: int) -> Iterator[None]:
    """`count` busy-looping processes, in this script's session, for as long as the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def compiled(src: Path) -> Path:
    # As a regular install would have it: batchflow's modules compiled once. An editable install run with
    # PYTHONDONTWRITEBYTECODE=1 (this sandbox sets it) would otherwise compile them at every start.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src / "batchflow")], check=True)
    return src


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--videos", type=int, default=40)
    ap.add_argument("--video-seconds", type=float, default=60.0, help="length of each sample video")
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--before", type=Path, help="another checkout whose batchflow runs side by side")
    ap.add_argument("--hogs", type=int, default=0, help="busy-looping processes kept running meanwhile")
    ap.add_argument("--footprint", type=int, default=0, help="report the run folder of N trivial tasks")
    ap.add_argument("--state", type=int, default=0, help="time saving and loading the state of N tasks")
    ap.add_argument(
        "--editable", action="store_true", help="run batchflow with this venv's Python, editable hook and all"
    )
    args = ap.parse_args()
    global PYTHON
    PYTHON = python(args.editable)
    for tool in ("xargs", "setsid"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required")
    sources = {"batchflow": compiled(ROOT)}
    if args.before is not None:
        sources["batchflow before"] = compiled(args.before.resolve())
    for label, src in sources.items():
        where = Path(tempfile.gettempdir())
        _, r = timed(
            [PYTHON, "-c", "import batchflow; print(batchflow.__file__)"],
            cwd=where,
            env=batchflow_env(src),
        )
        if not Path(r.stdout.decode().strip()).is_relative_to(src):
            raise SystemExit(f"{label}: {src} is not the batchflow that runs ({r.stdout.decode().strip()})")
        timing, _ = timed([PYTHON, "-m", "batchflow", "--version"], cwd=where, env=batchflow_env(src))
        print(f"{label} start-up (python -m batchflow --version): {timing.wall * 1000:.0f} ms ({src})")
    print(
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]} ({PYTHON}), "
        f"concurrency {args.concurrency}, "
        f"{args.hogs} CPU hog(s)"
    )
    with hogs(args.hogs):
        if args.state:
            for label, src in sources.items():
                state_cost(label, src, args.state)
        if args.footprint:
            for src in sources.values():
                footprint(src, args.footprint, args.concurrency)
        if args.tasks:
            found = measure(
                "trivial",
                args.tasks,
                "'true {{ input.path }}'",
                "[]",
                trivial_inputs,
                args.concurrency,
                args.repeat,
                sources,
            )
            report(f"(a) {args.tasks} trivial tasks", found, args.tasks)
        if args.videos:
            cmd = (
                "'{{ vars.ffmpeg }} -hide_banner -loglevel error -y -i {{ input.path }} -vn -b:a 128k "
                '{{ input.stem ~ ".mp3" }}\''
            )
            outs = "[{pattern: '{{ input.stem }}.mp3', container: output}]"
            videos = functools.partial(video_inputs, seconds=args.video_seconds)
            found = measure("ffmpeg", args.videos, cmd, outs, videos, args.concurrency, args.repeat, sources)
            title = f"(b) {args.videos} ffmpeg conversions of {args.video_seconds:g} s clips"
            report(title, found, args.videos)


if __name__ == "__main__":
    main()
