"""schema_check.certainly_valid never says True where jsonschema finds an error: checked on every
workflow the tests and the repository hold, and on thousands of broken copies of them."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from test_spec import FULL, MINIMAL

from batchflow.schema_check import certainly_valid
from batchflow.spec import schema

ROOT = Path(__file__).resolve().parent.parent
AZURE = MINIMAL + "azure: {submit_concurrency: 4, pool_timeout: 10m, pool_lifetime: run}\n"
DOCUMENTS = {
    "minimal": MINIMAL,
    "full": FULL,
    "azure": AZURE,
    **{p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "workflows").glob("*.yaml"))},
}
# What a value is replaced with: every JSON type, and the edges of the schema's keywords.
REPLACEMENTS: list[Any] = [
    None,
    True,
    0,
    1,
    -1,
    1.0,
    1.5,
    10**6,
    "",
    "x",
    "1",
    "a b",
    "-x",
    [],
    ["x"],
    [1],
    {},
]


def jsonschema_valid(doc: Any) -> bool:
    return bool(Draft202012Validator(schema()).is_valid(doc))


def paths(node: Any, here: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield here
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, (*here, i))


def replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(doc)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def without(doc: Any, path: tuple[Any, ...]) -> Any:
    out = copy.deepcopy(doc)
    node = out
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return out


def broken_copies(doc: Any) -> Iterator[Any]:
    for path in paths(doc):
        if not path:
            continue
        for value in REPLACEMENTS:
            yield replaced(doc, path, value)
        yield without(doc, path)
        parent = path[:-1]
        target = doc
        for part in parent:
            target = target[part]
        if isinstance(target, dict):
            yield replaced(doc, (*parent, "unknown_key"), "x")


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_the_workflows_here_are_valid_without_jsonschema(name: str) -> None:
    doc = yaml.safe_load(DOCUMENTS[name])
    assert jsonschema_valid(doc)
    assert certainly_valid(doc, schema()) is True


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_never_valid_where_jsonschema_finds_an_error(name: str) -> None:
    doc = yaml.safe_load(DOCUMENTS[name])
    told = {True: 0, False: 0, None: 0}
    for broken in broken_copies(doc):
        answer = certainly_valid(broken, schema())
        told[answer] += 1
        if answer is True:
            assert jsonschema_valid(broken), broken
        elif answer is False:
            assert not jsonschema_valid(broken), broken
    assert told[None] < (told[True] + told[False]) / 5, told  # it decides most of them itself


def test_what_it_does_not_know_goes_to_jsonschema() -> None:
    assert certainly_valid({"a": 1}, {"type": "object", "not": {"required": ["a"]}}) is None
    assert certainly_valid(1.0, {"const": 1}) is None  # (jsonschema: 1.0 == 1)
    assert certainly_valid([1, True], {"uniqueItems": True}) is None  # (jsonschema: True != 1)
    assert certainly_valid({"a": 1}, {"$ref": "other.json"}) is None
    assert certainly_valid(b"x", {"type": "string"}) is None  # not what a YAML document holds
    assert certainly_valid({"a": 1}, {"anyOf": [{"type": "string"}, {"not": {}}]}) is None
    assert certainly_valid(2.0, {"type": "integer"}) is True  # Draft 2020-12: 2.0 is an integer
    assert certainly_valid(True, {"type": "integer"}) is False


def test_validating_a_valid_workflow_imports_neither_jsonschema_nor_jinja(tmp_path: Path) -> None:
    """What `batchflow validate` starts with: a valid workflow whose templates are plain
    substitutions needs neither (their imports were half of its start-up), nor logging, traceback
    (a run's log, a crash's), shutil (loads bz2 and lzma), hashlib (loads OpenSSL), rich, socket
    or secrets."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    text = MINIMAL.replace("storage:\n", "storage:\n  uploads: [{source: in, container: input}]\n")
    (tmp_path / "wf.yaml").write_text(text, encoding="utf-8")
    code = (
        "import sys; from batchflow.cli import main; assert main(['validate', sys.argv[1]]) == 0; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('jsonschema', 'jinja2', 'logging', 'traceback', 'shutil', 'hashlib', '_hashlib',"
        " 'rich', 'socket', 'secrets')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "wf.yaml")], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
    version = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from batchflow.cli import main; main(['--version'])\n"
            "print(sorted(m for m in sys.modules if m.startswith('batchflow.')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "batchflow.backends.registry" not in version.stdout
    assert "batchflow.model" not in version.stdout
