from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from batchflow.backends.local import LocalSettings
from batchflow.errors import InvalidWorkflow
from batchflow.globs import glob_match
from batchflow.model import (
    DocPath,
    ForeachSpec,
    ImageReference,
    JobSpec,
    OutputCondition,
    OutputSpec,
    PoolSpec,
    Position,
    ResourceFileSpec,
    SourceMap,
    StartTaskSpec,
    TaskInput,
    TaskOutput,
    TaskTemplate,
    UploadItem,
    UploadSpec,
    Workflow,
)
from batchflow.render import Unquoted, build_plan, derive_task_id, shell_quote

# ---- helpers ------------------------------------------------------------------------------


def tasks(command: str = "cat {{ input.path }}", pattern: str = "*.mp4", **kw: Any) -> TaskTemplate:
    return TaskTemplate(foreach=ForeachSpec("input", pattern), command=command, **kw)


def make_files(folder: Path, names: Sequence[str]) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {name}")


def make_workflow(
    tmp_path: Path,
    template: TaskTemplate,
    files: Sequence[str] = ("a.mp4",),
    *,
    uploads: tuple[UploadSpec, ...] | None = None,
    yaml_text: str = "",
    positions: Mapping[DocPath, Position] | None = None,
    vars: Mapping[str, str] | None = None,
    pool_start: StartTaskSpec | None = None,
    local: LocalSettings | None = None,
) -> Workflow:
    """A Workflow as spec.load_workflow would build it, with files under tmp_path/in."""
    make_files(tmp_path / "in", files)
    wf_file = tmp_path / "wf.yaml"
    wf_file.write_text(yaml_text)
    return Workflow(
        version=1,
        name="test",
        path=wf_file,
        base_dir=tmp_path,
        pool=PoolSpec(
            id="pool1",
            vm_size="Standard_A1_v2",
            image=ImageReference("canonical", "ubuntu-24_04-lts", "server"),
            node_agent_sku_id="batch.node.ubuntu 24.04",
            spot_nodes=2,
            start_task=pool_start,
        ),
        job=JobSpec(id="job1", max_task_retries=3),
        tasks=template,
        containers=("input", "output"),
        uploads=uploads if uploads is not None else (UploadSpec(tmp_path / "in", "input"),),
        vars=vars or {},
        settings={"local": local or LocalSettings()},
        source=SourceMap(wf_file, positions or {}),
    )


def problems(wf: Workflow, backend: str = "local") -> list[str]:
    with pytest.raises(InvalidWorkflow) as info:
        build_plan(wf, backend)
    return [str(p) for p in info.value.problems]


def run_sh(command: str, cwd: Path) -> None:
    """Run a rendered command as a backend does: /bin/sh -c in the working dir.

    HOME points into the test's own folder so a quoting bug in a hostile name like
    `$(rm -rf ~)` could only ever delete that.
    """
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd.parent / "home")}
    subprocess.run(["/bin/sh", "-c", command], cwd=cwd, env=env, check=True, timeout=30)


# A shell function that records how many arguments it got and the first one, exactly.
PROBE = "probe() { printf '%s' \"$#\" > count.txt; printf '%s' \"$1\" > out.txt; }; probe "


# ---- a whole plan -------------------------------------------------------------------------


def test_plan_tasks(tmp_path: Path) -> None:
    template = tasks(
        command='ffmpeg -i {{ input.path }} -b:a {{ vars.bitrate }} {{ input.stem ~ ".mp3" }}',
        pattern="videos/*.mp4",
        id="mp3-{{ input.stem | replace(' ', '_') }}",
        environment={"TASK": "{{ task.id }} #{{ index }} in {{ job.id }} on {{ pool.id }}"},
        outputs=(OutputSpec("{{ input.stem }}.mp3", "output"),),
        max_wall_clock=600.0,
    )
    wf = make_workflow(
        tmp_path,
        template,
        ["b c.mp4", "a.mp4", "notes.txt", "sub/d.mp4"],
        vars={"bitrate": "128k"},
        uploads=(UploadSpec(tmp_path / "in", "input", include=("**/*.mp4",), prefix="videos"),),
    )
    plan = build_plan(wf)
    root = tmp_path / "in"
    stats = {rel: (root / rel).stat() for rel in ["a.mp4", "b c.mp4", "sub/d.mp4"]}
    assert plan.uploads == tuple(
        UploadItem(root / rel, "input", f"videos/{rel}", st.st_size, st.st_mtime_ns, st.st_ino)
        for rel, st in stats.items()
    )
    assert [t.id for t in plan.tasks] == ["mp3-a", "mp3-b_c"]
    a, bc = plan.tasks
    assert bc.command == "ffmpeg -i './b c.mp4' -b:a 128k 'b c.mp3'"
    assert bc.index == 1
    assert bc.inputs == (TaskInput("input", "videos/b c.mp4", "b c.mp4"),)
    assert bc.outputs == (TaskOutput("b c.mp3", "output", "b c.mp3", OutputCondition.SUCCESS),)
    assert bc.environment == {"TASK": "mp3-b_c #1 in job1 on pool1"}
    assert (bc.max_retries, bc.max_wall_clock, bc.source_blob) == (3, 600.0, "videos/b c.mp4")
    assert a.command == "ffmpeg -i ./a.mp4 -b:a 128k a.mp3"


def test_input_context(tmp_path: Path) -> None:
    fields = "{{ input.name }}|{{ input.stem }}|{{ input.suffix }}|{{ input.relative_path }}|"
    fields += "{{ input.blob }}|{{ input.container }}|{{ input.path }}|{{ input.size }}|{{ pool.spot_nodes }}"
    template = tasks(pattern="**", environment={"ALL": fields}, max_retries=0)
    wf = make_workflow(tmp_path, template, ["x/clip.tar.gz"])
    (task,) = build_plan(wf).tasks
    assert (
        task.environment["ALL"]
        == "clip.tar.gz|clip.tar|.gz|x/clip.tar.gz|x/clip.tar.gz|input|./x/clip.tar.gz|24|2"
    )
    assert task.max_retries == 0


# ---- quoting ------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "a b.mp4",
    "it's.mp4",
    'say "hi".mp4',
    "$(touch pwned).mp4",
    "`touch pwned`.mp4",
    "a;touch pwned.mp4",
    "a && touch pwned.mp4",
    "a | tee pwned.mp4",
    "star*.mp4",
    "q?.mp4",
    "br[ck].mp4",
    "é 日本.mp4",
    "-rf.mp4",
    "line\nbreak.mp4",
    "$HOME ~ %s \\n.mp4",
    "it's $(rm -rf ~).mp4",
]
# Files an unquoted glob in a name would also match: `star*.mp4` -> starX.mp4 too.
DECOYS = ["starX.mp4", "qX.mp4", "brc.mp4"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_reach_the_command_as_one_argument(tmp_path: Path, name: str) -> None:
    wf = make_workflow(tmp_path, tasks(command=PROBE + "{{ input.path }}"), [name])
    (task,) = build_plan(wf).tasks
    wd = tmp_path / "wd"
    wd.mkdir()
    (tmp_path / "home").mkdir()
    shutil.copy(tmp_path / "in" / name, wd / name)  # the task contract: inputs are in the working dir
    make_files(wd, DECOYS)

    run_sh(task.command, wd)

    assert (wd / "count.txt").read_text() == "1"
    assert (wd / "out.txt").read_text() == "./" + name  # input.path always starts with ./
    assert sorted(p.name for p in wd.iterdir()) == sorted([name, "count.txt", "out.txt", *DECOYS])
    assert (tmp_path / "home").is_dir()


def test_quoting_text(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path, tasks(command="cat {{ input.path }}"), ["it's $(rm -rf ~).mp4"])
    assert build_plan(wf).tasks[0].command == "cat './it'\"'\"'s $(rm -rf ~).mp4'"


def test_leading_dash_path_is_not_an_option(tmp_path: Path) -> None:
    template = tasks(command="ls -l {{ input.path }} {{ input.name }}")
    wf = make_workflow(tmp_path, template, ["-la.mp4"])
    (task,) = build_plan(wf).tasks
    assert task.command == "ls -l ./-la.mp4 -la.mp4"
    assert task.inputs == (TaskInput("input", "-la.mp4", "-la.mp4"),)


def test_expression_result_is_one_argument(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path, tasks(command=PROBE + "{{ input.stem ~ ' copy.mp3' }}"), ["a b.mp4"])
    (task,) = build_plan(wf).tasks
    assert task.command.endswith("probe 'a b copy.mp3'")
    run_sh(task.command, tmp_path)
    assert (tmp_path / "count.txt").read_text() == "1"
    assert (tmp_path / "out.txt").read_text() == "a b copy.mp3"


def test_unquoted_opt_out_splits(tmp_path: Path) -> None:
    flags = {"flags": "-vn -b:a 128k"}
    quoted = make_workflow(tmp_path, tasks(command=PROBE + "{{ vars.flags }}"), vars=flags)
    raw = make_workflow(tmp_path, tasks(command=PROBE + "{{ vars.flags | unquoted }}"), vars=flags)
    assert build_plan(quoted).tasks[0].command.endswith("probe '-vn -b:a 128k'")
    command = build_plan(raw).tasks[0].command
    assert command.endswith("probe -vn -b:a 128k")
    run_sh(command, tmp_path)
    assert (tmp_path / "count.txt").read_text() == "3"
    assert (tmp_path / "out.txt").read_text() == "-vn"


def test_shell_quote() -> None:
    assert shell_quote("plain.mp4") == "plain.mp4"
    assert shell_quote("") == "''"
    assert shell_quote(42) == "42"
    assert shell_quote("a'b") == "'a'\"'\"'b'"
    assert shell_quote(Unquoted("a b")) == "a b"


# ---- outputs ------------------------------------------------------------------------------


def test_output_pattern_is_glob_escaped(tmp_path: Path) -> None:
    template = tasks(
        outputs=(
            OutputSpec("{{ input.stem }}.mp3", "output"),
            OutputSpec("{{ input.stem }}/*.png", "output", destination="frames/{{ input.stem }}"),
            OutputSpec(
                "{{ input.stem }}.log", "output", destination="logs/", condition=OutputCondition.FAILURE
            ),
            OutputSpec("{{ '*.txt' | unquoted }}", "output"),
        )
    )
    wf = make_workflow(tmp_path, template, ["a[1].mp4"])
    (task,) = build_plan(wf).tasks
    assert task.outputs == (
        TaskOutput("a[[]1].mp3", "output", "a[1].mp3", OutputCondition.SUCCESS),
        TaskOutput("a[[]1]/*.png", "output", "frames/a[1]/", OutputCondition.SUCCESS),
        TaskOutput("a[[]1].log", "output", "logs/a[1].log", OutputCondition.FAILURE),
        TaskOutput("*.txt", "output", "", OutputCondition.SUCCESS),
    )
    assert glob_match(task.outputs[0].pattern, "a[1].mp3")
    assert not glob_match(task.outputs[0].pattern, "a1.mp3")


def test_output_collision(tmp_path: Path) -> None:
    template = tasks(
        pattern="a.*",
        id="{{ input.stem }}-{{ index + 1 }}",
        outputs=(OutputSpec("{{ input.stem }}.mp3", "output"),),
    )
    wf = make_workflow(tmp_path, template, ["a.mp4", "a.mov"])
    assert problems(wf) == [
        f"{tmp_path / 'wf.yaml'}:1:1: tasks.outputs[0]: tasks 'a-1' (input a.mov) and 'a-2' (input a.mp4)"
        " both write output/a.mp3"
    ]


def test_output_outside_the_working_dir(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path, tasks(outputs=(OutputSpec("../{{ input.name }}", "output"),)))
    assert problems(wf) == [
        f"{tmp_path / 'wf.yaml'}:1:1: tasks.outputs[0].pattern: '../a.mp4' must be a relative path in the"
        " task working directory, without '..'"
    ]


# ---- task ids -----------------------------------------------------------------------------


def test_batchflow_sha256_gives_hashlibs_digests() -> None:
    """batchflow.sha is CPython's own SHA-256 module where there is one (hashlib's import loads
    OpenSSL), else hashlib's: the digests are the same."""
    import hashlib

    from batchflow.sha import sha256

    for data in [b"", b"videos/My clip (1).mp4", "日本.mp4".encode(), bytes(range(256)) * 40]:
        assert sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()


def test_derived_ids_are_deterministic(tmp_path: Path) -> None:
    assert derive_task_id("videos/My clip (1).mp4") == "videos-My-clip-1-ea799e85"
    assert derive_task_id("--a..b.tar.gz") == "a-b-tar-68982c1c"
    assert derive_task_id("日本.mp4") == "2741f8c6"
    long_id = derive_task_id("x" * 80 + ".mp4")
    assert long_id == "x" * 55 + "-dfeda442"
    assert len(long_id) == 64
    wf = make_workflow(tmp_path, tasks(), ["a.mp4", "日本.mp4"])
    assert [t.id for t in build_plan(wf).tasks] == ["a-e6d48eab", "2741f8c6"]


def test_invalid_task_id(tmp_path: Path) -> None:
    wf = make_workflow(
        tmp_path,
        tasks(id="mp3-{{ input.stem }}"),
        ["a b.mp4", "é.mp4", "ok.mp4"],
        positions={("tasks", "id"): (7, 7)},
    )
    assert problems(wf) == [
        f"{tmp_path / 'wf.yaml'}:7:7: tasks.id: 'mp3-a b' for input 'a b.mp4' is not a valid task id:"
        " it contains ' ' (a task id is 1-64 letters, digits, '-' or '_')",
        f"{tmp_path / 'wf.yaml'}:7:7: tasks.id: 'mp3-é' for input 'é.mp4' is not a valid task id:"
        " it contains 'é' (a task id is 1-64 letters, digits, '-' or '_')",
    ]


def test_task_id_too_long_or_empty(tmp_path: Path) -> None:
    wf = make_workflow(
        tmp_path, tasks(id="{{ input.stem * 13 }}{{ input.stem[5:] }}"), ["abcde.mp4", "b.mp4"]
    )
    assert [p.split(": ", 2)[2] for p in problems(wf)] == [
        f"{'abcde' * 13!r} for input 'abcde.mp4' is not a valid task id: it is 65 characters long"
        " (a task id is 1-64 letters, digits, '-' or '_')",
    ]
    wf = make_workflow(tmp_path, tasks(id="{{ input.stem[5:] }}", pattern="b.mp4"))
    assert [p.split(": ", 2)[2] for p in problems(wf)] == [
        "'' for input 'b.mp4' is not a valid task id: it is empty"
        " (a task id is 1-64 letters, digits, '-' or '_')",
    ]


def test_task_ids_unique_ignoring_case(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path, tasks(id="mp3-{{ input.stem }}"), ["A.mp4", "a.mp4"])
    assert problems(wf) == [
        f"{tmp_path / 'wf.yaml'}:1:1: tasks.id: task ids 'mp3-A' (input 'A.mp4') and 'mp3-a' (input 'a.mp4')"
        " differ only in case; task ids must be unique, ignoring case"
    ]
    wf = make_workflow(tmp_path, tasks(id="same", pattern="[ab].mp4"), ["a.mp4", "b.mp4"])
    assert [p.split(": ", 2)[2] for p in problems(wf)] == [
        "inputs 'a.mp4' and 'b.mp4' both get task id 'same'; task ids must be unique, ignoring case"
    ]


# ---- foreach and uploads ------------------------------------------------------------------


def test_foreach_matches_nothing(tmp_path: Path) -> None:
    wf = make_workflow(
        tmp_path,
        tasks(),
        ["x.mov", "y.mov", "sub/z.mp4"],
        positions={("tasks", "foreach", "pattern"): (9, 14)},
    )
    assert problems(wf) == [
        f"{tmp_path / 'wf.yaml'}:9:14: tasks.foreach.pattern: '*.mp4' matches none of the 3 files uploaded to"
        " container 'input'; patterns match the whole blob name: '**/*.mp4' matches at any depth"
    ]
    wf = make_workflow(tmp_path, tasks(pattern="*.mkv"))
    assert [p.split(": ", 2)[2] for p in problems(wf)] == [
        "'*.mkv' matches none of the 4 files uploaded to container 'input'"
    ]


def test_foreach_container_gets_no_uploads(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path, tasks(), uploads=(UploadSpec(tmp_path / "in", "other"),))
    assert [p.split(": ", 2)[2] for p in problems(wf)] == [
        "'*.mp4' matches nothing: storage.uploads uploads nothing to container 'input'"
    ]
    (tmp_path / "empty").mkdir()
    wf = make_workflow(tmp_path, tasks(), uploads=(UploadSpec(tmp_path / "empty", "input"),))
    assert [p.split(": ", 2)[2] for p in problems(wf)] == [
        "'*.mp4' matches nothing: the uploads to container 'input' found no files (check their source,"
        " include and exclude)"
    ]


def test_upload_conflicts(tmp_path: Path) -> None:
    make_files(tmp_path / "other", ["a.mp4"])
    uploads = (
        UploadSpec(tmp_path / "in", "input"),
        UploadSpec(tmp_path / "in", "input"),  # the same files again: harmless
        UploadSpec(tmp_path / "other", "input"),
        UploadSpec(tmp_path / "missing", "input"),
    )
    wf = make_workflow(tmp_path, tasks(), uploads=uploads)
    assert [p.split(": ", 1)[1] for p in problems(wf)] == [
        f"storage.uploads[2]: input/a.mp4 would be uploaded from both {tmp_path / 'in/a.mp4'}"
        f" (storage.uploads[0]) and {tmp_path / 'other/a.mp4'} (storage.uploads[2])",
        f"storage.uploads[3].source: {tmp_path / 'missing'} does not exist",
    ]


def test_upload_prefix_is_a_folder(tmp_path: Path) -> None:
    for prefix in ("clips", "clips/"):
        wf = make_workflow(
            tmp_path,
            tasks(pattern="clips/*.mp4"),
            uploads=(UploadSpec(tmp_path / "in", "input", prefix=prefix),),
        )
        assert [u.blob_name for u in build_plan(wf).uploads] == ["clips/a.mp4"]


# ---- resource files and start task --------------------------------------------------------


def test_resource_files(tmp_path: Path) -> None:
    make_files(tmp_path / "tools", ["bin/run.sh", "a.mp4"])
    uploads = (UploadSpec(tmp_path / "in", "input"), UploadSpec(tmp_path / "tools", "tools"))
    template = tasks(
        resource_files=(
            ResourceFileSpec("tools", "bin/{{ vars.script }}"),
            ResourceFileSpec("tools", "bin/run.sh", "lib/run.sh"),
        )
    )
    wf = make_workflow(tmp_path, template, uploads=uploads, vars={"script": "run.sh"})
    assert build_plan(wf).tasks[0].inputs == (
        TaskInput("input", "a.mp4", "a.mp4"),
        TaskInput("tools", "bin/run.sh", "run.sh"),
        TaskInput("tools", "bin/run.sh", "lib/run.sh"),
    )
    clash = tasks(resource_files=(ResourceFileSpec("tools", "a.mp4"), ResourceFileSpec("tools", "nope.sh")))
    wf = make_workflow(tmp_path, clash, uploads=uploads)
    assert [p.split(": ", 1)[1] for p in problems(wf)] == [
        "tasks.resource_files[1].blob: 'nope.sh' is not among the files storage.uploads uploads to container"
        " 'tools'",
        "tasks.resource_files: task 'a-e6d48eab' (input a.mp4) would get two files at 'a.mp4':"
        " input/a.mp4 and tools/a.mp4",
    ]


def test_start_task_per_backend(tmp_path: Path) -> None:
    make_files(tmp_path / "tools", ["setup.sh"])
    uploads = (UploadSpec(tmp_path / "in", "input"), UploadSpec(tmp_path / "tools", "tools"))
    pool_start = StartTaskSpec("apt-get install -y ffmpeg", elevated=True)
    local_start = StartTaskSpec("sh setup.sh", resource_files=(ResourceFileSpec("tools", "setup.sh"),))
    wf = make_workflow(
        tmp_path, tasks(), uploads=uploads, pool_start=pool_start, local=LocalSettings(start_task=local_start)
    )
    local = build_plan(wf, "local")
    assert local.start_task == local_start
    assert local.start_task_inputs == (TaskInput("tools", "setup.sh", "setup.sh"),)
    azure = build_plan(wf, "azure")
    assert (azure.start_task, azure.start_task_inputs) == (pool_start, ())
    only_pool = make_workflow(tmp_path, tasks(), uploads=uploads, pool_start=pool_start)
    assert build_plan(only_pool, "local").start_task == pool_start

    missing = StartTaskSpec("sh x.sh", resource_files=(ResourceFileSpec("tools", "x.sh"),))
    wf = make_workflow(tmp_path, tasks(), uploads=uploads, pool_start=missing)
    assert [p.split(": ", 1)[1] for p in problems(wf, "azure")] == [
        "pool.start_task.resource_files[0].blob: 'x.sh' is not among the files storage.uploads uploads to"
        " container 'tools'"
    ]


# ---- template errors, with positions ------------------------------------------------------

WORKFLOW_YAML = """\
version: 1
tasks:
  foreach:
    container: input
    pattern: "*.mp4"
  id: "mp3-{{ input.stm }}"
  command: |
    echo start
    echo {{ input.path }
  environment:
    WHO: >-
      {{ task.id }}
      {{ vars.nope }}
  outputs:
    - pattern: "{{ ''.__class__ }}"
      container: output
"""

POSITIONS: dict[DocPath, Position] = {
    (): (1, 1),
    ("tasks",): (3, 3),
    ("tasks", "id"): (6, 7),
    ("tasks", "command"): (7, 12),
    ("tasks", "environment", "WHO"): (11, 10),
    ("tasks", "outputs", 0, "pattern"): (15, 16),
}


def test_syntax_error_position_in_a_literal_block(tmp_path: Path) -> None:
    template = tasks(command="echo start\necho {{ input.path }\n")
    wf = make_workflow(tmp_path, template, yaml_text=WORKFLOW_YAML, positions=POSITIONS)
    assert problems(wf) == [
        f"{tmp_path / 'wf.yaml'}:9:5: tasks.command: template syntax error: unexpected '}}'"
    ]


def test_undefined_errors_with_positions_once_each(tmp_path: Path) -> None:
    template = tasks(
        id="mp3-{{ input.stm }}",
        command="echo start\necho {{ input.path }}\n",
        environment={"WHO": "{{ task.id }}\n{{ vars.nope }}"},  # as if `>-` kept the line break
    )
    wf = make_workflow(
        tmp_path, template, ["a.mp4", "b.mp4", "c.mp4"], yaml_text=WORKFLOW_YAML, positions=POSITIONS
    )
    assert problems(wf) == [
        f"{tmp_path / 'wf.yaml'}:6:7: tasks.id: 'input' has no attribute 'stm' (it has: name, stem, suffix,"
        " relative_path, blob, container, path, size)",
    ]
    fixed = tasks(id="mp3-{{ input.stem }}", environment=template.environment)
    wf = make_workflow(tmp_path, fixed, yaml_text=WORKFLOW_YAML, positions=POSITIONS, vars={"bitrate": "1"})
    assert problems(wf) == [
        f"{tmp_path / 'wf.yaml'}:13:7: tasks.environment.WHO: 'vars' has no attribute 'nope'"
        " (it has: bitrate)",
    ]


def test_undefined_name_lists_what_is_defined(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path, tasks(id="{{ task.id }}", command="{{ inptu.path }}"))
    assert [p.split(": ", 1)[1] for p in problems(wf)] == [
        "tasks.id: 'task' is undefined (defined here: input, index, vars, pool, job)",
    ]
    wf = make_workflow(
        tmp_path, tasks(command="x\n{{ inptu.path }}"), positions={("tasks", "command"): (4, 12)}
    )
    assert problems(wf) == [
        f"{tmp_path / 'wf.yaml'}:5: tasks.command: 'inptu' is undefined"
        " (defined here: input, index, vars, pool, job, task)",
    ]


def test_sandbox_escape_is_refused(tmp_path: Path) -> None:
    template = tasks(
        command="{{ ''.__class__.__mro__[1].__subclasses__() }}",
        outputs=(OutputSpec("{{ ''.__class__ }}", "output"),),
    )
    wf = make_workflow(tmp_path, template, yaml_text=WORKFLOW_YAML, positions=POSITIONS)
    assert problems(wf) == [
        f"{tmp_path / 'wf.yaml'}:8:5: tasks.command: refused by the template sandbox:"
        " access to attribute '__class__' of 'str' object is unsafe.",
        f"{tmp_path / 'wf.yaml'}:15:16: tasks.outputs[0].pattern: refused by the template sandbox:"
        " access to attribute '__class__' of 'str' object is unsafe.",
    ]


def test_runtime_error_in_an_expression(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path, tasks(command="{{ 1 / (index - index) }}"))
    assert [p.split(": ", 2)[2] for p in problems(wf)] == ["ZeroDivisionError: division by zero"]


def test_ten_thousand_tasks(tmp_path: Path) -> None:
    names = [f"clip {i:05d}.mp4" for i in range(10_000)]
    template = tasks(
        command="ffmpeg -i {{ input.path }} {{ input.stem ~ '.mp3' }}",
        outputs=(OutputSpec("{{ input.stem }}.mp3", "output"),),
    )
    plan = build_plan(make_workflow(tmp_path, template, names))
    assert len(plan.tasks) == 10_000
    assert plan.tasks[-1].command == "ffmpeg -i './clip 09999.mp4' 'clip 09999.mp3'"
    assert len({t.id for t in plan.tasks}) == 10_000
