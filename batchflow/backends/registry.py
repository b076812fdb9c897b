"""The one list of backends. `--backend` and `--storage` choices, the workflow schema's backend blocks
(`local:`, `azure:`), the docs and `batchflow cleanup` all derive from it.

Each entry names a module attribute holding a `Backend` (backends/base.py), imported on first use:
`batchflow --version` imports no backend, and a backend's package imports its SDK only when its
storage or compute is built. Adding a backend is one package and one line here (README "Adding a
backend"); `register` does the same at run time, for plugins and tests.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, cast

from batchflow.backends.base import Backend
from batchflow.errors import ConfigurationError

# name -> "module:attribute" of its Backend. The order is the schema's and the docs' order.
BACKENDS: dict[str, str] = {
    "local": "batchflow.backends.local:BACKEND",
    "azure": "batchflow.backends.azure:BACKEND",
}

_loaded: dict[str, Backend] = {}
_generation = 0  # bumped by register/unregister: what is derived from the list is computed again


def names() -> list[str]:
    return list(BACKENDS)


def generation() -> int:
    """Changes whenever the list does (cache key of the composed schema)."""
    return _generation


def get(name: str) -> Backend:
    try:
        target = BACKENDS[name]
    except KeyError:
        known = ", ".join(BACKENDS)
        raise ConfigurationError(f"no backend {name!r} (known: {known})") from None
    backend = _loaded.get(name)
    if backend is None:
        module, _, attribute = target.partition(":")
        backend = cast(Backend, getattr(importlib.import_module(module), attribute))
        if backend.name != name:
            raise ConfigurationError(f"backend {target} is named {backend.name!r}, registered as {name!r}")
        _loaded[name] = backend
    return backend


def all_backends() -> list[Backend]:
    return [get(name) for name in BACKENDS]


def settings_schemas() -> Mapping[str, Mapping[str, Any]]:
    """Each backend's workflow block schema, by block key, in registry order."""
    return {b.name: b.settings_schema for b in all_backends() if b.settings_schema is not None}


def register(name: str, target: str) -> None:
    """Add (or replace) backend `name`, held at "module:attribute"."""
    global _generation
    BACKENDS[name] = target
    _loaded.pop(name, None)
    _generation += 1


def unregister(name: str) -> None:
    global _generation
    BACKENDS.pop(name, None)
    _loaded.pop(name, None)
    _generation += 1
