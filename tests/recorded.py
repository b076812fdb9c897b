"""Real Azure Batch HTTP exchanges, transcribed from the Azure SDK test recordings.

The JSON fixtures live in ``tests/recordings/`` (one file per operation family); where each one comes
from, and which recorded fact it shows, is in ``tests/recordings/README.md``. This module only loads
them into typed, immutable objects::

    from recorded import exchange, load

    add = exchange("add_task_collection_success")
    assert add.response.body["value"][0]["status"] == "Success"
    for ex in load("errors"):
        ...

Bodies are the parsed JSON (``None`` where the recording has no body), so they are typed ``Any``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

RECORDINGS = Path(__file__).resolve().parent / "recordings"
FAMILIES: tuple[str, ...] = ("pools", "nodes", "jobs", "tasks", "files", "errors")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
_COMMIT = re.compile(r"[0-9a-f]{40}")


class FixtureError(ValueError):
    """A fixture file does not have the documented shape."""


@dataclass(frozen=True)
class Source:
    """Where an exchange was recorded: one entry of ``Entries`` in a file of Azure/azure-sdk-assets.

    ``entry`` is the index in ``Entries``; a negative index counts from the end, as in Python.
    """

    repo: str
    path: str
    commit: str
    entry: int
    api_version: str


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    body: Any


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: Any

    def header(self, name: str) -> str | None:
        """The value of header ``name``, matched case-insensitively as HTTP does; None when absent."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True)
class Exchange:
    """One recorded request and the real service's answer, with the facts it shows."""

    name: str
    family: str
    source: Source
    request: Request
    response: Response
    facts: tuple[str, ...]
    flow: str | None = None
    order: int | None = None


def _require(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise FixtureError(f"{where}: {problem}")


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FixtureError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or value == "":
        raise FixtureError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _integer(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise FixtureError(f"{where}: expected an integer, got {value!r}")
    return value


def _strings(value: object, where: str) -> dict[str, str]:
    mapping = _mapping(value, where)
    for key, item in mapping.items():
        _require(isinstance(item, str), f"{where}.{key}", f"expected a string, got {item!r}")
    return dict(mapping)


def _source(raw: object, where: str) -> Source:
    data = _mapping(raw, where)
    commit = _string(data.get("commit"), f"{where}.commit")
    _require(_COMMIT.fullmatch(commit) is not None, f"{where}.commit", f"not a 40-hex commit: {commit!r}")
    return Source(
        repo=_string(data.get("repo"), f"{where}.repo"),
        path=_string(data.get("path"), f"{where}.path"),
        commit=commit,
        entry=_integer(data.get("entry"), f"{where}.entry"),
        api_version=_string(data.get("api_version"), f"{where}.api_version"),
    )


def _request(raw: object, where: str) -> Request:
    data = _mapping(raw, where)
    method = _string(data.get("method"), f"{where}.method")
    _require(method in METHODS, f"{where}.method", f"unknown HTTP method {method!r}")
    path = _string(data.get("path"), f"{where}.path")
    _require(path.startswith("/"), f"{where}.path", f"must start with '/': {path!r}")
    _require("?" not in path, f"{where}.path", "the query belongs in 'query'")
    _require("body" in data, where, "missing 'body' (use null for none)")
    return Request(
        method=method,
        path=path,
        query=MappingProxyType(_strings(data.get("query", {}), f"{where}.query")),
        body=data["body"],
    )


def _response(raw: object, where: str) -> Response:
    data = _mapping(raw, where)
    status = _integer(data.get("status"), f"{where}.status")
    _require(100 <= status <= 599, f"{where}.status", f"not an HTTP status: {status}")
    _require("body" in data, where, "missing 'body' (use null for none)")
    return Response(
        status=status,
        headers=MappingProxyType(_strings(data.get("headers", {}), f"{where}.headers")),
        body=data["body"],
    )


def _exchange(raw: object, family: str, where: str) -> Exchange:
    data = _mapping(raw, where)
    name = _string(data.get("name"), f"{where}.name")
    where = f"{where} ({name})"
    facts = data.get("facts")
    if not isinstance(facts, list) or not facts:
        raise FixtureError(f"{where}.facts: expected a non-empty list")
    flow = data.get("flow")
    order = data.get("order")
    _require((flow is None) == (order is None), where, "'flow' and 'order' go together")
    return Exchange(
        name=name,
        family=family,
        source=_source(data.get("source"), f"{where}.source"),
        request=_request(data.get("request"), f"{where}.request"),
        response=_response(data.get("response"), f"{where}.response"),
        facts=tuple(_string(fact, f"{where}.facts[{i}]") for i, fact in enumerate(facts)),
        flow=None if flow is None else _string(flow, f"{where}.flow"),
        order=None if order is None else _integer(order, f"{where}.order"),
    )


@cache
def _family(family: str) -> tuple[Exchange, ...]:
    if family not in FAMILIES:
        raise KeyError(f"unknown fixture family {family!r}; known: {', '.join(FAMILIES)}")
    path = RECORDINGS / f"{family}.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, list):
        raise FixtureError(f"{path.name}: expected a JSON list of exchanges")
    return tuple(_exchange(item, family, f"{path.name}[{i}]") for i, item in enumerate(raw))


@cache
def _by_name() -> Mapping[str, Exchange]:
    found: dict[str, Exchange] = {}
    for family in FAMILIES:
        for ex in _family(family):
            _require(ex.name not in found, f"{family}.json", f"duplicate exchange name {ex.name!r}")
            found[ex.name] = ex
    return MappingProxyType(found)


def load(family: str) -> list[Exchange]:
    """Every exchange of one family ("pools", "nodes", "jobs", "tasks", "files", "errors"), in file order."""
    return list(_family(family))


def load_all() -> list[Exchange]:
    """Every exchange of every family."""
    return list(_by_name().values())


def exchange(name: str) -> Exchange:
    """The exchange called ``name``, whatever its family; KeyError if there is none."""
    try:
        return _by_name()[name]
    except KeyError:
        raise KeyError(f"no recorded exchange named {name!r}") from None


def flow(name: str) -> list[Exchange]:
    """The exchanges of one recorded flow (e.g. create, get, delete of one pool), in recorded order."""
    members = [ex for ex in _by_name().values() if ex.flow == name]
    if not members:
        raise KeyError(f"no recorded flow named {name!r}")
    return sorted(members, key=lambda ex: ex.order if ex.order is not None else 0)
