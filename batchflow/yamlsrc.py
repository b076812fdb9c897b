"""YAML text -> plain data plus the position of every value, read safely.

Only plain data comes out: strings, numbers, booleans, None, lists and dicts. The text is composed
with PyYAML's SafeLoader and converted here, node by node, so that
- every value's position is known (for `file:line:col` messages),
- a tag that is not a plain YAML 1.1 type (`!!python/...`, a custom `!tag`) is refused, not run,
- a duplicate key is an error instead of silently replacing the first,
- aliases are expanded under a budget, so a "billion laughs" document costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
import yaml.reader
from yaml.constructor import SafeConstructor

from batchflow.errors import Problem
from batchflow.model import DocPath, Position

MAX_BYTES = 5 * 1024 * 1024
MAX_NODES = 100_000  # values after alias expansion; a real workflow has a few hundred
MAX_DEPTH = 64

_STD = "tag:yaml.org,2002:"
_MERGE = _STD + "merge"
_SCALAR_TAGS = frozenset(_STD + t for t in ("str", "int", "float", "bool", "null", "timestamp"))


@dataclass
class YamlDoc:
    """A document's data and where each part of it came from (1-based line, column)."""

    data: dict[str, Any]
    positions: dict[DocPath, Position] = field(default_factory=dict)  # value nodes
    key_positions: dict[DocPath, Position] = field(default_factory=dict)  # mapping keys
    raw: dict[DocPath, str] = field(default_factory=dict)  # source text of each scalar value


def dotted(path: DocPath) -> str:
    """("storage", "uploads", 0, "source") -> "storage.uploads[0].source"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def read_yaml(text: str, file: Path | None) -> tuple[YamlDoc | None, list[Problem]]:
    """Parse one YAML document holding a mapping. On a problem that makes the data unusable,
    the document is None; otherwise every problem found is listed (duplicate keys, tags)."""
    size = len(text) if len(text) * 4 <= MAX_BYTES else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        return None, [Problem(file, None, None, "", too_big(size))]
    try:
        root, second = _compose(text)
    except yaml.MarkedYAMLError as e:
        return None, [_syntax_problem(e, text, file)]
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        return None, [
            Problem(file, line, column, "", f"invalid YAML: character #x{e.character:x} is not allowed")
        ]
    except RecursionError:
        return None, [
            Problem(file, None, None, "", f"the document is nested too deeply (over {MAX_DEPTH} levels)")
        ]
    if second is not None:
        msg = "a workflow file holds one YAML document, but a second one starts here"
        return None, [Problem(file, *second, "", msg)]
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _STD + "null"):
        return None, [Problem(file, None, None, "", "the file is empty; a workflow starts with 'version: 1'")]
    if not isinstance(root, yaml.MappingNode):
        kind = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
        msg = f"a workflow file is a mapping of keys to values (such as 'version: 1'), not {kind}"
        return None, [Problem(file, *_pos(root), "", msg)]
    conv = _Converter(file)
    try:
        data = conv.convert(root, (), 0)
    except _Stop as stop:
        return None, [*conv.problems, stop.problem]
    doc = YamlDoc(data=data, positions=conv.positions, key_positions=conv.key_positions, raw=conv.raw)
    return (doc if not conv.problems else None), conv.problems


def too_big(size: int) -> str:
    return f"the file is {size / 2**20:.1f} MB; a workflow file may be at most {MAX_BYTES // 2**20} MB"


def _compose(text: str) -> tuple[yaml.Node | None, Position | None]:
    """The first document's root node (None if there is none) and where a second document starts."""
    loader = yaml.SafeLoader(text)
    try:
        loader.get_event()  # type: ignore[no-untyped-call]  # StreamStart
        if loader.check_event(yaml.StreamEndEvent):
            return None, None
        root = loader.compose_document()
        if loader.check_event(yaml.StreamEndEvent):
            return root, None
        second = loader.peek_event()  # type: ignore[no-untyped-call]
        return root, _pos_of_mark(second.start_mark)
    finally:
        loader.dispose()


def _syntax_problem(e: yaml.MarkedYAMLError, text: str, file: Path | None) -> Problem:
    mark = e.problem_mark or e.context_mark
    message = f"invalid YAML: {e.problem or e.context}"
    if e.context and e.problem and e.context_mark is not None:
        line, column = _pos_of_mark(e.context_mark)
        message += f" ({e.context} at line {line}, column {column})"
    if mark is None:
        return Problem(file, None, None, "", message)
    line_text = text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else ""
    if "{{" in line_text and "'{{" not in line_text and '"{{' not in line_text:
        message += '; a value that starts with a template must be quoted, e.g. "{{ input.stem }}.mp3"'
    return Problem(file, *_pos_of_mark(mark), "", message)


def _pos_of_mark(mark: yaml.Mark) -> Position:
    return mark.line + 1, mark.column + 1


def _pos(node: yaml.Node) -> Position:
    return _pos_of_mark(node.start_mark)


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_STD) :] if tag.startswith(_STD) else tag


class _Stop(Exception):
    """A problem after which the rest of the document is not worth reading."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class _Converter:
    def __init__(self, file: Path | None) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.positions: dict[DocPath, Position] = {}
        self.key_positions: dict[DocPath, Position] = {}
        self.raw: dict[DocPath, str] = {}
        self.count = 0
        self.open: set[int] = set()  # ids of the collection nodes being converted (for recursive aliases)
        self.constructor = SafeConstructor()

    def _spend(self, node: yaml.Node) -> None:
        self.count += 1
        if self.count > MAX_NODES:
            msg = (
                f"the document expands to more than {MAX_NODES:,} values through YAML aliases "
                "(a 'billion laughs' document?); refusing to read it"
            )
            raise _Stop(Problem(self.file, None, None, "", msg))

    def _bad_tag(self, node: yaml.Node, path: DocPath) -> None:
        msg = (
            f"the tag '{_show_tag(node.tag)}' is not allowed: a workflow file holds only plain strings, "
            "numbers, booleans, lists and mappings"
        )
        self.problems.append(Problem(self.file, *_pos(node), dotted(path), msg))

    def convert(self, node: yaml.Node, path: DocPath, depth: int) -> Any:
        self._spend(node)
        if depth > MAX_DEPTH:
            raise _Stop(
                Problem(self.file, *_pos(node), dotted(path), f"nested more than {MAX_DEPTH} levels deep")
            )
        self.positions[path] = _pos(node)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in self.open:
            msg = "this alias refers to a value that contains it; a workflow cannot be recursive"
            raise _Stop(Problem(self.file, *_pos(node), dotted(path), msg))
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _STD + "seq":
                    self._bad_tag(node, path)
                    return None
                return [self.convert(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
            if not isinstance(node, yaml.MappingNode) or node.tag != _STD + "map":
                self._bad_tag(node, path)
                return None
            return self._mapping(node, path, depth)
        finally:
            self.open.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: DocPath) -> Any:
        if node.tag not in _SCALAR_TAGS:
            self._bad_tag(node, path)
            return None
        self.raw[path] = node.value
        kind = node.tag[len(_STD) :]
        if kind in ("str", "timestamp"):  # JSON has no dates: a date stays the text it was written as
            return node.value
        if kind == "null":
            return None
        try:
            if kind == "bool":
                return self.constructor.construct_yaml_bool(node)
            value = (
                self.constructor.construct_yaml_int(node)
                if kind == "int"
                else self.constructor.construct_yaml_float(node)
            )
        except (ValueError, KeyError):  # an explicit !!int / !!float / !!bool on text that is not one
            msg = f"'{node.value}' is not a valid {_show_tag(node.tag)}"
            self.problems.append(Problem(self.file, *_pos(node), dotted(path), msg))
            return None
        if isinstance(value, float) and not math.isfinite(value):
            msg = f"'{node.value}' is not a finite number"
            self.problems.append(Problem(self.file, *_pos(node), dotted(path), msg))
            return None
        return value

    def _mapping(self, node: yaml.MappingNode, path: DocPath, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        explicit: set[str] = set()
        for key_node, value_node, merged in self._pairs(node, path):
            key = self._key(key_node, node, path)
            if key is None:
                continue
            here = (*path, key)
            if key in explicit or (merged and key in result):
                if not merged:
                    line, _ = self.key_positions[here]
                    msg = f"duplicate key '{key}' (first set at line {line})"
                    self.problems.append(Problem(self.file, *_pos(key_node), dotted(here), msg))
                continue
            if not merged:
                explicit.add(key)
            self.key_positions[here] = _pos(key_node)
            result[key] = self.convert(value_node, here, depth + 1)
        return result

    def _pairs(self, node: yaml.MappingNode, path: DocPath) -> list[tuple[yaml.Node, yaml.Node, bool]]:
        """The mapping's own pairs, then the pairs of `<<` merge keys (which never override them)."""
        own = [(k, v, False) for k, v in node.value if k.tag != _MERGE]
        merged: list[tuple[yaml.Node, yaml.Node, bool]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE:
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    msg = "a '<<' merge key takes a mapping or a list of mappings"
                    self.problems.append(Problem(self.file, *_pos(source), dotted(path), msg))
                    continue
                if id(source) in self.open:
                    msg = "this merge refers to a mapping that contains it; a workflow cannot be recursive"
                    raise _Stop(Problem(self.file, *_pos(source), dotted(path), msg))
                self.open.add(id(source))
                try:
                    for k, v, _ in self._pairs(source, path):
                        self._spend(k)
                        merged.append((k, v, True))
                finally:
                    self.open.discard(id(source))
        return own + merged

    def _key(self, key_node: yaml.Node, parent: yaml.MappingNode, path: DocPath) -> str | None:
        if isinstance(key_node, yaml.ScalarNode):
            if key_node.tag not in _SCALAR_TAGS:
                self._bad_tag(key_node, path)
                return None
            return str(key_node.value)  # keys are names: `on`, `1` and `null` stay as written
        if isinstance(key_node, yaml.MappingNode) and parent.flow_style:
            msg = 'a value that starts with a template must be quoted, e.g. "{{ input.stem }}.mp3"'
        else:
            msg = "a mapping key must be a plain name, not a list or a mapping"
        self.problems.append(Problem(self.file, *_pos(parent), dotted(path), msg))
        return None
