"""The Batch emulator's rules (tests/batch_emulator/RULES.md) each name a source, and the sources exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

from recorded import load_all

RULES = Path(__file__).parent / "batch_emulator" / "RULES.md"
SPEC = Path(__file__).parent / "spec" / "batch_2025_06_01.json"
_ROW = re.compile(r"^\| (?P<area>[a-z]+) \| (?P<rule>.+) \| (?P<source>[^|]+) \|$")


def rows() -> list[tuple[str, str, str]]:
    found = []
    for line in RULES.read_text(encoding="utf-8").splitlines():
        m = _ROW.match(line)
        if m and m["area"] != "area":
            found.append((m["area"], m["rule"], m["source"].strip()))
    return found


def test_every_rule_names_a_source_that_exists() -> None:
    recorded = {e.name for e in load_all()}
    definitions = set(json.loads(SPEC.read_text(encoding="utf-8"))["definitions"])
    table = rows()
    assert len(table) >= 50
    for area, rule, source in table:
        kind, _, name = source.partition(":")
        where = f"{area}: {rule}"
        if source == "assumption":
            continue
        if kind == "rec":
            assert name in recorded, f"{where}: no recorded exchange {name!r}"
        elif kind == "spec":
            assert name in definitions, f"{where}: {name!r} is not a transcribed spec definition"
        elif kind == "docs":
            assert name.startswith("https://learn.microsoft.com/"), f"{where}: not a Microsoft docs page"
        else:
            raise AssertionError(f"{where}: source {source!r} is none of rec:, spec:, docs:, assumption")
