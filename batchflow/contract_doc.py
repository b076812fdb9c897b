"""README.md's task contract, generated from TASK_CONTRACT in batchflow/backends/base.py.

    python -m batchflow.contract_doc README.md

rewrites the lines between `<!-- task-contract -->` and `<!-- /task-contract -->` in place; without a
file, prints them. The clauses are written once, in base.py: a test fails when the README is out of date.
"""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from batchflow.backends.base import TASK_CONTRACT

BEGIN = "<!-- task-contract -->"
END = "<!-- /task-contract -->"
COMMAND = "python -m batchflow.contract_doc README.md"
WIDTH = 110
_CODE = re.compile(r"`[^`]*`")
_KEEP = "\0"  # stands for a space inside `code` while wrapping, so no line breaks inside one


def render() -> str:
    """The numbered clauses, as the Markdown that goes between the markers."""
    lines = [
        f"<!-- Generated from TASK_CONTRACT in batchflow/backends/base.py by `{COMMAND}`. Do not edit. -->",
        "",
    ]
    for number, clause in TASK_CONTRACT:
        text = _CODE.sub(lambda m: m.group(0).replace(" ", _KEEP), " ".join(clause.split()))
        marker = f"{number}. "
        wrapped = textwrap.wrap(
            text,
            WIDTH,
            initial_indent=marker,
            subsequent_indent=" " * len(marker),
            break_long_words=False,
            break_on_hyphens=False,
        )
        lines += [line.replace(_KEEP, " ") for line in wrapped]
    return "\n".join(lines) + "\n"


def splice(text: str) -> str:
    """`text` with what stands between the markers replaced by `render()`."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the markers {BEGIN} and {END} are not both there, in that order")
    return f"{head}{BEGIN}\n{render()}{END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        sys.stdout.write(render())
        return 0
    path = Path(args[0])
    text = path.read_text(encoding="utf-8")
    try:
        new = splice(text)
    except ValueError as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 1
    if new != text:
        path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
