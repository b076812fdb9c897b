"""jsonschema errors -> Problems a person can act on, each at the right line and column.

jsonschema's own messages are kept where they are already clear ("5 is not of type 'string'");
patterns, anyOf and unknown keys are said in words, and each problem points at the offending
value, at the offending key, or (for a missing key) at the mapping that lacks it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from jsonschema.exceptions import ValidationError, best_match

from batchflow.durations import DURATION_HELP
from batchflow.errors import Problem
from batchflow.model import DocPath, SourceMap
from batchflow.yamlsrc import dotted


def _if_str(template: str) -> Callable[[Any], str | None]:
    return lambda v: template.format(v=v) if isinstance(v, str) else None


# Messages for values that fail a $defs entry, by $defs name. None -> fall back to jsonschema's.
FRIENDLY: dict[str, Callable[[Any], str | None]] = {
    "containerName": _if_str(
        "'{v}' is not a valid container name: 3-63 lowercase letters, digits and hyphens, "
        "starting with a letter or digit, no '--', not ending in '-'"
    ),
    "batchId": _if_str("'{v}' is not a valid Batch id: 1-64 letters, digits, hyphens and underscores"),
    "workflowName": _if_str(
        "'{v}' is not a valid workflow name: 1-64 letters, digits, '_', '.' and '-', "
        "starting with a letter or digit"
    ),
    "envName": _if_str(
        "'{v}' is not a valid environment variable name: letters, digits and underscores, "
        "not starting with a digit"
    ),
    "varName": _if_str(
        "'{v}' is not a valid variable name: letters, digits and underscores, not starting with a digit"
    ),
    "duration": lambda v: f"{_kind(v)} is not a valid duration: {DURATION_HELP}",
    "varValue": lambda v: (
        None
        if isinstance(v, dict)
        else f"expected a string, number or boolean, or {{env: NAME, default: VALUE}}, found {_kind(v)}"
    ),
    "globs": lambda v: (
        None if isinstance(v, list) else f"expected a glob pattern or a list of them, found {_kind(v)}"
    ),
}

_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "nothing",
}


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class Explainer:
    """Turns the errors of one validation run into Problems."""

    def __init__(self, schema: dict[str, Any], source: SourceMap, file: Path | None) -> None:
        self.def_names = {id(sub): name for name, sub in schema.get("$defs", {}).items()}
        self.source = source
        self.file = file
        self._seen: set[tuple[str, DocPath]] = set()

    def problems(self, errors: Iterable[ValidationError]) -> list[Problem]:
        return [p for error in errors for p in self._explain(error)]

    def _at(self, path: DocPath, message: str, *, key: DocPath | None = None) -> Problem:
        """A problem about `path`, at the key `key` if given (else at the value of `path`)."""
        pos = self.source.key_positions.get(key) if key is not None else None
        line, column = pos if pos is not None else self.source.where(path)
        return Problem(self.file, line, column, dotted(path), message)

    def _explain(self, error: ValidationError) -> Iterator[Problem]:
        path: DocPath = tuple(error.absolute_path)
        instance: Any = error.instance
        name = self.def_names.get(id(error.schema))
        friendly = FRIENDLY.get(name) if name else None
        if "propertyNames" in error.absolute_schema_path:
            key = str(instance)
            said = friendly(key) if friendly else None
            yield self._at((*path, key), said or f"'{key}' is not an allowed name", key=(*path, key))
            return
        said = friendly(instance) if friendly else None
        if said is not None:
            yield self._at(path, said)
        elif error.validator in ("anyOf", "oneOf") and error.context:
            yield from self._explain(_best(error.context))
        elif error.validator == "additionalProperties":
            yield from self._unknown_keys(error, path)
        elif error.validator == "required":
            yield from self._missing(error, path)
        elif error.validator == "uniqueItems":
            yield from self._repeated(error, path)
        elif error.validator == "const" and path == ("version",):
            yield self._at(path, f"unsupported version {instance!r}; this batchflow reads version 1")
        elif error.validator == "type" and isinstance(instance, (dict, list, type(None))):
            expected: Any = error.validator_value
            types = expected if isinstance(expected, list) else [expected]
            words = " or ".join(_TYPE_WORDS.get(str(t), str(t)) for t in types)
            yield self._at(path, f"expected {words}, found {_kind(instance)}")
        else:
            yield self._at(path, error.message)

    def _unknown_keys(self, error: ValidationError, path: DocPath) -> Iterator[Problem]:
        schema: Any = error.schema
        instance: Any = error.instance
        allowed = list(schema.get("properties", {}))
        for key in instance:
            if key in allowed:
                continue
            match = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean '{match[0]}'?" if match else f"; expected one of: {', '.join(allowed)}"
            yield self._at(path, f"unknown key '{key}'{hint}", key=(*path, key))

    def _missing(self, error: ValidationError, path: DocPath) -> Iterator[Problem]:
        if ("required", path) in self._seen:  # jsonschema reports each missing key; we list them all once
            return
        self._seen.add(("required", path))
        required: Any = error.validator_value
        instance: Any = error.instance
        for key in required:
            if key not in instance:
                yield self._at(path, f"'{key}' is required")

    def _repeated(self, error: ValidationError, path: DocPath) -> Iterator[Problem]:
        seen: list[Any] = []
        items: Any = error.instance
        for i, item in enumerate(items):
            if item in seen:
                yield self._at((*path, i), f"{item!r} is listed more than once")
            seen.append(item)


def _best(errors: list[ValidationError]) -> ValidationError:
    """The most useful error among anyOf/oneOf alternatives: prefer the alternatives whose type
    matches the value (a list given to "string or list of strings" is wrong as a list)."""
    by_branch: dict[Any, list[ValidationError]] = {}
    for e in errors:
        by_branch.setdefault(e.relative_schema_path[0], []).append(e)
    fitting = [
        e
        for branch in by_branch.values()
        if not any(e.validator == "type" and not e.relative_path for e in branch)
        for e in branch
    ]
    best = best_match(fitting or errors)
    return best if best is not None else errors[0]
