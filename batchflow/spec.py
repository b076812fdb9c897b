"""The workflow file: YAML -> schema validation with line:col -> a frozen `Workflow`.

`validate_document` is the pure part (text in, data + positions + problems out). `load_workflow`
adds what needs the outside world: the file itself, environment variables, `--set` overrides and
the upload folders, then builds the `Workflow`. Every problem is reported at once, never a traceback.
Templates are not rendered here (render.py does that).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchflow.backends import registry
from batchflow.credentials import (
    ADVICE,
    VAR_FROM_CREDENTIAL,
    is_credential_variable,
    looks_like_credential_name,
    secret_in_value,
)
from batchflow.durations import parse_duration
from batchflow.errors import InvalidWorkflow, Problem
from batchflow.model import DocPath, SourceMap, Workflow
from batchflow.schema_check import certainly_valid
from batchflow.spec_build import build_workflow
from batchflow.yamlsrc import MAX_BYTES, YamlDoc, dotted, read_yaml, too_big

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

# The core of the workflow schema; each backend adds its own block (`local:`, `azure:`) from the
# registry. schemas/workflow.schema.json is the whole, as `batchflow schema` prints it.
CORE_SCHEMA_FILE = Path(__file__).with_name("core.schema.json")

__all__ = [
    "CORE_SCHEMA_FILE",
    "load_workflow",
    "parse_duration",
    "schema",
    "schema_text",
    "validate_document",
]

# Free-form maps whose keys are names chosen by the user: no credential may hide in them.
_NAMED_MAPS: tuple[DocPath, ...] = (
    ("vars",),
    ("tasks", "environment"),
    ("pool", "start_task", "environment"),
)
# Every list of objects with a `container` reference, plus the single foreach one.
_CONTAINER_LISTS: tuple[DocPath, ...] = (
    ("storage", "uploads"),
    ("storage", "downloads"),
    ("tasks", "resource_files"),
    ("tasks", "outputs"),
    ("pool", "start_task", "resource_files"),
)


def schema() -> dict[str, Any]:
    """The workflow JSON Schema (2020-12): the core, plus each registered backend's block."""
    return _schema(registry.generation())


def schema_text() -> str:
    """The schema as schemas/workflow.schema.json holds it."""
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


@functools.cache
def _schema(generation: int) -> dict[str, Any]:
    composed: dict[str, Any] = json.loads(CORE_SCHEMA_FILE.read_text(encoding="utf-8"))
    for name, block in registry.settings_schemas().items():
        if name in composed["properties"]:
            raise ValueError(f"backend {name!r} would replace the workflow's own {name!r} key")
        composed["properties"][name] = dict(block)
    return composed


def _validator() -> Draft202012Validator:
    return _validator_for(registry.generation())


@functools.cache
def _validator_for(generation: int) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


def _schema_problems(data: Any, source: SourceMap, file: Path) -> list[Problem]:
    """Every way `data` breaks the schema, each explained at its position (schema_errors). A valid
    document is told by schema_check alone: jsonschema is imported only for one that may not be."""
    if certainly_valid(data, schema()):
        return []
    from batchflow.schema_errors import Explainer

    return Explainer(schema(), source, file).problems(_validator().iter_errors(data))


def _start_task_paths() -> list[DocPath]:
    """Where a backend's own start task may be (`local.start_task`), beside pool.start_task."""
    return [(b.name, b.start_task_key) for b in registry.all_backends() if b.start_task_key is not None]


def _named_maps() -> list[DocPath]:
    return [*_NAMED_MAPS, *((*p, "environment") for p in _start_task_paths())]


def _container_lists() -> list[DocPath]:
    return [*_CONTAINER_LISTS, *((*p, "resource_files") for p in _start_task_paths())]


def validate_document(text: str, file: Path) -> tuple[dict[str, Any] | None, SourceMap, list[Problem]]:
    """Check a workflow's text without touching the file system or the environment.

    Returns the data (None if the YAML itself could not be read; otherwise the data even when
    there are problems), the positions of its values, and every problem, in position order.
    """
    doc, source, problems = _check(text, file)
    return (doc.data if doc is not None else None), source, problems


def load_workflow(path: Path, overrides: Mapping[str, str] | None = None) -> Workflow:
    """Read, validate and build the workflow at `path`; `overrides` are `--set NAME=VALUE` pairs.

    Raises InvalidWorkflow listing every problem, each as `file:line:col: where: message`.
    """
    text = _read(path)
    doc, source, problems = _check(text, path)
    if doc is None:
        raise InvalidWorkflow(problems)
    base_dir = path.resolve().parent
    variables, var_problems = _resolve_vars(doc, source, dict(overrides or {}), os.environ)
    problems = _sorted([*problems, *var_problems, *_upload_problems(doc.data, source, base_dir)])
    if problems:
        raise InvalidWorkflow(problems)
    return build_workflow(doc.data, variables, path.resolve(), source)


def _read(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise InvalidWorkflow([Problem(path, None, None, "", too_big(size))])
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        msg = f"the file is not UTF-8 text (byte {e.start} cannot be decoded)"
        raise InvalidWorkflow([Problem(path, None, None, "", msg)]) from None
    except OSError as e:
        msg = f"cannot read the workflow file: {e.strerror or e}"
        raise InvalidWorkflow([Problem(path, None, None, "", msg)]) from None


def _check(text: str, file: Path) -> tuple[YamlDoc | None, SourceMap, list[Problem]]:
    doc, problems = read_yaml(text, file)
    if doc is None:
        return None, SourceMap(file=file), _sorted(problems)
    source = SourceMap(file=file, positions=doc.positions, key_positions=doc.key_positions)
    problems = _schema_problems(doc.data, source, file)
    problems += _credential_problems(doc, source, file)
    problems += _container_problems(doc.data, source, file)
    problems += _autoscale_problems(doc.data, source, file)
    return doc, source, _sorted(problems)


def _sorted(problems: list[Problem]) -> list[Problem]:
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.line or 0, p.column or 0))


def _get(data: Any, path: DocPath) -> Any:
    for part in path:
        if isinstance(part, str) and isinstance(data, dict):
            data = data.get(part)
        elif isinstance(part, int) and isinstance(data, list) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _problem(source: SourceMap, file: Path, path: DocPath, message: str, *, key: bool = False) -> Problem:
    pos = source.key_positions.get(path) if key else None
    line, column = pos if pos is not None else source.where(path)
    return Problem(file, line, column, dotted(path), message)


def _strings(data: Any, path: DocPath) -> Iterator[tuple[DocPath, str]]:
    if isinstance(data, str):
        yield path, data
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from _strings(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _strings(v, (*path, i))


def _credential_problems(doc: YamlDoc, source: SourceMap, file: Path) -> list[Problem]:
    problems = []
    for map_path in _named_maps():
        named = _get(doc.data, map_path)
        if isinstance(named, dict):
            problems += [
                _problem(source, file, (*map_path, name), ADVICE, key=True)
                for name in named
                if looks_like_credential_name(name)
            ]
    for path, value in _strings(doc.data, ()):
        why = secret_in_value(value)
        if why is not None:
            problems.append(_problem(source, file, path, f"{why}; {ADVICE}"))
    declared = _get(doc.data, ("vars",))
    for name, spec in declared.items() if isinstance(declared, dict) else ():
        env = spec.get("env") if isinstance(spec, dict) else None
        if isinstance(env, str) and is_credential_variable(env):
            problems.append(_problem(source, file, ("vars", name, "env"), f"{env} {VAR_FROM_CREDENTIAL}"))
    return problems


def _container_refs(data: Any) -> Iterator[tuple[DocPath, str]]:
    for single in (("tasks", "foreach", "container"), ("storage", "logs", "container")):
        if isinstance(_get(data, single), str):
            yield single, _get(data, single)
    for list_path in _container_lists():
        items = _get(data, list_path)
        for i, item in enumerate(items if isinstance(items, list) else []):
            if isinstance(item, dict) and isinstance(item.get("container"), str):
                yield (*list_path, i, "container"), item["container"]


def _container_problems(data: Any, source: SourceMap, file: Path) -> list[Problem]:
    declared_list = _get(data, ("storage", "containers"))
    declared = (
        list(dict.fromkeys(c for c in declared_list if isinstance(c, str)))
        if isinstance(declared_list, list)
        else []
    )
    problems = []
    for path, name in _container_refs(data):
        if name in declared:
            continue
        message = f"container '{name}' is not declared in storage.containers"
        import difflib  # (only for a problem: 1 ms of every start-up otherwise)

        match = difflib.get_close_matches(name, declared, n=1)
        if match:
            message += f"; did you mean '{match[0]}'?"
        elif declared:
            message += f" (declared: {', '.join(declared)})"
        else:
            message += "; list it there"
        problems.append(_problem(source, file, path, message))
    return problems


def _autoscale_problems(data: Any, source: SourceMap, file: Path) -> list[Problem]:
    pool = data.get("pool")
    if not isinstance(pool, dict) or not isinstance(pool.get("autoscale"), dict):
        return []
    fixed = [k for k in ("dedicated_nodes", "spot_nodes") if pool.get(k) not in (None, 0)]
    if not fixed:
        return []
    message = f"cannot be combined with {' and '.join(fixed)}: the autoscale formula sets the node counts"
    return [_problem(source, file, ("pool", "autoscale"), message)]


def _resolve_vars(
    doc: YamlDoc, source: SourceMap, overrides: dict[str, str], environ: Mapping[str, str]
) -> tuple[dict[str, str], list[Problem]]:
    """vars as strings: `--set` values first, then {env:} from the environment, else as written."""
    declared = doc.data.get("vars")
    declared = declared if isinstance(declared, dict) else {}
    file = source.file
    values: dict[str, str] = {}
    problems: list[Problem] = []
    for name, spec in declared.items():
        if name in overrides:
            values[name] = overrides[name]
        elif isinstance(spec, dict) and isinstance(spec.get("env"), str):
            env = spec["env"]
            if env in environ:
                values[name] = environ[env]
            elif ("vars", name, "default") in doc.raw:
                values[name] = doc.raw[("vars", name, "default")]
            else:
                problems.append(
                    _problem(source, file, ("vars", name), f"environment variable {env} is not set")
                )
        elif ("vars", name) in doc.raw and spec is not None:
            values[name] = doc.raw[("vars", name)]  # as written: `yes` stays "yes", 0.10 stays "0.10"
    for name in overrides:
        if name not in declared:
            import difflib

            match = difflib.get_close_matches(name, [str(k) for k in declared], n=1)
            hint = f"; did you mean '{match[0]}'?" if match else "; declare it in vars first"
            problems.append(Problem(file, None, None, "--set", f"'{name}' is not declared in vars{hint}"))
    return values, problems


def _upload_problems(data: Any, source: SourceMap, base_dir: Path) -> list[Problem]:
    uploads = _get(data, ("storage", "uploads"))
    problems = []
    for i, upload in enumerate(uploads if isinstance(uploads, list) else []):
        folder = upload.get("source") if isinstance(upload, dict) else None
        if not isinstance(folder, str) or not folder:
            continue
        resolved = (base_dir / Path(folder).expanduser()).resolve()
        if not resolved.exists():
            message = f"folder '{folder}' does not exist (looked for {resolved})"
        elif not resolved.is_dir():
            message = f"'{folder}' is not a folder ({resolved})"
        else:
            continue
        problems.append(_problem(source, source.file, ("storage", "uploads", i, "source"), message))
    return problems
