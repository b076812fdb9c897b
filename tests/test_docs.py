"""Docs generated from the schema stay in step with it."""

from __future__ import annotations

from pathlib import Path

from batchflow.schema_doc import render

ROOT = Path(__file__).resolve().parent.parent


def test_workflow_reference_is_generated_from_the_current_schema() -> None:
    committed = (ROOT / "docs" / "workflow-reference.md").read_text(encoding="utf-8")
    assert committed == render(), "run: python -m batchflow.schema_doc > docs/workflow-reference.md"


def test_reference_documents_every_field() -> None:
    text = render()
    for field in ("`pool.spot_nodes`", "`tasks.outputs[].condition`", "`cleanup.pool`", "`local.requires`"):
        assert field in text
    assert "|  |  |  |  |" not in text  # no field without a description
