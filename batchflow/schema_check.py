"""A quick yes to "does this document satisfy the workflow schema?", without jsonschema.

Importing jsonschema and building its validator costs more than the rest of `batchflow validate`
for a small workflow (35 ms of imports, its metaschemas read and compiled). Most documents
checked are valid, and saying so needs only the few keywords the workflow schema uses. So
`certainly_valid` walks the document against the schema, knowing those keywords as Draft 2020-12
defines them, and answers True only when every one of them is satisfied; False (a keyword fails)
and None (a keyword or a value it does not know how to judge) both send the document to
jsonschema, which finds and explains every error as before. It never says True where jsonschema
finds an error: tests/test_schema_check.py checks it on every workflow the tests hold, and on
thousands of broken ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Keywords that assert nothing (annotations), and those judged here.
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "default", "examples", "deprecated"}
)
_TYPES: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    # Draft 2020-12: 1.0 is an integer; True is neither an integer nor a number.
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


_PLAIN = (str, int, float, bool, type(None), list, dict)


class _Unknown(Exception):
    """Something this checker does not judge: jsonschema will."""


def certainly_valid(instance: Any, schema: Mapping[str, Any]) -> bool | None:
    """True if `instance` satisfies `schema` (whose $refs are `#/$defs/<name>`); False if a keyword
    fails; None if it cannot tell."""
    try:
        return _Checker(schema).valid(instance, schema)
    except _Unknown:
        return None


class _Checker:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.defs: Mapping[str, Any] = root.get("$defs", {})

    def valid(self, value: Any, schema: Any) -> bool:
        if not isinstance(value, _PLAIN):  # (what a YAML document holds, yamlsrc)
            raise _Unknown
        if schema is True:
            return True
        if schema is False:
            return False
        if not isinstance(schema, dict):
            raise _Unknown
        for keyword, arg in schema.items():
            if keyword in _ANNOTATIONS or keyword == "$defs":
                continue
            check = _KEYWORDS.get(keyword)
            if check is None:
                raise _Unknown
            if not check(self, value, arg, schema):
                return False
        return True

    # ---- the keywords the workflow schema uses

    def _ref(self, value: Any, ref: Any, _: Any) -> bool:
        if not isinstance(ref, str) or not ref.startswith("#/$defs/") or ref[8:] not in self.defs:
            raise _Unknown
        return self.valid(value, self.defs[ref[8:]])

    def _type(self, value: Any, types: Any, _: Any) -> bool:
        names = types if isinstance(types, list) else [types]
        if not all(isinstance(n, str) and n in _TYPES for n in names):
            raise _Unknown
        return any(_TYPES[n](value) for n in names)

    def _properties(self, value: Any, properties: Any, _: Any) -> bool:
        if not isinstance(value, dict):
            return True
        return all(self.valid(v, properties[k]) for k, v in value.items() if k in properties)

    def _additionalProperties(self, value: Any, extra: Any, schema: Any) -> bool:
        if "patternProperties" in schema:
            raise _Unknown
        if not isinstance(value, dict):
            return True
        known = schema.get("properties", {})
        return all(self.valid(v, extra) for k, v in value.items() if k not in known)

    def _propertyNames(self, value: Any, names: Any, _: Any) -> bool:
        return not isinstance(value, dict) or all(self.valid(k, names) for k in value)

    def _required(self, value: Any, required: Any, _: Any) -> bool:
        return not isinstance(value, dict) or all(k in value for k in required)

    def _items(self, value: Any, items: Any, schema: Any) -> bool:
        if "prefixItems" in schema:
            raise _Unknown
        return not isinstance(value, list) or all(self.valid(v, items) for v in value)

    def _minItems(self, value: Any, n: Any, _: Any) -> bool:
        return not isinstance(value, list) or len(value) >= n

    def _uniqueItems(self, value: Any, unique: Any, _: Any) -> bool:
        if not unique or not isinstance(value, list):
            return True
        if not all(isinstance(v, str) for v in value):
            raise _Unknown  # (jsonschema's equality of numbers, booleans and containers)
        return len(set(value)) == len(value)

    def _anyOf(self, value: Any, alternatives: Any, _: Any) -> bool:
        unknown = False
        for alternative in alternatives:
            try:
                if self.valid(value, alternative):
                    return True
            except _Unknown:
                unknown = True
        if unknown:
            raise _Unknown
        return False

    def _enum(self, value: Any, options: Any, _: Any) -> bool:
        if not isinstance(value, str) or not all(isinstance(o, str) for o in options):
            raise _Unknown  # (jsonschema's equality: 1 == 1.0, True != 1)
        return value in options

    def _const(self, value: Any, const: Any, _: Any) -> bool:
        if type(value) is not type(const) or not isinstance(value, str | int) or isinstance(value, bool):
            raise _Unknown
        return bool(value == const)

    def _pattern(self, value: Any, pattern: Any, _: Any) -> bool:
        return not isinstance(value, str) or re.search(pattern, value) is not None

    def _minLength(self, value: Any, n: Any, _: Any) -> bool:
        return not isinstance(value, str) or len(value) >= n

    def _maxLength(self, value: Any, n: Any, _: Any) -> bool:
        return not isinstance(value, str) or len(value) <= n

    def _minimum(self, value: Any, n: Any, _: Any) -> bool:
        return not _TYPES["number"](value) or value >= n

    def _maximum(self, value: Any, n: Any, _: Any) -> bool:
        return not _TYPES["number"](value) or value <= n


_KEYWORDS: dict[str, Any] = {
    "$ref": _Checker._ref,
    "type": _Checker._type,
    "properties": _Checker._properties,
    "additionalProperties": _Checker._additionalProperties,
    "propertyNames": _Checker._propertyNames,
    "required": _Checker._required,
    "items": _Checker._items,
    "minItems": _Checker._minItems,
    "uniqueItems": _Checker._uniqueItems,
    "anyOf": _Checker._anyOf,
    "enum": _Checker._enum,
    "const": _Checker._const,
    "pattern": _Checker._pattern,
    "minLength": _Checker._minLength,
    "maxLength": _Checker._maxLength,
    "minimum": _Checker._minimum,
    "maximum": _Checker._maximum,
}
