"""The one place enum values from the Batch service are compared (batchflow/backends/azure/enums.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from azure.batch import models as bm

from batchflow.backends.azure.enums import among, is_

BACKENDS = Path(__file__).resolve().parent.parent / "batchflow" / "backends"


@pytest.mark.parametrize(
    ("answered", "member", "expected"),
    [
        ("Success", bm.BatchTaskAddStatus.SUCCESS, True),  # the live service (recordings)
        ("success", bm.BatchTaskAddStatus.SUCCESS, True),  # the spec and the SDK
        ("SUCCESS", bm.BatchTaskAddStatus.SUCCESS, True),
        ("ServerError", bm.BatchTaskAddStatus.SERVER_ERROR, True),
        ("StartTaskFailed", bm.BatchNodeState.START_TASK_FAILED, True),
        ("Steady", bm.AllocationState.STEADY, True),
        ("clienterror", bm.BatchTaskAddStatus.SUCCESS, False),
        (None, bm.BatchTaskAddStatus.SUCCESS, False),
        (3, "3", False),
    ],
)
def test_is_ignores_case_and_never_matches_a_non_string(
    answered: object, member: str, expected: bool
) -> None:
    assert is_(answered, member) is expected
    assert among(answered, [member, "other"]) is expected


def test_a_plain_comparison_with_an_sdk_enum_is_case_sensitive() -> None:
    """Why the helper exists: `==` with an SDK enum member is plain str equality."""
    answered: str = "Success"
    assert answered != bm.BatchTaskAddStatus.SUCCESS


def test_no_backend_compares_a_service_value_with_eq() -> None:
    """Every comparison with an azure.batch enum member (bm.Something.MEMBER), or of an error code,
    state or status (`.code`, `.state`, `.status`, `_code(e)`, `azure_error_code(e)`, ...) with a
    string, goes through is_ / among: an `==`, `!=` or `in` there is the bug the live service's
    "Success" exposed."""
    offenders = []
    for path in sorted(BACKENDS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(_is_sdk_enum(side) for side in sides) or (
                    any(_is_service_value(side) for side in sides) and any(_is_text(s) for s in sides)
                ):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


_SERVICE_FIELDS = {"code", "state", "status", "result", "allocation_state", "error_code"}


def _is_service_value(node: ast.expr) -> bool:
    """x.code / x.state / ... or a call of a function whose name says it reads an error code."""
    if isinstance(node, ast.Attribute):
        return node.attr in _SERVICE_FIELDS
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name.endswith("code") or name.endswith("_code")
    return False


def _is_text(node: ast.expr) -> bool:
    """A string literal, a tuple or set of them, or a NAME_IN_CAPITALS constant."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.Set, ast.List)):
        return any(_is_text(e) for e in node.elts)
    return isinstance(node, ast.Name) and node.id.isupper()


def _is_sdk_enum(node: ast.expr) -> bool:
    """bm.<Enum>.<MEMBER>: an attribute of an attribute of the azure.batch models module."""
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "bm"
        and node.attr.isupper()
    )
