"""Workflow -> Plan: find the input files, render every task's templates, check the result.

Pure: it lists and stats local files and reads the workflow file (for error positions),
but writes nothing and calls no backend. Any problem anywhere -> InvalidWorkflow listing
them all, so a workflow that cannot fully render never creates anything.

Templates are Jinja in a sandbox (ImmutableSandboxedEnvironment, StrictUndefined), each compiled
once; plain substitutions are rendered without Jinja's machinery, to the same text (templates.py).
Context:
`input` (name, stem, suffix, relative_path, blob, container, path, size), `index` (0-based),
`vars`, `pool` (id, vm_size, dedicated_nodes, spot_nodes, task_slots_per_node), `job` (id)
and, everywhere but in `tasks.id`, `task` (id).

What a `{{ ... }}` inserts depends on where it is:
- `tasks.command`: the value, shell-quoted as ONE argument (as GNU parallel does), so any file
  name is safe: `{{ input.stem ~ '.mp3' }}` is one argument. `{{ value | unquoted }}` inserts
  it raw, for values meant to be several words. `input.path` always starts with `./`
  (`./-name`, `./a:b.mp4`), so no program reads it as an option or as a URL (ffmpeg's
  `a:` protocol, scp's `host:`).
- `tasks.outputs[].pattern`: the value, glob-escaped (`a[1]` -> `a[[]1]`), so it matches only
  that name; `| unquoted` inserts a glob.
- `tasks.id`, `tasks.environment`, `tasks.outputs[].destination`, `tasks.resource_files[].blob`:
  the value as is.

Error positions: a template's line N is reported at the YAML value's line + N - 1. When the
value is a block scalar (the recorded position points at its `|` or `>` indicator, as PyYAML
marks record it), line N is the indicator's line + N. Exact for single-line values and `|`
blocks; for folded values (`>`, multi-line plain or quoted) a template line can span several
YAML lines and is reported at the first.
"""

from __future__ import annotations

import gc
import itertools
import re
from collections.abc import Container, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from batchflow.backends import registry
from batchflow.backends.base import Backend, start_task_of
from batchflow.errors import InvalidWorkflow, Problem
from batchflow.globs import compile_glob, glob_literal, glob_match
from batchflow.inputs import NeverInput, discover, inside_never_input
from batchflow.model import (
    DocPath,
    Plan,
    RenderedTask,
    ResourceFileSpec,
    TaskInput,
    TaskOutput,
    UploadItem,
    Workflow,
)
from batchflow.names import BATCH_ID, blob_name_problem, id_problem
from batchflow.records import record
from batchflow.sha import sha256
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
    Row,
    TaskContext,
    Unquoted,
    VarsContext,
    fast_parts,
    jinja_environment,
    jinja_globals,
    render_jinja,
    shell_quote,
    stem_and_suffix,
    template_line,
)

if TYPE_CHECKING:
    from jinja2 import Template

__all__ = ["Unquoted", "build_plan", "check_plan", "derive_task_id", "shell_quote"]

_TASK_ID_RULE = "a task id is 1-64 letters, digits, '-' or '_'"
_SLUG_JUNK = re.compile(r"[^A-Za-z0-9_-]+")
_DASHES = re.compile(r"-{2,}")


def derive_task_id(blob_name: str) -> str:
    """A stable task id for a blob: slug of the name without extension + '-' + 8 hex of sha256.

    `videos/My clip.mp4` -> `videos-My-clip-<hash>`; at most 64 characters.
    """
    digest = sha256(blob_name.encode("utf-8")).digest()[:4].hex()  # (8 hex digits)
    folder, _, base = blob_name.rpartition("/")
    stem = stem_and_suffix(base)[0] if base else base
    slug = _SLUG_JUNK.sub("-", f"{folder}/{stem}" if folder else stem)
    if "--" in slug:
        slug = _DASHES.sub("-", slug)
    slug = slug.strip("-")[: 64 - 9].rstrip("-")
    return f"{slug}-{digest}" if slug else digest


def build_plan(workflow: Workflow, backend: str | Backend = "local", *, exclude: Sequence[Path] = ()) -> Plan:
    """Everything a run will do. Raises InvalidWorkflow with every problem found.

    Files in the workspace (`local.workspace`, default `.batchflow/` beside the workflow), in every
    download destination and in each `exclude` folder (a workspace given on the command line) are
    never inputs. What discovery skipped for another reason (links, folders) is in `Plan.warnings`.
    """
    return _build(workflow, backend, exclude, [])[0]


def check_plan(workflow: Workflow, backend: str | Backend = "local") -> tuple[int, tuple[str, ...]]:
    """What build_plan checks, for `batchflow validate`: every task rendered and checked, but none
    kept (a third of the memory of 100,000 tasks). Returns the number of tasks and the warnings;
    raises InvalidWorkflow with every problem found, as build_plan does."""
    plan, count = _build(workflow, backend, (), None)
    return count, plan.warnings


def _build(
    workflow: Workflow, backend: str | Backend, exclude: Sequence[Path], tasks: list[RenderedTask] | None
) -> tuple[Plan, int]:
    """build_plan, and its number of tasks; with `tasks` None, they are only counted (the Plan has
    none)."""
    with gc_paused():
        r = _Renderer(workflow)
        files, uploaded = r.collect_uploads(_never_inputs(workflow, exclude))
        templates = r.compile_templates()
        inputs = r.foreach_inputs(files)
        count = r.render_tasks(inputs, uploaded, templates, tasks) if inputs and templates is not None else 0
        chosen = registry.get(backend) if isinstance(backend, str) else backend
        start_task, where = start_task_of(chosen, workflow)
        start_inputs = (
            r.resolve_resource_files(start_task.resource_files, where, uploaded) if start_task else []
        )
        r.check_log_prefix()
        for path, message in chosen.problems(workflow):
            r.problem(path, message)
        if r.problems:
            raise InvalidWorkflow(r.problems)
        items = tuple(f for f, _ in files)
        plan = Plan(workflow, items, tuple(tasks or ()), start_task, tuple(start_inputs), tuple(r.warnings))
        return plan, count


# The environment of every task of a workflow without tasks.environment: one empty dict, not one each
# (6 MB at 100,000 tasks). A task's environment is a read-only Mapping: nothing writes to it.
_NO_ENVIRONMENT: dict[str, str] = {}


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a plan is built: building one makes millions of objects
    that live on, and none of them in a cycle, so each collection (every 700 allocations, and full
    ones ever larger) only walks them again: 27% of the time at 100,000 inputs, and growth worse
    than linear. What fails to render leaves no cycle behind either (_forget_traceback)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_freeze_count() == 0:  # (nobody else's frozen objects to unfreeze)
                # What was made meanwhile goes straight to the oldest generation: re-enabled as it
                # is, the collector's next pass would walk all of it at once (0.4 s at 100,000).
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def _never_inputs(workflow: Workflow, exclude: Sequence[Path]) -> list[NeverInput]:
    workspace = workflow.workspace or workflow.base_dir / ".batchflow"
    return [
        NeverInput(workspace, "the workspace"),
        *(
            NeverInput(d.destination, f"the destination of storage.downloads[{i}]")
            for i, d in enumerate(workflow.downloads)
        ),
        *(NeverInput(Path(folder).absolute(), "a folder excluded from inputs") for folder in exclude),
    ]


def _input_row(f: UploadItem, rel: str, index: int) -> Row:
    """A task's own template values (templates.Row): `input`'s fields, `index`, then its task id.
    `rel`: the file's path relative to its upload folder."""
    name = rel.rpartition("/")[2]
    stem, suffix = stem_and_suffix(name)
    # path: never an option (-x), a URL or a protocol (a:b), a remote (host:x)
    return [name, stem, suffix, rel, f.blob_name, f.container, "./" + rel, f.size, index, None]


_File = tuple[UploadItem, str]  # a file an upload sends, and its path relative to the upload's folder


@record
class _Templates:
    """The compiled templates of a workflow's `tasks:` block, compiled once and used for every task."""

    id: CompiledTemplate | None
    command: CompiledTemplate
    environment: Mapping[str, CompiledTemplate]
    resource_blobs: tuple[CompiledTemplate, ...]
    output_patterns: tuple[CompiledTemplate, ...]
    output_destinations: tuple[CompiledTemplate | None, ...]


# ---- the renderer ------------------------------------------------------------------------


class _Renderer:
    def __init__(self, workflow: Workflow) -> None:
        self.wf = workflow
        self.problems: list[Problem] = []
        self.warnings: list[str] = []  # `file:line:col: field: message`, as problems are printed
        self._seen: set[tuple[str, int | None, str]] = set()
        self._lines: list[str] | None = None
        p = workflow.pool
        self._shared: dict[str, Any] = {
            "vars": VarsContext(workflow.vars),
            "pool": PoolContext(p.id, p.vm_size, p.dedicated_nodes, p.spot_nodes, p.task_slots_per_node),
            "job": JobContext(workflow.job.id),
        }
        self._jinja_base: dict[str, Any] | None = None  # Jinja's globals + _shared, made on first use
        self._context_of: tuple[Row, bool] | None = None  # whose _context it is: (row, with task?)
        self._context: dict[str, Any] = {}
        self._output_paths: list[tuple[DocPath, DocPath]] = [  # (pattern, destination) of each
            (("tasks", "outputs", i, "pattern"), ("tasks", "outputs", i, "destination"))
            for i in range(len(workflow.tasks.outputs))
        ]

    # -- problems and positions

    def problem(self, path: DocPath, message: str, template_line: int | None = None) -> None:
        """Record a problem once (the same template error for 10,000 tasks is one problem)."""
        where = _dotted(path)
        line, column = self._position(path, template_line)
        if (where, line, message) in self._seen:
            return
        self._seen.add((where, line, message))
        source = self.wf.source
        self.problems.append(Problem(source.file if source else self.wf.path, line, column, where, message))

    def warn(self, path: DocPath, message: str) -> None:
        """Record a warning: something skipped that the run can do without, said at its position."""
        line, column = self._position(path, None)
        source = self.wf.source
        file = source.file if source else self.wf.path
        self.warnings.append(str(Problem(file, line, column, _dotted(path), message)))

    def _position(self, path: DocPath, template_line: int | None) -> tuple[int | None, int | None]:
        source = self.wf.source
        if source is None:
            return None, None
        line, column = source.where(path)
        if template_line is None or tuple(path) not in source.positions:
            return line, column
        text = self._file_lines(source.file)
        header = text[line - 1] if 0 < line <= len(text) else ""
        if header[column - 1 : column] in ("|", ">"):
            line += template_line
            content = text[line - 1] if line <= len(text) else ""
            return line, len(content) - len(content.lstrip()) + 1
        return line + template_line - 1, column if template_line == 1 else None

    def _file_lines(self, file: Path) -> list[str]:
        if self._lines is None:
            try:
                self._lines = file.read_text(encoding="utf-8").splitlines()
            except OSError:  # positions then assume inline values
                self._lines = []
        return self._lines

    def _has(self, path: DocPath) -> bool:
        return self.wf.source is not None and tuple(path) in self.wf.source.positions

    # -- templates

    def _compile(
        self, kind: str, path: DocPath, source: str, *, task: bool = True
    ) -> CompiledTemplate | None:
        """The template compiled once: by the fast path if it can (templates.py), else by Jinja;
        None (the problem recorded) for a syntax error. `task`: whether `task` is defined in it."""
        parts = fast_parts(source, kind, self._shared, task_defined=task)
        if parts is not None:
            return CompiledTemplate(parts, None)
        from jinja2.exceptions import TemplateSyntaxError

        try:
            return CompiledTemplate(None, jinja_environment(kind).from_string(source))
        except TemplateSyntaxError as exc:
            self.problem(path, f"template syntax error: {exc.message or exc}", exc.lineno)
            return None

    def compile_templates(self) -> _Templates | None:
        """Every task template compiled once; None (problems recorded) if any has a syntax error."""
        t = self.wf.tasks
        ok = True
        empty = CompiledTemplate(("",), None)

        def compiled(kind: str, path: DocPath, source: str, *, task: bool = True) -> CompiledTemplate:
            nonlocal ok
            template = self._compile(kind, path, source, task=task)
            if template is None:
                ok = False
                return empty
            return template

        result = _Templates(
            id=None if t.id is None else compiled(RAW, ("tasks", "id"), t.id, task=False),
            command=compiled(SHELL, ("tasks", "command"), t.command),
            environment={k: compiled(RAW, ("tasks", "environment", k), v) for k, v in t.environment.items()},
            resource_blobs=tuple(
                compiled(RAW, ("tasks", "resource_files", i, "blob"), rf.blob)
                for i, rf in enumerate(t.resource_files)
            ),
            output_patterns=tuple(
                compiled(GLOB, ("tasks", "outputs", i, "pattern"), o.pattern) for i, o in enumerate(t.outputs)
            ),
            output_destinations=tuple(
                None
                if o.destination is None
                else compiled(RAW, ("tasks", "outputs", i, "destination"), o.destination)
                for i, o in enumerate(t.outputs)
            ),
        )
        return result if ok else None

    def render(self, template: CompiledTemplate, path: DocPath, row: Row) -> str | None:
        """The rendered text, or None with the problem recorded at the template's line."""
        if template.jinja is None:
            return template.render_fast(row)
        return self._render_jinja(template.jinja, path, row)

    def _jinja_context(self, row: Row) -> dict[str, Any]:
        """The task's context for Jinja: Jinja's globals, vars, pool, job, then input, index and (once
        known) task; made once per task, whichever of its templates need it."""
        with_task = row[TASK_ID] is not None
        if self._context_of is None or self._context_of[0] is not row or self._context_of[1] != with_task:
            if self._jinja_base is None:
                self._jinja_base = {**jinja_globals(RAW), **self._shared}
            context = dict(self._jinja_base)
            context["input"] = InputContext(*row[:INDEX])
            context["index"] = row[INDEX]
            if row[TASK_ID] is not None:
                context["task"] = TaskContext(row[TASK_ID])
            self._context, self._context_of = context, (row, with_task)  # (the row kept: an id can be reused)
        return self._context

    def _render_jinja(self, template: Template, path: DocPath, row: Row) -> str | None:
        from jinja2.exceptions import SecurityError, TemplateError, UndefinedError

        try:
            return render_jinja(template, self._jinja_context(row))
        except UndefinedError as exc:
            message = str(exc.message)
            if re.fullmatch(r"'\w+' is undefined", message):
                defined = ["input", "index", *self._shared, *(["task"] if row[TASK_ID] is not None else [])]
                message += f" (defined here: {', '.join(defined)})"
            line = _forget_traceback(exc)
        except SecurityError as exc:
            message, line = f"refused by the template sandbox: {exc}", _forget_traceback(exc)
        except TemplateError as exc:
            message, line = str(exc), _forget_traceback(exc)
        # What an expression in a user's template may raise: '1' + 1, 1 / 0, [][0], deep recursion.
        except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
            message, line = f"{type(exc).__name__}: {exc}", _forget_traceback(exc)
        self.problem(path, message, line)
        return None

    # -- uploads and inputs

    def check_log_prefix(self) -> None:
        logs = self.wf.logs
        if logs is not None and logs.prefix:
            problem = blob_name_problem(logs.prefix + "x")
            if problem is not None:
                self.problem(("storage", "logs", "prefix"), f"not a safe blob name prefix: {problem}")

    def collect_uploads(
        self, never: Sequence[NeverInput]
    ) -> tuple[list[_File], dict[tuple[str, str], tuple[UploadItem, int]]]:
        """Every file the uploads send, with its path relative to its upload folder, and each by
        (container, blob name) with its upload's index."""
        files: list[_File] = []
        origin: dict[tuple[str, str], tuple[UploadItem, int]] = {}
        for i, up in enumerate(self.wf.uploads):
            where: DocPath = ("storage", "uploads", i, "source")
            if not up.source.is_dir():
                state = "is not a folder" if up.source.exists() else "does not exist"
                self.problem(where, f"{up.source} {state}")
                continue
            holder = inside_never_input(up.source, never)
            if holder is not None:
                self.problem(
                    where,
                    f"{up.source} is inside {holder.what} ({holder.path}), whose files are never inputs:"
                    " upload from a folder of its own",
                )
                continue
            prefix = up.prefix if not up.prefix or up.prefix.endswith("/") else up.prefix + "/"
            unsafe = blob_name_problem(prefix + "x") if prefix else None
            if unsafe is not None:  # its files are still found, so foreach says nothing misleading
                self.problem(("storage", "uploads", i, "prefix"), f"not a safe blob name prefix: {unsafe}")
            found = discover(up.source, up.include, up.exclude, never)
            for message in found.warnings:
                self.warn(where, message)
            container = up.container
            for (rel, path), size, mtime_ns, inode in zip(
                found.files, found.sizes, found.mtimes_ns, found.inodes, strict=True
            ):
                if not rel.isascii() and not _is_utf8(rel):
                    self.problem(
                        ("storage", "uploads", i, "source"), f"file name is not valid UTF-8: {rel!r}"
                    )
                    continue
                f = UploadItem(path, container, prefix + rel, size, mtime_ns, inode)
                key = (container, f.blob_name)
                if key in origin:
                    first, j = origin[key]
                    if first.local_path != f.local_path:
                        self.problem(
                            ("storage", "uploads", i),
                            f"{f.container}/{f.blob_name} would be uploaded from both {first.local_path}"
                            f" (storage.uploads[{j}]) and {f.local_path} (storage.uploads[{i}])",
                        )
                    continue
                origin[key] = (f, i)
                files.append((f, rel))
        return files, origin

    def foreach_inputs(self, files: list[_File]) -> list[_File]:
        spec = self.wf.tasks.foreach
        in_container = [f for f in files if f[0].container == spec.container]
        regex = compile_glob(spec.pattern)
        matched = sorted(
            (f for f in in_container if regex.fullmatch(f[0].blob_name)), key=lambda f: f[0].blob_name
        )
        if matched:
            return matched
        path = ("tasks", "foreach", "pattern")
        if in_container:
            n = len(in_container)
            hint = ""
            if any(glob_match("**/" + spec.pattern, f.blob_name) for f, _ in in_container):
                hint = f"; patterns match the whole blob name: '**/{spec.pattern}' matches at any depth"
            message = f"{spec.pattern!r} matches none of the {n} file{'s' if n != 1 else ''} uploaded"
            self.problem(path, f"{message} to container {spec.container!r}{hint}")
        elif any(up.container == spec.container for up in self.wf.uploads):
            self.problem(
                path,
                f"{spec.pattern!r} matches nothing: the uploads to container {spec.container!r} found no"
                " files (check their source, include and exclude)",
            )
        else:
            self.problem(
                path,
                f"{spec.pattern!r} matches nothing: storage.uploads uploads nothing to container"
                f" {spec.container!r}",
            )
        return []

    def resolve_resource_files(
        self,
        specs: tuple[ResourceFileSpec, ...],
        where: DocPath,
        uploaded: Container[tuple[str, str]],
        blobs: list[str] | None = None,
    ) -> list[TaskInput]:
        """TaskInputs for resource files whose (rendered) blobs are uploaded; problems for the rest."""
        resolved: list[TaskInput] = []
        for i, rf in enumerate(specs):
            blob = rf.blob if blobs is None else blobs[i]
            if (rf.container, blob) not in uploaded:
                self.problem(
                    (*where, i, "blob"),
                    f"{blob!r} is not among the files storage.uploads uploads to container {rf.container!r}",
                )
                continue
            file_path = rf.file_path if rf.file_path is not None else blob.rsplit("/", 1)[-1]
            if not _is_relative(file_path):
                self.problem((*where, i, "file_path"), f"{file_path!r} must be a relative path without '..'")
                continue
            resolved.append(TaskInput(rf.container, blob, file_path))
        return resolved

    # -- tasks

    def render_tasks(
        self,
        inputs: list[_File],
        uploaded: Container[tuple[str, str]],
        templates: _Templates,
        tasks: list[RenderedTask] | None,
    ) -> int:
        """Render and check every task; those that pass go into `tasks` (unless it is None: then
        they are only counted). Returns how many passed."""
        wf, t = self.wf, self.wf.tasks
        max_retries = t.max_retries if t.max_retries is not None else wf.job.max_task_retries
        ids: dict[str, tuple[str, str]] = {}  # id.lower() -> (id, input blob)
        writers: dict[tuple[str, str], tuple[str, str, int]] = {}  # (container, blob) -> (id, input, output)
        spread: dict[
            tuple[str, str], list[tuple[str, str, int, str]]
        ] = {}  # glob outputs by (container, prefix)
        command_path: DocPath = ("tasks", "command")
        environment_templates = [
            (key, template, ("tasks", "environment", key)) for key, template in templates.environment.items()
        ]
        blob_templates = [
            (template, ("tasks", "resource_files", i, "blob"))
            for i, template in enumerate(templates.resource_blobs)
        ]
        output_range = range(len(t.outputs))
        count = 0
        for index, (f, rel) in enumerate(inputs):
            row = _input_row(f, rel, index)
            task_id = self._task_id(templates.id, row, f, ids)
            if task_id is None:
                continue
            row[TASK_ID] = task_id
            command = self.render(templates.command, command_path, row)
            environment: dict[str, str] = {} if environment_templates else _NO_ENVIRONMENT
            for key, template, path in environment_templates:
                value = self.render(template, path, row)
                if value is not None:
                    environment[key] = value
            blobs = [self.render(template, path, row) for template, path in blob_templates]
            outputs = [self._output(i, templates, row) for i in output_range]
            if (
                command is None
                or len(environment) != len(environment_templates)
                or None in blobs
                or None in outputs
            ):
                continue
            rendered_outputs = [o for o in outputs if o is not None]
            task_inputs = [TaskInput(f.container, f.blob_name, rel)]
            if t.resource_files:  # (the input alone cannot collide with anything)
                task_inputs += self.resolve_resource_files(
                    t.resource_files,
                    ("tasks", "resource_files"),
                    uploaded,
                    [b for b in blobs if b is not None],
                )
                self._check_input_paths(task_id, f, task_inputs)
            self._check_output_collisions(task_id, f, rendered_outputs, writers)
            for i, (out, literal) in enumerate(rendered_outputs):
                if literal is None:
                    spread.setdefault((out.container, out.destination), []).append(
                        (task_id, f.blob_name, i, out.pattern)
                    )
            count += 1
            if tasks is None:
                continue
            tasks.append(
                RenderedTask(
                    id=task_id,
                    index=index,
                    command=command,
                    inputs=tuple(task_inputs),
                    outputs=tuple(out for out, _ in rendered_outputs),
                    environment=environment,
                    max_retries=max_retries,
                    max_wall_clock=t.max_wall_clock,
                    source_blob=f.blob_name,
                )
            )
        self._check_glob_collisions(spread)
        return count

    def _task_id(
        self,
        template: CompiledTemplate | None,
        row: Row,
        f: UploadItem,
        ids: dict[str, tuple[str, str]],
    ) -> str | None:
        if template is None:
            task_id = derive_task_id(f.blob_name)
        else:
            rendered = self.render(template, ("tasks", "id"), row)
            if rendered is None:
                return None
            task_id = rendered
        if not BATCH_ID.fullmatch(task_id):
            self.problem(
                ("tasks", "id"),
                f"{task_id!r} for input {f.blob_name!r} is not a valid task id: {id_problem(task_id)}"
                f" ({_TASK_ID_RULE})",
            )
            return None
        key = task_id.lower()
        if key in ids:
            other, other_blob = ids[key]
            if other == task_id:
                message = f"inputs {other_blob!r} and {f.blob_name!r} both get task id {task_id!r}"
            else:
                message = (
                    f"task ids {other!r} (input {other_blob!r}) and {task_id!r} (input {f.blob_name!r})"
                    " differ only in case"
                )
            self.problem(("tasks", "id"), f"{message}; task ids must be unique, ignoring case")
            return None
        ids[key] = (task_id, f.blob_name)
        return task_id

    def _output(self, i: int, templates: _Templates, row: Row) -> tuple[TaskOutput, str | None] | None:
        """The rendered output and, if its pattern names one file, that file's name."""
        spec = self.wf.tasks.outputs[i]
        pattern_path, destination_path = self._output_paths[i]
        pattern = self.render(templates.output_patterns[i], pattern_path, row)
        destination_template = templates.output_destinations[i]
        destination = ""
        if destination_template is not None:
            rendered = self.render(destination_template, destination_path, row)
            if rendered is None:
                return None
            destination = rendered
        if pattern is None:
            return None
        if not _is_relative(pattern):
            self.problem(
                pattern_path,
                f"{pattern!r} must be a relative path in the task working directory, without '..'",
            )
            return None
        literal = glob_literal(pattern)
        if literal is not None:  # one file: destination is its blob name, or a folder for it
            name = literal.rsplit("/", 1)[-1]
            destination = destination + name if destination.endswith("/") or not destination else destination
        elif destination and not destination.endswith("/"):
            destination += "/"
        unsafe = blob_name_problem(destination if literal is not None else destination + "x")
        if unsafe is not None:
            kind = "blob name" if literal is not None else "blob name prefix"
            self.problem(destination_path, f"{destination!r} is not a safe {kind}: {unsafe}")
            return None
        return TaskOutput(pattern, spec.container, destination, spec.condition), literal

    def _check_input_paths(self, task_id: str, f: UploadItem, inputs: list[TaskInput]) -> None:
        seen: dict[str, TaskInput] = {}
        for item in inputs:
            first = seen.setdefault(item.file_path, item)
            if first is not item:
                self.problem(
                    ("tasks", "resource_files"),
                    f"task {task_id!r} (input {f.blob_name}) would get two files at {item.file_path!r}:"
                    f" {first.container}/{first.blob_name} and {item.container}/{item.blob_name}",
                )

    def _check_output_collisions(
        self,
        task_id: str,
        f: UploadItem,
        outputs: list[tuple[TaskOutput, str | None]],
        writers: dict[tuple[str, str], tuple[str, str, int]],
    ) -> None:
        for i, (out, literal) in enumerate(outputs):
            if literal is None:
                continue
            key = (out.container, out.destination)
            if key not in writers:
                writers[key] = (task_id, f.blob_name, i)
                continue
            other_id, other_blob, j = writers[key]
            if other_id == task_id:
                message = f"task {task_id!r} (input {f.blob_name}) writes {out.container}/{out.destination}"
                message += f" from both outputs[{j}] and outputs[{i}]"
            else:
                message = f"tasks {other_id!r} (input {other_blob}) and {task_id!r} (input {f.blob_name})"
                message += f" both write {out.container}/{out.destination}"
            self.problem(("tasks", "outputs", i), message)

    def _check_glob_collisions(
        self, spread: Mapping[tuple[str, str], list[tuple[str, str, int, str]]]
    ) -> None:
        """A glob output puts each match at destination + its path below the pattern's folders, so
        when two tasks share the destination, two files of the same name overwrite each other in
        silence (three tasks writing `*.mp3` under one prefix lost one output): refused, unless the
        fixed parts of the tasks' patterns keep their files apart (`{{ input.stem }}_*.mp3`)."""
        for (container, destination), writers in spread.items():
            pair = _colliding_pair(writers)
            if pair is None:
                continue
            (first_id, first_blob, i, _), (second_id, second_blob, _, _) = pair
            tasks = {task_id for task_id, _, _, _ in writers}
            pattern = self.wf.tasks.outputs[i].pattern
            place = f"under {destination!r}" if destination else "at the top"
            suffix = PurePosixPath(pattern).suffix
            own = "{{ input.stem }}" + (
                suffix if suffix and "{" not in suffix and glob_literal(suffix) else ""
            )
            self.problem(
                (
                    "tasks",
                    "outputs",
                    i,
                    "destination" if self._has(("tasks", "outputs", i, "destination")) else "pattern",
                ),
                f"the files {pattern!r} matches land {place} in container {container!r} for {len(tasks)}"
                f" tasks (e.g. {first_id!r}, input {first_blob}, and {second_id!r}, input {second_blob}), so"
                " two tasks' files of the same name would overwrite each other; make the destination"
                " depend on the task (destination: '{{ input.stem }}/') or name the task's own file in"
                f" the pattern ({own!r})",
            )


def _colliding_pair(
    writers: Sequence[tuple[str, str, int, str]],
) -> tuple[tuple[str, str, int, str], tuple[str, str, int, str]] | None:
    """Two writers of different tasks whose rendered glob patterns can match the same file name:
    the same text after the last wildcard of the name, and text before the first wildcard of which
    one starts with the other. Sorted by that prefix, such a pair is adjacent."""
    by_suffix: dict[str, list[tuple[str, tuple[str, str, int, str]]]] = {}
    for writer in writers:
        name = writer[3].rsplit("/", 1)[-1]
        magic = [k for k, c in enumerate(name) if c in "*?["]
        prefix, suffix = (name[: magic[0]], name[magic[-1] + 1 :]) if magic else (name, "")
        by_suffix.setdefault(suffix, []).append((prefix, writer))
    for group in by_suffix.values():
        group.sort(key=lambda item: item[0])
        for (p1, w1), (p2, w2) in itertools.pairwise(group):
            if w1[0] != w2[0] and p2.startswith(p1):
                return w1, w2
    return None


def _forget_traceback(exc: BaseException) -> int:
    """The template line the error happened at; then the traceback is dropped, with those of the
    exceptions it chains, so that nothing of a failed render outlives it (gc_paused)."""
    line = template_line(exc.__traceback__)
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__
    return line


def _dotted(path: DocPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_relative(path: str) -> bool:
    return bool(path) and not path.startswith("/") and ".." not in path.split("/")
