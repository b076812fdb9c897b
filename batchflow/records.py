"""`@record`: a frozen dataclass made without compiling code, for the types a run makes a few of.

`@dataclass(frozen=True)` compiles six methods for each class it makes (`__init__`, `__repr__`,
`__eq__`, `__hash__`, `__setattr__`, `__delattr__`): about 0.45 ms a class on Python 3.11, and
`batchflow validate` loads 40 such classes (22 ms of its 100, measured). A record class is a
dataclass whose fields dataclasses works out as always (`dataclasses.fields`, `replace`, `asdict`
and `is_dataclass` work on it), with the six methods shared by every record class, each reading
the class's fields: it behaves as `@dataclass(frozen=True)` does (tests/test_records.py checks
each method against a dataclass's), and costs 0.03 ms to make.

The price is its `__init__`, a loop over the fields: about 3 us where a compiled one takes 0.7. So
types made per task or per input (RenderedTask, TaskResult, a ledger Entry, a task's events) stay
`@dataclass(frozen=True, slots=True)`; the workflow's parts, settings and a run's one-off objects
are records. Not supported (TypeError when the class is made): slots, `__post_init__`,
keyword-only fields, and a class that defines any of the six methods itself; an InitVar is not a
field (dataclasses.fields leaves it out), so passing one is an unexpected argument.
"""

from __future__ import annotations

import dataclasses
import operator
import reprlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:  # (at run time only its marker attribute: nothing to import)

    def dataclass_transform(**_: object) -> Callable[[Any], Any]:
        return lambda decorator: decorator


T = TypeVar("T")

_MISSING = dataclasses.MISSING
_METHODS = ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__")
_set = object.__setattr__


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def record(cls: type[T]) -> type[T]:
    """`cls` as `@dataclass(frozen=True)` would make it (see the module's note)."""
    own = [name for name in (*_METHODS, "__post_init__", "__slots__") if name in cls.__dict__]
    if own:
        raise TypeError(f"@record class {cls.__qualname__} defines {', '.join(own)}: use @dataclass")
    made: Any = dataclasses.dataclass(cls, init=False, repr=False, eq=False)  # (the fields; nothing compiled)
    found = dataclasses.fields(made)
    if any(f.kw_only is True for f in found):
        raise TypeError(f"@record class {cls.__qualname__} has keyword-only fields: use @dataclass")
    compared = [f.name for f in found if f.compare]
    keyed = [f.name for f in found if (f.compare if f.hash is None else f.hash)]
    made.__record_init__ = tuple((f.name, f.default, f.default_factory) for f in found if f.init)
    made.__record_repr__ = tuple(f.name for f in found if f.repr)
    made.__record_eq__ = _getter(compared)
    made.__record_hash__ = _getter(keyed)
    for name, method in zip(_METHODS, (_init, _repr, _eq, _hash, _setattr, _delattr), strict=True):
        setattr(made, name, method)
    result: type[T] = made
    return result


def _getter(names: list[str]) -> Callable[[object], tuple[Any, ...]]:
    """The tuple of these attributes, as the compiled methods compare and hash it."""
    if not names:
        return lambda obj: ()
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda obj: (one(obj),)
    many: Callable[[object], tuple[Any, ...]] = operator.attrgetter(*names)
    return many


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = self.__class__
    spec: tuple[tuple[str, Any, Any], ...] = cls.__record_init__
    if len(args) > len(spec):
        needed = sum(1 for _, default, factory in spec if default is _MISSING and factory is _MISSING)
        takes = f"{len(spec) + 1}" if needed == len(spec) else f"from {needed + 1} to {len(spec) + 1}"
        raise TypeError(
            f"{cls.__qualname__}.__init__() takes {takes} positional arguments but {len(args) + 1} were given"
        )
    for i, (name, default, factory) in enumerate(spec):
        if i < len(args):
            if name in kwargs:
                raise TypeError(f"{cls.__qualname__}.__init__() got multiple values for argument '{name}'")
            value = args[i]
        elif name in kwargs:
            value = kwargs.pop(name)
        elif default is not _MISSING:
            value = default
        elif factory is not _MISSING:
            value = factory()
        else:
            raise TypeError(f"{cls.__qualname__}.__init__() missing 1 required positional argument: '{name}'")
        _set(self, name, value)
    if kwargs:
        name = next(iter(kwargs))
        raise TypeError(f"{cls.__qualname__}.__init__() got an unexpected keyword argument '{name}'")


@reprlib.recursive_repr()
def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__class__.__record_repr__)
    return f"{self.__class__.__qualname__}({shown})"


def _eq(self: Any, other: object) -> object:  # (bool, or NotImplemented)
    key: Callable[[object], tuple[Any, ...]] = self.__class__.__record_eq__
    if other.__class__ is self.__class__:
        return bool(key(self) == key(other))
    return NotImplemented


def _hash(self: Any) -> int:
    cls: Any = self.__class__
    return hash(cls.__record_hash__(self))


def _setattr(self: Any, name: str, value: object) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: Any, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
