"""Task templates: Jinja in a sandbox, with a fast path for plain substitutions.

Every template means what Jinja (ImmutableSandboxedEnvironment, StrictUndefined, keep_trailing_newline)
makes of it; render.py's docstring says what a `{{ ... }}` inserts where. Most templates are plain text
with substitutions (`ffmpeg -i {{ input.path }} {{ input.stem ~ '.mp3' }}`), and for 100,000 tasks
Jinja's machinery costs more than the rest of planning together (a context per render, the sandbox's
checks on every attribute). So a template is first read by a recognizer for a small subset of Jinja:

    text, and `{{ operand ( ~ operand )* }}` where an operand is `input.<field>`, `index`,
    `task.id` (where `task` is defined), `pool.<field>`, `job.id`, `vars.<declared name>`
    or a quoted string without backslashes, optionally followed by `| unquoted`

No `{%`, `{#`, whitespace control (`{{-`) or other filter, and every name resolves to a value known
to exist. Such a template is compiled into constant text and per-task slots, its `pool`, `job`,
`vars` and string parts rendered once; rendering it is a join. The result is the same text as
Jinja's, and nothing in it can fail, so error messages are untouched: any other template,
including one naming something undefined (`{{ input.stm }}`), is compiled and rendered by Jinja,
which reports exactly what it always did. Jinja itself is imported only when a template needs it.
tests/test_templates.py renders templates both ways and compares.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from batchflow.globs import glob_escape
from batchflow.records import record

if TYPE_CHECKING:
    from jinja2 import Template
    from jinja2.sandbox import ImmutableSandboxedEnvironment

SHELL, GLOB, RAW = "shell", "glob", "raw"  # what a `{{ ... }}` becomes: one word, a literal glob, as is


class Unquoted(str):
    """A value to insert into a command as is (the `unquoted` filter returns one)."""

    __slots__ = ()


def shell_quote(value: object) -> str:
    """`value` as one /bin/sh word (single-quoted when needed); an `Unquoted` value as is."""
    if isinstance(value, Unquoted):
        return str(value)
    return shlex.quote(str(value))


def _glob_finalize(value: object) -> str:
    return str(value) if isinstance(value, Unquoted) else glob_escape(str(value))


_FINALIZE: dict[str, Callable[[object], str] | None] = {SHELL: shell_quote, GLOB: _glob_finalize, RAW: None}


# ---- the template context -------------------------------------------------------------------


@dataclass(frozen=True)
class InputContext:
    """`input` in a task's templates: the foreach input it is rendered for."""

    label: ClassVar[str] = "input"
    name: str
    stem: str
    suffix: str
    relative_path: str
    blob: str
    container: str
    path: str
    size: int


@record
class PoolContext:
    """`pool` in a task's templates."""

    label: ClassVar[str] = "pool"
    id: str
    vm_size: str
    dedicated_nodes: int
    spot_nodes: int
    task_slots_per_node: int


@record
class _IdContext:
    """`job` or `task` in a task's templates (the subclass's label): its id."""

    label: ClassVar[str]
    id: str


class JobContext(_IdContext):
    label = "job"


class TaskContext(_IdContext):
    label = "task"


class VarsContext(dict[str, str]):
    label: ClassVar[str] = "vars"


# A task's own values, in a list ("row"): input's fields in InputContext's order, then these.
INPUT_FIELDS = tuple(f.name for f in fields(InputContext))
INDEX, TASK_ID = len(INPUT_FIELDS), len(INPUT_FIELDS) + 1
Row = list[Any]


def stem_and_suffix(name: str) -> tuple[str, str]:
    """PurePosixPath(name).stem and .suffix (as Python 3.10-3.13 define them) for a name without '/'."""
    i = name.rfind(".")
    if 0 < i < len(name) - 1:
        return name[:i], name[i:]
    return ("" if name == "." else name), ""


# ---- compiled templates ---------------------------------------------------------------------

_Slot = Callable[[Row], str]


class CompiledTemplate:
    """One template, compiled once: `parts` (constant text and per-task slots) on the fast path,
    else a Jinja template."""

    __slots__ = ("_format", "_slots", "jinja", "parts")

    def __init__(self, parts: tuple[str | _Slot, ...] | None, jinja: Template | None) -> None:
        self.parts = parts
        self.jinja = jinja
        # The parts as one str.format: the constant text (its braces doubled) around a {} per slot.
        pieces = parts or ()
        self._format = "".join(
            p.replace("{", "{{").replace("}", "}}") if isinstance(p, str) else "{}" for p in pieces
        )
        self._slots = tuple(p for p in pieces if not isinstance(p, str))

    def render_fast(self, row: Row) -> str:
        """The text, for a template on the fast path (`parts` is not None)."""
        return self._format.format(*[slot(row) for slot in self._slots])


# The recognizer. Jinja ends template text at the first `{{`, `{%` or `{#`, and skips whitespace
# between the tokens of an expression; strings here have no backslash (Jinja would unescape it)
# and no line break.
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_OPERAND = (
    rf"(?:(?P<name>{_NAME})(?:\.(?P<attr>{_NAME}))?|'(?P<sq>[^'\\\r\n]*)'|\"(?P<dq>[^\"\\\r\n]*)\")"
    r"(?P<unquoted>\s*\|\s*unquoted)?"
)
_OPERAND_RE = re.compile(_OPERAND)
_BARE_OPERAND = re.sub(r"\(\?P<\w+>", "(?:", _OPERAND)  # the same without its named groups
_OUTPUT_RE = re.compile(rf"\{{\{{(?![-+])\s*(?P<expr>{_BARE_OPERAND}(?:\s*~\s*{_BARE_OPERAND})*)\s*\}}\}}")
_TAG_RE = re.compile(r"\{[{%#]")
_NEWLINE_RE = re.compile(r"\r\n|\r|\n")


def _operand_value(m: re.Match[str], shared: Mapping[str, Any], task_defined: bool) -> str | int | None:
    """An operand's value: constant text (its str(), all that Jinja makes of it here), an int (a
    row index) for a value of the task's own, or None when the fast path cannot say (Jinja will)."""
    if m["sq"] is not None or m["dq"] is not None:
        return str(m["sq"] if m["sq"] is not None else m["dq"])
    name, attr = m["name"], m["attr"]
    if attr is None:
        return INDEX if name == "index" else None
    if name == "input":
        return INPUT_FIELDS.index(attr) if attr in INPUT_FIELDS else None
    if name == "task":
        return TASK_ID if task_defined and attr == "id" else None
    if name == "vars":
        variables = shared["vars"]
        # The sandbox looks an attribute up before an item: `vars.items` is the dict's method.
        return str(variables[attr]) if attr in variables and not hasattr(variables, attr) else None
    if name in ("pool", "job"):
        obj = shared[name]
        return str(getattr(obj, attr)) if attr in {f.name for f in fields(obj)} else None
    return None


def _slot(operands: Sequence[str | int], unquoted: bool, kind: str) -> str | _Slot:
    """Constant text, or a function of the row, for one `{{ ... }}`: what Jinja makes of it,
    str(finalize(value)), where a `~` chain's value is the join of its operands' str(), and
    `| unquoted` makes a value Unquoted (which every finalize inserts as is)."""
    quote = {SHELL: shlex.quote, GLOB: glob_escape, RAW: None}[kind]
    if unquoted:
        quote = None
    if all(isinstance(o, str) for o in operands):
        text = "".join(str(o) for o in operands)
        return text if quote is None else quote(text)
    if len(operands) == 1:
        i = int(operands[0])
        if quote is None:
            return lambda row: str(row[i])
        quoted = quote
        return lambda row: quoted(str(row[i]))
    pieces = tuple(operands)

    def joined(row: Row) -> str:
        return "".join([str(row[p]) if isinstance(p, int) else p for p in pieces])

    if quote is None:
        return joined
    quoted = quote
    return lambda row: quoted(joined(row))


def fast_parts(
    source: str, kind: str, shared: Mapping[str, Any], *, task_defined: bool
) -> tuple[str | _Slot, ...] | None:
    """The template as constant text and slots, or None if it is not in the fast path's subset.
    `shared`: the `vars`, `pool` and `job` of the context (templates.VarsContext, ...)."""
    source = _NEWLINE_RE.sub("\n", source)  # as Jinja's lexer does, in text and in strings
    parts: list[str | _Slot] = []
    pos = 0
    while True:
        tag = _TAG_RE.search(source, pos)
        text = source[pos : tag.start() if tag else len(source)]
        if text:
            parts.append(text)
        if tag is None:
            break
        m = _OUTPUT_RE.match(source, tag.start())
        if m is None:
            return None
        operands: list[str | int] = []
        unquoted = False
        for op in _OPERAND_RE.finditer(m["expr"]):
            value = _operand_value(op, shared, task_defined)
            if value is None:
                return None
            operands.append(value)
            unquoted = op["unquoted"] is not None
        # `a ~ b | unquoted` is `a ~ (b | unquoted)`: the join is plain text again.
        parts.append(_slot(operands, unquoted and len(operands) == 1, kind))
        pos = m.end()
    merged: list[str | _Slot] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return tuple(merged)


# ---- Jinja ----------------------------------------------------------------------------------


@functools.cache
def jinja_environment(kind: str) -> ImmutableSandboxedEnvironment:
    """The sandboxed environment for one kind of template (imports Jinja on first use)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        undefined=_undefined_class(), autoescape=False, keep_trailing_newline=True, finalize=_FINALIZE[kind]
    )
    env.filters["unquoted"] = lambda value: Unquoted(value)
    return env


@functools.cache
def _undefined_class() -> type:
    from jinja2 import StrictUndefined

    class _Undefined(StrictUndefined):
        """StrictUndefined that names the variable: `'input' has no attribute 'stm' (it has: ...)`."""

        __slots__ = ()

        @property
        def _undefined_message(self) -> str:
            obj, name = self._undefined_obj, self._undefined_name
            label = getattr(type(obj), "label", None)
            if self._undefined_hint or not isinstance(label, str) or not isinstance(name, str):
                return str(super()._undefined_message)
            names = sorted(obj) if isinstance(obj, dict) else [f.name for f in fields(obj)]
            return f"{label!r} has no attribute {name!r} (it has: {', '.join(names) or 'nothing'})"

    return _Undefined


def render_jinja(template: Template, context: Mapping[str, Any]) -> str:
    """template.render(context), with two of its costs left out: `context` (which holds Jinja's
    globals already, see jinja_globals) is copied once, not twice, and a failure is raised as it
    happened, without Jinja's rewriting of its traceback into template lines (fake frames that
    hold the exception: a cycle for each task that fails). template_line reads the line."""
    env = template.environment
    return env.concat(template.root_render_func(template.new_context(dict(context), shared=True)))


def template_line(tb: TracebackType | None) -> int:
    """The line of the template that the innermost of its frames in `tb` was at (the line Jinja's
    rewritten traceback would show), else 1."""
    line = 1
    while tb is not None:
        template = tb.tb_frame.f_globals.get("__jinja_template__")
        if template is not None:
            line = template.get_corresponding_lineno(tb.tb_lineno)
        tb = tb.tb_next
    return line


def jinja_globals(kind: str) -> dict[str, Any]:
    return dict(jinja_environment(kind).globals)
