"""Docs generated from one source stay in step with it: the workflow reference with the schema, the
README's task contract with TASK_CONTRACT, which the contract suite proves clause by clause."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from batchflow import contract_doc
from batchflow.backends.base import TASK_CONTRACT
from batchflow.schema_doc import render

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_SUITE = ROOT / "tests" / "test_compute_contract.py"


def test_workflow_reference_is_generated_from_the_current_schema() -> None:
    committed = (ROOT / "docs" / "workflow-reference.md").read_text(encoding="utf-8")
    assert committed == render(), "run: python -m batchflow.schema_doc > docs/workflow-reference.md"


def test_reference_documents_every_field() -> None:
    text = render()
    for field in ("`pool.spot_nodes`", "`tasks.outputs[].condition`", "`cleanup.pool`", "`local.requires`"):
        assert field in text
    assert "|  |  |  |  |" not in text  # no field without a description


def test_readme_task_contract_is_generated_from_task_contract() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(contract_doc.BEGIN) == 1 and readme.count(contract_doc.END) == 1
    assert readme == contract_doc.splice(readme), f"run: {contract_doc.COMMAND}"


def test_task_contract_clauses_are_numbered_one_two_three() -> None:
    assert [n for n, _ in TASK_CONTRACT] == list(range(1, len(TASK_CONTRACT) + 1))
    assert all(text.strip() for _, text in TASK_CONTRACT)


def test_every_clause_has_one_contract_test_and_every_contract_test_a_clause() -> None:
    tree = ast.parse(CONTRACT_SUITE.read_text(encoding="utf-8"))
    tests = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    numbered: dict[int, list[str]] = {}
    for name in tests:
        m = re.match(r"test_(\d+)_", name)
        assert m, f"{name}: a contract test is named test_<clause number>_..."
        numbered.setdefault(int(m.group(1)), []).append(name)
    clauses = [n for n, _ in TASK_CONTRACT]
    assert [n for n in clauses if n not in numbered] == [], "clauses without a test"
    assert sorted(n for n in numbered if n not in clauses) == [], "tests without a clause"
    assert {n: names for n, names in numbered.items() if len(names) > 1} == {}, "clauses with two tests"


def test_splice_replaces_only_what_stands_between_the_markers() -> None:
    text = f"before\n{contract_doc.BEGIN}\nstale\n{contract_doc.END}\nafter\n"
    spliced = contract_doc.splice(text)
    assert spliced == f"before\n{contract_doc.BEGIN}\n{contract_doc.render()}{contract_doc.END}\nafter\n"
    assert contract_doc.splice(spliced) == spliced
    first = TASK_CONTRACT[0][1].split()[0]
    assert f"\n1. {first} " in contract_doc.render()
