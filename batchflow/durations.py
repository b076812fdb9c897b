"""Durations in a workflow: seconds, "90s" / "1h30m" style strings, or ISO 8601 ("PT30M")."""

from __future__ import annotations

import math
import re

DURATION_HELP = "use seconds (90) or a string like '90s', '30m', '1h30m', '2d', '500ms' or 'PT30M'"

_NUM = r"(\d+(?:\.\d+)?)"
# The same grammar as $defs/duration in the schema (tests check that they agree).
_SHORT = re.compile(rf"(?=\d)(?:{_NUM}d)?(?:{_NUM}h)?(?:{_NUM}m(?!s))?(?:{_NUM}s)?(?:{_NUM}ms)?")
_ISO = re.compile(rf"P(?=[\dT])(?:{_NUM}D)?(?:T(?=\d)(?:{_NUM}H)?(?:{_NUM}M)?(?:{_NUM}S)?)?")
_SHORT_UNITS: tuple[float, ...] = (86400.0, 3600.0, 60.0, 1.0, 0.001)
_ISO_UNITS: tuple[float, ...] = (86400.0, 3600.0, 60.0, 1.0)


def parse_duration(value: float | int | str) -> float:
    """Seconds in `value`: a number of seconds (>= 0); "90s", "30m", "1h30m", "2d", "500ms" or
    "1.5h" (units d, h, m, s, ms, in that order); or ISO 8601 such as "PT30M" or "P1DT2H".

    Raises ValueError saying what is accepted.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            return float(value)
    elif isinstance(value, str):
        m = _SHORT.fullmatch(value)
        units = _SHORT_UNITS
        if m is None:
            m, units = _ISO.fullmatch(value), _ISO_UNITS
        if m is not None:
            return sum(float(n) * unit for n, unit in zip(m.groups(), units, strict=False) if n is not None)
    raise ValueError(f"{value!r} is not a valid duration: {DURATION_HELP}")
