"""Which module may import which, read from the source (ast): every import counts, at module level,
inside functions and under TYPE_CHECKING.

- The core (batchflow/*.py) reaches backends only through backends.base and backends.registry.
- A backend package never imports the core's driving modules (runner, cli, report, cleanup,
  plan_view), and never another backend's package.
- The test-only thread backend is built from backends.base alone.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "batchflow"
BACKENDS = ("batchflow.backends.local", "batchflow.backends.azure")
DRIVERS = tuple(f"batchflow.{m}" for m in ("runner", "cli", "report", "cleanup", "plan_view"))
CORE_MAY_USE = ("batchflow.backends.base", "batchflow.backends.registry")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """`name` is a module or package of batchflow (or of the tests' thread_backend)."""
    base = ROOT / "tests" if name.startswith("thread_backend") else ROOT
    path = base.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path, root: Path) -> set[str]:
    """The modules `path` imports: `from a.b import c` is a.b.c when that is a module, else a.b."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if is_module(full) else base)
    return found


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def modules(folder: Path, root: Path) -> Iterator[tuple[str, set[str]]]:
    for path in sorted(folder.rglob("*.py")):
        yield module_name(path, root), imports(path, root)


def violations(folder: Path, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    return [
        f"{m} imports {i}"
        for m, found in modules(folder, root)
        for i in sorted(found)
        if within(i, forbidden)
    ]


def test_the_reader_resolves_imports() -> None:
    found = imports(PACKAGE / "backends" / "local" / "__init__.py", ROOT)
    assert {"batchflow.backends.base", "batchflow.backends.local.storage", "batchflow.state"} <= found
    assert "batchflow.cleanup" in imports(PACKAGE / "cli.py", ROOT)  # inside a function
    assert "batchflow.backends.registry" in imports(PACKAGE / "spec.py", ROOT)  # from package import module


def test_the_core_reaches_backends_only_through_base_and_registry() -> None:
    found = [
        f"{m} imports {i}"
        for path in sorted(PACKAGE.glob("*.py"))
        for m, i in ((module_name(path, ROOT), i) for i in sorted(imports(path, ROOT)))
        if within(i, ("batchflow.backends",)) and i not in (*CORE_MAY_USE, "batchflow.backends")
    ]
    assert found == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backend_package_imports_no_driving_module_and_no_other_backend(backend: str) -> None:
    folder = ROOT.joinpath(*backend.split("."))
    others = tuple(b for b in BACKENDS if b != backend)
    assert violations(folder, DRIVERS + others) == []


def test_the_shared_backend_modules_import_no_backend_package() -> None:
    shared = [
        PACKAGE / "backends" / f
        for f in ("__init__.py", "base.py", "registry.py", "blob_urls.py", "files.py")
    ]
    found = [
        f"{module_name(p, ROOT)} imports {i}"
        for p in shared
        for i in sorted(imports(p, ROOT))
        if within(i, BACKENDS)
    ]
    assert found == []


def test_the_thread_backend_is_built_from_base_alone() -> None:
    folder = ROOT / "tests" / "thread_backend"
    allowed = ("batchflow.backends.base",)
    found = [
        f"{m} imports {i}"
        for m, imported in modules(folder, ROOT / "tests")
        for i in sorted(imported)
        if within(i, DRIVERS) or (within(i, ("batchflow.backends",)) and i not in allowed)
    ]
    assert found == []
    assert any(m == "thread_backend.compute" for m, _ in modules(folder, ROOT / "tests"))
