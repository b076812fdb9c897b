"""ledger.StoredListing: the outputs of tasks whose compute names no blob (Azure Batch), from a listing."""

from __future__ import annotations

from batchflow.ledger import StoredListing, StoredOutput
from batchflow.model import BlobStat, OutputCondition, RenderedTask, TaskOutput

P = "runs/r1/"


def task(tid: str, *outputs: tuple[str, str], on_failure: str | None = None) -> RenderedTask:
    """A task whose outputs are (pattern, destination) in container "out", under the run's prefix."""
    specs = [TaskOutput(p, "out", P + d, OutputCondition.SUCCESS) for p, d in outputs]
    if on_failure is not None:
        specs.append(TaskOutput(on_failure, "out", P, OutputCondition.FAILURE))
    return RenderedTask(
        id=tid,
        index=0,
        command="true",
        inputs=(),
        outputs=tuple(specs),
        environment={},
        max_retries=0,
        max_wall_clock=None,
    )


def listing(*names: str) -> StoredListing:
    return StoredListing({"out": {P + n: BlobStat(len(n), f"md5-{n}") for n in names}})


def found(*names: str) -> tuple[StoredOutput, ...]:
    return tuple(StoredOutput("out", P + n, len(n), f"md5-{n}") for n in names)


def test_a_single_file_is_found_at_its_destination_or_under_its_destination_folder() -> None:
    stored = listing("a.mp3", "b/a.mp3", "c[1].txt")
    tasks = [task("t1", ("a.mp3", "")), task("t2", ("x/a.mp3", "b/")), task("t3", ("c[[]1].txt", "c[1].txt"))]
    assert stored.outputs_of(tasks) == {"t1": found("a.mp3"), "t2": found("b/a.mp3"), "t3": found("c[1].txt")}


def test_a_missing_single_file_has_no_size_and_a_failure_only_output_is_not_looked_for() -> None:
    stored = listing("a.mp3")
    got = stored.outputs_of([task("t1", ("a.mp3", ""), ("gone.txt", ""), on_failure="err.log")])
    assert got == {"t1": (*found("a.mp3"), StoredOutput("out", P + "gone.txt"))}


def test_a_glob_takes_what_it_matches_below_its_destination_as_batch_names_it() -> None:
    stored = listing("t1/x.png", "t1/sub/y.png", "t1/z.txt", "t10/w.png", "t2/v.png")
    got = stored.outputs_of([task("t1", ("frames/**/*.png", "t1/")), task("t2", ("*.png", "t2"))])
    assert got == {"t1": found("t1/sub/y.png", "t1/x.png"), "t2": found("t2/v.png")}


def test_a_blob_two_tasks_could_have_written_belongs_to_neither() -> None:
    stored = listing("a.mp3", "b.mp3", "c.mp3")
    got = stored.outputs_of(
        [task("t1", ("*.mp3", "")), task("t2", ("b.mp3", ""))], named=[("out", P + "c.mp3")]
    )
    assert got == {"t1": None, "t2": None}
    assert stored.outputs_of([task("t2", ("b.mp3", ""))], named=[("out", P + "c.mp3")]) == {
        "t2": found("b.mp3")
    }
