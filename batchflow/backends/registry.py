"""The one list of backends. `--backend` and `--storage` choices, the workflow schema's backend blocks
(`local:`, `azure:`), the docs and `batchflow cleanup` all derive from it.

Each entry names a module attribute holding a `Backend` (backends/base.py), imported on first use:
`batchflow --version` imports no backend, and a backend's package imports its SDK only when its
storage or compute is built. Adding a backend is one package and one line here (README "Adding a
backend"); `register` does the same at run time, for plugins and tests.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from batchflow.backends.base import Backend
from batchflow.errors import ConfigurationError

# name -> "module:attribute" of its Backend. The order is the schema's and the docs' order.
BACKENDS: dict[str, str] = {
    "local": "batchflow.backends.local:BACKEND",
    "azure": "batchflow.backends.azure:BACKEND",
}

_loaded: dict[str, Backend] = {}
# The workflow schema's core (spec.CORE_SCHEMA_FILE): its top-level keys are no backend's block key.
_CORE_SCHEMA_FILE = Path(__file__).parent.parent / "core.schema.json"
_generation = 0  # bumped by register/unregister: what is derived from the list is computed again


def names() -> list[str]:
    return list(BACKENDS)


def generation() -> int:
    """Changes whenever the list does (cache key of the composed schema)."""
    return _generation


@functools.cache
def _core_keys() -> frozenset[str]:
    return frozenset(json.loads(_CORE_SCHEMA_FILE.read_text(encoding="utf-8"))["properties"])


def _check_name(name: str, target: str) -> None:
    """A backend's name is also its block's key in the workflow file: not one of the file's own."""
    if name in _core_keys():
        taken = ", ".join(sorted(_core_keys()))
        raise ConfigurationError(
            f"backend {target} cannot be named {name!r}: its block would be the workflow file's own "
            f"{name!r} key. Name it otherwise (the workflow's keys: {taken})"
        )


def get(name: str) -> Backend:
    try:
        target = BACKENDS[name]
    except KeyError:
        known = ", ".join(BACKENDS)
        raise ConfigurationError(f"no backend {name!r} (known: {known})") from None
    _check_name(name, target)  # BACKENDS may have been changed by hand
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
    """Add (or replace) backend `name`, held at "module:attribute". ConfigurationError if `name` is
    a key of the workflow file itself (`pool`, `tasks`, ...)."""
    global _generation
    _check_name(name, target)
    BACKENDS[name] = target
    _loaded.pop(name, None)
    _generation += 1


def unregister(name: str) -> None:
    global _generation
    BACKENDS.pop(name, None)
    _loaded.pop(name, None)
    _generation += 1
