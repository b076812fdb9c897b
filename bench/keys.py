"""The cost of content-keyed resume's task keys: `ledger.task_keys` over N inputs, per task.

    python bench/keys.py [--inputs 100000] [--repeat 3] [--quick]

A workflow of N one-line inputs (one task each, one input, one output; the files made beforehand
with a modification time an hour old, as inputs usually are) is loaded and rendered with batchflow's
own `load_workflow` + `build_plan`, untimed. Then, each --repeat times, alternating the order:
  warm:  task_keys with the digest cache a previous run saved (loaded from its file, inside the timing):
         a stat per input, a cache lookup, the part hashes and the key;
  cold:  task_keys with an empty digest cache: every input is read and hashed (MD5) as well;
  baselines over the same tasks: (w) a stat per input + one plain sha256 over each task's command,
         the least a warm key could cost; (c) the same + hashlib.md5 of each input's content read
         whole, the least a cold key could cost.
Medians, in microseconds per task. Target (issue 11): <= 50 us per task (warm).
The OS page cache holds the files throughout (they were just written): "cold" is batchflow's cache.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

WORKFLOW = """\
version: 1
name: bench-keys
storage:
  containers: [input, output]
  uploads: [{source: inputs, include: ["*"], container: input}]
pool:
  id: BenchPool
  vm_size: Standard_D2s_v3
  image: {publisher: canonical, offer: ubuntu-24_04-lts, sku: server}
  node_agent_sku_id: batch.node.ubuntu 24.04
  dedicated_nodes: 1
job: {id: BenchJob}
vars: {level: "5"}
tasks:
  foreach: {container: input, pattern: "*"}
  command: "gzip -{{ vars.level }} -c {{ input.path }} > {{ input.stem }}.gz"
  environment: {LEVEL: "{{ vars.level }}"}
  outputs: [{pattern: "{{ input.stem }}.gz", container: output}]
"""


def make_inputs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    old = time.time() - 3600
    for i in range(n):
        path = folder / f"in{i:06d}.txt"
        path.write_text(f"input {i}\n")
        os.utime(path, (old, old))


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="--inputs 10000")
    args = ap.parse_args()
    if args.quick:
        args.inputs = 10_000
    from batchflow.digests import DigestCache
    from batchflow.ledger import task_keys
    from batchflow.model import Plan
    from batchflow.render import build_plan
    from batchflow.spec import load_workflow

    n = args.inputs
    print(
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; {n:,} inputs, {args.repeat} rounds"
    )
    with tempfile.TemporaryDirectory(prefix="bench-keys-") as tmp:
        base = Path(tmp)
        made = timed(lambda: make_inputs(base / "inputs", n))
        wf_file = base / "bench.yaml"
        wf_file.write_text(WORKFLOW, encoding="utf-8")
        plans: list[Plan] = []
        rendered = timed(lambda: plans.append(build_plan(load_workflow(wf_file), "local")))
        plan = plans[0]
        assert len(plan.tasks) == n and len(plan.uploads) == n
        print(
            f"setup (untimed): inputs made in {made:.1f} s, workflow loaded and rendered in {rendered:.1f} s"
        )
        commands = [t.command for t in plan.tasks]
        paths = [u.local_path for u in plan.uploads]

        def warm_file() -> Path:
            """A digest cache file as a previous run left it."""
            file = base / "warm.json"
            if not file.exists():
                cache = DigestCache(file)
                task_keys(plan, "local", cache.md5)
                cache.save()
            return file

        def warm() -> None:
            keys = task_keys(plan, "local", DigestCache(warm_file()).md5)
            assert len(keys) == n

        counter = iter(range(1_000_000))

        def cold() -> None:
            keys = task_keys(plan, "local", DigestCache(base / f"cold-{next(counter)}.json").md5)
            assert len(keys) == n

        def floor_warm() -> None:
            for path, command in zip(paths, commands, strict=True):
                path.stat()
                hashlib.sha256(command.encode()).hexdigest()

        def floor_cold() -> None:
            for path, command in zip(paths, commands, strict=True):
                path.stat()
                hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
                hashlib.sha256(command.encode()).hexdigest()

        warm_file()
        sides = {"warm": warm, "cold": cold, "floor_warm": floor_warm, "floor_cold": floor_cold}
        times: dict[str, list[float]] = {k: [] for k in sides}
        for i in range(args.repeat):
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for name in order:
                times[name].append(timed(sides[name]))
            print("  round " + f"{i + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f} s" for k in sides))
        us = {k: statistics.median(v) / n * 1e6 for k, v in times.items()}
    print(
        f"task_keys, warm digest cache: {us['warm']:.1f} us/task (target <= 50); "
        f"baseline stat + sha256(command): {us['floor_warm']:.1f} us/task "
        f"-> {us['warm'] / us['floor_warm']:.1f}x"
    )
    print(
        f"task_keys, cold digest cache: {us['cold']:.1f} us/task; "
        f"baseline stat + md5(content) + sha256(command): {us['floor_cold']:.1f} us/task "
        f"-> {us['cold'] / us['floor_cold']:.1f}x"
    )


if __name__ == "__main__":
    main()
