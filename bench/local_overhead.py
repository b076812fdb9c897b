"""batchflow's local backend vs `xargs -P` running the same rendered commands at the same concurrency.

    python bench/local_overhead.py [--tasks 500] [--videos 40] [--concurrency N] [--repeat 3]

(a) N trivial tasks: overhead per task = (batchflow wall time - xargs wall time) / N, in ms.
    batchflow's time is the whole `batchflow run` command (start-up, plan, upload, pool, tasks,
    monitor, cleanup); xargs gets its working folders and inputs prepared beforehand, untimed.
(b) M ffmpeg MP4 -> MP3 conversions: wall-time ratio batchflow / xargs.
Each figure is the median of --repeat runs. Targets (issue 2): <= 5 ms per task; ffmpeg ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from media import ffmpeg_exe, sample_maker  # noqa: E402

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


def batchflow_run(wf: Path) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "batchflow", "run", str(wf), "--quiet", "--output", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"batchflow run failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return elapsed, json.loads(r.stdout)


def xargs_run(wf: Path, workdir: Path, concurrency: int) -> float:
    """The same rendered commands, each in a prepared folder holding its input, through xargs -P."""
    plan = json.loads(
        subprocess.run(
            [sys.executable, "-m", "batchflow", "plan", str(wf), "--all", "--output", "json"],
            capture_output=True,
            text=True,
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
    data = "\0".join(scripts).encode()
    start = time.perf_counter()
    subprocess.run(["xargs", "-0", "-n", "1", "-P", str(concurrency), "sh", "-c"], input=data, check=True)
    return time.perf_counter() - start


def measure(
    name: str, n: int, command: str, outputs: str, make_inputs: Any, concurrency: int, repeat: int
) -> dict[str, float]:
    bf_times, x_times, monitor_times = [], [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            base = Path(tmp)
            make_inputs(base / "inputs", n)
            wf = base / "bench.yaml"
            wf.write_text(
                WORKFLOW.format(slots=concurrency, ffmpeg=ffmpeg_exe(), command=command, outputs=outputs),
                encoding="utf-8",
            )
            x_times.append(xargs_run(wf, base / "xargs", concurrency))
            elapsed, summary = batchflow_run(wf)
            bf_times.append(elapsed)
            monitor_times.append(summary["stage_seconds"].get("monitor", 0.0))
            assert summary["counts"]["succeeded"] == n, summary["counts"]
    bf, xa = statistics.median(bf_times), statistics.median(x_times)
    return {
        "tasks": n,
        "batchflow_s": bf,
        "xargs_s": xa,
        "ratio": bf / xa,
        "overhead_ms_per_task": (bf - xa) / n * 1000,
        "monitor_stage_s": statistics.median(monitor_times),
    }


def trivial_inputs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"in{i:05d}.txt").write_text(str(i))


def video_inputs(folder: Path, n: int, seconds: float) -> None:
    sample_maker().make_samples(folder, count=n, seconds=seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--videos", type=int, default=40)
    ap.add_argument("--video-seconds", type=float, default=60.0, help="length of each sample video")
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("xargs") is None:
        raise SystemExit("xargs is required")
    # As a regular install would have it: batchflow's modules compiled once. An editable install run with
    # PYTHONDONTWRITEBYTECODE=1 (this sandbox sets it) would otherwise compile them at every start.
    import batchflow

    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(Path(batchflow.__file__).parent)], check=True
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "batchflow", "--version"], check=True, capture_output=True)
    startup = time.perf_counter() - start
    print(f"batchflow start-up (python -m batchflow --version): {startup * 1000:.0f} ms")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, concurrency {args.concurrency}")
    trivial = measure(
        "trivial", args.tasks, "'true {{ input.path }}'", "[]", trivial_inputs, args.concurrency, args.repeat
    )
    print(
        f"(a) {trivial['tasks']} trivial tasks: batchflow {trivial['batchflow_s']:.2f} s "
        f"(monitor stage {trivial['monitor_stage_s']:.2f} s), xargs -P {args.concurrency} "
        f"{trivial['xargs_s']:.2f} s -> overhead {trivial['overhead_ms_per_task']:.2f} ms/task (target <= 5)"
    )
    cmd = (
        "'{{ vars.ffmpeg }} -hide_banner -loglevel error -y -i {{ input.path }} -vn -b:a 128k "
        '{{ input.stem ~ ".mp3" }}\''
    )
    outs = "[{pattern: '{{ input.stem }}.mp3', container: output}]"
    videos = functools.partial(video_inputs, seconds=args.video_seconds)
    video = measure("ffmpeg", args.videos, cmd, outs, videos, args.concurrency, args.repeat)
    print(
        f"(b) {video['tasks']} ffmpeg conversions of {args.video_seconds:g} s clips: "
        f"batchflow {video['batchflow_s']:.2f} s, "
        f"xargs -P {args.concurrency} {video['xargs_s']:.2f} s -> ratio {video['ratio']:.3f} (target <= 1.10)"
    )


if __name__ == "__main__":
    main()
