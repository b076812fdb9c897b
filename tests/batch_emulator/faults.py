"""Fault injection: chosen requests fail, are throttled, or lose their answer.

Paths are patterns over the request path (without the query): `{name}` matches one segment,
`*` matches anything (also `/`), and a leading `...` matches any prefix. Methods match exactly, or
`*` for any. Each rule fires for `count` matching requests (None: every one) after letting `after`
matching requests through, then is spent. Rules are tried in the order they were added.

    faults.fail_next("POST", "/jobs/{job}/addtaskcollection", status=503, count=3)
    faults.retry_after_next("GET", "/jobs/{job}/taskcounts", seconds=1)       # 429 + Retry-After: 1
    faults.lose_response_next("POST", ".../addtaskcollection")                 # acted on, answer lost
    faults.refuse_connection_next("*", "*")                                    # not acted on, no answer
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import unquote

from .wire import MESSAGES

DEFAULT_CODES = {
    413: "RequestBodyTooLarge",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServerBusy",
}


class FaultKind(Enum):
    ERROR = "error"  # answer with an error status; the service does nothing
    LOSE_RESPONSE = "lose_response"  # the service acts, then the connection drops before the answer
    REFUSE_CONNECTION = "refuse_connection"  # the connection fails before the service sees the request


@dataclass
class Fault:
    kind: FaultKind
    method: str
    pattern: str
    count: int | None
    after: int = 0
    status: int = 0
    code: str = ""
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0  # requests this rule faulted
    seen: int = 0  # matching requests, faulted or let through
    _regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._regex = compile_pattern(self.pattern)

    @property
    def spent(self) -> bool:
        return self.count is not None and self.hits >= self.count

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method)) and self._regex.fullmatch(unquote(path)) is not None


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """`/jobs/{job}/tasks` -> a regex; `{x}` is one path segment, `*` anything, leading `...` any prefix."""
    prefix = ""
    if pattern.startswith("..."):
        prefix, pattern = ".*", pattern[3:]
    parts = re.split(r"(\{[^/{}]*\}|\*)", pattern)
    body = "".join(
        "[^/]+" if p.startswith("{") and p.endswith("}") else ".*" if p == "*" else re.escape(p)
        for p in parts
    )
    return re.compile(prefix + body)


class Faults:
    """The rules in force. Thread-safe: requests arrive on many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Fault] = []

    def fail_next(
        self,
        method: str,
        path: str,
        *,
        status: int = 503,
        code: str | None = None,
        message: str | None = None,
        count: int | None = 1,
        after: int = 0,
        retry_after: float | None = None,
    ) -> Fault:
        """The next `count` matching requests get `status` with a Batch error body (ServerBusy for 503)."""
        if code is None:
            if status not in DEFAULT_CODES:
                raise ValueError(f"give the error code for status {status}")
            code = DEFAULT_CODES[status]
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        text = message if message is not None else MESSAGES.get(code, code)
        return self._add(Fault(FaultKind.ERROR, method, path, count, after, status, code, text, headers))

    def retry_after_next(
        self, method: str, path: str, *, seconds: float, count: int | None = 1, after: int = 0
    ) -> Fault:
        """The next `count` matching requests are throttled: 429 TooManyRequests with Retry-After."""
        return self.fail_next(method, path, status=429, count=count, after=after, retry_after=seconds)

    def lose_response_next(self, method: str, path: str, *, count: int | None = 1, after: int = 0) -> Fault:
        """The service handles the next `count` matching requests, then their answers are lost: the client
        sees a connection error (azure.core.exceptions.ServiceResponseError through the transport)."""
        return self._add(Fault(FaultKind.LOSE_RESPONSE, method, path, count, after))

    def refuse_connection_next(
        self, method: str, path: str, *, count: int | None = 1, after: int = 0
    ) -> Fault:
        """The next `count` matching requests never reach the service (ServiceRequestError)."""
        return self._add(Fault(FaultKind.REFUSE_CONNECTION, method, path, count, after))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(self, method: str, path: str) -> Fault | None:
        """The rule that faults this request, if any (and count it)."""
        with self._lock:
            for rule in self._rules:
                if rule.spent or not rule.matches(method, path):
                    continue
                rule.seen += 1
                if rule.seen <= rule.after:
                    continue
                rule.hits += 1
                return rule
        return None

    def _add(self, rule: Fault) -> Fault:
        if rule.count is not None and rule.count < 1:
            raise ValueError(f"count must be at least 1 (or None for every request), not {rule.count}")
        with self._lock:
            self._rules.append(rule)
        return rule
