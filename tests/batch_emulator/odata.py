"""OData $filter and $select over the JSON the service returns, for the list operations.

$filter grammar (the part Batch clients use):  expr := term ('or' term)* ; term := factor ('and' factor)* ;
factor := '(' expr ')' | 'not' factor | path op literal | startswith(path, 'text') ;
op := eq | ne | gt | ge | lt | le ; literal := 'text' | number | true | false | null | datetime'...' ;
path := name ('/' name)*, e.g. executionInfo/result. A path whose first name is not one the resource
filters on, or anything else, is 400 InvalidQueryParameterValue naming $filter.

List Tasks takes only the properties and operators of Microsoft's table (`TASK_FILTERS`); the other
lists take any top-level property (their tables are not transcribed). A filter's top-level `and`ed
bounds on `id` (`Filter.id_low`, `Filter.id_high`) let a listing ordered by id start and stop there.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .wire import invalid_query

Predicate = Callable[[Mapping[str, Any]], bool]

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<dt>datetime'[^']*')|(?P<num>-?\d+(?:\.\d+)?)"
    r"|(?P<punct>[(),])|(?P<word>[A-Za-z_][A-Za-z0-9_/.]*))"
)


def _ordered(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        comparable = (isinstance(a, str) and isinstance(b, str)) or (_number(a) and _number(b))
        return comparable and bool(op(a, b))

    return compare


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": _ordered(operator.gt),
    "ge": _ordered(operator.ge),
    "lt": _ordered(operator.lt),
    "le": _ordered(operator.le),
}


_ORDERED = ("eq", "ne", "ge", "gt", "le", "lt")
# What List Tasks filters on: Microsoft, "OData filters in Azure Batch", List tasks
# (https://learn.microsoft.com/rest/api/batchservice/odata-filters-in-batch#list-tasks; its source,
# docs-ref-conceptual/batchservice/odata-filters-in-batch.md, e.g. tongwu-msft/azure-rest-api-specs
# at 1d0c6c06c3758dcc6e2d902712494c0e40060469): property path -> operations allowed.
TASK_FILTERS: Mapping[str, frozenset[str]] = {
    "id": frozenset(("startswith", *_ORDERED)),
    "state": frozenset(("eq", "ne")),
    "stateTransitionTime": frozenset(_ORDERED),
    "creationTime": frozenset(_ORDERED),
    "lastModifiedTime": frozenset(_ORDERED),
    "executionInfo/startTime": frozenset(_ORDERED),
    "executionInfo/endTime": frozenset(_ORDERED),
    "executionInfo/exitCode": frozenset(_ORDERED),
    "executionInfo/result": frozenset(("eq", "ne")),
}
# The table's name for a property the resource's JSON names otherwise (BatchTask.lastModified).
_JSON_PATH = {"lastModifiedTime": "lastModified"}


@dataclass(frozen=True)
class Bound:
    """A bound on `id`, normalized as the filter compares (lowercase)."""

    value: str
    inclusive: bool


@dataclass(frozen=True)
class Filter:
    """A parsed $filter: `predicate` over one resource's JSON, and the bounds on `id` that every
    match lies within (from top-level `and`ed `id ge|gt|le|lt 'text'`), if any."""

    predicate: Predicate
    id_low: Bound | None = None
    id_high: Bound | None = None
    fields: frozenset[str] = frozenset()  # the top-level properties the predicate reads


def parse_filter(
    text: str, fields: Collection[str], allowed: Mapping[str, Collection[str]] | None = None
) -> Filter:
    """`fields`: the top-level properties the filter may use; `allowed`: if given, the only
    property paths it may use, each with the operations allowed on it (e.g. TASK_FILTERS)."""
    return _Parser(text, fields, allowed).parse()


def parse_select(text: str, fields: Collection[str]) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise invalid_query("$select", text, "no property named")
    for name in names:
        if name not in fields:
            raise invalid_query("$select", text, f"{name!r} is not a property of this resource")
    return names


def project(item: Mapping[str, Any], select: Sequence[str] | None) -> dict[str, Any]:
    if select is None:
        return dict(item)
    return {k: item[k] for k in select if k in item}


def lookup(item: Mapping[str, Any], path: str) -> Any:
    value: Any = item
    for name in path.split("/"):
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value


# A parsed part of a filter: its predicate, and the bounds on id it sets if and-ed at the top.
_Part = tuple[Predicate, list[tuple[str, str]]]


class _Parser:
    def __init__(
        self, text: str, fields: Collection[str], allowed: Mapping[str, Collection[str]] | None
    ) -> None:
        self.text = text
        self.fields = fields
        self.allowed = allowed
        self.used: set[str] = set()  # the top-level properties the paths name
        self.tokens = self._tokenize(text)
        self.pos = 0

    def fail(self, reason: str) -> Exception:
        return invalid_query("$filter", self.text, reason)

    def _tokenize(self, text: str) -> list[tuple[str, str]]:
        tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise self.fail(f"unexpected text at position {pos}: {text[pos : pos + 20]!r}")
            kind = m.lastgroup
            assert kind is not None
            tokens.append((kind, m.group(kind)))
            pos = m.end()
        return tokens

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise self.fail("the filter ends too early")
        self.pos += 1
        return token

    def expect(self, value: str) -> None:
        _kind, got = self.take()
        if got != value:
            raise self.fail(f"expected {value!r}, found {got!r}")

    def parse(self) -> Filter:
        pred, bounds = self.expr()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        lows = [Bound(v, op == "ge") for op, v in bounds if op in ("ge", "gt")]
        highs = [Bound(v, op == "le") for op, v in bounds if op in ("le", "lt")]
        return Filter(
            pred,
            max(lows, key=lambda b: (b.value, not b.inclusive), default=None),
            min(highs, key=lambda b: (b.value, b.inclusive), default=None),
            frozenset(self.used),
        )

    def expr(self) -> _Part:
        terms = [self.term()]
        while self.peek() == ("word", "or"):
            self.pos += 1
            terms.append(self.term())
        if len(terms) == 1:
            return terms[0]
        preds = [t[0] for t in terms]
        return (lambda item: any(p(item) for p in preds)), []

    def term(self) -> _Part:
        factors = [self.factor()]
        while self.peek() == ("word", "and"):
            self.pos += 1
            factors.append(self.factor())
        if len(factors) == 1:
            return factors[0]
        preds = [f[0] for f in factors]
        return (lambda item: all(p(item) for p in preds)), [b for f in factors for b in f[1]]

    def factor(self) -> _Part:
        kind, value = self.take()
        if (kind, value) == ("punct", "("):
            inner = self.expr()
            self.expect(")")
            return inner
        if (kind, value) == ("word", "not"):
            negated = self.factor()[0]
            return (lambda item: not negated(item)), []
        if (kind, value) == ("word", "startswith"):
            self.expect("(")
            path = self.path(self.take(), "startswith")
            self.expect(",")
            prefix = self.literal(self.take())
            self.expect(")")
            if not isinstance(prefix, str):
                raise self.fail("startswith needs a string")

            def starts(item: Mapping[str, Any]) -> bool:
                value = lookup(item, path)
                return isinstance(value, str) and _normal(value).startswith(prefix)

            return starts, []
        op_kind, op = self.peek_op()
        if op_kind != "word" or op not in _OPS:
            raise self.fail(f"{op!r} is not a comparison operator (eq, ne, gt, ge, lt, le)")
        path = self.path((kind, value), op)
        self.pos += 1
        literal = self.literal(self.take())
        compare = _OPS[op]
        bounds = [(op, literal)] if path == "id" and isinstance(literal, str) else []
        return (lambda item: bool(compare(_normal(lookup(item, path)), literal))), bounds

    def peek_op(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise self.fail("the filter ends too early")
        return token

    def path(self, token: tuple[str, str], op: str) -> str:
        """The JSON path a property of the filter names, checked against what the list takes."""
        kind, value = token
        if self.allowed is not None:
            known = kind == "word" and value in self.allowed
        else:
            known = kind == "word" and value.split("/")[0] in self.fields
        if not known:
            raise self.fail(f"{value!r} is not a property this list can be filtered on")
        if self.allowed is not None and op not in self.allowed[value]:
            raise self.fail(f"{op!r} is not an operation allowed on {value!r}")
        path = _JSON_PATH.get(value, value)
        self.used.add(path.split("/")[0])
        return path

    def literal(self, token: tuple[str, str]) -> Any:
        kind, value = token
        if kind == "str":
            return _normal(value[1:-1].replace("''", "'"))
        if kind == "dt":
            return _normal(value[len("datetime'") : -1])
        if kind == "num":
            return float(value) if "." in value else int(value)
        if kind == "word" and value in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[value]
        raise self.fail(f"{value!r} is not a literal")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _normal(value: Any) -> Any:
    """Enum values compare without case ('Completed' matches 'completed'), as the service does."""
    return value.lower() if isinstance(value, str) else value
