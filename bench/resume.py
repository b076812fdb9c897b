"""Content-keyed resume: a fresh local run vs the re-run of a run interrupted at about half.

    python bench/resume.py [--tasks 1000] [--task-ms 20] [--concurrency N] [--repeat 3] [--quick]

Both sides are whole `batchflow run` commands on the local backend with folder storage, each in its
own fresh workflow folder of N inputs (an hour old; tasks: sleep --task-ms, then upper-case the input into an
output, which is downloaded). (a) fresh: one run of all N tasks. (b) resumed: a run interrupted with
SIGINT once N/2 tasks have ended (read from its live task journal), then a plain re-run, which is
timed: it reads the ledger, copies the finished half's outputs under its own prefix, runs the rest
and downloads every output. Also timed: (c) a further run with nothing changed (runs no task).
The sides alternate (fresh first, then resumed first), --repeat times; each figure is the median.
Target (issue 11): the re-run's wall time <= 55% of the fresh run's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORKFLOW = """\
version: 1
name: bench-resume
storage:
  containers: [input, output]
  uploads: [{{source: inputs, include: ["*"], container: input}}]
  downloads: [{{container: output, destination: out}}]
pool:
  id: BenchPool
  vm_size: Standard_D2s_v3
  image: {{publisher: canonical, offer: ubuntu-24_04-lts, sku: server}}
  node_agent_sku_id: batch.node.ubuntu 24.04
  dedicated_nodes: 1
  task_slots_per_node: {slots}
job: {{id: BenchJob}}
tasks:
  foreach: {{container: input, pattern: "*"}}
  command: "{sleep}tr a-z A-Z < {{{{ input.path }}}} > {{{{ input.stem }}}}.out"
  outputs: [{{pattern: "{{{{ input.stem }}}}.out", container: output}}]
monitor: {{timeout: 1h, poll_interval: 5s}}
local: {{concurrency: {slots}}}
"""


def make_folder(base: Path, n: int, slots: int, task_ms: float) -> Path:
    inputs = base / "inputs"
    inputs.mkdir(parents=True)
    old = time.time() - 3600  # an hour old, as inputs usually are (a file just written is hashed again)
    for i in range(n):
        path = inputs / f"in{i:05d}.txt"
        path.write_text(f"input {i}\n")
        os.utime(path, (old, old))
    sleep = f"sleep {task_ms / 1000:g}; " if task_ms > 0 else ""
    wf = base / "bench.yaml"
    wf.write_text(WORKFLOW.format(slots=slots, sleep=sleep), encoding="utf-8")
    return wf


def command(wf: Path) -> list[str]:
    return [sys.executable, "-m", "batchflow", "run", str(wf), "--quiet", "--output", "json"]


def timed_run(wf: Path) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    r = subprocess.run(command(wf), capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"batchflow run failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return elapsed, json.loads(r.stdout)


def interrupt_at(wf: Path, ended: int) -> int:
    """Start a run, SIGINT it once `ended` tasks have ended; returns how many had ended by then."""
    proc = subprocess.Popen(command(wf), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    runs = wf.parent / ".batchflow" / "runs"
    journal: Path | None = None
    count = 0
    while count < ended:
        if proc.poll() is not None:
            raise SystemExit(f"the run ended before {ended} tasks did:\n{proc.communicate()[1][-3000:]}")
        if journal is None:
            found = list(runs.glob("*/tasks.jsonl")) if runs.is_dir() else []
            journal = found[0] if found else None
        if journal is not None:
            count = journal.read_bytes().count(b'"event": "ended"')
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    if proc.returncode != 130:
        raise SystemExit(f"the interrupted run exited {proc.returncode}:\n{err[-3000:]}")
    return count


def fresh(base: Path, n: int, slots: int, task_ms: float) -> float:
    wf = make_folder(base, n, slots, task_ms)
    elapsed, summary = timed_run(wf)
    assert summary["counts"]["succeeded"] == n, summary["counts"]
    return elapsed


def resumed(base: Path, n: int, slots: int, task_ms: float) -> dict[str, Any]:
    wf = make_folder(base, n, slots, task_ms)
    ended_at_signal = interrupt_at(wf, n // 2)
    elapsed, summary = timed_run(wf)
    assert summary["counts"]["succeeded"] == n, summary["counts"]
    state = json.loads((Path(summary["run_folder"]) / "state.json").read_text(encoding="utf-8"))
    executed = sum(1 for t in state["tasks"].values() if not t["reused_from"])
    downloaded = len(list((wf.parent / "out").glob("*.out")))
    assert downloaded == n, downloaded
    again, summary2 = timed_run(wf)
    state2 = json.loads((Path(summary2["run_folder"]) / "state.json").read_text(encoding="utf-8"))
    assert all(t["reused_from"] for t in state2["tasks"].values())
    return {
        "elapsed": elapsed,
        "executed": executed,
        "ended_at_signal": ended_at_signal,
        "stages": summary["stage_seconds"],
        "nothing_changed": again,
        "nothing_changed_stages": summary2["stage_seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--task-ms", type=float, default=20.0, help="how long each task sleeps (0: none)")
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="--tasks 200 --repeat 1")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.repeat = 200, 1
    import batchflow  # byte-compiled once, as a regular install has it (see local_overhead.py)

    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(Path(batchflow.__file__).parent)], check=True
    )
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, concurrency {args.concurrency}")
    print(
        f"{args.tasks} tasks of {args.task_ms:g} ms each, interrupted at {args.tasks // 2}, "
        f"{args.repeat} round(s)"
    )
    fresh_s: list[float] = []
    rerun: list[dict[str, Any]] = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
            for side in ("fresh", "resumed") if i % 2 == 0 else ("resumed", "fresh"):
                folder = Path(tmp) / side
                if side == "fresh":
                    fresh_s.append(fresh(folder, args.tasks, args.concurrency, args.task_ms))
                else:
                    rerun.append(resumed(folder, args.tasks, args.concurrency, args.task_ms))
        r = rerun[-1]
        print(
            f"  round {i + 1}: fresh {fresh_s[-1]:.2f} s; re-run {r['elapsed']:.2f} s "
            f"= {r['elapsed'] / fresh_s[-1]:.1%} "
            f"({r['executed']} executed, {r['ended_at_signal']} had ended at the signal); "
            f"nothing changed {r['nothing_changed']:.2f} s"
        )
    f = statistics.median(fresh_s)
    rr = statistics.median(r["elapsed"] for r in rerun)
    nc = statistics.median(r["nothing_changed"] for r in rerun)
    stages = {k: statistics.median(r["stages"].get(k, 0.0) for r in rerun) for k in rerun[0]["stages"]}
    nc_stages = {
        k: statistics.median(r["nothing_changed_stages"].get(k, 0.0) for r in rerun)
        for k in rerun[0]["nothing_changed_stages"]
    }
    per_round = statistics.median(r["elapsed"] / x for r, x in zip(rerun, fresh_s, strict=True))
    print(
        f"fresh run: {f:.2f} s; re-run after the interrupt: {rr:.2f} s -> {rr / f:.1%} of the fresh run "
        f"(median of the rounds' own ratios: {per_round:.1%}; target <= 55%)"
    )
    print("  re-run stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    print(f"nothing changed: {nc:.2f} s ({nc / f:.1%} of the fresh run)")
    print("  its stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in nc_stages.items()))


if __name__ == "__main__":
    main()
