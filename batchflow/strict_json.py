"""Reading the JSON of batchflow's own files (state.json, tasks.jsonl) strictly: each value must have
its field's type, and the error says where (`tasks.t1.exit_code: expected a whole number, got str 'x'`)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

E = TypeVar("E", bound=enum.Enum)


class BadType(ValueError):
    """A value is not of the type its field needs."""


def _got(value: object) -> str:
    return f"got {type(value).__name__} {value!r}"[:120]


def required(d: Mapping[str, object], key: str, where: str) -> object:
    if key not in d:
        raise BadType(f"{where}: {key!r} is missing")
    return d[key]


def mapping(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise BadType(f"{where}: expected an object, {_got(value)}")
    return value


def text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise BadType(f"{where}: expected a string, {_got(value)}")
    return value


def opt_text(value: object, where: str) -> str | None:
    return None if value is None else text(value, where)


def texts(value: object, where: str) -> list[str]:
    if not isinstance(value, list):
        raise BadType(f"{where}: expected a list, {_got(value)}")
    return [text(v, f"{where}[{i}]") for i, v in enumerate(value)]


def whole(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadType(f"{where}: expected a whole number, {_got(value)}")
    return value


def opt_whole(value: object, where: str) -> int | None:
    return None if value is None else whole(value, where)


def number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadType(f"{where}: expected a number, {_got(value)}")
    return float(value)


def opt_number(value: object, where: str) -> float | None:
    return None if value is None else number(value, where)


def flag(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadType(f"{where}: expected true or false, {_got(value)}")
    return value


def member(kind: type[E], value: object, where: str) -> E:
    name = text(value, where)
    try:
        return kind(name)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise BadType(f"{where}: expected one of {allowed}, got {name!r}") from None
