"""How the Batch emulator's list pages scale: listing every task of a job, at two job sizes.

    python bench/emulator_listing.py                 # --tasks 10000,50000 --repeat 3

A listing through the real SDK (`list_tasks(job, select=["id", "state"])`, pages of 1,000) against
the emulator in this process, after adding the tasks to a job whose pool does not exist (they stay
queued). Prints the median wall time of each size and the cost per task, and the ratio of the
per-task costs (largest size / smallest): about 1.0 for a listing that grows linearly, about the
size ratio for one that rescans the job on every page (as the emulator did before issue 8). The
benchmarks' Azure figures list tasks through this emulator, so its own cost must stay out of them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(ROOT))

from azure.batch import models as bm  # noqa: E402
from batch_emulator import BatchEmulator  # noqa: E402


def listing_seconds(tasks: int, repeat: int) -> float:
    with tempfile.TemporaryDirectory() as workdir, BatchEmulator(workdir=Path(workdir)) as emu:
        client = emu.client(retry_total=0)
        client.create_job(bm.BatchJobCreateOptions(id="j", pool_info=bm.BatchPoolInfo(pool_id="no-pool")))
        for start in range(0, tasks, 100):
            chunk = [
                bm.BatchTaskCreateOptions(id=f"t{i:06d}", command_line="true")
                for i in range(start, min(start + 100, tasks))
            ]
            client.create_task_collection("j", bm.BatchTaskGroup(task_values=chunk))
        times = []
        for _ in range(repeat):
            begin = time.perf_counter()
            listed = sum(1 for _ in client.list_tasks("j", select=["id", "state"]))
            times.append(time.perf_counter() - begin)
            if listed != tasks:
                raise SystemExit(f"benchmark run went wrong: listed {listed} of {tasks}")
        client.close()
        return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="10000,50000", help="job sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.tasks.split(","))
    print(
        f"Batch emulator in this process; list_tasks, $select id,state, 1,000 a page; median of {args.repeat}"
    )
    per_task = {}
    for n in sizes:
        seconds = listing_seconds(n, args.repeat)
        per_task[n] = seconds / n
        print(
            f"[{n:,} tasks] listing: {seconds:.2f} s, {per_task[n] * 1e6:.1f} us per task, {n // 1000} pages"
        )
    ratio = per_task[sizes[-1]] / per_task[sizes[0]]
    print(
        f"per-task cost at {sizes[-1]:,} / at {sizes[0]:,}: {ratio:.2f} "
        f"(1.0: linear; {sizes[-1] / sizes[0]:.1f}: a rescan per page)"
    )


if __name__ == "__main__":
    main()
