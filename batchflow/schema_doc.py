"""The workflow reference (docs/workflow-reference.md), generated from the JSON Schema.

    python -m batchflow.schema_doc > docs/workflow-reference.md

The schema is the single source: a test fails when the committed reference is out of date.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from batchflow.spec import schema

Schema = dict[str, Any]


def _resolve(node: Schema, root: Schema) -> Schema:
    """Merge a $ref'd definition under the node's own keywords (the node's description wins)."""
    ref = node.get("$ref")
    if not ref:
        return node
    target: Any = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    merged = dict(_resolve(target, root))
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return merged


def _type(node: Schema, root: Schema) -> str:
    node = _resolve(node, root)
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    for key in ("anyOf", "oneOf"):
        if key in node:
            return " or ".join(_type(alt, root) for alt in node[key])
    t = node.get("type", "any")
    if isinstance(t, list):
        return " or ".join(t)
    if t == "array":
        return f"list of {_type(node.get('items', {}), root)}"
    if t == "object" and "properties" not in node:
        return "mapping"
    return str(t)


def _rows(
    node: Schema, root: Schema, prefix: str, out: list[str], sections: list[tuple[str, Schema]]
) -> None:
    required = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        resolved = _resolve(child, root)
        path = f"{prefix}{name}"
        default = resolved.get("default")
        default_txt = f"`{json.dumps(default)}`" if default is not None else ""
        desc = " ".join(str(resolved.get("description", "")).split())
        flag = "yes" if name in required else ""
        out.append(f"| `{path}` | {_type(child, root)} | {flag} | {default_txt} | {desc} |")
        item = _resolve(resolved.get("items", {}), root) if resolved.get("type") == "array" else None
        if resolved.get("type") == "object" and "properties" in resolved:
            sections.append((path, resolved))
        elif item is not None and "properties" in item:
            sections.append((f"{path}[]", item))


def render() -> str:
    root = schema()
    lines = [
        "# Workflow file reference (format version 1)",
        "",
        "<!-- Generated from schemas/workflow.schema.json by `python -m batchflow.schema_doc`."
        " Do not edit. -->",
        "",
        " ".join(str(root.get("description", "")).split()),
        "",
        "Durations are seconds (a number) or text such as `90s`, `30m`, `1h30m`, `2d`, `500ms` or `PT30M`.",
        "Paths are relative to the workflow file's folder.",
        "",
    ]
    sections: list[tuple[str, Schema]] = [("", root)]
    while sections:
        path, node = sections.pop(0)
        title = path or "top level"
        lines += [f"## `{title}`" if path else f"## {title}", ""]
        desc = " ".join(str(node.get("description", "")).split())
        if path and desc:
            lines += [desc, ""]
        lines += ["| field | type | required | default | description |", "|---|---|---|---|---|"]
        found: list[tuple[str, Schema]] = []
        _rows(node, root, f"{path}." if path else "", lines, found)
        sections[0:0] = found
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
