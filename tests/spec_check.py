"""Request bodies checked against the Azure Batch REST spec, api-version 2025-06-01.

The definitions come from tests/spec/batch_2025_06_01.json, a hand transcription of
Azure/azure-rest-api-specs, specification/batch/data-plane/Batch/stable/2025-06-01/BatchService.json
(the commit is in the file's "source"). Each Swagger 2.0 definition becomes a JSON Schema
(draft 2020-12) definition, made stricter than the spec in the ways a request body must be:

- every object forbids properties it does not define (`additionalProperties: false`; the spec never
  says so, and the service ignores or rejects what it does not know): a misspelt field fails;
- enums are compared case-sensitively, as the spec spells them on the wire (`tasksuccess`, not
  `TaskSuccess`, which is only the x-ms-enum *name*);
- `format: duration` must be an ISO 8601 duration (ISO_DURATION), `int32` must fit 32 bits,
  `uri` must be an absolute URI made only of RFC 3986 characters, `date-time` RFC 3339;
- `required` is checked, except for readOnly properties (BatchJob lists some as required: only
  responses carry them), and a readOnly property must not be sent at all;
- a definition the file lists as `not_transcribed` accepts no value: sending it needs a transcription.

`problems(definition, body)` returns readable messages, each starting with the JSON path of the value
(`$.startTask.userIdentity.autoUser.elevationLevel: ...`); no problems is an empty list.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

SPEC_FILE = Path(__file__).resolve().parent / "spec" / "batch_2025_06_01.json"
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

# ISO 8601 durations as requests send them: P, then years, months and days (or weeks alone), then
# T with hours, minutes and seconds; at least one component, each a whole number except the seconds
# (a decimal fraction, as azure-batch writes PT10M00.5S); upper-case designators; no sign.
# Accepts PT15M, PT15M00S, P1D, PT1H30M, P1DT2H, PT0.5S, P2W; rejects P, PT, P1DT, PT15m, 15M,
# "15 minutes", PT1.5H, P1W2D, -PT1M.
ISO_DURATION = re.compile(
    r"P(?:[0-9]+W|(?=[0-9]|T[0-9])(?:[0-9]+Y)?(?:[0-9]+M)?(?:[0-9]+D)?"
    r"(?:T(?=[0-9])(?:[0-9]+H)?(?:[0-9]+M)?(?:[0-9]+(?:\.[0-9]+)?S)?)?)"
)
RFC3339_DATE_TIME = re.compile(
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)"
    r"(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)
_URI_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")

# Swagger keywords that carry over to JSON Schema unchanged (x-ms-*, description, default,
# readOnly and the rest are annotations, dropped or handled below).
_KEPT = ("type", "format", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern")


def is_duration(value: str) -> bool:
    return ISO_DURATION.fullmatch(value) is not None


def is_uri(value: str) -> bool:
    """An absolute URI (scheme and authority) of RFC 3986 characters only: a raw space, quote or
    non-ASCII letter must be percent-encoded."""
    if _URI_CHARS.fullmatch(value) is None:
        return False
    parts = urlsplit(value)
    return _SCHEME.fullmatch(parts.scheme) is not None and bool(parts.netloc)


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())

    @checker.checks("duration")
    def duration(value: object) -> bool:
        return not isinstance(value, str) or is_duration(value)

    @checker.checks("int32")
    def int32(value: object) -> bool:
        return not isinstance(value, int) or isinstance(value, bool) or INT32_MIN <= value <= INT32_MAX

    @checker.checks("uri")
    def uri(value: object) -> bool:
        return not isinstance(value, str) or is_uri(value)

    @checker.checks("date-time")
    def date_time(value: object) -> bool:
        return not isinstance(value, str) or RFC3339_DATE_TIME.fullmatch(value) is not None

    @checker.checks("arm-id")
    def arm_id(value: object) -> bool:
        return not isinstance(value, str) or (value.startswith("/") and " " not in value)

    return checker


@functools.lru_cache(maxsize=1)
def spec() -> dict[str, Any]:
    """The transcribed spec file (source, operations, not_transcribed, definitions)."""
    data: dict[str, Any] = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    return data


def operation_schema(method: str, path: str) -> str:
    """The definition a request's body must match: `POST /pools` -> BatchPoolCreateOptions.

    `path` is a request path (`/jobs/LinuxFFmpegJob/addtaskcollection`, no query) or a template.
    """
    for op in spec()["operations"]:
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(op["path"]))
        if op["method"] == method.upper() and re.fullmatch(pattern, path):
            return cast(str, op["schema"])
    raise KeyError(f"no transcribed operation {method.upper()} {path}")


def to_json_schema(definitions: Mapping[str, Any], not_transcribed: Iterable[str]) -> dict[str, Any]:
    """The Swagger definitions as a draft 2020-12 schema's $defs, strict as the module says."""
    defs: dict[str, Any] = {name: {"title": name, **_convert(d)} for name, d in definitions.items()}
    for name in not_transcribed:
        defs[name] = {"title": name, "not": {}, "x-not-transcribed": True}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": defs}


def _convert(node: Mapping[str, Any]) -> dict[str, Any]:
    if node.get("readOnly"):
        return {"not": {}, "x-read-only": True}
    out: dict[str, Any] = {k: node[k] for k in _KEPT if k in node}
    if "$ref" in node:
        out["$ref"] = "#/$defs/" + node["$ref"].removeprefix("#/definitions/")
    if "items" in node:
        out["items"] = _convert(node["items"])
    if node.get("type") == "object" or "properties" in node:
        properties = node.get("properties", {})
        out["properties"] = {name: _convert(p) for name, p in properties.items()}
        extra = node.get("additionalProperties")
        out["additionalProperties"] = _convert(extra) if isinstance(extra, Mapping) else False
        required = [r for r in node.get("required", []) if not properties.get(r, {}).get("readOnly")]
        if required:
            out["required"] = required
    return out


@functools.cache
def _validator(definition: str) -> Draft202012Validator:
    data = spec()
    if definition not in data["definitions"]:
        raise KeyError(f"{definition} is not transcribed in {SPEC_FILE.name}")
    schema = to_json_schema(data["definitions"], data["not_transcribed"])
    schema["$ref"] = f"#/$defs/{definition}"
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=_format_checker())


def problems(definition: str, body: Any) -> list[str]:
    """Every way `body` breaks the spec's `definition` (e.g. "BatchPoolCreateOptions"), sorted."""
    found: dict[str, None] = {}  # ordered, without duplicates
    for error in _validator(definition).iter_errors(body):
        for message in _messages(error):
            found[message] = None
    return sorted(found)


def check_request(method: str, path: str, body: Any) -> list[str]:
    """problems() of a request body, its definition chosen by method and path."""
    return problems(operation_schema(method, path), body)


def json_path(parts: Iterable[str | int]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _messages(error: ValidationError) -> list[str]:
    path = json_path(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    title = schema.get("title")
    kind = error.validator
    instance: Any = error.instance
    value: Any = error.validator_value
    if kind == "additionalProperties":
        known = list(schema.get("properties", {}))
        extra = sorted(k for k in instance if k not in known)
        return [
            f"{json_path([*error.absolute_path, name])}: unknown property {name!r}: {title or 'this object'}"
            f" has no such property{_hint(name, known)}"
            for name in extra
        ]
    if kind == "required":
        missing = [r for r in value if r not in instance]
        return [f"{path}: missing required property {name!r} ({title})" for name in missing]
    if kind == "enum":
        allowed = list(value)
        spelled = [a for a in allowed if isinstance(instance, str) and a.casefold() == instance.casefold()]
        hint = f"; the spec spells it {spelled[0]!r} (enums are case-sensitive)" if spelled else ""
        where = f" of {title}" if title else ""
        return [f"{path}: {instance!r} is not a value{where}; allowed: {', '.join(allowed)}{hint}"]
    if kind == "format":
        return [_format_message(path, value, instance)]
    if kind == "type":
        return [f"{path}: {instance!r} is not of type {value!r}"]
    if kind == "not" and schema.get("x-read-only"):
        return [f"{path}: read-only property: the service sets it, a request must not send it"]
    if kind == "not" and schema.get("x-not-transcribed"):
        return [
            f"{path}: a {title} value, a definition {SPEC_FILE.name} does not transcribe:"
            " transcribe it from the spec before sending it"
        ]
    return [f"{path}: {error.message}"]


def _format_message(path: str, fmt: str, value: Any) -> str:
    if fmt == "duration":
        return (
            f"{path}: {value!r} is not an ISO 8601 duration (format: duration), e.g. 'PT15M', 'P1D',"
            " 'PT1H30M'"
        )
    if fmt == "int32":
        return f"{path}: {value!r} is outside the int32 range [{INT32_MIN}, {INT32_MAX}]"
    if fmt == "uri":
        return f"{path}: {value!r} is not an absolute URI of RFC 3986 characters (format: uri)"
    return f"{path}: {value!r} is not a valid {fmt}"


def _hint(name: str, known: list[str]) -> str:
    same = [k for k in known if k.casefold() == name.casefold()]
    close = same or difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
