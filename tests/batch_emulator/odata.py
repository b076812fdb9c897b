"""OData $filter and $select over the JSON the service returns, for the list operations.

$filter grammar (the part Batch clients use):  expr := term ('or' term)* ; term := factor ('and' factor)* ;
factor := '(' expr ')' | 'not' factor | path op literal | startswith(path, 'text') ;
op := eq | ne | gt | ge | lt | le ; literal := 'text' | number | true | false | null | datetime'...' ;
path := name ('/' name)*, e.g. executionInfo/result. A path whose first name is not one the resource
filters on, or anything else, is 400 InvalidQueryParameterValue naming $filter.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Mapping, Sequence
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


def parse_filter(text: str, fields: Collection[str]) -> Predicate:
    """A predicate over one resource's JSON. `fields`: the top-level properties the filter may use."""
    return _Parser(text, fields).parse()


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


class _Parser:
    def __init__(self, text: str, fields: Collection[str]) -> None:
        self.text = text
        self.fields = fields
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

    def parse(self) -> Predicate:
        pred = self.expr()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return pred

    def expr(self) -> Predicate:
        terms = [self.term()]
        while self.peek() == ("word", "or"):
            self.pos += 1
            terms.append(self.term())
        return terms[0] if len(terms) == 1 else (lambda item: any(t(item) for t in terms))

    def term(self) -> Predicate:
        factors = [self.factor()]
        while self.peek() == ("word", "and"):
            self.pos += 1
            factors.append(self.factor())
        return factors[0] if len(factors) == 1 else (lambda item: all(f(item) for f in factors))

    def factor(self) -> Predicate:
        kind, value = self.take()
        if (kind, value) == ("punct", "("):
            inner = self.expr()
            self.expect(")")
            return inner
        if (kind, value) == ("word", "not"):
            negated = self.factor()
            return lambda item: not negated(item)
        if (kind, value) == ("word", "startswith"):
            self.expect("(")
            path = self.path(self.take())
            self.expect(",")
            prefix = self.literal(self.take())
            self.expect(")")
            if not isinstance(prefix, str):
                raise self.fail("startswith needs a string")
            return lambda item: (
                isinstance(lookup(item, path), str) and _normal(lookup(item, path)).startswith(prefix)
            )
        path = self.path((kind, value))
        op_kind, op = self.take()
        if op_kind != "word" or op not in _OPS:
            raise self.fail(f"{op!r} is not a comparison operator (eq, ne, gt, ge, lt, le)")
        literal = self.literal(self.take())
        compare = _OPS[op]
        return lambda item: bool(compare(_normal(lookup(item, path)), literal))

    def path(self, token: tuple[str, str]) -> str:
        kind, value = token
        if kind != "word" or value.split("/")[0] not in self.fields:
            raise self.fail(f"{value!r} is not a property this list can be filtered on")
        return value

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
