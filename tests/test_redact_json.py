"""redact_json's quick way (dump, and walk only an object whose text may hold a secret or a pattern)
says what the walk alone says, for every object and every dumps option batchflow uses."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import pytest

from batchflow.redact import (
    _ANY_PATTERN,
    _FOLD,
    _PATTERN_WORDS,
    JsonRedactor,
    _may_hold_a_pattern,
    redact_json,
)

SECRET = 'pä"ss\\wörd-12345'  # noqa: S105 (made up; JSON escapes 3 of its characters, ensure_ascii 2 more)
OBJECTS: list[Any] = [
    {"a": 1, "b": [1, 2.5, None, True], "c": {"d": "plain"}},
    {"url": "https://x.blob.core.windows.net/c/b?sv=1&sig=abc%2Fdef&se=2"},
    {"connection": "DefaultEndpointsProtocol=https;AccountKey=abc+def==;EndpointSuffix=x"},
    {"header": "Authorization: SharedKey acct:abcdef"},
    {"AUTHORIZATION": "x", "SiG=": "y"},  # keys too, and any case
    {"command": f"tool --password '{SECRET}'", SECRET: "as a key"},
    {"quoted": json.dumps(SECRET)},  # the secret's JSON form inside a string: not the secret
    ("a tuple", ["of", ("tuples",)]),
    {"size": 12345, "name": "12345"},
    "just a string with " + SECRET,
    {"z": "a z without a pattern", "eq": "a=b"},
]


def walked(obj: Any, **dumps: Any) -> str:
    """What redact_json said before its quick way: every string redacted, then dumped."""
    redactor = JsonRedactor(**dumps)
    return json.dumps(redactor._walk(obj), **dumps)


@pytest.fixture(autouse=True)
def a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_PASSWORD", SECRET)


@pytest.mark.parametrize(
    "dumps", [{}, {"indent": 2}, {"ensure_ascii": False}, {"indent": 1, "sort_keys": True}]
)
@pytest.mark.parametrize("obj", OBJECTS, ids=range(len(OBJECTS)))
def test_the_quick_way_says_what_the_walk_says(obj: Any, dumps: dict[str, Any]) -> None:
    assert redact_json(obj, **dumps) == walked(obj, **dumps)
    assert SECRET not in redact_json(obj, **dumps)


def test_the_secret_is_redacted() -> None:
    assert redact_json(OBJECTS[5]) == '{"command": "tool --password \'REDACTED\'", "REDACTED": "as a key"}'


def test_what_may_hold_a_pattern_folds_is_what_the_regex_engine_matches() -> None:
    """_may_hold_a_pattern's reasoning, for every character there is: each character that matches a
    letter of the patterns' words, case aside, is that letter once lowercased and folded."""
    everything = "".join(map(chr, range(sys.maxunicode + 1)))
    for letter in sorted(set("".join(_PATTERN_WORDS))):
        for c in re.findall("(?i)" + re.escape(letter), everything):
            assert c.lower().translate(_FOLD) == letter, (hex(ord(c)), letter)
    for word in (
        "sig=",
        "AccountKey=",
        "SharedAccessSignature=",
        "Authorization",
        "AUTHOR\u0130ZAT\u0130ON",
        "\u017fig=",
    ):
        assert _ANY_PATTERN.search(word) and _may_hold_a_pattern(word), word
    assert not _may_hold_a_pattern('{"size": 2, "path": "/a/b", "what": "authorisation"}')


def test_json_rows_is_indented_json_with_one_line_per_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run --output json`'s writer: what json.dumps(indent=2) says, each task on one line, redacted."""
    import io

    from batchflow.redact import write_json_rows

    monkeypatch.setenv("MY_API_TOKEN", "tok-s3cret-value")
    data = {
        "run_id": "r1",
        "counts": {"succeeded": 2, "failed": 0},
        "tasks": {
            "a": {"state": "succeeded", "exit_code": 0, "error": None},
            "b": {"state": "failed", "error": 'saw tok-s3cret-value and sig=abc"def', "é": [1, 2]},
        },
        "message": None,
    }
    out = io.StringIO()
    write_json_rows(out, data, rows=("tasks",))
    text = out.getvalue()
    assert "tok-s3cret-value" not in text and "abc" not in text
    assert json.loads(text) == json.loads(redact_json(data))
    lines = text.splitlines()
    start = lines.index('  "tasks": {')
    assert lines[start + 1] == '    "a": {"state": "succeeded", "exit_code": 0, "error": null},'
    assert lines[start + 2].startswith('    "b": {"state": "failed", "error": "saw REDACTED')
    assert lines[start + 3] == "  },"
    # Everything but the rows is json.dumps(indent=2)'s text.
    plain = {k: v for k, v in data.items() if k != "tasks"}
    out = io.StringIO()
    write_json_rows(out, plain, rows=("tasks",))
    assert out.getvalue() == json.dumps(plain, indent=2) + "\n"
    empties: tuple[dict[str, object], ...] = ({}, {"tasks": {}})
    for empty in empties:
        out = io.StringIO()
        write_json_rows(out, empty, rows=("tasks",))
        assert out.getvalue() == json.dumps(empty, indent=2) + "\n"
