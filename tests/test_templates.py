"""The templates' fast path says exactly what Jinja says: every template it takes is rendered both
ways, for hostile file names, in each of the three ways a value is inserted. What it does not take
goes to Jinja (and its exact errors: tests/test_render.py)."""

from __future__ import annotations

import gc
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from test_render import make_workflow, tasks

from batchflow.errors import InvalidWorkflow
from batchflow.model import UploadItem
from batchflow.render import _input_row, build_plan
from batchflow.templates import (
    GLOB,
    INDEX,
    RAW,
    SHELL,
    TASK_ID,
    CompiledTemplate,
    InputContext,
    JobContext,
    PoolContext,
    TaskContext,
    VarsContext,
    fast_parts,
    jinja_environment,
    jinja_globals,
    render_jinja,
    stem_and_suffix,
)

SHARED: dict[str, Any] = {
    "vars": VarsContext({"bitrate": "128k", "flags": "-vn -b:a 1", "odd": "it's $HOME [*]", "items_": "x"}),
    "pool": PoolContext("pool-1", "Standard_A1_v2", 0, 2, 4),
    "job": JobContext("job-1"),
}
FAST = [
    "",
    "plain text, no substitution",
    "cat {{ input.path }}",
    "{{input.name}}|{{ input.stem }}|{{  input.suffix  }}|{{ input.relative_path }}|{{ input.blob }}",
    "{{ input.container }} {{ input.size }} {{ index }} {{ task.id }}",
    "{{ job.id }}/{{ pool.id }}/{{ pool.vm_size }}/{{ pool.dedicated_nodes }}/{{ pool.spot_nodes }}",
    "{{ pool.task_slots_per_node }}",
    "ffmpeg -i {{ input.path }} -b:a {{ vars.bitrate }} {{ input.stem ~ '.mp3' }}",
    '{{ input.stem ~ ".mp3" }}',
    "{{ input.stem~'.mp3' }} {{ input.stem ~ input.suffix ~ index }}",
    "{{ vars.flags }} {{ vars.flags | unquoted }} {{ vars.flags|unquoted }}",
    "{{ vars.odd }} {{ vars.items_ }}",
    "{{ input.stem | unquoted ~ '.x' }} {{ 'a b' ~ input.stem | unquoted }}",
    "{{ 'a b' }} {{ '*.txt' | unquoted }} {{ \"it's\" }} {{ 'é 日本' }} {{ '' }}",
    "a\r\nb\rc\n{{ input.stem }}\r\n",
    "}} {{ input.stem }} }}} {{ '}}' }} {{ '{{' }}",
    "frames/{{ input.stem }}/*.png",
    "{{ input.name }}\n",
    "trailing {{ index }}\n\n",
]
NOT_FAST = [
    "{{ input.stm }}",
    "{{ inptu.path }}",
    "{{- input.stem }}",
    "{{ input.stem -}}",
    "{{+ input.stem }}",
    "{% if true %}x{% endif %}",
    "{# note #}{{ input.stem }}",
    "{% raw %}{{ x }}{% endraw %}",
    "{{ input }}",
    "{{ vars }}",
    "{{ vars.items }}",
    "{{ vars.nope }}",
    "{{ vars.label }}",
    "{{ input.label }}",
    "{{ pool.label }}",
    "{{ input.stem | upper }}",
    "{{ input.stem | unquoted | unquoted }}",
    "{{ input.stem | unquotedx }}",
    "{{ input.stem + 'x' }}",
    "{{ 'a\\nb' }}",
    "{{ 'a' 'b' }}",
    "{{ input['stem'] }}",
    "{{ input.stem.upper() }}",
    "{{ index + 1 }}",
    "{{ range(3) | list }}",
    "{{ input.stem ~ }}",
    "{{ true }}",
    "{{ input.stem }",
    "{{ input.\u017ftem }}",  # (a name Jinja reads, with a long s)
]
NAMES = [
    "a.mp4",
    "a b.mp4",
    "it's.mp4",
    'say "hi".mp4',
    "$(touch pwned).mp4",
    "a;b && c | d.mp4",
    "star*.mp4",
    "q?.mp4",
    "br[ck].mp4",
    "a[1]].mp4",
    "é 日本.mp4",
    "-rf.mp4",
    "line\nbreak.mp4",
    "$HOME ~ %s \\n.mp4",
    ".hidden",
    "noext",
    "ends.",
    "x/clip.tar.gz",
    "deep/er/.dot.mp4",
    "{{ input.stem }}.mp4",
]


def row_and_context(name: str, index: int) -> tuple[list[Any], dict[str, Any]]:
    f = UploadItem(Path("/data") / name, "input", "pre/" + name, len(name))
    row = _input_row(f, name, index)
    row[TASK_ID] = f"task-{index}"
    context = {
        **jinja_globals(RAW),
        **SHARED,
        "input": InputContext(*row[:INDEX]),
        "index": index,
        "task": TaskContext(row[TASK_ID]),
    }
    return row, context


@pytest.mark.parametrize("kind", [SHELL, GLOB, RAW])
@pytest.mark.parametrize("source", FAST)
def test_the_fast_path_says_what_jinja_says(kind: str, source: str) -> None:
    parts = fast_parts(source, kind, SHARED, task_defined=True)
    assert parts is not None, "not taken by the fast path"
    fast = CompiledTemplate(parts, None)
    jinja = jinja_environment(kind).from_string(source)
    for index, name in enumerate(NAMES):
        row, context = row_and_context(name, index)
        assert fast.render_fast(row) == render_jinja(jinja, context) == jinja.render(context), name


@pytest.mark.parametrize("source", NOT_FAST)
def test_everything_else_is_jinjas(source: str) -> None:
    assert fast_parts(source, SHELL, SHARED, task_defined=True) is None


def test_task_is_undefined_in_the_id_template() -> None:
    assert fast_parts("{{ task.id }}", RAW, SHARED, task_defined=False) is None
    assert fast_parts("{{ input.stem }}", RAW, SHARED, task_defined=False) is not None


def test_stem_and_suffix_are_pathlibs() -> None:
    names = ["a.mp4", "a.tar.gz", ".hidden", ".hidden.txt", "noext", "ends.", "..", ".", "a..b", "..x", " . "]
    for name in names:
        p = PurePosixPath(name)
        assert stem_and_suffix(name) == (p.stem, p.suffix), name


@pytest.mark.parametrize(
    "command", ["{{ input.stm }}", "{{ input.stem + 1 }}", "{{ ''.__class__ }}", "x\n{{ nope }}"]
)
def test_a_template_failing_for_every_task_leaves_no_garbage(tmp_path: Path, command: str) -> None:
    """build_plan pauses the garbage collector (render.gc_paused): a failed render must leave no
    cycle (Jinja's rewritten tracebacks did, one per task), or 100,000 failing tasks would pile up."""
    wf = make_workflow(tmp_path, tasks(command=command), [f"f{i}.mp4" for i in range(200)])
    gc.collect()
    gc.disable()
    try:
        with pytest.raises(InvalidWorkflow) as info:
            build_plan(wf)
        assert len(info.value.problems) == 1
        del info
        assert gc.collect() < 50  # (a few, whatever the number of tasks)
    finally:
        gc.enable()
